"""Shared fixtures: small real studies on generated data, in temporary folders."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import optuna
import pytest

from nas.callbacks import dashboard_hooks
from nas.cli import main
from nas.config import SearchConfig, load_config
from nas.lut import LatencyTable
from nas.study import run_search


def load_experiment(name: str):
    """A script of experiments/ (`bench_resolution`, ...) imported as a module, registered in
    sys.modules so that its dataclasses find their module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        name, Path(__file__).resolve().parents[1] / "experiments" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def trained_trials(study) -> list:
    """The study's trained trials: complete ones less the duplicates (an architecture the
    sampler drew again, which of them depends on the host's float results), which carry the
    first one's result but no training, curve or weights of their own."""
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return [t for t in done if t.user_attrs.get("status") != "duplicate"]


def write_config(folder: Path, name: str = "t", **overrides: str) -> Path:
    """A fast search config (synthetic 16px data, 2 epochs) under `folder`; `overrides` replace
    whole sections by their YAML text."""
    sections = {
        "study": f"""study:
          name: {name}
          storage: sqlite:///{folder}/study.db
          artifacts: {folder}/artifacts
          n_trials: 4
          seed: 0
          sampler: TPESampler
          sampler_args: {{n_startup_trials: 3}}""",
        "space": "space: tiny",
        "data": """data: {name: synthetic, img_size: 16, num_classes: 4, num_samples: 160}""",
        "train": """train: {epochs: 2, batch_size: 32, lr: 0.003, threads: 1}""",
        "budget": """budget: {max_params: 60000, max_latency_ms: 50.0}""",
        "latency": """latency: {threads: 1, warmup: 1, runs: 5, max_seconds: 0.2}""",
    }
    sections.update(overrides)
    path = folder / f"{name}.yaml"
    path.write_text("\n".join(textwrap.dedent(s) for s in sections.values()) + "\n")
    return path


@pytest.fixture(scope="session")
def finished_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[SearchConfig, object]:
    """A real 6-candidate study in a SQLite file, shared by the tests that only read it."""
    folder = tmp_path_factory.mktemp("study")
    config = load_config(write_config(folder, "shared"))
    config = config.replace_study(n_trials=6)
    run = run_search(config, hooks=dashboard_hooks())  # as `lvit search` runs it
    return config, run.study


def missing_service(reason: str) -> None:
    """A real service is missing: a failure where `make test` could provide it (as root, as in
    CI, LVIT_REQUIRE_SERVICES=1), else a skip with the reason."""
    if os.environ.get("LVIT_REQUIRE_SERVICES"):
        pytest.fail(f"{reason} (required here: tests/services.sh could not provide it)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def postgres_url() -> str:
    """A fresh database on the PostgreSQL server that tests/services.sh started, for the tests
    of one module."""
    admin = os.environ.get("LVIT_TEST_POSTGRES")
    if not admin:
        missing_service("no PostgreSQL server: run the tests with `make test` (tests/services.sh)")
    import psycopg

    name = f"lvit_test_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield admin.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


def lvit_process(*args: str) -> subprocess.Popen:
    """`lvit ARGS` in a child process, its output captured."""
    return subprocess.Popen(
        [sys.executable, "-m", "nas.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def wait_for(predicate, timeout: float = 120.0, every: float = 0.5):
    """The first true value of `predicate()` (errors count as false) within `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception:  # noqa: BLE001 - e.g. the study does not exist yet
            value = None
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out waiting")


@pytest.fixture(scope="session")
def tiny_table(tmp_path_factory: pytest.TempPathFactory) -> tuple[LatencyTable, Path]:
    """A real table for the tiny space at 16px, built by the command users run."""
    path = tmp_path_factory.mktemp("lut") / "tiny.json"
    assert (
        main(
            [
                "latency",
                "build-lut",
                "--space",
                "tiny",
                "--img-size",
                "16",
                "--num-classes",
                "4",
                "--calibration",
                "3",
                "--out",
                str(path),
            ]
        )
        == 0
    )
    return LatencyTable.load(str(path)), path


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Markers by what a test needs: `services` (the PostgreSQL server or headless Chromium
    that `make test` starts) and `nni` (the one-shot extra); `slow` is written on each test
    that takes seconds. `make test` runs them all; `make test-fast` leaves these out."""
    for item in items:
        if "postgres_url" in getattr(item, "fixturenames", ()) or "chromium" in item.name:
            item.add_marker(pytest.mark.services)
        if item.path.name == "test_oneshot.py" or "nni" in item.name:
            item.add_marker(pytest.mark.nni)
