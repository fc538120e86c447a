"""Export a trained trial as a timm model folder (timm's hub format).

The folder holds `config.json` (architecture `lightvit`, its `model_args.arch`, and a
pretrained config with the input size, mean, std and number of classes the model was trained
with), `model.safetensors`, `arch.json` and a short model card, `README.md`. It loads with
`timm.create_model("local-dir:DIR", pretrained=True)` after `import search_spaces`.

The weights come from the trial's artifact (never retrained). The folder is written beside its
destination and renamed into place only after a reload through timm has reproduced the logits.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import statistics
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
import timm
import torch
from optuna.artifacts import FileSystemArtifactStore, download_artifact
from optuna.trial import TrialState
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from timm.models import save_for_hf

from nas.data import Dataset, test_split_note
from nas.errors import UserError
from nas.records import TrialRecord
from search_spaces import register_with_timm
from search_spaces.arch import ATTENTION_MIXERS, ArchConfig, ArchConfigError

register_with_timm()  # `lightvit` and the presets, for timm.create_model

__all__ = [
    "ExportResult",
    "check_out_dir",
    "data_config_of",
    "export_trial",
    "deployment_form",
    "fuse",
    "write_executorch",
    "write_onnx",
    "load_trial_model",
    "load_export",
    "read_export",
    "read_arch",
    "ExportFolder",
    "EXPORT_FILES",
    "save_timm_folder",
    "export_subnet",
]

LOGIT_TOLERANCE = 1e-5
FUSE_TOLERANCE = 1e-4  # fusing conv-BN branches reorders float sums
ONNX_TOLERANCE = 1e-4
EXECUTORCH_TOLERANCE = 1e-4  # float32 program against torch
INT8_AGREEMENT = 0.99  # int8 program's top-1 agreement with torch on the validation split
CALIBRATION_IMAGES = 32  # training images an int8 export is calibrated on


@dataclass(frozen=True)
class ExportResult:
    out_dir: str
    trial: int
    max_abs_diff: float
    fused: float | None = None  # max abs logit change from fusing, when anything was fused
    onnx: dict[str, Any] | None = None  # the ONNX check and latency, with --onnx
    executorch: dict[str, Any] | None = None  # the .pte check and latency, with --executorch


def _find_trial(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    trials = study.get_trials(deepcopy=False)
    trained = [t.number for t in trials if TrialRecord.of(t).weights_artifact_id]
    match = [t for t in trials if t.number == number]
    hint = (
        f"trained trials: {', '.join(map(str, trained))}" if trained else "no trial is trained yet"
    )
    if not match:
        raise UserError(f"study '{study.study_name}' has no trial {number}; {hint}")
    trial = match[0]
    r = TrialRecord.of(trial)
    if r.attrs.get("table"):
        raise UserError(
            f"trial {number} was looked up in a tabular benchmark ({r.attrs['table'].get('name')}"
            f" {r.attrs['table'].get('dataset')}), not trained here: it has no weights to export"
        )
    if trial.state != TrialState.COMPLETE or r.weights_artifact_id is None:
        raise UserError(
            f"trial {number} is {r.status}{f' ({r.reason})' if r.reason else ''} and has no "
            f"trained weights; {hint}"
        )
    return trial


def load_trial_model(
    study: optuna.Study,
    number: int,
    artifact_dir: str | None = None,
) -> tuple[torch.nn.Module, optuna.trial.FrozenTrial]:
    """The trained model of a trial, rebuilt from its ArchConfig and weights artifact."""
    trial = _find_trial(study, number)
    artifact_dir = artifact_dir or study.user_attrs.get("artifact_dir")
    if not artifact_dir or not os.path.isdir(artifact_dir):
        raise UserError(
            f"artifact folder {artifact_dir!r} of study '{study.study_name}' is "
            "missing; pass the folder holding the trial weights with --artifacts"
        )
    record = TrialRecord.of(trial)
    arch = ArchConfig.from_dict(dict(record.arch))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.safetensors")
        try:
            download_artifact(
                artifact_store=FileSystemArtifactStore(artifact_dir),
                artifact_id=record.weights_artifact_id,
                file_path=path,
            )
        except Exception as e:  # noqa: BLE001 - the store raises several kinds for a lost file
            raise UserError(
                f"weights of trial {number} not found in {artifact_dir}: {e}"
            ) from None
        header, _ = _weights_header(path)
        try:
            state = load_file(path)
        except (SafetensorError, OSError) as e:
            raise UserError(
                f"the weights of trial {number} in {artifact_dir} are damaged: {e}"
            ) from None
    stored = header.get("arch")  # what the search saved the weights with
    if stored is not None and _arch_of(path, stored, "") != arch:
        raise UserError(
            f"the weights of trial {number} were saved for another architecture than the "
            "trial records: the artifact store was mixed up; pass the right one with --artifacts"
        )
    model = timm.create_model("lightvit", arch=arch.to_dict())
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        reason = str(e).splitlines()[0][:200]
        raise UserError(
            f"the weights of trial {number} do not fit its architecture: {reason}"
        ) from None
    return model.eval(), trial


def _model_card(trial: optuna.trial.FrozenTrial, study_name: str, arch: ArchConfig) -> str:
    r = TrialRecord.of(trial)
    costs, data, train = r.costs, r.attrs.get("data", {}), r.train
    rows = "\n".join(
        f"| {i + 1} | {s.mixer} | {s.depth} | {s.dim} | "
        f"{s.heads if s.mixer in ATTENTION_MIXERS else '-'} | {s.mlp_ratio:g} | "
        f"{'yes' if s.downsample else 'no'} |"
        for i, s in enumerate(arch.stages)
    )
    recipe = train.get("recipe") or (
        f"proxy training, {train.get('epochs')} epochs, AdamW, warm-up and cosine decay"
    )
    val_split = data.get("val_split", "carved from the training data")
    distilled = _distill_line(r.attrs.get("distill"))
    return f"""---
