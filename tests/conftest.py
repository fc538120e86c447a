"""Shared fixtures: small real studies on generated data, in temporary folders."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from nas.config import SearchConfig, load_config
from nas.study import run_search


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
    run = run_search(config)
    return config, run.study
