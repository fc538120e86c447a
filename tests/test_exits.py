"""Early exits: trained jointly, calibrated for a target accuracy drop, really stopping early,
and the latency they buy recorded with every trial that has them."""

from __future__ import annotations

import optuna
import pytest
import torch

from nas.config import DataConfig, TrainConfig, load_config
from nas.data import load_dataset
from nas.exits import calibrate_exits
from nas.study import create_or_resume_study, run_search
from nas.train import evaluate, train_model
from search_spaces.arch import ArchConfig, StageConfig
from search_spaces.model import Block, LightViT
from search_spaces.spaces import get_space
from tests.conftest import write_config

ARCH = ArchConfig(
    stages=(StageConfig(1, 32, 2, 2.0, "pool"), StageConfig(2, 32, 2, 2.0)),
    img_size=16,
    patch_size=4,
    pos_enc="none",
    exits=(1,),
    num_classes=4,
)


def _blocks_run(model: LightViT, fn) -> int:
    ran = []
    handles = [
        m.register_forward_hook(lambda *a: ran.append(1))
        for m in model.modules()
        if isinstance(m, Block)
    ]
    fn()
    for h in handles:
        h.remove()
    return len(ran)


def test_the_dynamic_path_stops_at_the_first_confident_exit() -> None:
    model = LightViT(ARCH).eval()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        early, final = model.forward_exits(x)
        logits, k = model.forward_dynamic(x, [-1.0])
        assert k == 0 and torch.allclose(logits, early)
        assert _blocks_run(model, lambda: model.forward_dynamic(x, [-1.0])) == 1
        logits, k = model.forward_dynamic(x, [2.0])
        assert k == 1 and torch.allclose(logits, model(x)) and torch.allclose(logits, final)
        assert _blocks_run(model, lambda: model.forward_dynamic(x, [2.0])) == 3


@pytest.fixture(scope="module")
def data():
    return load_dataset(DataConfig(name="synthetic", img_size=16, num_samples=240, num_classes=4))


def _exit_accuracy(model: LightViT, data) -> float:
    with torch.no_grad():
        early = model.forward_exits(data.tensors("val")[0])[0]
    return (early.argmax(dim=1) == data.val_y).float().mean().item()


@pytest.mark.slow
def test_exits_are_trained_jointly(data) -> None:
    trained, ignored = LightViT(ARCH), LightViT(ARCH)
    train_model(trained, data, TrainConfig(epochs=4, exit_weight=0.5, device="cpu"), seed=0)
    train_model(ignored, data, TrainConfig(epochs=4, exit_weight=0.0, device="cpu"), seed=0)
    assert _exit_accuracy(trained, data) > _exit_accuracy(ignored, data) + 0.2
    assert evaluate(trained, data) > 0.6


def test_calibration_keeps_the_accuracy_drop_and_buys_latency(data) -> None:
    model = LightViT(ARCH)
    train_model(model, data, TrainConfig(epochs=4, device="cpu"), seed=0)
    report = calibrate_exits(model, data, max_drop=0.02, measure_images=20)
    assert sum(report.share) == pytest.approx(1.0)
    assert report.dynamic_accuracy >= report.full_accuracy - 0.02 - 1e-9
    assert len(report.exit_accuracy) == 2 and len(report.path_latency_ms) == 2
    assert report.path_latency_ms[0] < report.path_latency_ms[1]
    low, high = min(report.path_latency_ms), max(report.path_latency_ms)
    assert low <= report.expected_latency_ms <= high
    assert report.measured_dynamic_ms > 0
    strict = calibrate_exits(model, data, max_drop=0.0, measure_images=5)
    assert strict.dynamic_accuracy >= strict.full_accuracy - 1e-9