library_name: timm
tags: [image-classification, timm, lightweight-vit]
---
# LightViT from study `{study_name}`, trial {trial.number}

`{arch.describe()}`

Found by Lightweight-ViT's architecture search. Load it with:

```python
import search_spaces, timm  # importing search_spaces registers `lightvit` with timm
model = timm.create_model("local-dir:PATH_TO_THIS_FOLDER", pretrained=True).eval()
```

## Architecture
Stem `{arch.stem}` (stride {arch.patch_size}), position encoding `{arch.pos_enc}`, input
{arch.in_chans}x{arch.img_size}x{arch.img_size}, {arch.num_classes} classes.

| stage | mixer | depth | width | heads | MLP ratio | downsample |
| --- | --- | --- | --- | --- | --- | --- |
{rows}

## Costs
- parameters: {costs.get("params")}
- FLOPs: {costs.get("flops")} ({costs.get("flops_counting", "")})
- latency: {latency_line(costs)}

## Training
- data: {data.get("name")} ({data.get("train_size")} train / {data.get("val_size")} val images,
  input {data.get("input_size")}, mean {data.get("mean")}, std {data.get("std")},
  augmentation: {data.get("augment")})
- recipe: {recipe}; seed {r.seed}
- validation accuracy: {trial.values[0]:.4f} (the {data.get("val_size")}-image validation split,
  {val_split}; {test_split_note(data)}){distilled}

## Papers of the blocks it uses
{_papers(arch)}
"""


def _export_lines(record: dict[str, Any]) -> str:
    """The card's lines about the exported files: fusing and ONNX."""
    lines = []
    fused = record.get("reparameterized")
    if fused:
        lines.append(
            "- re-parameterisable blocks fused for inference (max abs logit change "
            f"{fused['max_abs_logit_change']:.1e})"
        )
    onnx = record.get("onnx")
    if onnx:
        c = onnx["latency_conditions"]
        lines.append(
            f"- `model.onnx` (opset {onnx['opset']}, input {onnx['input_shape']}): ONNX Runtime "
            f"matches torch within {onnx['max_abs_diff_vs_torch']:.1e}; "
            f"{onnx['latency_ms']:.4f} ms median on {c['hardware']}, {c['threads']} thread(s)"
        )
    pte = record.get("executorch")
    if pte:
        c = pte["latency_conditions"]
        check = (
            f"matches torch within {pte['max_abs_diff_vs_torch']:.1e}"
            if pte["dtype"] == "float32"
            else f"top-1 agreement with torch {pte['top1_agreement']:.2%} on "
            f"{pte['val_images']:,} validation images (accuracy {pte['accuracy_int8']:.2%} "
            f"against {pte['accuracy_float']:.2%}), calibrated on {pte['calibration']}"
        )
        lines.append(
            f"- `model.pte` (ExecuTorch {c['executorch']}, XNNPACK delegate, {pte['dtype']}, "
            f"input {pte['input_shape']}; {pte['delegation']['fallback']} of "
            f"{pte['delegation']['fallback'] + pte['delegation']['delegated']} nodes on "
            f"portable kernels): {check}; {pte['latency_ms']:.4f} ms median on "
            f"{c['hardware']}, {c['threads']} thread(s)"
        )
    return "\n## Exported files\n" + "\n".join(lines) + "\n" if lines else ""


