"""Latency lookup tables: latency predicted from per-unit measurements taken on the target device.

A LightViT's forward pass is a chain of units, each fully described by its configuration and
input shape: the stem, an input position encoding, transitions between stages, blocks (mixer,
width, heads, MLP ratio, mixer option, attention-site encoding, token count, token reduction),
CPE layers, and the head. `units(arch)` lists them for an `ArchConfig` without building it.

`build_lut` enumerates every unit a search space can produce (using the space's staged
structure, so every stage sub-tree is walked once), measures whole sampled architectures, then
each unit alone on the device, and fits `latency = sum over unit groups of scale_g * sum_g + b`,
the calibration that absorbs what the plain sum misses (the model's own Python overhead, and
units that run slower inside a model than alone because other units' weights evict theirs). The
table records the device, hardware, threads, library versions and space version, and refuses to
serve a different space version, device, thread count, data size or class count.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from search_spaces.arch import (
    ATTENTION_MIXERS,
    ATTENTION_POS_ENCS,
    INPUT_POS_ENCS,
    MIXER_OPTIONS,
    MIXER_SPECS,
    POS_ATTENTION_MIXERS,
    STAGE_POS_ENCS,
    ArchConfig,
    StageConfig,
    mixer_options,
)
from search_spaces.typed import TypeCheckError, from_dict

__all__ = [
    "UNIT_MEASUREMENT",
    "LUT_FORMAT",
    "LatencyTable",
    "LutError",
    "Validation",
    "build_lut",
    "measure_unit",
    "space_units",
    "unit_key",
    "units",
    "validate",
]

LUT_FORMAT = "lightweight-vit-latency-lut/1"
UNIT_DEVICES = ("cpu", "cuda")  # where units run as modules in torch, as the models do
RUNTIME_NAMES = {"executorch": "ExecuTorch", "onnxruntime": "ONNX Runtime"}

Unit = tuple[str, dict[str, Any]]


class LutError(ValueError):
    """A table that cannot serve this request; the message says how to build the right one."""


def unit_key(kind: str, config: dict[str, Any]) -> str:
    return kind + json.dumps(config, sort_keys=True, separators=(",", ":"))


def _stem_units(
    arch_stem: str,
    in_chans: int,
    dim: int,
    patch: int,
    img: int,
    pos_enc: str,
) -> list[Unit]:
    grid = img // patch
    out: list[Unit] = [
        ("stem", {"stem": arch_stem, "in_chans": in_chans, "dim": dim, "patch": patch, "img": img})
    ]
    if pos_enc in INPUT_POS_ENCS and pos_enc != "none":
        out.append(("pos", {"pos_enc": pos_enc, "dim": dim, "grid": grid}))
    return out


def _stage_units(
    stage: StageConfig,
    grid: int,
    pos_enc: str,
    in_dim: int,
) -> tuple[list[Unit], int, bool]:
    """Units of one stage entered at `grid` (before its own downsampling) with width `in_dim`.
    Returns the units, the token count leaving the stage, and whether tokens carry sizes."""
    out: list[Unit] = []
    if stage.downsample or in_dim != stage.dim:
        out.append(
            (
                "transition",
                {
                    "in_dim": in_dim,
                    "out_dim": stage.dim,
                    "downsample": stage.downsample,
                    "grid": grid,
                },
            )
        )
        if stage.downsample:
            grid = (grid + 1) // 2
    tokens, sized = grid * grid, False
    options = mixer_options(stage)
    attn_pos = (
        pos_enc
        if stage.mixer in POS_ATTENTION_MIXERS and pos_enc in ATTENTION_POS_ENCS
        else "none"
    )
    heads = stage.heads if stage.mixer in ATTENTION_MIXERS else 1
    for b in range(stage.depth):
        keep = stage.keep_rate if b == 0 else 1.0
        out.append(
            (
                "block",
                {
                    "mixer": stage.mixer,
                    "dim": stage.dim,
                    "heads": heads,
                    "mlp_ratio": stage.mlp_ratio,
                    "grid": grid,
                    "tokens": tokens,
                    "sized": sized,
                    "attn_pos": attn_pos,
                    "merge_r": stage.merge_r,
                    "keep_rate": keep,
                    **options,
                },
            )
        )
        if keep < 1:
            tokens, sized = math.ceil(keep * tokens) + 1, True
        if stage.merge_r:
            tokens, sized = tokens - min(stage.merge_r, tokens // 2), True
        if b == 0 and pos_enc in STAGE_POS_ENCS:
            out.append(("cpe", {"pos_enc": pos_enc, "dim": stage.dim, "grid": grid}))
    return out, tokens, sized


def units(arch: ArchConfig) -> list[Unit]:
    """The units of `arch`'s forward pass, in order (exit heads are not on the forward path).
    With dynamic resolution the forward pass is both passes (the budget's worst case): the
    model at the low side, the `reuse` unit (resizing the image, pooling the low pass,
    projecting it), then the model at full resolution."""
    out: list[Unit] = []
    if arch.dynamic_resolution:
        low, tokens, sized = _pass_units(arch, arch.dynamic_resolution)
        out += low
        out.append(_reuse_unit(arch, tokens, sized))
    full, tokens, sized = _pass_units(arch, arch.img_size)
    out += full
    out.append(_head_unit(arch.stages[-1].dim, tokens, sized, arch.num_classes, arch.distill_head))
    return out


def _pass_units(arch: ArchConfig, img: int) -> tuple[list[Unit], int, bool]:
    """The stem's and the stages' units of `arch` run on `img` x `img` images, with the token
    count leaving the last stage and whether the tokens carry sizes."""
    first = arch.stages[0]
    out = _stem_units(arch.stem, arch.in_chans, first.dim, arch.patch_size, img, arch.pos_enc)
    grid, in_dim = img // arch.patch_size, first.dim
    tokens, sized = grid * grid, False
    for stage in arch.stages:
        stage_out, tokens, sized = _stage_units(stage, grid, arch.pos_enc, in_dim)
        out += stage_out
        if stage.downsample:
            grid = (grid + 1) // 2
        in_dim = stage.dim
    return out, tokens, sized


def _reuse_unit(arch: ArchConfig, tokens: int, sized: bool) -> Unit:
    return (
        "reuse",
        {
            "in_chans": arch.in_chans,
            "img": arch.img_size,
            "low": arch.dynamic_resolution,
            "dim": arch.stages[-1].dim,
            "tokens": tokens,
            "sized": sized,
        },
    )


def _head_unit(dim: int, tokens: int, sized: bool, num_classes: int, distill: bool) -> Unit:
    cfg: dict[str, Any] = {"dim": dim, "tokens": tokens, "sized": sized}
    cfg["num_classes"] = num_classes
    if distill:  # the key only where there is a distillation head: older tables stay valid
        cfg["distill"] = True
    return ("head", cfg)


def space_units(
    space: Any,
    img_size: int,
    in_chans: int,
    num_classes: int,
) -> dict[str, Unit]:
    """Every unit `space` can produce for data of `img_size` and `num_classes` (a superset:
    combinations the space's fix-ups later rule out are included)."""
    from search_spaces.spaces.base import enumerate_leaves

    found: dict[str, Unit] = {}
    seen: set[tuple] = set()  # cheap keys, so each unit is serialised once
    stage_memo: dict[Any, list[StageConfig]] = {}
    walked: set[Any] = set()  # (ctx, entry grid, previous widths, pass) turned into units

    def add(items: Iterable[Unit]) -> None:
        for kind, cfg in items:
            cheap = (kind, *cfg.items())
            if cheap not in seen:
                seen.add(cheap)
                found[unit_key(kind, cfg)] = (kind, cfg)

    def walk(g: dict[str, Any], img: int) -> None:
        """Every unit of the passes at `img` x `img` of the architectures with globals `g`
        (the stages are those drawn for `g`'s own resolution; at a first pass's side, the
        stages that cannot run on its grid are left out, as `ArchConfig` refuses them)."""
        low = img != g["img_size"]
        prev_dims: frozenset[int] | None = None
        entry_grid = img // g["patch_size"]
        for ctx in space.contexts(g):
            if ctx not in stage_memo:
                leaves = enumerate_leaves(lambda t, c=ctx: space.sample_stage(t, c))
                stage_memo[ctx] = sorted({s for _, s in leaves}, key=repr)
            stages = stage_memo[ctx]
            if ctx.downsample and entry_grid < 2:
                return  # no architecture of these globals has this first pass
            grid = (entry_grid + 1) // 2 if ctx.downsample else entry_grid
            if low:
                stages = [s for s in stages if _runs_on(s, grid)]
            if prev_dims is None:
                for dim in sorted({s.dim for s in stages}):
                    add(_stem_units(g["stem"], in_chans, dim, g["patch_size"], img, g["pos_enc"]))
            # a first pass ends in a reuse unit of its own sides where a full pass ends in a
            # head: the same stages walked at the same grid are not the same units
            key = (ctx, entry_grid, prev_dims, (g["img_size"], img) if low else None)
            if key not in walked:
                walked.add(key)
                for stage in stages:
                    for in_dim in sorted(prev_dims or {stage.dim}):
                        stage_out, tokens, sized = _stage_units(
                            stage, entry_grid, g["pos_enc"], in_dim
                        )
                        add(stage_out)
                        if ctx.is_last and low:
                            add([_reuse_unit_of(g, in_chans, img, stage.dim, tokens, sized)])
                        elif ctx.is_last:  # a search may add a distillation head to any
                            add(
                                _head_unit(stage.dim, tokens, sized, num_classes, distill)
                                for distill in (False, True)
                            )
            prev_dims, entry_grid = frozenset(s.dim for s in stages), grid

    low_resolutions = getattr(space, "low_resolutions", lambda g: ())
    for _, g in enumerate_leaves(lambda t: space.sample_globals(t, img_size)):
        for img in (g["img_size"], *low_resolutions(g)):
            walk(g, img)
    return found


def _runs_on(stage: StageConfig, grid: int) -> bool:
    """Whether `stage`'s mixer option runs unchanged on a `grid` x `grid` grid (a window must
    divide it, a reduction ratio fit in it, a shift have a grid to shift on)."""
    spec = MIXER_SPECS[stage.mixer]
    if not spec.option:
        return True
    value = getattr(stage, spec.option)
    return spec.fit_option(value, grid, stage.dim) == value


def _reuse_unit_of(
    g: dict[str, Any], in_chans: int, low: int, dim: int, tokens: int, sized: bool
) -> Unit:
    cfg = {"in_chans": in_chans, "img": g["img_size"], "low": low, "dim": dim}
    return ("reuse", {**cfg, "tokens": tokens, "sized": sized})


@dataclass
class LatencyTable:
    """A built table: unit latencies in ms plus the calibration and the conditions."""

    space: str
    space_version: int
    device: str
    threads: int
    batch_size: int
    img_size: int
    num_classes: int
    in_chans: int
    entries: dict[str, float]
    calibration: dict[str, Any] = field(default_factory=lambda: {"a": 1.0, "b": 0.0})
    meta: dict[str, Any] = field(default_factory=dict)
    # the reference model's calibrated latency at build time (`nas.cost.Reference`): every
    # entry and the calibration are at that machine speed; None in tables built before
    reference: dict[str, Any] | None = None
    dtype: str = "float32"  # the precision the units ran in (int8: a runtime's quantised form)
    # units the runtime could not take, with its reason: a model holding one cannot run there
    not_deployable: dict[str, str] = field(default_factory=dict)

    def refusal(self, arch: ArchConfig) -> str | None:
        """Why the table's runtime cannot run `arch` (one of its units was refused when the
        table was built), or None."""
        if not self.not_deployable:
            return None
        for kind, cfg in units(arch):
            reason = self.not_deployable.get(unit_key(kind, cfg))
            if reason is not None:
                return f"its {kind} unit: {reason}"
        return None

    def predict(self, arch: ArchConfig) -> float:
        """Predicted latency of `arch` in ms: the calibrated sum of its units.
        `runtimes.NotDeployable` when the table's runtime refused one of its units."""
        reason = self.refusal(arch)
        if reason is not None:
            from nas.runtimes import NotDeployable

            raise NotDeployable(RUNTIME_NAMES.get(self.device, self.device), reason)
        cal = self.calibration
        scale = cal.get("scale", {})
        return (
            sum(scale.get(g, cal["a"]) * ms for g, ms in self.group_sums(arch).items()) + cal["b"]
        )

    def group_sums(self, arch: ArchConfig) -> dict[str, float]:
        """Measured unit latencies of `arch` summed per group (`stem`, `block:mhsa`, ...)."""
        sums: dict[str, float] = {}
        for kind, cfg in units(arch):
            key = unit_key(kind, cfg)
            try:
                ms = self.entries[key]
            except KeyError:
                raise LutError(
                    f"the table has no entry for {kind} {cfg}; it was built for space "
                    f"'{self.space}' with {self.img_size}px data and {self.num_classes} classes: "
                    + self.rebuild_hint(img_size=arch.img_size, num_classes=arch.num_classes)
                ) from None
            group = unit_group(kind, cfg)
            sums[group] = sums.get(group, 0.0) + ms
        return sums

    def rebuild_hint(self, **wanted: Any) -> str:
        """The command that builds a table for `wanted` (space, device, threads, img_size,
        num_classes), defaulting to this table's own settings."""
        w = {
            "space": self.space,
            "device": self.device,
            "threads": self.threads,
            "img_size": self.img_size,
            "num_classes": self.num_classes,
            "dtype": self.dtype,
            **{k: v for k, v in wanted.items() if v is not None},
        }
        dtype = f" --dtype {w['dtype']}" if w["dtype"] != "float32" else ""
        return (
            f"build one with `lvit latency build-lut --space {w['space']} --device "
            f"{w['device']}{dtype} --threads {w['threads']} --img-size {w['img_size']} "
            f"--num-classes {w['num_classes']} --out luts/NAME.json`"
        )

    def check(
        self,
        *,
        space: str,
        space_version: int,
        device: str,
        threads: int,
        img_size: int | None = None,
        num_classes: int | None = None,
        dtype: str = "float32",
        path: str = "",
    ) -> None:
        """Refuse a request this table was not built for, naming the difference and the fix."""
        wanted = {
            "space": space,
            "space version": space_version,
            "device": device,
            "dtype": dtype,
            "threads": threads,
        }
        have = {
            "space": self.space,
            "space version": self.space_version,
            "device": self.device,
            "dtype": self.dtype,
            "threads": self.threads,
        }
        if img_size is not None:
            wanted["data size"], have["data size"] = img_size, self.img_size
        if num_classes is not None:
            wanted["classes"], have["classes"] = num_classes, self.num_classes
        diffs = [f"{k} {have[k]} (needed {wanted[k]})" for k in wanted if wanted[k] != have[k]]
        if diffs:
            raise LutError(
                f"latency table {path} was built for {'; '.join(diffs)}; "
                + self.rebuild_hint(
                    space=space,
                    device=device,
                    dtype=dtype,
                    threads=threads,
                    img_size=img_size,
                    num_classes=num_classes,
                )
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "format": LUT_FORMAT,
            "space": self.space,
            "space_version": self.space_version,
            "device": self.device,
            "dtype": self.dtype,
            "threads": self.threads,
            "batch_size": self.batch_size,
            "img_size": self.img_size,
            "num_classes": self.num_classes,
            "in_chans": self.in_chans,
            "calibration": self.calibration,
            "meta": self.meta,
            "reference": self.reference,
            "not_deployable": self.not_deployable,
            "entries": self.entries,
        }

    def save(self, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.part"
        with open(tmp, "w") as f:
            json.dump(self.to_json(), f, indent=1, sort_keys=True)
        os.replace(tmp, path)  # never a half-written table

    @classmethod
    def load(cls, path: str) -> LatencyTable:
        if not os.path.isfile(path):
            raise LutError(
                f"latency table not found: {path} (build one with `lvit latency build-lut`)"
            )
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise LutError(f"{path} is not a latency table: {e}") from None
        if not isinstance(data, dict) or data.get("format") != LUT_FORMAT:
            raise LutError(f"{path} is not a latency table of format {LUT_FORMAT}")
        fix = "build it again with `lvit latency build-lut`"
        try:
            table = from_dict(cls, {k: v for k, v in data.items() if k != "format"}, "")
        except TypeCheckError as e:
            raise LutError(f"{path} is not a complete latency table ({e}): {fix}") from None
        cal = table.calibration
        scale = cal.get("scale", {})
        numbers = [
            cal.get("a"),
            cal.get("b"),
            *(scale.values() if isinstance(scale, dict) else [None]),
        ]
        bad_entry = next(
            (k for k, v in table.entries.items() if not (math.isfinite(v) and v >= 0)), None
        )
        if not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in numbers
        ):
            raise LutError(f"{path}: its calibration needs numbers a, b and scale: {fix}")
        if bad_entry is not None:
            raise LutError(f"{path}: entry {bad_entry} is not a latency in ms: {fix}")
        return table


CHUNK = 2000  # units per worker process
RUNTIME_CHUNK = 50  # on a runtime, where every unit is a program of its own
# How `build-lut` times each unit: short, and settled once the median is known to 3% (a whole
# model sums about ten units, whose errors partly cancel)
UNIT_MEASUREMENT = {
    "warmup": 3,
    "runs": 10,
    "max_seconds": 0.3,
    "target_spread": 0.1,
    "target_precision": 0.03,
}


def build_lut(
    space: Any,
    *,
    device: str,
    threads: int,
    img_size: int,
    num_classes: int,
    in_chans: int = 3,
    batch_size: int = 1,
    dtype: str = "float32",
    calibration_archs: int = 100,
    max_units: int | None = None,
    seed: int = 0,
    progress: Callable[[str, int, int], None] | None = None,
    measure_kwargs: dict[str, Any] | None = None,
) -> LatencyTable:
    """Measure every unit of `space` on `device` at `dtype`, then calibrate on whole
    architectures.

    The whole architectures are measured first, in this process while it is fresh; the units
    then run in fresh worker processes, a chunk each: a process that has built and freed
    thousands of modules runs whole models measurably slower (17% here), which would bias the
    calibration. With `max_units` below the space's unit count, a seeded sample of that many
    units (every unit kind and mixer among them) is measured and the rest are predicted from
    it (`UnitPredictor`): on a runtime each unit is its own program, seconds to build, so a
    large space's tens of thousands of units cannot all be measured. The table records which
    share was measured and the predictor's cross-validated error.
    `progress(phase, done, total)` is called as measurements finish.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import optuna
    import timm

    from nas import cost, runtimes
    from search_spaces.model import LightViT

    cost.check_device(device, dtype)
    found = space_units(space, img_size, in_chans, num_classes)
    kwargs = {
        "warmup": 5,
        "runs": 20,
        "max_seconds": 0.5,
        "target_spread": 0.05,
        **(measure_kwargs or {}),
    }
    items = sorted(found.items())
    sampled = sample_units(items, max_units, seed) if max_units is not None else items
    # the machine speed every figure of the table refers to: whole models and units are timed
    # beside the reference model and scaled to it, so a change of speed during the build
    # (a neighbour's load, throttling) cannot bias the entries or the calibration
    reference = cost.calibrate_reference(device, threads)

    # whole architectures first, in this process while it is fresh, as the search measures them
    candidates = space.sample_many(
        calibration_archs, seed=seed, num_classes=num_classes, in_chans=in_chans, img_size=img_size
    )
    archs, measured, drifts, refused_archs = [], [], [], 0
    for i, arch in enumerate(candidates):
        try:
            result = cost.measure_latency(
                LightViT(arch),
                (in_chans, arch.img_size, arch.img_size),
                device=device,
                threads=threads,
                batch_size=batch_size,
                dtype=dtype,
                reference=reference,
            )
        except runtimes.NotDeployable:
            refused_archs += 1  # the runtime cannot run it: nothing to calibrate on
        else:
            archs.append(arch)
            measured.append(result.median_ms)
            drifts.append(result.drift)
        if progress is not None:
            progress("calibration", i + 1, calibration_archs)
    if len(archs) < 2:
        raise LutError(
            f"{device} ran {len(archs)} of the {calibration_archs} sampled architectures: "
            "too few to calibrate the table on; sample more with --calibration"
        )

    # then every unit (or the sample), in fresh worker processes
    chunk_size = CHUNK if device in UNIT_DEVICES else RUNTIME_CHUNK
    chunks = [sampled[i : i + chunk_size] for i in range(0, len(sampled), chunk_size)]
    entries: dict[str, float] = {}
    refused: dict[str, str] = {}
    start = time.perf_counter()
    if progress is not None:
        progress("units", 0, len(sampled))
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context, max_tasks_per_child=1) as pool:
        for chunk in chunks:
            measured_units, unit_drifts, refused_units = pool.submit(
                _measure_units,
                chunk,
                device,
                threads,
                batch_size,
                dtype,
                kwargs,
                reference.to_dict(),
            ).result()
            entries.update(measured_units)
            refused.update(refused_units)
            drifts += unit_drifts
            if progress is not None:
                progress("units", len(entries) + len(refused), len(sampled))
    unit_seconds = time.perf_counter() - start
    predictor_meta: dict[str, Any] = {}
    if len(sampled) < len(items):
        if len(entries) < MIN_PREDICTOR_UNITS:
            raise LutError(
                f"{device} ran {len(entries)} of the {len(sampled)} sampled units: too few to "
                f"predict the other {len(items) - len(sampled):,} from (at least "
                f"{MIN_PREDICTOR_UNITS}); measure more with --units"
            )
        predictor = UnitPredictor(seed=seed).fit(
            [found[k] for k in entries], list(entries.values())
        )
        predictor_meta = predictor.cross_validate(
            [found[k] for k in entries], list(entries.values())
        )
        rest = [k for k, _ in items if k not in entries and k not in refused]
        predicted = predictor.predict([found[k] for k in rest])
        entries.update({k: round(v, 5) for k, v in zip(rest, predicted, strict=True)})
    table = LatencyTable(
        space.name,
        space.version,
        device,
        threads,
        batch_size,
        img_size,
        num_classes,
        in_chans,
        entries,
        dtype=dtype,
        not_deployable=refused,
    )
    deployable = [i for i, a in enumerate(archs) if not table.refusal(a)]
    table.calibration = fit_calibration(
        [table.group_sums(archs[i]) for i in deployable], [measured[i] for i in deployable]
    )
    table.reference = reference.to_dict()
    table.meta = {
        "hardware": cost.device_name(device),
        "cpu": cost.cpu_name(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "optuna": optuna.__version__,
        **({"executorch": runtimes.executorch_version()} if device == "executorch" else {}),
        "units": len(items),
        "measured_units": len(sampled),
        **({"unit_predictor": predictor_meta} if predictor_meta else {}),
        "unit_measurement": kwargs,
        "calibration_archs": calibration_archs,
        "calibration_refused": refused_archs,
        "seconds": round(time.perf_counter() - start, 1),
        "unit_seconds": round(unit_seconds, 1),
        "drift": _drift_summary(drifts),
        "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return table


UNITS_PER_GROUP = 5  # a sample of units holds at least this many of each group (or all)
MIN_PREDICTOR_UNITS = 20  # measured units below which the rest are not predicted


def unit_group(kind: str, cfg: dict[str, Any]) -> str:
    """The calibration group of a unit: its kind, and for a block its mixer."""
    return f"block:{cfg['mixer']}" if kind == "block" else kind


def sample_units(items: list[tuple[str, Unit]], n: int, seed: int = 0) -> list[tuple[str, Unit]]:
    """A seeded sample of `n` of `items` (all of them when there are no more): at least
    `UNITS_PER_GROUP` of every group (`unit_group`), the rest drawn uniformly, sorted by key."""
    import random

    if n >= len(items):
        return list(items)
    if n < 1:
        raise LutError(f"a table needs at least one measured unit, not {n}")
    rng = random.Random(seed)
    order = list(items)
    rng.shuffle(order)
    taken: dict[str, int] = {}
    chosen, rest = [], []
    for item in order:
        group = unit_group(*item[1])
        if taken.get(group, 0) < UNITS_PER_GROUP:
            taken[group] = taken.get(group, 0) + 1
            chosen.append(item)
        else:
            rest.append(item)
    chosen += rest[: max(0, n - len(chosen))]
    return sorted(chosen, key=lambda item: item[0])


class UnitPredictor:
    """The latency of units that were not measured, learned from those that were, in the way
    of LitePred's kernel predictors ("LitePred: Transferable and Scalable Latency Prediction
    for Hardware-Aware Neural Architecture Design", NSDI 2024) and nn-Meter's (MobiSys 2021):
    gradient-boosted trees on the log of the latency, from each unit's configuration (every
    field: names as categories, numbers as they are) and the sizes its cost grows with
    (tokens x width, tokens x width^2 x MLP ratio, tokens^2 x width)."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.columns: list[str] = []
        self.categories: dict[str, dict[str, int]] = {}
        self.model: Any = None

    @staticmethod
    def _fields(kind: str, cfg: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": kind, **cfg}
        grid = cfg.get("grid") or 0
        n = cfg.get("tokens") or grid * grid or (cfg.get("img") or 0) ** 2
        d = cfg.get("dim") or cfg.get("out_dim") or 0
        ratio = cfg.get("mlp_ratio") or 1.0
        out["_nd"] = float(n * d)
        out["_nd2"] = float(n * d * d * ratio)
        out["_n2d"] = float(n * n * d)
        return out

    def _matrix(self, units: list[Unit]) -> Any:
        import numpy as np

        x = np.full((len(units), len(self.columns)), np.nan)
        for i, unit in enumerate(units):
            fields = self._fields(*unit)
            for j, column in enumerate(self.columns):
                value = fields.get(column)
                if column in self.categories:
                    code = self.categories[column].get(str(value)) if value is not None else None
                    x[i, j] = np.nan if code is None else code
                elif isinstance(value, (bool, int, float)):
                    x[i, j] = float(value)
        return x

    def fit(self, units: list[Unit], ms: list[float]) -> UnitPredictor:
        import numpy as np
        from sklearn.ensemble import HistGradientBoostingRegressor

        rows = [self._fields(*u) for u in units]
        self.columns = sorted({k for r in rows for k in r})
        self.categories = {}
        for column in self.columns:
            values = {str(r[column]) for r in rows if isinstance(r.get(column), str)}
            if values:
                self.categories[column] = {v: i for i, v in enumerate(sorted(values))}
        self.model = HistGradientBoostingRegressor(
            max_iter=400,
            learning_rate=0.05,
            min_samples_leaf=5,
            categorical_features=[c in self.categories for c in self.columns],
            random_state=self.seed,
        )
        self.model.fit(self._matrix(units), np.log(np.maximum(ms, 1e-6)))
        return self

    def predict(self, units: list[Unit]) -> list[float]:
        import numpy as np

        if not units:
            return []
        return [float(v) for v in np.exp(self.model.predict(self._matrix(units)))]

    def cross_validate(self, units: list[Unit], ms: list[float], folds: int = 5) -> dict[str, Any]:
        """5-fold cross-validated error of this predictor's recipe on measured units."""
        import random
        import statistics

        order = list(range(len(units)))
        random.Random(self.seed).shuffle(order)
        errors = []
        for k in range(folds):
            held = set(order[k::folds])
            train = [i for i in order if i not in held]
            if not held or len(train) < 2:
                continue
            model = UnitPredictor(self.seed).fit([units[i] for i in train], [ms[i] for i in train])
            predicted = model.predict([units[i] for i in sorted(held)])
            errors += _errors(predicted, [ms[i] for i in sorted(held)])
        return {
            "model": "HistGradientBoostingRegressor on log latency (nas.lut.UnitPredictor)",
            "trained_on": len(units),
            "cv_folds": folds,
            "cv_median_abs_error": round(statistics.median(abs(e) for e in errors), 4)
            if errors
            else None,
            "cv_within_10": round(_within(errors), 4) if errors else None,
        }


def fit_calibration(
    group_sums: list[dict[str, float]], measured: list[float], ridge: float = 1.0
) -> dict[str, Any]:
    """Fit `latency = sum_g scale_g * sum_g + b` in relative error.

    A unit measured alone runs faster than inside the model (its weights stay in cache), and by
    how much depends on its kind: a head or a transition loses more than a large block. So each
    group (stem, pos, transition, cpe, head, block:<mixer>) gets its own scale, pulled towards
    the single global scale `a` by a ridge penalty so that rare groups stay sensible.
    """
    import numpy as np

    m = np.asarray(measured)
    groups = sorted({g for sums in group_sums for g in sums})
    totals = np.asarray([sum(s.values()) for s in group_sums])
    (a, b), *_ = np.linalg.lstsq(
        np.stack([totals / m, 1.0 / m], axis=1), np.ones_like(m), rcond=None
    )
    x = np.asarray([[s.get(g, 0.0) for g in groups] for s in group_sums])
    design = np.concatenate([x / m[:, None], (1.0 / m)[:, None]], axis=1)
    target = np.ones_like(m)
    penalty = np.sqrt(ridge) * np.eye(len(groups), len(groups) + 1)
    design = np.concatenate([design, penalty])
    target = np.concatenate([target, np.sqrt(ridge) * np.full(len(groups), a)])
    weights, *_ = np.linalg.lstsq(design, target, rcond=None)
    return {
        "a": round(float(a), 6),
        "b": round(float(weights[-1]), 6),
        "scale": {g: round(float(w), 6) for g, w in zip(groups, weights[:-1], strict=True)},
        "n": len(measured),
        "ridge": ridge,
        "global_b": round(float(b), 6),
    }


class _ReuseUnit(nn.Module):
    """What dynamic resolution adds to the two passes' blocks (`LightViT.forward`): the image
    resized to the first pass's side, that pass's final norm and pooling, and the projection
    of its features that the full-resolution classifier adds (`LightViT.reuse`)."""

    def __init__(self, low: int, dim: int) -> None:
        super().__init__()
        self.low = low
        self.norm = nn.LayerNorm(dim)
        self.reuse = nn.Linear(dim, dim)

    def forward(self, image: Any, x: Any, size: Any) -> Any:
        from search_spaces.blocks.exits import pool_tokens

        small = nn.functional.interpolate(
            image, size=(self.low, self.low), mode="bilinear", align_corners=False
        )
        return small, self.reuse(pool_tokens(self.norm(x), size))


class _HeadUnit(nn.Module):
    """LightViT's final norm, size-weighted pooling and classifier (and the distillation head,
    averaged with it, where there is one), as one timed unit."""

    def __init__(self, dim: int, num_classes: int, distill: bool = False) -> None:
        super().__init__()

        def linear() -> nn.Module:
            return nn.Linear(dim, num_classes) if num_classes else nn.Identity()

        self.norm = nn.LayerNorm(dim)
        self.head = linear()
        self.head_dist = linear() if distill else None

    def forward(self, x: Any, size: Any) -> Any:
        from search_spaces.blocks.exits import pool_tokens

        x = pool_tokens(self.norm(x), size)
        if self.head_dist is None:
            return self.head(x)
        return (self.head(x) + self.head_dist(x)) / 2


class _Bound(nn.Module):
    """A unit as a module of tensor inputs and outputs only, as torch.export and a runtime
    take it: its other arguments (grid sides, an absent size vector) are bound, and the
    tensors of its output are returned as a flat tuple."""

    def __init__(self, unit: nn.Module, args: tuple) -> None:
        super().__init__()
        self.unit = unit
        self.bound = [None if isinstance(a, torch.Tensor) else a for a in args]
        self.slots = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        args = list(self.bound)
        for i, t in zip(self.slots, tensors, strict=True):
            args[i] = t
        leaves = torch.utils._pytree.tree_leaves(self.unit(*args))
        return tuple(t for t in leaves if isinstance(t, torch.Tensor))


def _unit_module(
    kind: str, cfg: dict[str, Any], batch_size: int, device: Any
) -> tuple[nn.Module, tuple]:
    """One unit with random weights (eval mode, on `device`) and its arguments: inputs of its
    recorded shape, grid sides and size vectors as the model passes them."""
    from search_spaces.blocks import POS_ENCODINGS, STEMS
    from search_spaces.model import Block, Transition

    def tokens(n: int, dim: int) -> torch.Tensor:
        return torch.randn(batch_size, n, dim, device=device)

    if kind == "stem":
        module = STEMS[cfg["stem"]](cfg["in_chans"], cfg["dim"], cfg["patch"], cfg["img"])
        x = torch.randn(batch_size, cfg["in_chans"], cfg["img"], cfg["img"], device=device)
        args: tuple = (x,)
    elif kind in ("pos", "cpe"):
        grid = cfg["grid"]
        module = POS_ENCODINGS[cfg["pos_enc"]](cfg["dim"], (grid, grid))
        args = (tokens(grid * grid, cfg["dim"]), (grid, grid))
    elif kind == "transition":
        grid = cfg["grid"]
        module = Transition(cfg["in_dim"], cfg["out_dim"], cfg["downsample"])
        args = (tokens(grid * grid, cfg["in_dim"]), (grid, grid))
    elif kind == "block":
        grid, n = cfg["grid"], cfg["tokens"]
        options = {k: cfg[k] for k in MIXER_OPTIONS if k in cfg}
        stage = StageConfig(
            depth=1,
            dim=cfg["dim"],
            heads=cfg["heads"],
            mlp_ratio=cfg["mlp_ratio"],
            mixer=cfg["mixer"],
            merge_r=cfg["merge_r"],
            keep_rate=cfg["keep_rate"],
            **options,
        )
        pos = POS_ENCODINGS[cfg["attn_pos"]] if cfg["attn_pos"] != "none" else None
        module = Block(stage, (grid, grid), pos, prune=cfg["keep_rate"] < 1)
        size = torch.ones(batch_size, n, 1, device=device) if cfg["sized"] else None
        args = (tokens(n, cfg["dim"]), (grid, grid), size)
        if MIXER_SPECS[stage.mixer].carries:  # Mobile-Former's global tokens, as its stage's
            args = (*args, tokens(stage.global_tokens, cfg["dim"]))
    elif kind == "reuse":
        module = _ReuseUnit(cfg["low"], cfg["dim"])
        n, img = cfg["tokens"], cfg["img"]
        size = torch.ones(batch_size, n, 1, device=device) if cfg["sized"] else None
        image = torch.randn(batch_size, cfg["in_chans"], img, img, device=device)
        args = (image, tokens(n, cfg["dim"]), size)
    elif kind == "head":
        module = _HeadUnit(cfg["dim"], cfg["num_classes"], cfg.get("distill", False))
        n = cfg["tokens"]
        size = torch.ones(batch_size, n, 1, device=device) if cfg["sized"] else None
        args = (tokens(n, cfg["dim"]), size)
    else:
        raise ValueError(f"unknown unit kind {kind!r}")
    return module.to(device).eval(), args


def measure_unit(
    kind: str,
    cfg: dict[str, Any],
    *,
    device: str,
    threads: int,
    batch_size: int,
    dtype: str = "float32",
    **kwargs: Any,
) -> float:
    """Median latency in ms of one unit alone on `device` (eval mode, no_grad). On a runtime
    (`cost.RUNTIME_DEVICES`) the unit alone is converted to that runtime's program (int8:
    quantised first, as whole models are) and run there; `runtimes.NotDeployable` when the
    runtime cannot take it."""
    from nas import cost

    with cost.torch_threads(threads), torch.no_grad():
        if device in cost.RUNTIME_DEVICES:
            module, args = _unit_module(kind, cfg, batch_size, torch.device("cpu"))
            inputs = tuple(a for a in args if isinstance(a, torch.Tensor))
            fn, _ = cost.runtime_fn(_Bound(module, args), inputs, device, threads, dtype)
            timer = None
        else:
            target = torch.device("cuda" if device == "cuda" else "cpu")
            module, args = _unit_module(kind, cfg, batch_size, target)
            torch_dtype = cost.DTYPES[dtype]
            if torch_dtype != torch.float32:  # the model's precision (float16 on a GPU)
                module = module.to(torch_dtype)
                args = tuple(a.to(torch_dtype) if isinstance(a, torch.Tensor) else a for a in args)

            def fn() -> Any:
                return module(*args)

            timer = cost._cuda_events if device == "cuda" else None
        times = cost.time_calls(fn, timer=timer, **kwargs)
    return round(cost._quartiles(times)[1], 5)


def _tau(a: list[float], b: list[float]) -> float:
    from scipy.stats import kendalltau

    return float(kendalltau(a, b).statistic)


def _errors(predicted: list[float], measured: list[float]) -> list[float]:
    return [(p - m) / m for p, m in zip(predicted, measured, strict=True)]


def _within(errors: list[float], tolerance: float = 0.10) -> float:
    return sum(abs(e) <= tolerance for e in errors) / len(errors)


@dataclass
class Validation:
    """Predicted against measured latency over sampled architectures."""

    predicted: list[float]  # at the table's reference speed
    measured: list[float]  # drift-corrected to the same speed (raw for tables without one)
    archs: list[str]
    predict_ms: float  # median time to predict one architecture (units + lookups)
    measure_s: float  # median time to build and measure one architecture
    raw: list[float] = field(default_factory=list)  # the plain measured medians
    drifts: list[float] = field(default_factory=list)  # reference now / at the build
    refused: int = 0  # sampled architectures the table's runtime cannot run (left out)

    @property
    def kendall_tau(self) -> float:
        return _tau(self.predicted, self.measured)

    @property
    def errors(self) -> list[float]:
        return _errors(self.predicted, self.measured)

    @property
    def mape(self) -> float:
        return sum(abs(e) for e in self.errors) / len(self.errors)

    @property
    def within_10(self) -> float:
        return _within(self.errors)

    @property
    def raw_errors(self) -> list[float]:
        """The table's predictions scaled to the machine's speed at each measurement (the
        reference's drift) against the plain measured figures."""
        scaled = [p * d for p, d in zip(self.predicted, self.drifts, strict=True)]
        return _errors(scaled, self.raw)

    def summary(self) -> str:
        line = (
            f"{len(self.measured)} architectures: Kendall's tau {self.kendall_tau:.3f}, "
            f"MAPE {100 * self.mape:.1f}%, within +-10%: {100 * self.within_10:.1f}%"
        )
        if self.raw and self.drifts and any(d != 1.0 for d in self.drifts):
            line += (
                " (drift-corrected); raw figures: tau "
                f"{_tau(self.predicted, self.raw):.3f}, within +-10% of the predictions "
                f"{100 * _within(_errors(self.predicted, self.raw)):.1f}%, or "
                f"{100 * _within(self.raw_errors):.1f}% scaled by the drift "
                f"({min(self.drifts):.2f}-{max(self.drifts):.2f}x)"
            )
        if self.refused:
            line += f"; {self.refused} the runtime cannot run left out"
        return (
            f"{line}; LUT check {self.predict_ms:.2f} ms, measured check "
            f"{self.measure_s:.2f} s (medians per architecture)"
        )

    def plot(self, path: str, title: str) -> str:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 6))
        ax.scatter(self.measured, self.predicted, s=14, alpha=0.7)
        low = min(self.measured + self.predicted) * 0.9
        high = max(self.measured + self.predicted) * 1.1
        ax.plot([low, high], [low, high], color="black", lw=1, label="predicted = measured")
        ax.fill_between(
            [low, high],
            [low * 0.9, high * 0.9],
            [low * 1.1, high * 1.1],
            color="tab:green",
            alpha=0.15,
            label="within +-10%",
        )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("measured latency (ms, median)")
        ax.set_ylabel("LUT-predicted latency (ms)")
        ax.set_title(
            f"{title}\ntau {self.kendall_tau:.3f}, MAPE {100 * self.mape:.1f}%, "
            f"{100 * self.within_10:.0f}% within +-10%",
            fontsize=10,
        )
        ax.legend(loc="upper left", fontsize=8)
        ax.grid(alpha=0.3, which="both")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path