def test_calibration_leaves_the_model_as_it_was(data) -> None:
    """Calibrating exits measures the model; it must not change it: batch norms (here in a
    depthwise-conv mixer) stay in eval mode while images are timed one by one, so the exported
    weights score what the trial recorded."""
    arch = ArchConfig(
        stages=(StageConfig(2, 32, 2, 2.0, "dwconv"),),
        exits=(1,),
        img_size=16,
        num_classes=4,
    )
    model = LightViT(arch)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    train_model(model, data, TrainConfig(epochs=2, device="cpu"), seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    accuracy = evaluate(model, data)
    calibrate_exits(model, data, max_drop=0.02, measure_images=10)
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert evaluate(model, data) == accuracy


def test_a_search_records_the_exits_of_a_trial(tmp_path) -> None:
    space = get_space("survey")
    sampler = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    while True:  # a small survey architecture with an exit
        trial = sampler.ask()
        arch = space.sample(trial, num_classes=4, img_size=16)
        sampler.tell(trial, 0.0)
        if arch.exits and arch.depth <= 4 and max(s.dim for s in arch.stages) <= 64:
            break
    budget = "budget: {max_params: 10000000, max_latency_ms: 1000.0}"
    config = load_config(write_config(tmp_path, space="space: survey", budget=budget))
    config = config.replace_study(n_trials=1)
    study = create_or_resume_study(config)
    study.enqueue_trial(trial.params)
    run = run_search(config, study=study)
    done = run.study.trials[0]
    assert done.user_attrs["arch"]["exits"] == list(arch.exits)
    report = done.user_attrs["exits"]
    assert len(report["share"]) == len(arch.exits) + 1
    assert report["expected_latency_ms"] <= max(report["path_latency_ms"]) + 1e-9


DYNAMIC = ArchConfig(
    stages=(StageConfig(1, 32, 2, 2.0, "mhsa"), StageConfig(1, 32, 2, 2.0, "dwconv")),
    img_size=16,
    patch_size=2,
    pos_enc="learned",
    dynamic_resolution=8,
    num_classes=4,
)


def test_dynamic_resolution_answers_from_the_low_pass_only_when_it_is_confident() -> None:
    """The first pass runs the whole model on the image resized to `dynamic_resolution`; a
    confident one answers alone (exit -1, half the side: a quarter of the tokens), the others
    run the full resolution too, whose head reuses the first pass's features; at the start the
    reuse is zero, so the final head equals the full-resolution pass alone."""
    model = LightViT(DYNAMIC).eval()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        low = model.low_resolution_features(x)
        logits, k = model.forward_dynamic(x, [], -1.0)
        assert k == -1 and torch.allclose(logits, model.head(low))
        assert _blocks_run(model, lambda: model.forward_dynamic(x, [], -1.0)) == 2
        logits, k = model.forward_dynamic(x, [], 2.0)
        assert k == 0 and torch.allclose(logits, model(x))
        assert _blocks_run(model, lambda: model.forward_dynamic(x, [], 2.0)) == 4
        first, final = model.forward_passes(x)
        assert torch.allclose(first, model.head(low)) and torch.allclose(final, model(x))
        from nas.exits import _Pass

        alone = _Pass(model, "full")(x)  # the full resolution without the first pass
        assert torch.allclose(alone, final)  # the reuse starts at zero
    with pytest.raises(ValueError, match="dynamic_resolution 6 must be a multiple of patch_size"):
        ArchConfig(stages=DYNAMIC.stages, img_size=16, patch_size=4, dynamic_resolution=6)
    with pytest.raises(ValueError, match="window 4 must divide the 4x4 grid"):
        ArchConfig(
            stages=(StageConfig(1, 32, 2, 2.0, "window", window=4),),
            img_size=32,
            patch_size=4,
            dynamic_resolution=16,
        )


def test_dynamic_resolution_trains_both_passes_and_is_calibrated_for_the_accuracy_drop(
    data,
) -> None:
    """Training learns the first pass beside the final head (and the reuse), and the
    calibration keeps the validation accuracy within the drop, with an expected latency
    between the first pass's and both passes'."""
    from nas.exits import calibrate_resolution

    torch.manual_seed(0)
    model = LightViT(DYNAMIC)
    recipe = TrainConfig(epochs=3, batch_size=32, lr=3e-3, threads=1, device="cpu")
    train_model(model, data, recipe, seed=0)
    assert model.reuse.weight.abs().sum() > 0
    report = calibrate_resolution(model, data, max_drop=0.05, measure_images=20)
    assert report.side == 8 and 0 <= report.second_pass_share <= 1
    assert report.low_accuracy > 0.4 and report.full_accuracy > 0.4  # 4 classes: chance 0.25
    assert report.dynamic_accuracy >= report.full_accuracy - 0.05 - 1e-9
    assert report.threshold is None or 0.3 <= report.threshold <= 1.0
    lo, hi = sorted((report.low_latency_ms, report.both_latency_ms))
    assert (
        lo <= report.expected_latency_ms <= hi and report.low_latency_ms < report.both_latency_ms
    )
    assert report.measured_dynamic_ms > 0
