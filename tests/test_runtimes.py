"""The shipping runtimes: ExecuTorch with XNNPACK (float32 and PT2E int8) and ONNX Runtime int8,
as latency devices and in a search."""

from __future__ import annotations

import functools
import os

import pytest
import torch
from torch import nn

from nas import cost, runtimes
from nas.config import LatencyConfig, load_config
from nas.records import Status, TrialRecord
from nas.study import run_search
from search_spaces.blocks.tokens import descending
from search_spaces.model import LightViT
from search_spaces.spaces import get_space
from tests.conftest import write_config

pytest.importorskip("executorch.runtime", reason="the executorch extra is part of dev")


class _ConvTwice(nn.Module):
    """One convolution applied at two resolutions, as the two passes of a dynamically
    resized model apply every block: its weight is read twice."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 4, stride=4)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        small = nn.functional.interpolate(x, size=(8, 8), mode="bilinear", align_corners=False)
        pooled = self.conv(x).mean((2, 3)) + self.conv(small).mean((2, 3))
        return self.head(pooled)


class _Sorts(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).sort(dim=1).values[:, :4]


def _survey_model(index: int = 0, **changes) -> tuple[LightViT, torch.Tensor]:
    import dataclasses

    arch = get_space("survey").sample_many(index + 1, seed=5, num_classes=10, img_size=32)[index]
    arch = dataclasses.replace(arch, **changes)
    torch.manual_seed(0)
    model = LightViT(arch).eval()
    return model, torch.randn(1, 3, arch.img_size, arch.img_size)


@pytest.mark.slow
def test_executorch_float32_computes_what_torch_computes_and_reports_its_delegation():
    # a survey architecture with token pruning, conv stem and attention (seed 5, draw 5)
    model, x = _survey_model(5)
    lowered = runtimes.lower_executorch(model, x)
    run = runtimes.load_executorch(lowered.buffer, threads=1)
    with torch.no_grad():
        expected = model(x)
    assert torch.allclose(run((x,))[0], expected, atol=1e-4)
    d = lowered.delegation
    assert d.delegated > 0 and d.subgraphs > 0
    assert d.fallback == sum(d.fallback_ops.values())
    assert "getitem" not in d.fallback_ops


@pytest.mark.slow
def test_token_order_is_argsorts_and_runs_where_sort_has_no_kernel():
    scores = torch.randn(3, 50)
    assert torch.equal(descending(scores, 1), scores.argsort(dim=1, descending=True))
    with pytest.raises(runtimes.NotDeployable, match=r"no kernel .*aten::sort\.values"):
        runtimes.lower_executorch(_Sorts(), torch.randn(1, 3, 4, 4))


@pytest.mark.slow
def test_int8_program_matches_its_quantised_torch_graph_even_with_shared_weights():
    torch.manual_seed(0)
    model, x = _ConvTwice().eval(), torch.randn(1, 3, 16, 16)
    calibration = runtimes.random_calibration(x, n=8)
    quantised = runtimes.quantize_pt2e(model, x, calibration)
    lowered = runtimes.lower_executorch(model, x, "int8", calibration, "8 random inputs")
    out = runtimes.load_executorch(lowered.buffer)((x,))[0]
    with torch.no_grad():
        reference, fp32 = quantised(x), model(x)
    # XNNPACK's int8 kernels compute the graph's quantise/dequantise arithmetic
    assert (out - reference).abs().max() < 0.05 * fp32.abs().max()
    assert lowered.dtype == "int8" and lowered.calibration == "8 random inputs"
    # the weight was copied per use: two convolution weights in the quantised graph
    shape = tuple(model.conv.weight.shape)
    weights = [
        n
        for n in quantised.graph.nodes
        if n.op == "get_attr"
        and tuple(functools.reduce(getattr, n.target.split("."), quantised).shape) == shape
    ]
    assert len(weights) == 2


@pytest.mark.slow
def test_executorch_latency_carries_the_runtime_and_its_conditions():
    model, x = _survey_model(7)
    for dtype in ("float32", "int8"):
        result = cost.measure_latency(
            model, tuple(x.shape[1:]), device="executorch", dtype=dtype, runs=5, max_seconds=0.3
        )
        c = result.conditions
        assert result.median_ms > 0
        assert c["device"] == "executorch" and c["dtype"] == dtype
        assert c["mode"] == "ExecuTorch runtime, XNNPACK delegate"
        assert c["executorch"] and c["delegation"]["delegated"] > 0
        assert ("calibration" in c) == (dtype == "int8")


@pytest.mark.slow
def test_onnxruntime_measures_int8_too():
    model, x = _survey_model(4)
    result = cost.measure_latency(
        model, tuple(x.shape[1:]), device="onnxruntime", dtype="int8", runs=5, max_seconds=0.3
    )
    assert result.median_ms > 0 and result.conditions["calibration"]


@pytest.mark.parametrize(
    ("device", "dtype", "message"),
    [
        ("cpu", "int8", "int8 is a quantised program: measure it on executorch or onnxruntime"),
        ("executorch", "float16", "the executorch device measures float32 or int8"),
    ],
)
def test_int8_needs_a_runtime_that_quantises(device, dtype, message):
    with pytest.raises(ValueError, match=message):
        LatencyConfig(device=device, dtype=dtype)
    with pytest.raises(ValueError, match=message):
        cost.check_device(device, dtype)


@pytest.mark.slow
def test_a_search_on_executorch_rejects_what_it_cannot_lower_and_goes_on(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = runtimes._missing_kernels

    def second_lacks_a_kernel(gm):
        calls["n"] += 1
        return {"aten::sort.values"} if calls["n"] == 3 else real(gm)  # 1: the reference

    monkeypatch.setattr(runtimes, "_missing_kernels", second_lacks_a_kernel)
    path = write_config(
        tmp_path,
        latency="latency: {device: executorch, threads: 1, warmup: 1, runs: 5, max_seconds: 0.2}",
        budget="budget: {max_params: 2000000, max_latency_ms: 500.0}",
    )
    config = load_config(path).replace_study(n_trials=3)
    run = run_search(config)
    records = [TrialRecord.of(t) for t in run.study.trials]
    rejected = [r for r in records if r.status == Status.INFEASIBLE]
    assert len(rejected) == 1
    assert "no kernel in this runtime for aten::sort.values" in rejected[0].reason
    assert rejected[0].costs["not_deployable"]["runtime"] == "ExecuTorch"
    trained = [r for r in records if r.status == Status.TRAINED]
    assert len(trained) == 2
    assert all(r.costs["latency"]["conditions"]["device"] == "executorch" for r in trained)


@pytest.mark.slow
def test_export_writes_a_pte_that_the_runtime_runs_as_torch_does(finished_study, tmp_path):
    import json

    import timm
    from optuna.trial import TrialState

    from nas.cli import main

    config, study = finished_study
    number = study.get_trials(states=(TrialState.COMPLETE,))[0].number
    args = ["export", "--storage", config.study.storage_url, "--trial", str(number)]
    out = tmp_path / "pte"
    assert main([*args, "--out", str(out), "--executorch"]) == 0
    record = json.loads((out / "config.json").read_text())["lightweight_vit"]["executorch"]
    assert record["dtype"] == "float32" and record["max_abs_diff_vs_torch"] < 1e-4
    assert record["latency_conditions"]["device"] == "executorch"
    assert "`model.pte` (ExecuTorch" in (out / "README.md").read_text()
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    run = runtimes.load_executorch((out / "model.pte").read_bytes())
    x = torch.randn(1, *record["input_shape"][1:])
    with torch.no_grad():
        assert torch.allclose(run((x,))[0], model(x), atol=1e-4)

    out8 = tmp_path / "pte8"
    assert main([*args, "--out", str(out8), "--executorch", "--int8"]) == 0
    int8 = json.loads((out8 / "config.json").read_text())["lightweight_vit"]["executorch"]
    assert int8["dtype"] == "int8" and int8["val_images"] > 0
    assert 0 <= int8["top1_agreement"] <= 1 and int8["calibration"].endswith("training images")
    assert int8["below_agreement"] == (int8["top1_agreement"] < 0.99)
    assert "top-1 agreement with torch" in (out8 / "README.md").read_text()


def test_int8_export_without_executorch_is_refused_in_one_line(finished_study, tmp_path, capsys):
    from nas.cli import main

    config, _ = finished_study
    args = ["export", "--storage", config.study.storage_url, "--trial", "0", "--int8"]
    assert main([*args, "--out", str(tmp_path / "x")]) != 0
    assert "--int8 quantises the ExecuTorch program: add --executorch" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_a_search_can_maximise_int8_accuracy_under_a_drop_budget(tmp_path):
    study = f"""study:
      name: int8
      storage: sqlite:///{tmp_path}/study.db
      artifacts: {tmp_path}/artifacts
      n_trials: 3
      seed: 0
      mode: multi
      objectives: [accuracy_int8, latency_ms]"""
    path = write_config(
        tmp_path,
        "int8",
        study=study,
        budget="budget: {max_params: 2000000, max_latency_ms: 500.0, max_int8_drop: 0.02}",
    )
    config = load_config(path)
    assert config.needs_int8
    run = run_search(config)
    trained = [TrialRecord.of(t) for t in run.study.trials]
    trained = [r for r in trained if r.status == Status.TRAINED]
    assert trained
    for r in trained:
        int8 = r.attrs["int8"]
        assert r.values[0] == pytest.approx(int8["accuracy"], abs=1e-5)  # the objective
        assert int8["accuracy_float"] == pytest.approx(r.curve[-1], abs=1e-5)
        assert int8["drop"] == pytest.approx(int8["accuracy_float"] - int8["accuracy"], abs=2e-5)
        assert int8["calibration"] == "32 training images"
        trial = run.study.trials[r.number]
        assert trial.constraints["int8_drop"] == pytest.approx(int8["drop"] - 0.02, abs=2e-5)
        assert int8["within_budget"] == (trial.constraints["int8_drop"] <= 0)
    from nas.report import pareto_front

    front = pareto_front(run.study)
    assert all(r.attrs["int8"]["within_budget"] for r in front)  # over the drop: off the front


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("budget: {max_int8_drop: 1.5}", "budget.max_int8_drop is a fraction of accuracy"),
        ("study: {name: x, mode: multi, objectives: [accuracy_int8]}", "plus one or more"),
        (
            "study: {name: x, mode: multi, objectives: [latency_ms, accuracy_int8]}",
            "starts with accuracy \\(or accuracy_int8\\)",
        ),
    ],
)
def test_int8_settings_are_checked_when_the_config_loads(tmp_path, section, message):
    from nas.config import ConfigError

    key = section.split(":")[0]
    path = write_config(tmp_path, "x", **{key: section})
    with pytest.raises((ConfigError, ValueError), match=message):
        load_config(path)


def test_build_lut_refuses_a_precision_its_device_cannot_measure(capsys):
    from nas.cli import main

    args = ["latency", "build-lut", "--space", "tiny", "--img-size", "16", "--dtype", "int8"]
    assert main([*args, "--out", "/tmp/never-written.json"]) == 2
    err = capsys.readouterr().err
    assert "int8 is a quantised program" in err and "pass --device" in err
    assert not os.path.exists("/tmp/never-written.json")


@pytest.mark.slow
def test_a_unit_alone_runs_on_executorch_as_it_computes_in_torch():
    """The unit build-lut times on a runtime is the torch unit: a Mobile-Former block (two
    tensor inputs, the grid side bound) lowered alone computes what it computes in torch."""
    from nas.lut import _Bound, _unit_module, measure_unit, space_units

    found = space_units(get_space("survey"), 32, 3, 10)
    kind, cfg = next(
        u for u in found.values() if u[0] == "block" and u[1]["mixer"] == "mobileformer"
    )
    torch.manual_seed(0)
    module, args = _unit_module(kind, cfg, 1, torch.device("cpu"))
    bound = _Bound(module, args).eval()
    inputs = tuple(a for a in args if isinstance(a, torch.Tensor))
    assert len(inputs) == 2  # the tokens and the global tokens; the grid is bound
    lowered = runtimes.lower_executorch(bound, inputs)
    outputs = runtimes.load_executorch(lowered.buffer)(inputs)
    with torch.no_grad():
        expected = bound(*inputs)
    assert len(outputs) == len(expected)
    for got, want in zip(outputs, expected, strict=True):
        assert torch.allclose(got, want, atol=1e-4)
    for dtype in ("float32", "int8"):
        ms = measure_unit(
            kind, cfg, device="executorch", threads=1, batch_size=1, dtype=dtype, runs=3
        )
        assert 0 < ms < 1_000


@pytest.mark.slow
def test_an_executorch_int8_table_from_sampled_units_predicts_and_refuses(tmp_path, capsys):
    """`build-lut --device executorch --dtype int8 --units N`: N units measured as int8
    programs, the rest predicted, the table refused for float32 or eager searches."""
    from nas.cli import main
    from nas.lut import LatencyTable, LutError

    out = tmp_path / "et-int8.json"
    args = ["latency", "build-lut", "--space", "tiny", "--img-size", "16", "--num-classes", "4"]
    args += ["--device", "executorch", "--dtype", "int8", "--units", "40", "--calibration", "3"]
    assert main([*args, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "40 of 236 units measured, the rest predicted" in text
    table = LatencyTable.load(str(out))
    assert table.device == "executorch" and table.dtype == "int8"
    assert table.meta["measured_units"] == 40 and table.meta["units"] == 236
    assert len(table.entries) + len(table.not_deployable) == 236
    assert table.meta["unit_predictor"]["trained_on"] == 40 - len(table.not_deployable)
    assert table.meta["executorch"] == runtimes.executorch_version()
    for arch in get_space("tiny").sample_many(10, seed=3, num_classes=4, img_size=16):
        assert table.predict(arch) > 0
    wanted = dict(space="tiny", space_version=1, device="executorch", threads=1)
    table.check(**wanted, dtype="int8")
    with pytest.raises(LutError, match=r"dtype int8 \(needed float32\)") as err:
        table.check(**wanted, dtype="float32")
    assert "--device executorch --threads 1" in str(err.value)
    with pytest.raises(LutError, match="dtype int8"):
        table.check(**{**wanted, "device": "cpu"})


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mixer", "attn_pos"), [("window", "rel_bias"), ("lisa", "none"), ("mhsa", "rel_bias")]
)
def test_blocks_with_index_tables_lower_to_int8(mixer, attn_pos):
    """Relative-position lookups are constant buffers: computed in the forward pass, PT2E
    quantised their integer arithmetic (rel_bias: IndexError) or could not export the lifted
    constant again (lisa)."""
    from nas.lut import _Bound, _unit_module, space_units

    found = space_units(get_space("survey"), 32, 3, 10)
    kind, cfg = min(
        (
            u
            for u in found.values()
            if u[0] == "block" and u[1]["mixer"] == mixer and u[1]["attn_pos"] == attn_pos
        ),
        key=lambda u: u[1]["tokens"] * u[1]["dim"],  # the smallest: quickest to lower
    )
    module, args = _unit_module(kind, cfg, 1, torch.device("cpu"))
    inputs = tuple(a for a in args if isinstance(a, torch.Tensor))
    lowered = runtimes.lower_executorch(_Bound(module, args), inputs, "int8")
    assert lowered.delegation.delegated > 0