def _papers(arch: ArchConfig) -> str:
    from search_spaces.blocks import papers_of

    rows = [f"- {kind}: {title}, arXiv {arxiv}" for kind, title, arxiv in papers_of(arch)]
    return "\n".join(rows) or "- (none)"


def _distill_line(distill: dict | None) -> str:
    if not distill:
        return ""
    how = f"{distill.get('kind', 'soft')} targets, alpha {distill.get('alpha')}"
    if distill.get("kind", "soft") == "soft":
        how += f", temperature {distill.get('temperature')}"
    if distill.get("head"):
        how += "; a distillation head (averaged with the class head at inference)"
    return (
        f"\n- distilled from `{distill.get('architecture')}` ({distill.get('path')}, validation "
        f"accuracy {distill.get('val_acc')}): {how}"
    )


def latency_line(costs: dict) -> str:
    """Every latency figure of a trial with its conditions, in one line."""
    lines = []
    lat = costs.get("latency")
    if lat:
        cond = lat.get("conditions", {})
        lines.append(
            f"{lat.get('median_ms')} ms measured, median (quartiles {lat.get('p25_ms')}-"
            f"{lat.get('p75_ms')} ms, {lat.get('runs')} runs) on {cond.get('device')} "
            f"({cond.get('hardware', cond.get('cpu'))}), {cond.get('threads')} thread(s), "
            f"batch {cond.get('batch_size')}, {cond.get('dtype')}, {cond.get('mode')}, "
            f"torch {cond.get('torch')}"
        )
    if "latency_predicted_ms" in costs:
        lut = costs.get("latency_lut", {})
        lines.append(
            f"{costs['latency_predicted_ms']} ms predicted by the lookup table "
            f"{lut.get('path')} ({lut.get('device')}, {lut.get('hardware')}, "
            f"{lut.get('threads')} thread(s))"
        )
    if costs.get("latency_source") == "table":
        lines.append(f"{costs['latency_ms']} ms as the tabular benchmark records it")
    return "; ".join(lines) or "not recorded"


# What an export (or any timm folder we write) holds; `--force` replaces only such a folder.
EXPORT_FILES = frozenset(
    {"config.json", "model.safetensors", "arch.json", "README.md", "model.onnx", "model.onnx.data"}
    | {"model.pte"}
)


