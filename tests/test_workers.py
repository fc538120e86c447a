"""Scale-out on real parts: local worker processes on a journal file, workers on a real
PostgreSQL server (started by tests/services.sh), killed workers, storage URL errors, and
optuna-dashboard loaded in a real headless Chromium."""

from __future__ import annotations

import os
import shutil
import signal
import socket
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from nas.cli import main
from nas.workers import core_shares
from tests.conftest import lvit_process as _lvit
from tests.conftest import missing_service as _missing
from tests.conftest import trained_trials, write_config
from tests.conftest import wait_for as _wait_for

WIDE = "budget: {max_params: 1000000, max_latency_ms: 100}"
SLOW = "train: {epochs: 40, batch_size: 32, threads: 1}"  # long enough to kill mid-trial


def _config(folder: Path, storage: str, n_trials: int, **overrides: str) -> Path:
    study = f"""study:
      name: t
      storage: "{storage}"
      artifacts: {folder}/artifacts
      n_trials: {n_trials}
      seed: 0"""
    return write_config(folder, study=study, budget=WIDE, **overrides)


def _training_trial(storage: str, exclude_pid: int | None = None) -> optuna.trial.FrozenTrial:
    """A RUNNING trial that passed its budget check and is training (its worker recorded)."""
    study = optuna.load_study(study_name="t", storage=storage)
    for t in study.get_trials(states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker")
        if worker and "costs" in t.user_attrs and "status" not in t.user_attrs:
            if worker["pid"] != exclude_pid:
                return t
    return None


def _check_count(study: optuna.Study, n: int) -> list[optuna.trial.FrozenTrial]:
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(finished) == n  # exactly the count: nothing lost, nothing extra
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    for t in finished:
        assert t.user_attrs["status"] in ("trained", "infeasible") and "arch" in t.user_attrs
    return finished


def test_core_shares_split_the_cores() -> None:
    assert core_shares(2, [0, 1, 2, 3, 4]) == [[0, 1, 2], [3, 4]]
    assert core_shares(3, [0, 1]) == [[0], [1], [0]]
    assert core_shares(1, [5, 7]) == [[5, 7]]


@pytest.mark.slow
def test_two_local_workers_share_one_journal_study(tmp_path: Path, capsys) -> None:
    storage = f"journal:///{tmp_path}/study.journal"
    config = _config(tmp_path, storage, 8)
    assert main(["search", str(config), "--workers", "2"]) == 0
    out = capsys.readouterr().out
    study = optuna.load_study(
        study_name="t",
        storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(f"{tmp_path}/study.journal")
        ),
    )
    finished = _check_count(study, 8)
    assert len({t.user_attrs["worker"]["pid"] for t in finished}) == 2
    assert "with 2 workers" in out and "Pareto front" in out


@pytest.mark.slow
def test_two_workers_promote_by_mo_asha_from_the_shared_journal(tmp_path: Path) -> None:
    """Asynchronous promotion: each worker ranks its candidate at the rung against what the
    shared study holds, its own trials and the other worker's."""
    storage = f"journal:///{tmp_path}/study.journal"
    config = _config(
        tmp_path,
        storage,
        8,
        train="train: {epochs: 2, batch_size: 32, lr: 0.003, threads: 1}",
    )
    # eta 4: only the best quarter goes on, so some of 8 candidates are stopped whatever order
    # the two workers reach the rung in (with eta 2 all could be non-dominated: flaky)
    text = config.read_text().replace(
        "      seed: 0", "      seed: 0\n      fidelity: {rungs: [1], eta: 4}"
    )
    config.write_text(text)
    assert main(["search", str(config), "--workers", "2"]) == 0
    study = optuna.load_study(
        study_name="t",
        storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(f"{tmp_path}/study.journal")
        ),
    )
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(finished) == 8 and len({t.user_attrs["worker"]["pid"] for t in finished}) == 2
    stopped = [t for t in finished if t.user_attrs["status"] == "stopped"]
    promoted = [t for t in finished if t.user_attrs["status"] == "trained"]
    assert stopped and promoted
    for t in stopped:
        assert len(t.user_attrs["curve"]) == 1 and "MO-ASHA" in t.user_attrs["stop_reason"]
    assert all(len(t.user_attrs["train"]["history"]) == 2 for t in promoted)


