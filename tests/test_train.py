"""Training: the proxy recipe on the bundled digits really learns, as it did; the full
recipe's pieces from timm (mixup/cutmix, EMA, drop path) do what they claim."""

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
    x, _ = a.tensors("train")
    assert x.shape[1:] == (3, 16, 16) and a.num_classes == 10
    assert a.cache == "memory" and a.train.images.dtype == torch.uint8
    assert a.train.images.shape[1] == 1  # grey, held once; models get three channels
    assert abs(x.mean().item()) < 1e-3 and abs(x.std().item() - 1) < 1e-2
    assert sorted(a.val_y.bincount().tolist())[0] >= 30  # stratified: every class in val


def _old_digits_batches(img_size: int, seed: int, batch_size: int) -> list[torch.Tensor]:
    """The batches the in-memory path gave before data sets were held as uint8: float images
    resized, split, normalised, then cut and translated by the same seeded generator."""
    import numpy as np
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    from nas.data import _split
    from nas.loader import random_crop

    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    images = F.interpolate(
        images.expand(-1, 3, -1, -1),
        size=(img_size, img_size),
        mode="bilinear",
        align_corners=False,
        antialias=True,
    )
    train_idx, _ = _split(np.asarray(digits.target), 0.2, 0)
    x = images[train_idx]
    mean, std = x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3))
    x = (x - mean[None, :, None, None]) / std[None, :, None, None]
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=generator)
    out = []
    for start in range(0, len(x), batch_size):
        out.append(random_crop(x[order[start : start + batch_size]], 1, generator, "min"))
    return out


def test_the_in_memory_path_gives_the_digits_batches_it_always_gave() -> None:
    """Holding digits as uint8 changes a pixel by at most half a grey level: the split, the
    order, the translations and so the training are today's."""
    from nas.loader import train_batches

    data = load_dataset(DataConfig(img_size=16))
    new = [xb for xb, _ in train_batches(data, TrainConfig(), torch.device("cpu"), seed=5)]
    old = _old_digits_batches(16, seed=5, batch_size=32)
    assert len(new) == len(old) == 45
    worst = max((a - b).abs().max().item() for a, b in zip(new, old, strict=True))
    assert worst < 0.6 / 255 / min(data.std)