def _project_root() -> str | None:
    """This tool's own checkout, when it runs from one (never an output folder)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return root if os.path.isfile(os.path.join(root, "pyproject.toml")) else None


def check_out_dir(
    out_dir: str, force: bool = False, *, protect: Sequence[str | None] = ()
) -> None:
    """Refuse an output folder that would lose something: an existing non-empty one without
    `force`; with `force`, anything but a previous export (only `EXPORT_FILES` in it); one that
    is or contains the working folder, the home folder or this tool's checkout; one that
    contains, or is inside, a path of `protect` (a study's storage file, its artifact store)."""
    out = os.path.realpath(out_dir)
    keep = [(p, False) for p in (os.getcwd(), os.path.expanduser("~"), _project_root()) if p]
    keep += [(p, True) for p in protect if p]
    for path, no_inside in keep:
        real = os.path.realpath(path)
        if out == real or real.startswith(out.rstrip(os.sep) + os.sep):
            raise UserError(
                f"--out {out_dir} would hold {path}, which an output folder never replaces: "
                "choose another --out"
            )
        if no_inside and out.startswith(real.rstrip(os.sep) + os.sep):
            raise UserError(
                f"--out {out_dir} is inside {path}, which belongs to a study: choose another --out"
            )
    if not os.path.lexists(out_dir):
        return
    if not os.path.isdir(out_dir) or os.path.islink(out_dir):
        raise UserError(f"--out {out_dir} exists and is not a folder; choose another --out")
    entries = sorted(os.listdir(out_dir))
    if not entries:
        return
    if not force:
        raise UserError(
            f"{out_dir} already exists and is not empty; choose another --out or "
            "pass --force to replace a previous export there"
        )
    others = [e for e in entries if e not in EXPORT_FILES]
    if others or "config.json" not in entries:
        shown = ", ".join(others[:4]) + (", ..." if len(others) > 4 else "")
        raise UserError(
            f"--force replaces only a previous export, and {out_dir} holds "
            f"{shown or 'no config.json'}: choose another --out"
        )


def data_config_of(input_size: tuple[int, int, int], data: dict[str, Any]) -> dict[str, Any]:
    """timm's preprocessing config from a recorded data set description."""
    return {
        "input_size": tuple(input_size),
        "interpolation": "bilinear",
        "crop_pct": 1.0,
        "mean": tuple(data.get("mean", (0.5,) * input_size[0])),
        "std": tuple(data.get("std", (0.5,) * input_size[0])),
    }


def save_timm_folder(
    model: torch.nn.Module,
    out_dir: str,
    *,
    data_config: dict[str, Any],
    card: str | Callable[[dict[str, Any]], str],
    provenance: dict[str, Any],
    force: bool = False,
    protect: Sequence[str | None] = (),
    extra: Callable[[str], dict[str, Any]] | None = None,
) -> float:
    """Write `model` as a timm folder (config.json, model.safetensors, README.md, and arch.json
    for a LightViT) beside `out_dir`, reload it through `load_export`, check the logits, then
    rename it into place: nothing half-written is ever left. The weights file carries the
    ArchConfig in its metadata and config.json the weights' SHA-256, so that a later edit of
    either is caught. `extra(folder)` may add files to the folder before that and returns what
    to record about them. `force` and `protect` as in `check_out_dir`. Returns the max abs
    logit difference."""
    check_out_dir(out_dir, force, protect=protect)
    arch = getattr(model, "arch", None)
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".lvit-export-", dir=parent)
    try:
        save_for_hf(
            model,
            staging,
            safe_serialization=True,
            data_config=data_config,
            model_args=_model_args(model),
        )
        if extra is not None:
            provenance = {**provenance, **extra(staging)}
        weights = os.path.join(staging, WEIGHTS)
        if arch is not None:  # the architecture travels inside the weights file too
            save_file(
                load_file(weights), weights, metadata={"format": "pt", ARCH_KEY: arch.to_json()}
            )
        meta_path = os.path.join(staging, "config.json")
        with open(meta_path) as f:
            meta = json.load(f)
        meta["lightweight_vit"] = {**provenance, "weights_sha256": _sha256(weights)}
        with open(meta_path, "w") as f:
            json.dump(meta, f, indent=2)
        if arch is not None:
            with open(os.path.join(staging, "arch.json"), "w") as f:
                f.write(arch.to_json(indent=2) + "\n")
        with open(os.path.join(staging, "README.md"), "w") as f:
            f.write(card(provenance) if callable(card) else card)
        diff = _verify(model, staging, data_config["input_size"])
        check_out_dir(out_dir, force, protect=protect)  # what may have appeared meanwhile
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return diff


