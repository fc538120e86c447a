"""Latency: one measuring function, lookup tables that match the model, refuse the wrong
conditions, and feed the search; the `lvit latency` commands."""

from __future__ import annotations

import dataclasses
import json

import optuna
import pytest
import torch

from nas.cli import main
from nas.config import load_config
from nas.cost import time_calls
from nas.lut import LatencyTable, LutError, measure_unit, space_units, unit_key, units
from nas.study import run_search
from search_spaces.arch import STAGE_POS_ENCS, ArchConfig, StageConfig
from search_spaces.model import Block, LightViT, Stage, Transition
from search_spaces.spaces import get_space
from tests.conftest import write_config


def _sampled(space: str, n: int, img_size: int, seed: int = 0) -> list[ArchConfig]:
    return get_space(space).sample_many(n, seed=seed, num_classes=4, img_size=img_size)


def _traced_units(arch: ArchConfig) -> list[tuple[str, int, bool]]:
    """(kind, tokens in, sized) of every block and transition the model really runs."""
    model = LightViT(arch).eval()
    seen: list[tuple[str, int, bool]] = []

    def hook(module, args):
        kind = "block" if isinstance(module, Block) else "transition"
        size = args[2] if len(args) > 2 else None
        seen.append((kind, args[0].shape[1], size is not None))

    for m in model.modules():
        if isinstance(m, (Block, Transition)):
            m.register_forward_pre_hook(hook)
    with torch.no_grad():
        model(torch.randn(1, 3, arch.img_size, arch.img_size))
    assert sum(isinstance(m, Stage) for m in model.modules()) == len(arch.stages)
    return seen


def test_units_follow_the_model_forward() -> None:
    dynamic = 0
    for arch in _sampled("survey", 40, 32):
        listed = [
            (kind, cfg.get("tokens", cfg.get("grid", 0) ** 2), cfg.get("sized", False))
            for kind, cfg in units(arch)
            if kind in ("block", "transition")
        ]
        assert listed == _traced_units(arch), arch.describe()
        kinds = [kind for kind, _ in units(arch)]
        passes = 2 if arch.dynamic_resolution else 1  # the first pass, then the full one
        assert kinds[0] == "stem" and kinds[-1] == "head"
        assert kinds.count("stem") == passes and kinds.count("reuse") == passes - 1
        stage_pos = arch.pos_enc in STAGE_POS_ENCS  # cpe, posmlp: after each stage's first block
        assert kinds.count("cpe") == (len(arch.stages) * passes if stage_pos else 0)
        dynamic += passes - 1
    assert dynamic >= 10  # the survey space draws dynamic resolution


def test_the_first_pass_of_dynamic_resolution_is_timed_with_its_reuse() -> None:
    """A dynamic-resolution architecture's units are both passes (the budget's worst case,
    what `LightViT.forward` runs): the stem at the low side first, the reuse unit between."""
    stage = StageConfig(depth=1, dim=32, heads=2, mixer="window", window=2)
    arch = ArchConfig(stages=(stage,), patch_size=4, img_size=32, dynamic_resolution=16)
    listed = units(arch)
    assert [(k, c.get("img")) for k, c in listed if k in ("stem", "reuse")] == [
        ("stem", 16),
        ("reuse", 32),
        ("stem", 32),
    ]
    kind, cfg = next(u for u in listed if u[0] == "reuse")
    assert cfg["low"] == 16 and cfg["tokens"] == 16  # the low pass's 4x4 tokens, pooled
    assert measure_unit(kind, cfg, device="cpu", threads=1, batch_size=1, runs=3) > 0
    plain = units(dataclasses.replace(arch, dynamic_resolution=0))
    assert listed[-len(plain) :] == plain


@pytest.mark.slow
def test_the_space_enumeration_covers_every_sampled_architecture() -> None:
    found = space_units(get_space("survey"), 16, 3, 4)
    for arch in _sampled("survey", 300, 16, seed=5):
        for kind, cfg in units(arch):
            assert unit_key(kind, cfg) in found, (kind, cfg)
        with_head = dataclasses.replace(arch, distill_head=True)  # a search may add one
        kind, cfg = units(with_head)[-1]
        assert cfg["distill"] and unit_key(kind, cfg) in found


