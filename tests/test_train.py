"""Proxy training on the bundled digits really learns."""

from __future__ import annotations

import pytest
import torch

from nas.config import DataConfig, TrainConfig
from nas.data import load_dataset
from nas.train import TrainingDiverged, train_model
from search_spaces.arch import ArchConfig, StageConfig
from search_spaces.model import LightViT


def test_digits_split_is_fixed_and_normalised() -> None:
    a, b = load_dataset(DataConfig(img_size=16)), load_dataset(DataConfig(img_size=16))
    assert torch.equal(a.val_y, b.val_y) and len(a.train_y) + len(a.val_y) == 1797
    assert a.train_x.shape[1:] == (3, 16, 16) and a.num_classes == 10
    assert abs(a.train_x.mean().item()) < 1e-3 and abs(a.train_x.std().item() - 1) < 1e-2
    assert sorted(a.val_y.bincount().tolist())[0] >= 30  # stratified: every class in val


def test_a_small_vit_learns_digits() -> None:
    data = load_dataset(DataConfig(img_size=16))
    arch = ArchConfig(
        stages=(StageConfig(1, 64, 2, 2.0, "mhsa"),),
        stem="conv",
        patch_size=4,
        pos_enc="none",
        img_size=16,
    )
    result = train_model(LightViT(arch), data, TrainConfig(epochs=8), seed=0)
    assert result.val_acc >= 0.85
    assert [h["epoch"] for h in result.history] == list(range(1, 9))


def test_a_diverging_loss_is_reported() -> None:
    data = load_dataset(DataConfig(name="synthetic", img_size=16, num_samples=64))
    arch = ArchConfig(stages=(StageConfig(1, 16, 1, 2.0, "pool"),), img_size=16)
    model = LightViT(arch)
    with torch.no_grad():
        model.head.weight.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="loss became nan in epoch 1"):
        train_model(model, data, TrainConfig(epochs=1), seed=0)


def test_a_failed_trial_is_recorded_and_the_search_goes_on(tmp_path, monkeypatch) -> None:
    """Out of memory (or a diverging loss) ends that trial as FAIL with its reason; the study
    still reaches its count of finished candidates."""
    import optuna

    import nas.study
    from nas.config import load_config
    from nas.study import run_search
    from nas.train import TrainingFailed
    from tests.conftest import write_config

    real, calls = nas.study.train_model, []

    def flaky(model, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise TrainingFailed("out of memory in epoch 1 on cpu: simulated")
        return real(model, *args, **kwargs)

    monkeypatch.setattr(nas.study, "train_model", flaky)
    budget = "budget: {max_params: 1000000, max_latency_ms: 100.0}"
    config = load_config(write_config(tmp_path, budget=budget)).replace_study(n_trials=2)
    run = run_search(config)
    failed = run.study.get_trials(states=(optuna.trial.TrialState.FAIL,))
    assert len(failed) == 1 and run.failed == 1
    assert failed[0].user_attrs["fail_reason"] == "out of memory in epoch 1 on cpu: simulated"
    assert len(run.study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 2


def test_training_reports_its_device_and_refuses_a_missing_gpu() -> None:
    from nas.train import resolve_device

    data = load_dataset(DataConfig(name="synthetic", img_size=16, num_samples=64))
    arch = ArchConfig(stages=(StageConfig(1, 16, 1, 2.0, "pool"),), img_size=16)
    model = LightViT(arch)
    result = train_model(model, data, TrainConfig(epochs=1, device="cpu"), seed=0)
    assert result.device == "cpu" and next(model.parameters()).device.type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="torch sees no GPU"):
            resolve_device("cuda")