def measure_like(table: LatencyTable, arch: ArchConfig, reference: Any, **kwargs: Any) -> Any:
    """`arch` measured as `table` measured its whole models: its device, precision, threads
    and batch, drift-corrected against `reference` (a `nas.cost.Reference`, or None)."""
    from nas import cost
    from search_spaces.model import LightViT

    return cost.measure_latency(
        LightViT(arch),
        (arch.in_chans, arch.img_size, arch.img_size),
        device=table.device,
        threads=table.threads,
        batch_size=table.batch_size,
        dtype=table.dtype,
        reference=reference,
        **kwargs,
    )


def validate(
    table: LatencyTable,
    space: Any,
    n: int,
    *,
    seed: int = 1,
    progress: Callable[[str, int, int], None] | None = None,
    measure_kwargs: dict[str, Any] | None = None,
) -> Validation:
    """Sample `n` architectures (seeded), predict each with the table and measure it. On a
    runtime, an architecture it cannot run (refused by the table or by the runtime itself) is
    counted in `Validation.refused` and left out of the figures."""
    import statistics

    from nas import cost, runtimes

    sampled = space.sample_many(
        n,
        seed=seed,
        num_classes=table.num_classes,
        in_chans=table.in_chans,
        img_size=table.img_size,
    )
    reference = cost.Reference.from_dict(table.reference) if table.reference else None
    predicted, measured, archs, predict_times, measure_times = [], [], [], [], []
    raw, drifts, refused = [], [], 0
    for i, arch in enumerate(sampled):
        try:
            start = time.perf_counter()
            prediction = table.predict(arch)
            predict_time = (time.perf_counter() - start) * 1e3
            start = time.perf_counter()
            result = measure_like(table, arch, reference, **(measure_kwargs or {}))
        except runtimes.NotDeployable:
            refused += 1
        else:
            predicted.append(prediction)
            predict_times.append(predict_time)
            measure_times.append(time.perf_counter() - start)
            measured.append(result.median_ms)
            raw.append(result.raw_ms if result.raw_ms is not None else result.median_ms)
            drifts.append(result.drift if result.drift is not None else 1.0)
            archs.append(arch.describe())
        if progress is not None:
            progress("validate", i + 1, n)
    if len(measured) < 2:
        raise LutError(f"{table.device} ran {len(measured)} of {n} sampled architectures")
    return Validation(
        predicted,
        measured,
        archs,
        statistics.median(predict_times),
        statistics.median(measure_times),
        raw=raw,
        drifts=drifts,
        refused=refused,
    )