def test_workers_get_a_gpu_each_when_training_runs_on_gpus(monkeypatch) -> None:
    """The assignment, with the GPU count faked: one visible GPU per worker, round robin,
    by the names CUDA_VISIBLE_DEVICES gives them; none when training on the CPU."""
    import torch

    from nas.config import SearchConfig
    from nas.workers import default_workers, gpu_assignment

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert gpu_assignment(2, "auto") == ["0", "1"]
    assert gpu_assignment(6, "cuda") == ["0", "1", "2", "3", "0", "1"]
    assert gpu_assignment(2, "cpu") == [None, None]
    gpu = SearchConfig.from_dict({"study": {"name": "g"}, "train": {"device": "cuda"}})
    cpu = SearchConfig.from_dict({"study": {"name": "c"}, "train": {"device": "cpu"}})
    assert default_workers(gpu) == 4 and default_workers(cpu) == 1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,3")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert gpu_assignment(3, "auto") == ["5", "3", "5"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_assignment(2, "auto") == [None, None] and default_workers(gpu) == 1


@pytest.mark.slow
def test_each_spawned_worker_runs_with_the_gpu_it_was_given(tmp_path: Path) -> None:
    """The plumbing, on the CPU: every worker process sets its CUDA_VISIBLE_DEVICES before
    torch starts, and its trials record it."""
    from nas.config import load_config
    from nas.workers import run_workers

    storage = f"journal:///{tmp_path}/study.journal"
    config = load_config(_config(tmp_path, storage, 4, train="train: {epochs: 1, device: cpu}"))
    run = run_workers(config, 2, gpus=["7", "8"])
    by_worker = {}
    for t in _check_count(run.study, 4):
        worker = t.user_attrs["worker"]
        by_worker.setdefault(worker["pid"], set()).add(worker["cuda_visible_devices"])
    assert sorted(v for values in by_worker.values() for v in values) == ["7", "8"]


def test_sqlite_is_refused_for_parallel_workers(tmp_path: Path, capsys) -> None:
    config = _config(tmp_path, f"sqlite:///{tmp_path}/s.db", 2)
    assert main(["search", str(config), "--workers", "2"]) == 2
    err = capsys.readouterr().err
    assert "not SQLite" in err and "journal:///runs/NAME.journal" in err


@pytest.mark.slow
def test_a_killed_local_worker_is_recovered_and_the_count_reached(tmp_path: Path) -> None:
    storage_path = tmp_path / "study.journal"
    storage = f"journal:///{storage_path}"
    config = _config(tmp_path, storage, 4, train=SLOW.replace("40", "6"))
    proc = _lvit("search", str(config), "--workers", "2")
    journal = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(storage_path))
    )
    victim = _wait_for(lambda: storage_path.exists() and _training_trial(journal))
    os.kill(victim.user_attrs["worker"]["pid"], signal.SIGKILL)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    study = optuna.load_study(study_name="t", storage=journal)
    _check_count(study, 4)
    killed = study.trials[victim.number]
    assert (
        killed.state == TrialState.FAIL
        and "died during this trial" in (killed.user_attrs["fail_reason"])
    )
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == victim.number]
    assert retries and retries[0].params == killed.params
    # the retry keeps none of the failed run's records: it has its own
    assert retries[0].user_attrs["retry_of"] == victim.number
    assert "fail_reason" not in retries[0].user_attrs
    assert retries[0].user_attrs["worker"]["pid"] != victim.user_attrs["worker"]["pid"]
    assert "failed and retried" in out


@pytest.mark.slow
def test_two_workers_on_postgresql_finish_exactly_the_count(postgres_url, tmp_path) -> None:
    config = _config(tmp_path, postgres_url, 8)
    search = _lvit("search", str(config))
    _wait_for(lambda: optuna.load_study(study_name="t", storage=postgres_url))
    worker = _lvit("worker", "--storage", postgres_url, "--study", "t")
    for proc in (search, worker):
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    study = optuna.load_study(study_name="t", storage=postgres_url)
    finished = _check_count(study, 8)
    assert len({t.user_attrs["worker"]["pid"] for t in finished}) == 2
    surplus = study.get_trials(states=(TrialState.FAIL,))
    assert all(t.user_attrs.get("status") == "surplus" for t in surplus)