@torch.no_grad()
def write_onnx(model: torch.nn.Module, folder: str, threads: int = 1) -> dict[str, Any]:
    """`model.onnx` (batch 1, opset 18) in `folder`, its outputs checked against torch's with
    ONNX Runtime (max abs difference below 1e-4 on several inputs), and its ONNX Runtime CPU
    latency; what to record about it."""
    import onnxruntime as ort

    from nas.cost import conditions, export_onnx, time_calls

    model.eval()
    input_size = _input_size(model)
    generator = torch.Generator().manual_seed(2)
    path = os.path.join(folder, "model.onnx")
    export_onnx(model, torch.randn(1, *input_size, generator=generator), path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    diff = 0.0
    for _ in range(4):
        x = torch.randn(1, *input_size, generator=generator)
        out = torch.from_numpy(session.run(None, {name: x.numpy()})[0])
        diff = max(diff, (out - model(x)).abs().max().item())
    if diff > ONNX_TOLERANCE:
        raise RuntimeError(
            f"ONNX Runtime's outputs differ from torch's by {diff:.2e} (> {ONNX_TOLERANCE})"
        )
    feed = {name: torch.randn(1, *input_size, generator=generator).numpy()}
    times = time_calls(lambda: session.run(None, feed), warmup=10, runs=50, max_seconds=2.0)
    return {
        "onnx": {
            "file": "model.onnx",
            "opset": 18,
            "input_shape": [1, *input_size],
            "max_abs_diff_vs_torch": diff,
            "latency_ms": round(statistics.median(times), 6),
            "latency_conditions": conditions("onnxruntime", threads, 1, input_size, "float32", 10),
        }
    }


@torch.no_grad()
def write_executorch(
    model: torch.nn.Module,
    folder: str,
    *,
    int8: bool = False,
    data: Any = None,
    threads: int = 1,
) -> dict[str, Any]:
    """`model.pte` (ExecuTorch with the XNNPACK delegate, batch 1) in `folder`, checked
    against torch and timed by ExecuTorch's runtime; what to record about it. float32: the
    program's outputs within 1e-4 of torch's on several inputs (else RuntimeError). int8
    (`nas.runtimes.quantize_pt2e`): calibrated on 32 training images of `data` (the study's
    data set), then run on its whole validation split beside torch: the top-1 agreement and
    both accuracies are recorded (the check asks for 99% agreement; `below_agreement` says
    when it was missed)."""
    from nas import runtimes
    from nas.cost import conditions, time_calls
    from nas.loader import eval_batches, sample_batch
    from nas.train import resize

    runtimes.check_executorch()
    model.eval()
    input_size = _input_size(model)
    generator = torch.Generator().manual_seed(3)
    example = torch.randn(1, *input_size, generator=generator)
    record: dict[str, Any] = {"file": "model.pte", "input_shape": [1, *input_size]}
    if int8:
        if data is None:
            raise ValueError("an int8 export calibrates on the study's data: pass data")
        images, _ = sample_batch(data, CALIBRATION_IMAGES, generator)
        images = resize(images, input_size[-1])
        label = f"{len(images)} training images"
        lowered = runtimes.lower_executorch(
            model, example, "int8", [x[None] for x in images], label
        )
    else:
        lowered = runtimes.lower_executorch(model, example)
    run = runtimes.load_executorch(lowered.buffer, threads)
    if int8:
        agree = correct_int8 = correct_float = seen = 0
        for xb, yb in eval_batches(data, data.val, torch.device("cpu"), 256):
            xb = resize(xb, input_size[-1])
            expected = model(xb).argmax(1)
            got = torch.stack([run((x[None],))[0][0] for x in xb]).argmax(1)
            agree += int((got == expected).sum())
            correct_int8 += int((got == yb).sum())
            correct_float += int((expected == yb).sum())
            seen += len(yb)
        record.update(
            top1_agreement=round(agree / seen, 5),
            accuracy_int8=round(correct_int8 / seen, 5),
            accuracy_float=round(correct_float / seen, 5),
            val_images=seen,
            calibration=lowered.calibration,
            below_agreement=agree / seen < INT8_AGREEMENT,
        )
    else:
        diff = 0.0
        for _ in range(4):
            x = torch.randn(1, *input_size, generator=generator)
            diff = max(diff, (run((x,))[0] - model(x)).abs().max().item())
        if diff > EXECUTORCH_TOLERANCE:
            raise RuntimeError(
                f"ExecuTorch's outputs differ from torch's by {diff:.2e} "
                f"(> {EXECUTORCH_TOLERANCE})"
            )
        record["max_abs_diff_vs_torch"] = diff
    with open(os.path.join(folder, "model.pte"), "wb") as f:
        f.write(lowered.buffer)
    times = time_calls(lambda: run((example,)), warmup=10, runs=50, max_seconds=2.0)
    dtype = "int8" if int8 else "float32"
    return {
        "executorch": {
            **record,
            "dtype": dtype,
            "program_bytes": len(lowered.buffer),
            "delegation": lowered.delegation.to_dict(),
            "latency_ms": round(statistics.median(times), 6),
            "latency_conditions": conditions("executorch", threads, 1, input_size, dtype, 10),
        }
    }


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
WEIGHTS = "model.safetensors"
ARCH_KEY = "lightvit_arch"  # the ArchConfig in the weights file's metadata
# What config.json's model_args may hold for a LightViT: what timm's save_for_hf writes, and
# the training-only rates (dropout is off at inference).
MODEL_ARGS = frozenset(
    {"arch", "reparameterized", "num_classes", "in_chans", "img_size", "global_pool"}
    | {"drop_rate", "drop_path_rate"}
)


@dataclass(frozen=True)
class ExportFolder:
    """A timm folder that passed `read_export`: its config.json and, for a LightViT, the one
    ArchConfig that its config.json, arch.json and weights agree on."""

    path: str
    config: dict[str, Any]
    arch: ArchConfig | None  # None for a plain timm model (a teacher such as resnet18)

    @property
    def architecture(self) -> str:
        return self.config["architecture"]


def read_export(folder: str) -> ExportFolder:
    """Read a timm folder the one way every command reads it, without loading the weights:
    safetensors only (a folder holding a pickle weight file is refused, since unpickling runs
    code); config.json parses and names a timm model; for a LightViT its ArchConfig validates,
    and arch.json (when present), the architecture stored in the weights file's metadata, the
    weights' shapes, the SHA-256 recorded at export, and the input size and class count of
    timm's pretrained config all agree with it. Raises `UserError` naming the disagreement."""
    if not os.path.isdir(folder):
        raise UserError(f"{folder} is not a folder; pass a folder written by lvit export")
    pickles = sorted(f for f in os.listdir(folder) if f.endswith(PICKLE_SUFFIXES))
    if pickles:
        raise UserError(
            f"{folder} holds pickle weights ({', '.join(pickles)}), which are never loaded "
            "(unpickling can run code): keep only model.safetensors"
        )
    weights = os.path.join(folder, WEIGHTS)
    if not os.path.isfile(weights):
        raise UserError(f"{folder} has no {WEIGHTS}; only safetensors weights are loaded")
    config_path = os.path.join(folder, "config.json")
    config = _read_json(
        config_path, f"{folder} has no config.json; pass a folder written by lvit export"
    )
    if not isinstance(config, dict) or not isinstance(config.get("architecture"), str):
        raise UserError(f"{config_path} names no architecture; it is not a timm model config")
    header, shapes = _weights_header(weights)
    recorded = (config.get("lightweight_vit") or {}).get("weights_sha256")
    if recorded and recorded != _sha256(weights):
        raise UserError(
            f"{weights} is not the file that was exported (its SHA-256 differs from the one in "
            "config.json): it was damaged or replaced; export the trial again"
        )
    if config["architecture"] != "lightvit":
        if not timm.is_model(config["architecture"]):
            raise UserError(f"{config_path}: '{config['architecture']}' is not a timm model name")
        return ExportFolder(folder, config, None)
    arch = _arch_of(config_path, (config.get("model_args") or {}).get("arch"), "model_args")
    for where, other in (
        ("arch.json", _optional_arch(os.path.join(folder, "arch.json"))),
        (
            f"the metadata of {WEIGHTS}",
            _arch_of(weights, header.get(ARCH_KEY), "") if ARCH_KEY in header else None,
        ),
    ):
        if other is not None and other != arch:
            raise UserError(
                f"{config_path} and {where} describe different architectures "
                f"({_first_difference(other, arch)}): the folder was edited; export it again"
            )
    pretrained = config.get("pretrained_cfg") or {}
    size = [arch.in_chans, arch.img_size, arch.img_size]
    if "input_size" in pretrained and list(pretrained["input_size"]) != size:
        raise UserError(
            f"{config_path}: pretrained_cfg.input_size {pretrained['input_size']} disagrees "
            f"with the architecture's {size}: the folder was edited; export it again"
        )
    if config.get("num_classes", arch.num_classes) != arch.num_classes:
        raise UserError(
            f"{config_path}: num_classes {config['num_classes']} disagrees with the "
            f"architecture's {arch.num_classes}: the folder was edited; export it again"
        )
    model_args = config.get("model_args") or {}
    unknown = sorted(set(model_args) - MODEL_ARGS)
    if unknown:
        raise UserError(
            f"{config_path}: model_args holds {', '.join(unknown)}, which lvit export never "
            "writes: the folder was edited; export it again"
        )
    for key in ("num_classes", "in_chans", "img_size"):  # timm passes these over the arch's
        if key in model_args and model_args[key] != getattr(arch, key):
            raise UserError(
                f"{config_path}: model_args.{key} {model_args[key]} disagrees with the "
                f"architecture's {getattr(arch, key)}: the folder was edited; export it again"
            )
    reparameterized = bool((config.get("model_args") or {}).get("reparameterized"))
    expected = {
        k: list(v.shape)
        for k, v in timm.create_model(
            "lightvit", arch=arch.to_dict(), reparameterized=reparameterized
        )
        .state_dict()
        .items()
    }
    if expected != shapes:
        wrong = sorted(set(expected) ^ set(shapes)) or sorted(
            k for k in expected if expected[k] != shapes[k]
        )
        raise UserError(
            f"{weights} does not fit the architecture in {config_path} ({len(wrong)} tensors "
            f"differ, e.g. {wrong[0]}): export the trial again"
        )
    return ExportFolder(folder, config, arch)


def load_export(folder: str) -> torch.nn.Module:
    """The model of a folder `read_export` accepts, loaded through timm (`local-dir:`)."""
    read_export(folder)
    try:
        return timm.create_model(f"local-dir:{os.path.abspath(folder)}", pretrained=True).eval()
    except (RuntimeError, ValueError, KeyError, TypeError, SafetensorError) as e:  # do not fit
        reason = str(e).splitlines()[0][:200]
        raise UserError(f"{folder}: the weights do not fit its config.json: {reason}") from None


def _read_json(path: str, missing: str) -> Any:
    if not os.path.isfile(path):
        raise UserError(missing)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON (line {e.lineno}): {e.msg}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}") from None