@pytest.mark.slow
def test_a_fixed_architecture_still_learns_digits_as_it_did() -> None:
    """The quickstart's best architecture (trial 15 of the README's run) at 16px: 6 epochs of
    the proxy recipe reach what they reached when digits were held as float32 tensors."""
    import timm

    import search_spaces  # noqa: F401 - registers lightvit

    data = load_dataset(DataConfig(img_size=16))
    model = timm.create_model("lightvit_pool96_digits16", num_classes=10)
    result = train_model(model, data, TrainConfig(epochs=6, threads=2, device="cpu"), seed=0)
    assert result.val_acc >= 0.95 and result.loader == "cut"


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_failed_trial_is_recorded_and_the_search_goes_on(tmp_path, monkeypatch) -> None:
    """Out of memory (or a diverging loss) ends that trial as FAIL with its reason; the study
    still reaches its count of finished candidates."""
    import optuna

    import nas.objective
    from nas.config import load_config
    from nas.study import run_search
    from nas.train import TrainingFailed
    from tests.conftest import write_config

    real, calls = nas.objective.train_model, []

    def flaky(model, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise TrainingFailed("out of memory in epoch 1 on cpu: simulated")
        return real(model, *args, **kwargs)

    monkeypatch.setattr(nas.objective, "train_model", flaky)
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


def _soft_targets_seen(monkeypatch) -> list[torch.Tensor]:
    from timm.loss import SoftTargetCrossEntropy

    seen, real = [], SoftTargetCrossEntropy.forward

    def spy(self, x, target):
        seen.append(target.detach().clone())
        return real(self, x, target)

    monkeypatch.setattr(SoftTargetCrossEntropy, "forward", spy)
    return seen


def test_mixup_and_cutmix_train_on_mixed_images_with_soft_targets(monkeypatch) -> None:
    data = load_dataset(DataConfig(name="synthetic", img_size=16, num_samples=96))
    arch = ArchConfig(stages=(StageConfig(1, 16, 1, 2.0, "pool"),), img_size=16, num_classes=4)
    seen = _soft_targets_seen(monkeypatch)
    recipe = TrainConfig(epochs=1, batch_size=16, mixup=0.8, cutmix=1.0, device="cpu")
    train_model(LightViT(arch), data, recipe, seed=0)
    assert seen and all(t.shape == (16, data.num_classes) for t in seen)  # even batches
    targets = torch.cat(seen)
    assert torch.allclose(targets.sum(dim=1), torch.ones(len(targets)))
    second = targets.sort(dim=1, descending=True).values[:, 1]
    assert (second > 0.1).float().mean() > 0.5  # two classes in most targets, not smoothing
    seen.clear()
    train_model(LightViT(arch), data, TrainConfig(epochs=1, device="cpu"), seed=0)
    assert not seen  # without mixing: hard labels and plain cross-entropy


@pytest.mark.slow
def test_ema_weights_are_kept_and_differ_from_the_trained_ones() -> None:
    """With ema_decay the model ends with the moving average (what was validated), and the
    raw weights train exactly as they do without it."""
    data = load_dataset(DataConfig(name="synthetic", img_size=16, num_samples=96))
    arch = ArchConfig(stages=(StageConfig(1, 16, 1, 2.0, "pool"),), img_size=16)
    with_ema, plain = LightViT(arch), LightViT(arch)
    plain.load_state_dict(with_ema.state_dict())
    a = train_model(with_ema, data, TrainConfig(epochs=2, ema_decay=0.9, device="cpu"), seed=3)
    b = train_model(plain, data, TrainConfig(epochs=2, device="cpu"), seed=3)
    assert [h["val_acc_raw"] for h in a.history] == [h["val_acc"] for h in b.history]
    gap = max(
        (p - q).abs().max().item()
        for p, q in zip(with_ema.parameters(), plain.parameters(), strict=True)
    )
    assert gap > 1e-4


def test_drop_path_is_for_training_only() -> None:
    from timm.layers import DropPath

    data = load_dataset(DataConfig(name="synthetic", img_size=16, num_samples=64))
    arch = ArchConfig(stages=(StageConfig(3, 16, 1, 2.0, "pool"),), img_size=16)
    model, rates = LightViT(arch), []
    original = model.set_drop_path_rate

    def watch(rate: float) -> None:
        original(rate)
        rates.append([m.drop_prob for m in model.modules() if isinstance(m, DropPath)])

    model.set_drop_path_rate = watch
    train_model(model, data, TrainConfig(epochs=1, drop_path=0.2, device="cpu"), seed=0)
    assert rates[0] == pytest.approx([0.1, 0.1, 0.2, 0.2])  # rising to 0.2 in the last block
    assert rates[-1] == [] and not any(isinstance(m, DropPath) for m in model.modules())


def test_recipes_fill_what_a_config_leaves_out() -> None:
    from nas.config import RECIPE_PRESETS, RetrainConfig

    proxy, full = TrainConfig(), RetrainConfig()
    assert (proxy.recipe, full.recipe) == ("proxy", "full")
    assert all(getattr(proxy, k) == v for k, v in RECIPE_PRESETS["proxy"].items())
    assert full.augment == "timm" and full.re_prob > 0 and full.drop_path > 0
    assert not full.mixes and full.auto_augment == "none"  # they cost small models accuracy
    mine = TrainConfig(recipe="full", epochs=3, mixup=0.8, cutmix=1.0)
    assert mine.epochs == 3 and mine.mixes and mine.crop_scale == full.crop_scale
    with pytest.raises(ValueError, match="not a timm augmentation string"):
        TrainConfig(auto_augment="randaugment please")


def test_the_full_preset_is_the_recipe_its_benchmark_measured_best() -> None:
    """docs/training.md justifies the `full` preset by experiments/bench_recipe.py: the
    benchmark's `full` variant must be the preset as it is, and in the published results it
    must beat the DeiT-style recipe, each variant of it, and the proxy at the same length."""
    import importlib.util
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location(
        "bench_recipe", root / "experiments" / "bench_recipe.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    changes = dict(bench.VARIANTS)[bench.FULL]
    assert bench.recipe_of(changes, 15, 2) == bench.recipe_of({}, 15, 2)
    results = json.loads((root / "experiments/results/recipe/results.json").read_text())
    means = {s["variant"]: s["mean"] for s in results["summary"]}
    others = [v for v in means if v == "proxy" or v.startswith("DeiT-style")]
    assert len(others) >= 9 and all(means[bench.FULL] > means[v] for v in others), means