@pytest.mark.slow
def test_a_worker_killed_on_postgresql_is_failed_by_heartbeat_and_retried(
    postgres_url, tmp_path
) -> None:
    config = _config(tmp_path, postgres_url, 4, train=SLOW.replace("40", "6"))
    name = ["--study", "t2"]
    search = _lvit("search", str(config), *name, "--grace-period", "4")
    _wait_for(lambda: optuna.load_study(study_name="t2", storage=postgres_url))
    worker = _lvit("worker", "--storage", postgres_url, *name, "--grace-period", "4")

    def worker_training():
        study = optuna.load_study(study_name="t2", storage=postgres_url)
        for t in study.get_trials(states=(TrialState.RUNNING,)):
            w = t.user_attrs.get("worker", {})
            if w.get("pid") == worker.pid and "costs" in t.user_attrs:
                return t
        return None

    victim = _wait_for(worker_training, timeout=300)
    worker.kill()
    worker.communicate()
    _, err = search.communicate(timeout=600)
    assert search.returncode == 0, err
    study = optuna.load_study(study_name="t2", storage=postgres_url)
    _check_count(study, 4)
    assert study.trials[victim.number].state == TrialState.FAIL
    assert any(t.system_attrs.get("failed_trial") == victim.number for t in study.trials)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://lvit:s3cret@127.0.0.1:1/nothing", "cannot open storage"),
        ("nosuchdb://host/x", "cannot open storage nosuchdb://host/x"),
        ("journal://relative.journal", "not a valid journal URL"),
    ],
)
def test_bad_storage_urls_are_one_line_errors_without_the_password(url, message, capsys) -> None:
    assert main(["status", "--storage", url]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "s3cret" not in err and len(err.splitlines()) == 1


def test_a_refused_login_names_the_url_without_its_password(postgres_url, capsys) -> None:
    user, rest = postgres_url.split("://", 1)[1].split("@", 1)
    bad = f"postgresql://{user.split(':')[0]}:wrong-s3cret@{rest}"
    assert main(["status", "--storage", bad]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot open storage postgresql://lvit:***@" in err and "s3cret" not in err
    assert len(err.splitlines()) == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_trials_carry_a_dashboard_note_describing_them(finished_study) -> None:
    from optuna_dashboard import get_note

    _, study = finished_study
    for t in study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)):
        note = get_note(optuna.Trial(study, t._trial_id))
        assert f"## Trial {t.number}" in note and "parameters" in note and "latency" in note
        assert "stage 1:" in note and "stem `" in note


@pytest.mark.slow
def test_the_dashboard_shows_the_study_in_a_real_chromium(finished_study, tmp_path) -> None:
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        _missing("no chromium/chromedriver: run the tests with `make test` (tests/services.sh)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    config, study = finished_study
    port = _free_port()
    server = _lvit("dashboard", "--storage", config.study.storage_url, "--port", str(port))
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    options.add_argument("--window-size=1400,1000")
    driver = None
    try:
        _wait_for(lambda: socket.create_connection(("127.0.0.1", port), timeout=1), timeout=60)
        driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
        driver.get(f"http://127.0.0.1:{port}/dashboard/")
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: study.study_name in d.find_element(By.TAG_NAME, "body").text)
        driver.get(f"http://127.0.0.1:{port}/dashboard/studies/{study._study_id}/trials")
        wait.until(lambda d: "Trial 0" in d.find_element(By.TAG_NAME, "body").text)
        body = driver.find_element(By.TAG_NAME, "body").text
        first = study.trials[0]
        # the trial's note, rendered: the architecture in words and its costs
        assert f"Trial 0: {first.user_attrs['status']}" in body
        assert first.user_attrs["arch_line"] in body and "parameters" in body
        assert study.metric_names == ["accuracy", "latency_ms"]
        # the report's pictures as artifacts: each trained trial's drawing, the study's front
        from optuna.artifacts import get_all_artifact_meta

        for t in trained_trials(study):
            names = {m.filename for m in get_all_artifact_meta(t, storage=study._storage)}
            assert "architecture.png" in names
        assert "pareto-6.png" in {m.filename for m in get_all_artifact_meta(study)}
        shot = tmp_path / "dashboard.png"
        driver.save_screenshot(str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        server.communicate(timeout=30)


@pytest.mark.slow
def test_a_worker_joins_with_its_own_thread_count(tmp_path: Path, capsys) -> None:
    # the threads a worker trains with are its own business, not a different study
    config = _config(tmp_path, f"sqlite:///{tmp_path}/s.db", 2)
    assert main(["search", str(config)]) == 0
    storage = f"sqlite:///{tmp_path}/s.db"
    assert main(["worker", "--storage", storage, "--study", "t", "--threads", "2"]) == 0
    assert "Study: 2 candidates" in capsys.readouterr().out


@pytest.mark.slow
def test_the_prepared_gpu_check_runs_end_to_end_on_the_cpu(tmp_path: Path) -> None:
    """experiments/gpu_check.sh is run once on a lent GPU machine, with no second try to
    spare: its CPU rehearsal runs every step (two workers, latency, full-recipe retraining,
    the test split) so that a typo cannot cost that try."""
    import subprocess

    script = Path(__file__).parents[1] / "experiments" / "gpu_check.sh"
    env = {**os.environ, "LVIT_CHECK_DEVICE": "cpu", "LVIT_CHECK_SMALL": "1"}
    done = subprocess.run(
        ["bash", str(script), str(tmp_path / "check")],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    out = done.stdout
    assert "trained" in out and "workers' CUDA_VISIBLE_DEVICES ['-']" in out
    assert "latency measured on ['cpu']" in out
    assert out.count("ms median (quartiles") == 2  # batch 1 and batch 64
    assert "accuracy" in out and "== done in" in out