def _arch_of(source: str, value: Any, key: str) -> ArchConfig:
    if value is None:
        raise UserError(f"{source} has no {key or 'architecture'}.arch for its LightViT")
    try:
        return (
            ArchConfig.from_json(value) if isinstance(value, str) else ArchConfig.from_dict(value)
        )
    except (ArchConfigError, ValueError) as e:
        raise UserError(f"{source}: {key + '.' if key else ''}{e}") from None


def _optional_arch(path: str) -> ArchConfig | None:
    if not os.path.isfile(path):
        return None
    return _arch_of(path, _read_json(path, ""), "")


def _first_difference(a: ArchConfig, b: ArchConfig) -> str:
    da, db = a.to_dict(), b.to_dict()
    for key in da:
        if da[key] != db.get(key):
            if key == "stages":
                for i, (sa, sb) in enumerate(zip(da[key], db[key], strict=False)):
                    for k in sa:
                        if sa[k] != sb.get(k):
                            return f"stage {i + 1} {k}: {sb.get(k)} vs {sa[k]}"
            return f"{key}: {db.get(key)} vs {da[key]}"
    return "?"


def _weights_header(path: str) -> tuple[dict[str, str], dict[str, list[int]]]:
    """The metadata and tensor shapes of a safetensors file, without reading the tensors."""
    try:
        with safe_open(path, framework="pt") as f:
            return dict(f.metadata() or {}), {
                k: list(f.get_slice(k).get_shape()) for k in f.keys()
            }
    except (SafetensorError, OSError) as e:
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise UserError(f"{path} is damaged ({reason}): export the trial again") from None


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_arch(target: str) -> ArchConfig:
    """The ArchConfig in a JSON file, or of an `lvit export` folder (read by `read_export`,
    which checks that its config.json, arch.json and weights agree)."""
    if os.path.isdir(target):
        folder = read_export(target)
        if folder.arch is None:
            raise UserError(f"{target} holds a {folder.architecture}, not a LightViT export")
        return folder.arch
    if not os.path.isfile(target):
        raise UserError(
            f"{target} not found; pass an ArchConfig JSON file or an `lvit export` folder"
        )
    try:
        with open(target, encoding="utf-8") as f:
            return ArchConfig.from_json(f.read())
    except (json.JSONDecodeError, ArchConfigError, UnicodeDecodeError) as e:
        raise UserError(f"{target}: {e}") from None


