"""Export details: re-parameterisable blocks fused at export (or kept), reloading through timm."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch

from nas.export import data_config_of, fuse, save_timm_folder
from search_spaces.arch import ArchConfig, StageConfig
from search_spaces.model import LightViT

REP = ArchConfig(stages=(StageConfig(1, 16, 2, 2.0),), stem="repconv", img_size=16, num_classes=4)


def _trained_like(model: LightViT) -> LightViT:
    """Batch-norm statistics away from their defaults, as after training."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, 16, 16) * 2 + 0.5)
    return model.eval()


@pytest.mark.slow
def test_fusing_keeps_the_logits_and_the_fused_folder_reloads_through_timm(tmp_path) -> None:
    model = _trained_like(LightViT(REP))
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        before = model(x)
    change = fuse(model)
    assert change is not None and change < 1e-4 and model.reparameterized
    assert not any("bn3" in k for k in model.state_dict())
    out = tmp_path / "fused"
    save_timm_folder(
        model, str(out), data_config=data_config_of((3, 16, 16), {}), card="#", provenance={}
    )
    assert json.loads((out / "config.json").read_text())["model_args"]["reparameterized"]
    torch.save(x, tmp_path / "x.pt")
    torch.save(before, tmp_path / "before.pt")
    code = f"""
import search_spaces, timm, torch
m = timm.create_model("local-dir:{out}", pretrained=True).eval()
x, before = torch.load("{tmp_path}/x.pt"), torch.load("{tmp_path}/before.pt")
assert m.reparameterized and m.stem.layers[0].fused is not None
assert (m(x) - before).abs().max().item() < 1e-4
"""
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("mixer", "pos_enc", "options"),
    [
        ("shift", "learned", {"shift_div": 8}),
        ("lisa", "cpe", {}),
        ("mobileformer", "posmlp", {"global_tokens": 3}),
        ("mhsa", "unitary", {}),
    ],
)
def test_the_survey_blocks_added_last_export_reload_through_timm_and_run_in_onnx(
    tmp_path, mixer: str, pos_enc: str, options: dict
) -> None:
    """Each block of issue 21 (and ShiftViT's shift) in a small model: written as a timm folder
    (reloaded and compared by `save_timm_folder`), its schema-4 fields kept in arch.json, and
    its ONNX export within 1e-4 of torch (`write_onnx`)."""
    from nas.export import read_arch, write_onnx

    arch = ArchConfig(
        stages=(StageConfig(2, 16, 2, 2.0, mixer, **options),),
        pos_enc=pos_enc,
        img_size=16,
        num_classes=4,
    )
    model = _trained_like(LightViT(arch))
    out = tmp_path / mixer
    diff = save_timm_folder(
        model,
        str(out),
        data_config=data_config_of((3, 16, 16), {}),
        card="#",
        provenance={},
        extra=lambda folder: write_onnx(model, folder),
    )
    assert diff < 1e-5 and read_arch(str(out)) == arch
    assert (out / "model.onnx").is_file()


def test_an_unfused_export_keeps_the_branches(tmp_path) -> None:
    model = _trained_like(LightViT(REP))
    out = tmp_path / "unfused"
    save_timm_folder(
        model, str(out), data_config=data_config_of((3, 16, 16), {}), card="#", provenance={}
    )
    config = json.loads((out / "config.json").read_text())
    assert "reparameterized" not in config["model_args"]
    assert fuse(LightViT(ArchConfig(stages=REP.stages, img_size=16))) is None  # nothing to fuse


@pytest.mark.slow
def test_export_with_onnx_matches_torch_and_records_its_latency(finished_study, tmp_path) -> None:
    import onnxruntime as ort
    from optuna.trial import TrialState

    from nas.cli import main

    config, study = finished_study
    number = study.get_trials(states=(TrialState.COMPLETE,))[0].number
    out = tmp_path / "with-onnx"
    args = ["export", "--storage", config.study.storage_url, "--trial", str(number)]
    assert main([*args, "--out", str(out), "--onnx"]) == 0
    record = json.loads((out / "config.json").read_text())["lightweight_vit"]["onnx"]
    card = (out / "README.md").read_text()
    assert "## Papers of the blocks it uses" in card and "arXiv" in card
    assert "`model.onnx` (opset 18" in card and "ONNX Runtime matches torch" in card
    assert study.user_attrs["exports"][str(number)] == str(out)  # the report stars it
    assert record["max_abs_diff_vs_torch"] < 1e-4 and record["latency_ms"] > 0
    assert record["latency_conditions"]["device"] == "onnxruntime"
    import timm

    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(1, *record["input_shape"][1:])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        assert (torch.from_numpy(got) - model(x)).abs().max().item() < 1e-4


def _export_folder(tmp_path) -> object:
    out = tmp_path / "ok"
    save_timm_folder(
        LightViT(REP).eval(),
        str(out),
        data_config=data_config_of((3, 16, 16), {}),
        card="#",
        provenance={},
    )
    return out


def test_loading_refuses_pickles_and_configs_that_do_not_validate(tmp_path) -> None:
    import shutil

    import pytest

    from nas.errors import UserError
    from nas.export import load_export

    good = _export_folder(tmp_path)
    assert load_export(str(good)).arch == REP
    cases = {
        "pickle": ("pytorch_model.bin", None, "holds pickle weights"),
        "badjson": ("config.json", "{not json", "is not valid JSON"),
        "badarch": ("config.json", "DEPTH", "model_args.arch.stages[0].depth"),
    }
    for name, (file, text, message) in cases.items():
        folder = tmp_path / name
        shutil.copytree(good, folder)
        if text is None:
            (folder / file).write_bytes(b"\x80\x04anything")
        elif text == "DEPTH":
            config = json.loads((folder / file).read_text())
            config["model_args"]["arch"]["stages"][0]["depth"] = "two"
            (folder / file).write_text(json.dumps(config))
        else:
            (folder / file).write_text(text)
        with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
            load_export(str(folder))
    (tmp_path / "noweights").mkdir()
    shutil.copy(good / "config.json", tmp_path / "noweights")
    with pytest.raises(UserError, match="no model.safetensors"):
        load_export(str(tmp_path / "noweights"))


def test_named_presets_are_timm_entrypoints() -> None:
    import timm

    from search_spaces import PRESETS

    assert set(PRESETS) <= set(timm.list_models("lightvit_*"))
    for name, arch in PRESETS.items():
        model = timm.create_model(name, num_classes=5).eval()
        assert model.arch == dataclasses.replace(arch, num_classes=5)
        with torch.no_grad():
            assert model(torch.randn(1, 3, arch.img_size, arch.img_size)).shape == (1, 5)
        assert model.pretrained_cfg["architecture"] == name
