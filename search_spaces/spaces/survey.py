"""`survey`: every family of building blocks from the lightweight-ViT literature in one space
(version 2).

Global choices: stem (patch, conv, overlap, multiscale, repconv, mv2) and its stride, input
resolution (3/4 or all of the data's), position encoding (none, learned, sincos, cpe, posmlp,
rope_axial, rope_mixed, unitary, rel_bias, fire), macro structure (isotropic: one stage;
hierarchical: 2-3 stages, each after the first halving the grid). Per stage: token mixer (mhsa,
sra, linear, window, lisa, mobileformer, pool, dwconv, shift), depth, width, heads (attention
mixers), MLP ratio, the mixer's own option (sra ratio, window size, global tokens, kernel size,
shift fraction: the values its `MIXER_SPECS` row lists), and in the last stage a token
reduction (none, ToMe merging, EViT pruning) where the rules allow it. Finally 0-2 early exits
placed at a quarter, half or three quarters of the depth, and dynamic resolution: off, or a
first pass at half the searched resolution (a multiple of the stride) that answers the images
it is sure of.

Version 1 had neither lisa, mobileformer, shift, posmlp, unitary nor dynamic resolution; the
space keeps it (`at_version(1)`, a config's `space_version: 1`), so a study made on it resumes
there, and a study of version 1 is refused under version 2 (`nas.lifecycle`).

Compatibility rules (`search_spaces.arch`) are kept inside `sample`, so every draw builds:
  - window sizes become the largest divisor of the stage's grid that is no larger than the
    choice and smaller than the grid; a grid with none (a prime side, or 2) makes the stage mhsa;
  - the sra ratio is capped at the grid side; a 1x1 grid makes the stage mhsa;
  - token reduction is only offered in the last stage with an mhsa or linear mixer and an
    input-site position encoding;
  - an attention-site position encoding (RoPE, relative bias, FIRE) with no mhsa or window stage
    to act in becomes `none`;
  - exits that land on the same block, or on the last one, are dropped;
  - dynamic resolution where some block cannot run on the half-resolution grid (a window that
    does not divide it, a grid too small to downsample) is off.
Several parameter sets can therefore give the same architecture; `sample` is deterministic, so
`FixedTrial(params)` always rebuilds the same one.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from search_spaces.arch import (
    ATTENTION_MIXERS,
    GRID_FREE_MIXERS,
    INPUT_POS_ENCS,
    MIXER_SPECS,
    ArchConfig,
    StageConfig,
)
from search_spaces.spaces.base import StageContext, StagedSpace, TrialLike, usable_pos_enc

__all__ = ["SurveySpace"]


class SurveySpace(StagedSpace):
    version = 2  # 2: lisa, mobileformer, shift; posmlp, unitary; dynamic_resolution

    stems = ("patch", "conv", "overlap", "multiscale", "repconv", "mv2")
    patch_sizes = (2, 4)
    resolutions = (0.75, 1.0)
    pos_encs = (
        "none",
        "learned",
        "sincos",
        "cpe",
        "posmlp",
        "rope_axial",
        "rope_mixed",
        "unitary",
        "rel_bias",
        "fire",
    )
    mixers = ("mhsa", "sra", "linear", "window", "lisa", "mobileformer", "pool", "dwconv", "shift")
    dims = (32, 48, 64, 96, 128, 160)
    heads = (1, 2, 4)
    mlp_ratios = (2.0, 3.0, 4.0)
    merge_rs = (1, 2, 4, 8)
    keep_rates = (0.5, 0.7)
    exit_positions = (0.25, 0.5, 0.75)
    # a first pass at half the searched resolution, the full one only where it is unsure
    dynamic_resolutions = ("off", "half")
    isotropic_depth = (2, 8)
    hierarchical_depth = (1, 4)

    def __init__(
        self,
        name: str = "survey",
        macros: tuple[str, ...] = ("isotropic", "hierarchical"),
        description: str = "",
    ) -> None:
        self.name = name
        self.macros = macros
        self.description = description or (
            "every block family: 6 stems, 10 position encodings, 9 mixers, ToMe/EViT, exits, "
            "dynamic resolution, " + " or ".join(macros) + " macro structure, 2 input resolutions"
        )

    def nearest_params(self, arch: ArchConfig, img_size: int) -> dict[str, Any]:
        """Parameters of this space whose architecture is the one nearest `arch` (for warm
        starts): its stem, stride, encoding, structure and mixers where the space has them,
        and the space's widths, depths, heads, ratios and options closest to its own; no token
        reduction, no exits. `sample(FixedTrial(...))` rebuilds it; it is `arch` itself when
        `arch` is a point of the space."""

        def near(value: float, options: tuple) -> Any:
            return min(options, key=lambda o: (abs(o - value), o))

        many = len(arch.stages) > 1
        macro = ("hierarchical" if many else "isotropic") if len(self.macros) > 1 else None
        if macro is None:
            many = self.macros[0] == "hierarchical"
        params: dict[str, Any] = {
            "stem": arch.stem if arch.stem in self.stems else self.stems[0],
            "patch_size": near(arch.patch_size, self.patch_sizes),
            "resolution": near(arch.img_size / img_size, self.resolutions),
            "pos_enc": arch.pos_enc if arch.pos_enc in self.pos_encs else "none",
            "num_exits": 0,
        }
        if macro is not None:
            params["macro"] = macro
        stages = arch.stages
        if many:
            params["num_stages"] = min(max(len(stages), 2), 3)
            stages = (stages + stages[-1:] * 3)[: params["num_stages"]]
        else:
            stages = stages[:1]
        for i, s in enumerate(stages, 1):
            spec = MIXER_SPECS.get(s.mixer)
            mixer = s.mixer if s.mixer in self.mixers else "mhsa"
            params[f"stage{i}.mixer"] = mixer
            if many:
                params[f"stage{i}.depth"] = min(
                    max(s.depth, self.hierarchical_depth[0]), self.hierarchical_depth[1]
                )
            else:
                params["depth"] = min(
                    max(s.depth, self.isotropic_depth[0]), self.isotropic_depth[1]
                )
            dim = near(s.dim, self.dims)
            params[f"stage{i}.dim"] = dim
            fitting = tuple(h for h in self.heads if dim % h == 0) or self.heads
            params[f"stage{i}.heads"] = near(s.heads, fitting)
            params[f"stage{i}.mlp_ratio"] = near(s.mlp_ratio, self.mlp_ratios)
            spec = MIXER_SPECS[mixer]
            if spec.option:
                value = getattr(s, spec.option) if s.mixer == mixer else spec.choices[0]
                params[f"stage{i}.{spec.option}"] = near(value, spec.choices)
            params[f"stage{i}.reduction"] = "none"
        if "dynamic_resolution" in self.choices(img_size):  # version 2 asks it
            params["dynamic_resolution"] = "off"
        return params

    def sample_globals(self, trial: TrialLike, img_size: int) -> dict[str, Any]:
        stem = trial.suggest_categorical("stem", self.stems)
        patch = trial.suggest_categorical("patch_size", self.patch_sizes)
        scale = trial.suggest_categorical("resolution", self.resolutions)
        pos_enc = trial.suggest_categorical("pos_enc", self.pos_encs)
        macro = (
            trial.suggest_categorical("macro", self.macros)
            if len(self.macros) > 1
            else self.macros[0]
        )
        num_stages = 1 if macro == "isotropic" else trial.suggest_int("num_stages", 2, 3)
        size = max(patch, round(img_size * scale / patch) * patch)
        return {
            "stem": stem,
            "patch_size": patch,
            "img_size": size,
            "pos_enc": pos_enc,
            "macro": macro,
            "num_stages": num_stages,
            "downsample": [i > 0 for i in range(num_stages)],
        }

    def sample_stage(self, trial: TrialLike, ctx: StageContext) -> StageConfig:
        i, grid = ctx.index, ctx.grid
        mixer = trial.suggest_categorical(f"stage{i}.mixer", self.mixers)
        if ctx.index == 1 and ctx.is_last:  # isotropic: one stage, its own depth range
            depth = trial.suggest_int("depth", *self.isotropic_depth)
        else:
            depth = trial.suggest_int(f"stage{i}.depth", *self.hierarchical_depth)
        dim = trial.suggest_categorical(f"stage{i}.dim", self.dims)
        heads = (
            trial.suggest_categorical(f"stage{i}.heads", self.heads)
            if mixer in ATTENTION_MIXERS
            else 1
        )
        mlp_ratio = trial.suggest_categorical(f"stage{i}.mlp_ratio", self.mlp_ratios)
        options: dict[str, Any] = {}
        spec = MIXER_SPECS[mixer]
        if spec.option:  # its values from the table; one that cannot run here makes it mhsa
            value = trial.suggest_categorical(f"stage{i}.{spec.option}", spec.choices)
            fitted = spec.fit_option(value, grid, dim)
            if fitted is None:
                mixer = "mhsa"
            else:
                options[spec.option] = fitted
        if ctx.is_last and mixer in GRID_FREE_MIXERS and ctx.pos_enc in INPUT_POS_ENCS:
            reduction = trial.suggest_categorical(f"stage{i}.reduction", ("none", "tome", "evit"))
            if reduction == "tome":
                options["merge_r"] = trial.suggest_categorical(f"stage{i}.merge_r", self.merge_rs)
            elif reduction == "evit":
                options["keep_rate"] = trial.suggest_categorical(
                    f"stage{i}.keep_rate", self.keep_rates
                )
        return StageConfig(
            depth=depth,
            dim=dim,
            heads=heads,
            mlp_ratio=mlp_ratio,
            mixer=mixer,
            downsample=ctx.downsample,
            **options,
        )

    def finish(
        self,
        trial: TrialLike,
        g: dict[str, Any],
        stages: tuple[StageConfig, ...],
        num_classes: int,
        in_chans: int,
    ) -> ArchConfig:
        pos_enc = usable_pos_enc(g["pos_enc"], stages)
        depth = sum(s.depth for s in stages)
        exits = set()
        for e in range(1, trial.suggest_int("num_exits", 0, 2) + 1):
            at = trial.suggest_categorical(f"exit{e}.at", self.exit_positions)
            block = round(at * depth)
            if 1 <= block < depth:
                exits.add(block)
        arch = self.arch(
            g, stages, num_classes, in_chans, pos_enc=pos_enc, exits=tuple(sorted(exits))
        )
        if (
            not self.dynamic_resolutions
            or trial.suggest_categorical("dynamic_resolution", self.dynamic_resolutions) == "off"
        ):
            return arch
        try:  # every block must run on both grids (a window must divide both, ...)
            return dataclasses.replace(arch, dynamic_resolution=self.low_resolutions(g)[0])
        except (ValueError, IndexError):
            return arch

    def at_version(self, version: int) -> SurveySpace:
        """Version 2 (this one) or version 1, which it keeps: the same sampling without the
        choices version 2 added (lisa, mobileformer, shift; posmlp, unitary; dynamic
        resolution), so that a study made on version 1 resumes as it was drawn."""
        if version == self.version:
            return self
        if version != 1:
            raise ValueError(f"space '{self.name}' keeps versions 1 and 2, not {version}")
        old = copy.copy(self)
        old.version = 1
        old.pos_encs = tuple(p for p in self.pos_encs if p not in ("posmlp", "unitary"))
        old.mixers = tuple(m for m in self.mixers if m not in ("lisa", "mobileformer", "shift"))
        old.dynamic_resolutions = ()
        old.description = self.description.replace(
            "10 position encodings, 9 mixers", "8 position encodings, 6 mixers"
        ).replace("dynamic resolution, ", "")
        return old

    def low_resolutions(self, g: dict[str, Any]) -> tuple[int, ...]:
        """Half the searched side, rounded down to a multiple of the stride (at least one
        patch), where that is below it."""
        if "half" not in self.dynamic_resolutions:
            return ()
        patch, size = g["patch_size"], g["img_size"]
        low = max(patch, size // 2 // patch * patch)
        return (low,) if low < size else ()