def test_a_built_table_predicts_every_architecture_of_its_space(tiny_table) -> None:
    table, path = tiny_table
    assert len(table.entries) == len(space_units(get_space("tiny"), 16, 3, 4))
    loaded = LatencyTable.load(str(path))
    assert loaded.entries == table.entries and loaded.calibration == table.calibration
    assert loaded.meta["hardware"] and loaded.meta["torch"] == torch.__version__
    for arch in _sampled("tiny", 50, 16):
        assert loaded.predict(arch) > 0
        assert loaded.predict(dataclasses.replace(arch, distill_head=True)) > 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"space_version": 99}, "space version 1 (needed 99)"),
        ({"device": "cuda"}, "device cpu (needed cuda)"),
        ({"threads": 2}, "threads 1 (needed 2)"),
        ({"img_size": 32}, "data size 16 (needed 32)"),
    ],
)
def test_a_table_refuses_other_conditions_and_says_how_to_build_one(
    tiny_table, change, message
) -> None:
    table, _ = tiny_table
    wanted = {
        "space": "tiny",
        "space_version": 1,
        "device": "cpu",
        "threads": 1,
        "img_size": 16,
        "num_classes": 4,
        **change,
    }
    with pytest.raises(LutError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        table.check(**wanted, path="t.json")
    assert "lvit latency build-lut --space tiny" in str(err.value)


def test_a_search_with_a_lookup_table_records_predicted_and_measured(tiny_table, tmp_path):
    _, path = tiny_table
    budget = (
        f"budget: {{max_params: 60000, max_latency_ms: 50.0, latency_source: {{lut: {path}}}}}"
    )
    config = load_config(write_config(tmp_path, budget=budget)).replace_study(n_trials=3)
    run = run_search(config)
    for t in run.study.get_trials(
        states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    ):
        costs = t.user_attrs["costs"]
        assert costs["latency_source"] == "lut"
        assert costs["latency_ms"] == costs["latency_predicted_ms"] > 0
        assert costs["latency_measured_ms"] > 0 and costs["latency_lut"]["path"] == str(path)

    (tmp_path / "q").mkdir()
    quiet = write_config(
        tmp_path / "q", budget=budget, latency="latency: {threads: 1, measure: false}"
    )
    run = run_search(load_config(quiet).replace_study(n_trials=2, name="q"))
    for t in run.study.trials:
        assert "latency_measured_ms" not in t.user_attrs["costs"]


def test_a_search_refuses_a_table_for_other_threads(tiny_table, tmp_path, capsys) -> None:
    _, path = tiny_table
    budget = f"budget: {{max_latency_ms: 5.0, latency_source: {{lut: {path}}}}}"
    config = write_config(tmp_path, budget=budget, latency="latency: {threads: 2}")
    assert main(["search", str(config)]) == 2
    err = capsys.readouterr().err
    assert "threads 1 (needed 2)" in err and "--threads 2" in err


def test_time_calls_repeats_until_the_spread_is_small_or_time_runs_out() -> None:
    steady = time_calls(
        lambda: None, warmup=0, runs=10, max_seconds=5.0, target_spread=0.05, timer=lambda fn: 1.0
    )
    assert len(steady) == 10  # one round: spread 0
    noisy_values = iter([1.0, 3.0] * 10_000)
    noisy = time_calls(
        lambda: None,
        warmup=0,
        runs=10,
        max_seconds=0.05,
        target_spread=0.05,
        timer=lambda fn: next(noisy_values),
    )
    assert len(noisy) > 10  # kept going until the time cap


@pytest.mark.slow
def test_latency_measure_command_on_json_and_export(tmp_path, capsys) -> None:
    arch = ArchConfig(stages=(StageConfig(1, 16, 2, 2.0),), img_size=16, patch_size=4)
    path = tmp_path / "arch.json"
    path.write_text(arch.to_json())
    assert main(["latency", "measure", str(path), "--runs", "5", "--max-seconds", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "ms median (quartiles" in out and "spread" in out
    assert "threads: 1" in out and "batch_size: 1" in out and "device: cpu" in out
    assert (
        main(
            [
                "latency",
                "measure",
                str(path),
                "--device",
                "onnxruntime",
                "--runs",
                "5",
                "--max-seconds",
                "0.2",
            ]
        )
        == 0
    )
    assert "onnxruntime: " in capsys.readouterr().out
    assert main(["latency", "measure", str(tmp_path / "none.json")]) == 2
    assert "not found" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["latency", "measure", str(path), "--device", "cuda"]) == 2
        assert "needs a CUDA GPU" in capsys.readouterr().err


def test_latency_measure_on_an_export_folder(finished_study, tmp_path, capsys) -> None:
    from nas.export import export_trial

    _, study = finished_study
    trained = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))[0]
    export_trial(study, trained.number, str(tmp_path / "e"))
    assert (
        main(["latency", "measure", str(tmp_path / "e"), "--runs", "5", "--max-seconds", "0.2"])
        == 0
    )
    assert trained.user_attrs["arch_line"] in capsys.readouterr().out


@pytest.mark.slow
def test_build_and_validate_commands(tiny_table, tmp_path, capsys) -> None:
    _, out = tiny_table
    table = json.loads(out.read_text())
    assert table["device"] == "cpu" and table["threads"] == 1 and table["space"] == "tiny"
    assert table["calibration"]["n"] == 3 and table["meta"]["units"] == len(table["entries"])
    plot = tmp_path / "v.png"
    assert main(["latency", "validate", "--lut", str(out), "--n", "6", "--plot", str(plot)]) == 0
    text = capsys.readouterr().out
    assert "6 architectures: Kendall's tau" in text and "within +-10%" in text
    png = plot
    assert png.read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "bad.json").write_text("{}")
    assert main(["latency", "validate", "--lut", str(tmp_path / "bad.json")]) == 2
    assert "is not a latency table" in capsys.readouterr().err


