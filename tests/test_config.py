"""Config errors give one line naming the problem and exit with code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from nas.cli import main
from tests.conftest import write_config


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    return code, err


def test_unknown_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, train="train: {epoch: 3}")
    code, err = _run(capsys, "search", str(path))
    assert code == 2
    assert err == (
        f"lvit: error: {path}: unknown key 'train.epoch' (did you mean 'epochs'?); "
        "allowed keys: recipe, epochs, batch_size, lr, weight_decay, warmup_epochs, "
        "label_smoothing, clip_grad, augment, crop_scale, auto_augment, re_prob, hflip, "
        "mixup, cutmix, mixup_prob, ema_decay, drop_path, threads, device, amp, exit_weight, "
        "exit_max_drop"
    )


def test_wrong_type(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, budget="budget: {max_params: lots}")
    code, err = _run(capsys, "search", str(path))
    assert code == 2
    assert (
        err
        == f"lvit: error: {path}: budget.max_params must be an integer or null, got 'lots' (str)"
    )


def test_bad_value(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, space="space: enormous")
    code, err = _run(capsys, "search", str(path))
    assert code == 2 and "space 'enormous' is unknown; use one of: tiny" in err
    assert len(err.splitlines()) == 1


def test_unknown_sampler(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, study="study: {name: x, sampler: BestSampler}")
    code, err = _run(capsys, "search", str(path))
    assert code == 2 and "'BestSampler' is not an Optuna sampler" in err and "TPESampler" in err


def test_missing_file_through_the_console_script(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    proc = subprocess.run(
        [sys.executable, "-m", "nas.cli", "search", str(missing)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"lvit: error: config file not found: {missing} (see experiments/ for examples)"
    )
    assert not (tmp_path / "runs").exists()


def test_invalid_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("study: [name\n")
    code, err = _run(capsys, "search", str(path))
    assert code == 2 and err.startswith(f"lvit: error: {path}: not valid YAML at line")


def test_quickstart_config_is_valid() -> None:
    from nas.config import load_config

    config = load_config(Path(__file__).resolve().parents[1] / "experiments/quickstart.yaml")
    assert config.data.name == "digits" and config.space == "tiny"
    assert config.budget.max_params and config.budget.max_latency_ms


def test_every_shipped_experiment_config_is_valid() -> None:
    from nas.config import load_config

    folder = Path(__file__).resolve().parents[1] / "experiments"
    configs = sorted(folder.glob("*.yaml"))
    assert len(configs) >= 2
    for path in configs:
        load_config(path)