REFERENCE_EVERY = 25  # units between two timings of the reference model in a build


def _measure_units(
    items: list[tuple[str, Unit]],
    device: str,
    threads: int,
    batch_size: int,
    dtype: str,
    kwargs: dict[str, Any],
    reference: dict[str, Any],
) -> tuple[dict[str, float], list[float], dict[str, str]]:
    """Worker: measure a chunk of units, timing the reference model before and after every
    `REFERENCE_EVERY` units and scaling those units to the reference's calibrated speed by the
    mean of the two. Returns the entries, the drift of each group and the units the runtime
    refused, with its reason."""
    from nas import cost, runtimes

    ref = cost.Reference.from_dict(reference)
    entries: dict[str, float] = {}
    refused: dict[str, str] = {}
    drifts = []
    before = cost.reference_now(ref)
    for start in range(0, len(items), REFERENCE_EVERY):
        group = {}
        for key, (kind, cfg) in items[start : start + REFERENCE_EVERY]:
            try:
                group[key] = measure_unit(
                    kind,
                    cfg,
                    device=device,
                    threads=threads,
                    batch_size=batch_size,
                    dtype=dtype,
                    **kwargs,
                )
            except runtimes.NotDeployable as e:
                refused[key] = e.reason
        after = cost.reference_now(ref)
        drift = (before + after) / 2 / ref.ms
        entries.update({key: round(ms / drift, 5) for key, ms in group.items()})
        drifts.append(drift)
        before = after
    return entries, drifts, refused


def _drift_summary(drifts: list[float | None]) -> dict[str, float]:
    """How much slower than at calibration the machine ran: min, median, max."""
    import statistics

    values = [d for d in drifts if d is not None]
    if not values:
        return {}
    return {
        "min": round(min(values), 4),
        "median": round(statistics.median(values), 4),
        "max": round(max(values), 4),
    }