def _model_args(model: torch.nn.Module) -> dict[str, Any] | None:
    """What `timm.create_model` needs to rebuild `model`: its ArchConfig, and whether it is in
    its fused (re-parameterised) form."""
    arch = getattr(model, "arch", None)
    if arch is None:
        return None
    args: dict[str, Any] = {"arch": arch.to_dict()}
    if getattr(model, "reparameterized", False):
        args["reparameterized"] = True
    return args


@torch.no_grad()
def fuse(model: torch.nn.Module) -> float | None:
    """Re-parameterise `model` in place for inference; the max abs logit change it caused
    (None when the model has nothing to fuse)."""
    if not getattr(model, "has_reparameterizable", False):
        return None
    model.eval()
    x = torch.randn(4, *_input_size(model), generator=torch.Generator().manual_seed(1))
    before = model(x)
    model.reparameterize()
    diff = (model(x) - before).abs().max().item()
    if diff > FUSE_TOLERANCE:
        raise RuntimeError(f"fusing changed the logits by {diff:.2e}; export with --no-fuse")
    return diff


def deployment_form(model: torch.nn.Module) -> torch.nn.Module:
    """`model` as it is deployed, fused in place and returned: our re-parameterisable stems
    through `fuse` (which checks the logits), timm's MobileOne/RepViT/FastViT blocks through
    timm's own `reparameterize_model`."""
    from search_spaces.model import LightViT

    if isinstance(model, LightViT):
        fuse(model)
        return model
    from timm.utils.model import reparameterize_model

    return reparameterize_model(model, inplace=True)


def _input_size(model: torch.nn.Module) -> tuple[int, int, int]:
    arch = model.arch
    return (arch.in_chans, arch.img_size, arch.img_size)