def test_a_sample_of_units_holds_every_group_and_is_seeded() -> None:
    from nas.lut import UNITS_PER_GROUP, sample_units, unit_group

    items = sorted(space_units(get_space("survey"), 32, 3, 10).items())
    groups = {unit_group(*u) for _, u in items}
    sample = sample_units(items, 200, seed=1)
    assert len(sample) == 200 and len({k for k, _ in sample}) == 200
    counts = {g: sum(unit_group(*u) == g for _, u in sample) for g in groups}
    assert min(counts.values()) >= UNITS_PER_GROUP  # the rarest (pos: 72 units) too
    assert sample == sample_units(items, 200, seed=1) != sample_units(items, 200, seed=2)
    assert sample_units(items, len(items) + 5) == items
    with pytest.raises(LutError, match="at least one measured unit"):
        sample_units(items, 0)


def test_the_unit_predictor_learns_how_cost_grows_with_size() -> None:
    """On a known law (MLP-like cost tokens x width^2 x ratio, attention-like tokens^2 x width
    for attention mixers, a per-kind constant), 600 units predict 2,000 others they never saw
    within 10% for most of them: what lets a runtime's table measure a sample."""
    import random

    from nas.lut import UnitPredictor

    items = sorted(space_units(get_space("survey"), 32, 3, 10).values(), key=str)
    random.Random(0).shuffle(items)

    def law(kind: str, cfg: dict) -> float:
        n = cfg.get("tokens") or (cfg.get("grid") or 4) ** 2
        d = cfg.get("dim") or cfg.get("out_dim") or 16
        ms = 0.01 + 2e-8 * n * d * d * cfg.get("mlp_ratio", 1.0)
        if cfg.get("mixer") == "mhsa":
            ms += 5e-7 * n * n * d
        return ms * {"block": 1.0, "head": 0.3, "stem": 2.0}.get(kind, 0.6)

    train, held = items[:600], items[600:2600]
    predictor = UnitPredictor(seed=0).fit(train, [law(*u) for u in train])
    predicted = predictor.predict(held)
    errors = [abs(p - law(*u)) / law(*u) for p, u in zip(predicted, held, strict=True)]
    assert sum(e <= 0.10 for e in errors) / len(errors) >= 0.8
    fit = predictor.cross_validate(train, [law(*u) for u in train])
    assert fit["trained_on"] == 600 and fit["cv_within_10"] >= 0.7


def test_a_table_refuses_an_architecture_holding_a_unit_its_runtime_refused(tiny_table) -> None:
    from nas.runtimes import NotDeployable

    table, _ = tiny_table
    arch = _sampled("tiny", 1, 16)[0]
    kind, cfg = units(arch)[1]
    refusing = dataclasses.replace(
        table, device="executorch", not_deployable={unit_key(kind, cfg): "no kernel for sort"}
    )
    assert refusing.refusal(arch) == f"its {kind} unit: no kernel for sort"
    with pytest.raises(NotDeployable, match="ExecuTorch cannot run this model: its"):
        refusing.predict(arch)
    assert table.refusal(arch) is None and table.predict(arch) > 0


def test_validation_leaves_out_what_the_runtime_refuses_and_counts_it(tiny_table) -> None:
    from nas.lut import validate

    table, _ = tiny_table
    sampled = _sampled("tiny", 6, 16, seed=2)
    kind, cfg = units(sampled[0])[0]  # the first architecture's stem
    refusing = dataclasses.replace(table, not_deployable={unit_key(kind, cfg): "no kernel"})
    refused = sum(refusing.refusal(a) is not None for a in sampled)
    result = validate(refusing, get_space("tiny"), 6, seed=2, measure_kwargs={"runs": 3})
    assert refused >= 1 and result.refused == refused
    assert len(result.measured) == len(result.archs) == 6 - refused
    assert sampled[0].describe() not in result.archs
    assert f"{refused} the runtime cannot run left out" in result.summary()


@pytest.mark.slow
def test_the_enumeration_at_32px_covers_first_passes_down_to_one_token() -> None:
    """A first pass at 16px whose last stage leaves one token ends in a reuse unit of its own;
    the walk once skipped it when a full pass had walked the same stages at the same grid."""
    found = space_units(get_space("survey"), 32, 3, 10)
    archs = get_space("survey").sample_many(200, seed=1, num_classes=10, img_size=32)
    one_token = 0
    for arch in archs:
        for kind, cfg in units(arch):
            assert unit_key(kind, cfg) in found, (kind, cfg, arch.describe())
            one_token += kind == "reuse" and cfg["tokens"] == 1
    assert one_token >= 1  # the sample holds the case