def export_trial(
    study: optuna.Study,
    number: int,
    out_dir: str,
    *,
    artifact_dir: str | None = None,
    force: bool = False,
    reparameterize: bool = True,
    onnx: bool = False,
    onnx_threads: int = 1,
    executorch: bool = False,
    int8: bool = False,
    data: Any = None,
    protect: Sequence[str | None] = (),
) -> ExportResult:
    """Write trial `number` of `study` to `out_dir` as a timm folder and verify it reloads.
    Re-parameterisable blocks are fused first unless `reparameterize` is false. `onnx` also
    writes `model.onnx` (`write_onnx`), `executorch` `model.pte` (`write_executorch`; int8 with
    `int8`, calibrated and checked on `data`, the study's data set). `out_dir` is checked by
    `check_out_dir` against the study's artifact store and `protect` (its storage file)."""
    protect = [*protect, artifact_dir, study.user_attrs.get("artifact_dir")]
    check_out_dir(out_dir, force, protect=protect)
    model, trial = load_trial_model(study, number, artifact_dir)
    arch, r = model.arch, TrialRecord.of(trial)
    fused = fuse(model) if reparameterize else None
    provenance = {
        "study": study.study_name,
        "trial": trial.number,
        "val_acc": r.accuracy,
        "costs": dict(r.costs),
        "reparameterized": None if fused is None else {"max_abs_logit_change": fused},
    }
    written: dict[str, Any] = {}

    def write_and_keep(folder: str) -> dict[str, Any]:
        if onnx:
            written.update(write_onnx(model, folder, onnx_threads))
        if executorch:
            written.update(
                write_executorch(model, folder, int8=int8, data=data, threads=onnx_threads)
            )
        return written

    diff = save_timm_folder(
        model,
        out_dir,
        force=force,
        protect=protect,
        provenance=provenance,
        data_config=data_config_of(
            (arch.in_chans, arch.img_size, arch.img_size), r.attrs.get("data", {})
        ),
        card=lambda record: _model_card(trial, study.study_name, arch) + _export_lines(record),
        extra=write_and_keep if onnx or executorch else None,
    )
    exports = dict(study.user_attrs.get("exports", {}))
    exports[str(trial.number)] = os.path.abspath(out_dir)
    study.set_user_attr("exports", exports)  # the report marks exported trials
    return ExportResult(
        out_dir=out_dir,
        trial=trial.number,
        max_abs_diff=diff,
        fused=fused,
        onnx=written.get("onnx"),
        executorch=written.get("executorch"),
    )


@torch.no_grad()
def _verify(model: torch.nn.Module, folder: str, input_size: tuple[int, ...]) -> float:
    """Reload `folder` as every command will (`load_export`, through timm) and compare logits
    with `model` on random inputs."""
    reloaded = load_export(folder)
    model.eval()
    x = torch.randn(4, *input_size, generator=torch.Generator().manual_seed(0))
    diff = (model(x) - reloaded(x)).abs().max().item()
    if diff > LOGIT_TOLERANCE:
        raise RuntimeError(
            f"exported model does not reproduce the logits (max abs diff {diff:.2e})"
        )
    return diff


def export_subnet(
    shared: Any,
    arch: ArchConfig,
    data: Dataset,
    out: str,
    *,
    folder: str,
    calib_batches: int = 20,
    force: bool = False,
    protect: Sequence[str | None] = (),
) -> tuple[float, dict[str, Any]]:
    """Write the subnet `arch` of a one-shot supernet (`nas.supernet.SharedWeights`) with the
    weights it inherits (batch norms recalibrated) as a
    timm folder, verified by reloading it through timm; never over the supernet or `protect`
    (`check_out_dir`). Returns its validation accuracy and what the folder's config records."""
    from nas.train import evaluate

    protect = [*protect, folder]
    check_out_dir(out, force, protect=protect)
    model = shared.subnet(arch, data, calib_batches=calib_batches)
    acc = evaluate(model, data, "val", img_size=arch.img_size)
    info = data.info()
    record = {
        "role": "supernet subnet",
        "supernet": os.path.abspath(folder),
        "space": shared.space.fingerprint(),
        "val_acc": acc,
        "calib_batches": calib_batches,
        "data": info,
    }
    card = f"""---
library_name: timm
tags: [image-classification, timm, lightweight-vit, one-shot]
---
# LightViT `{arch.describe()}`

A subnet of the one-shot supernet in `{record["supernet"]}` (space {record["space"]}), with the
weights it inherits from it (batch norms recalibrated on {calib_batches} training batches); not
trained on its own. Retrain it with `lvit train arch.json --config CONFIG` for its stand-alone
accuracy.

Validation accuracy with inherited weights on {info["name"]} ({info["val_size"]} images at
{info["input_size"]}): {acc:.4f}

```python
import search_spaces, timm  # importing search_spaces registers `lightvit` with timm
model = timm.create_model("local-dir:PATH_TO_THIS_FOLDER", pretrained=True).eval()
```
"""
    save_timm_folder(
        model,
        out,
        force=force,
        protect=protect,
        provenance=record,
        card=card,
        data_config=data_config_of((arch.in_chans, arch.img_size, arch.img_size), info),
    )
    return acc, record
