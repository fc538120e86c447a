"""Architectures as data: `ArchConfig` and `StageConfig`.

An architecture is a frozen dataclass of JSON values. It round-trips through JSON exactly
(`ArchConfig.from_json(cfg.to_json()) == cfg`), every trial stores it, and `LightViT(cfg)` builds
it. Block names (`stem`, `pos_enc`, `mixer`) refer to the registries in `search_spaces.blocks`.
This module imports nothing but the standard library; it checks structure and the compatibility
rules between blocks (below), so that an invalid architecture fails here, with the rule named,
whoever wrote it.

Compatibility rules:
  - `heads` divides `dim`; with RoPE the head width is a multiple of 4 (two axes, pairs: its
    `POS_ENC_SPECS` row's `head_multiple`).
  - `window` attention needs a window that divides the stage's token grid and is smaller than it.
  - `sra` needs 2 <= `sr_ratio` <= the stage's grid side.
  - attention-site position encodings (RoPE, relative bias, FIRE) act inside `mhsa` and `window`
    attention; an architecture using one has at least one such stage.
  - token reduction (`merge_r` for ToMe, `keep_rate` < 1 for EViT pruning; one per stage) changes
    the number of tokens, so it is allowed only in the last stage, with a mixer that needs no
    grid (`mhsa`, `linear`) and a position encoding added at the input (`none`, `learned`,
    `sincos`).
  - `exits` are block numbers (1-based, over all stages) after which an exit classifier sits,
    strictly increasing and before the last block.

Schema history:
    1: stem, patch_size, pos_enc, stages of (depth, dim, heads, mlp_ratio, mixer, downsample).
    2: per stage sr_ratio, window, kernel_size, merge_r, keep_rate; exits. Version-1 configs read
       unchanged (every new field has a default that means "absent").
    3: distill_head (a second classifier trained on a teacher's predictions). Older configs read
       unchanged.
    4: per stage shift_div (the `shift` mixer) and global_tokens (`mobileformer`);
       dynamic_resolution (a low-resolution first pass). Fields
       added from schema 4 on are written only where they are set, and a config is written in
       the oldest schema that holds it: an architecture that uses no new block keeps the JSON
       (hence the hashes and cache keys) it had, and older versions of the tool still read it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from search_spaces.typed import TypeCheckError, from_dict, to_dict

__all__ = [
    "SCHEMA_VERSION",
    "ArchConfig",
    "StageConfig",
    "ArchConfigError",
    "ATTENTION_MIXERS",
    "POS_ATTENTION_MIXERS",
    "GRID_FREE_MIXERS",
    "MIXER_OPTIONS",
    "MIXER_SPECS",
    "MixerSpec",
    "mixer_label",
    "mixer_options",
    "POS_ENC_SPECS",
    "PosEncSpec",
    "STEM_SPECS",
    "StemSpec",
    "INPUT_POS_ENCS",
    "STAGE_POS_ENCS",
    "ATTENTION_POS_ENCS",
    "largest_divisor_below",
    "MAX_IMG_SIZE",
    "MAX_CLASSES",
    "ARCH_LIMITS",
]

SCHEMA_VERSION = 4
READABLE_SCHEMAS = (1, 2, 3, 4)
# The oldest schema a config is written in, and the stage fields added since (the schema each
# needs; written only where set, see the schema history above).
_BASE_SCHEMA = 3
_STAGE_FIELDS_SINCE = {"shift_div": 4, "global_tokens": 4}
_ARCH_FIELDS_SINCE = {"dynamic_resolution": 4}

ArchConfigError = TypeCheckError

MAX_IMG_SIZE = 1024
MAX_CLASSES = 100_000
# Sizes an architecture may ask for: past these one model would take gigabytes (an edited
# config.json must fail here, not in an allocation). docs/limits.md lists them.
ARCH_LIMITS: dict[str, float] = {
    "img_size": MAX_IMG_SIZE,
    "in_chans": 64,
    "num_classes": MAX_CLASSES,
    "patch_size": 64,
    "stages": 8,
    "depth": 64,
    "dim": 4_096,
    "heads": 256,
    "mlp_ratio": 16,
    "sr_ratio": 64,
    "window": 256,
    "kernel_size": 31,
    "merge_r": 4_096,
    "shift_div": 4_096,
    "global_tokens": 256,
}


@dataclass(frozen=True)
class MixerSpec:
    """What the tool knows of a token mixer beyond its module: one row per mixer of
    `search_spaces.blocks.MIXERS` (a test holds the keys equal), read by every consumer
    (architecture lines, validity rules, lookup-table keys, pictures, dashboard notes).

    `option`: the `StageConfig` field the mixer takes (`sr_ratio`, `window`, `kernel_size`),
    shown after the name (`sra/2`); `choices`: the values the search spaces offer for it;
    `fit`: the value a sampled option becomes on a stage of that grid side and width, or None
    where the mixer cannot run there (the spaces then use `mhsa`), so that every draw builds;
    `attention`: its `heads` field is meaningful; `grid_free`: it needs no token grid, so
    tokens may be merged or pruned before it; `pos_attention`: attention-site position
    encodings act inside it; `residual`: the block computes `x + mixer(norm(x))` (False: the
    mixer's output replaces the tokens, `x = mixer(x)`, as ShiftViT's shift does); `carries`:
    the mixer takes and returns a state carried through its stage's blocks (Mobile-Former's
    global tokens, as many as its option says), whose start the stage holds."""

    words: str
    option: str | None = None
    option_words: str = ""
    choices: tuple[int, ...] = ()
    fit: Callable[[int, int, int], int | None] | None = None
    attention: bool = False
    grid_free: bool = False
    pos_attention: bool = False
    residual: bool = True
    carries: bool = False
    colour: str = "#999999"

    def fit_option(self, value: int, grid: int, dim: int) -> int | None:
        """`value` as it runs on a `grid` x `grid` stage of width `dim` (None: this mixer
        cannot run there)."""
        return self.fit(value, grid, dim) if self.fit else value


def _capped_at_grid(value: int, grid: int, dim: int) -> int | None:
    return min(value, grid) if grid >= 2 else None


def _shift_groups(value: int, grid: int, dim: int) -> int | None:
    return min(value, dim) if grid >= 2 else None  # at least one channel per direction


def _divisor_of_grid(value: int, grid: int, dim: int) -> int | None:
    window = largest_divisor_below(grid, value)
    return window if window >= 2 else None


MIXER_SPECS: dict[str, MixerSpec] = {
    "mhsa": MixerSpec(
        "multi-head self-attention",
        attention=True,
        grid_free=True,
        pos_attention=True,
        colour="#4c72b0",
    ),
    "sra": MixerSpec(
        "spatial-reduction attention",
        "sr_ratio",
        "reduction",
        choices=(2, 4),
        fit=_capped_at_grid,
        attention=True,
        colour="#8172b2",
    ),
    "linear": MixerSpec("linear attention", attention=True, grid_free=True, colour="#64b5cd"),
    "window": MixerSpec(
        "window attention",
        "window",
        "window",
        choices=(2, 4),
        fit=_divisor_of_grid,
        attention=True,
        pos_attention=True,
        colour="#55a868",
    ),
    "lisa": MixerSpec("structure-aware attention (LiSA)", attention=True, colour="#8c8c3c"),
    "mobileformer": MixerSpec(
        "Mobile-Former (bottleneck and global tokens)",
        "global_tokens",
        "global tokens",
        choices=(3, 6),
        attention=True,
        carries=True,
        colour="#b07aa1",
    ),
    "pool": MixerSpec("pooling", colour="#dd8452"),
    "dwconv": MixerSpec(
        "depthwise convolution", "kernel_size", "kernel", choices=(3, 5, 7), colour="#c44e52"
    ),
    "shift": MixerSpec(
        "partial shift",
        "shift_div",
        "1/n of the channels per direction",
        choices=(6, 12, 24),
        fit=_shift_groups,
        residual=False,
        colour="#937860",
    ),
}
# Mixers whose `heads` field is meaningful.
ATTENTION_MIXERS = frozenset(n for n, m in MIXER_SPECS.items() if m.attention)
# Mixers inside which attention-site position encodings act.
POS_ATTENTION_MIXERS = frozenset(n for n, m in MIXER_SPECS.items() if m.pos_attention)
# Mixers that do not need the token grid (so tokens may be merged or pruned before them).
GRID_FREE_MIXERS = frozenset(n for n, m in MIXER_SPECS.items() if m.grid_free)
# The StageConfig fields that are some mixer's option.
MIXER_OPTIONS = tuple(m.option for m in MIXER_SPECS.values() if m.option)


def mixer_options(stage: StageConfig | dict[str, Any]) -> dict[str, Any]:
    """The stage's mixer option as `{field: value}` (empty for a mixer without one)."""
    get = stage.get if isinstance(stage, dict) else lambda k: getattr(stage, k)
    spec = MIXER_SPECS.get(get("mixer"))
    return {spec.option: get(spec.option)} if spec and spec.option else {}


def mixer_label(stage: StageConfig | dict[str, Any]) -> str:
    """The mixer with its option, as architecture lines show it: `sra/2`, `pool`."""
    mixer = stage["mixer"] if isinstance(stage, dict) else stage.mixer
    return "/".join([mixer, *map(str, mixer_options(stage).values())])


@dataclass(frozen=True)
class StemSpec:
    """A stem in words: one row per stem of `search_spaces.blocks.STEMS` (a test holds the keys
    equal). A stem's one per-block property, the path of its first convolution that timm adapts
    to other input channels (`first_conv`), belongs to its module and stays there."""

    words: str


STEM_SPECS: dict[str, StemSpec] = {
    "patch": StemSpec("patch embedding"),
    "conv": StemSpec("stack of stride-2 3x3 convolutions"),
    "overlap": StemSpec("overlapping patch embedding"),
    "multiscale": StemSpec("two-scale patch embedding"),
    "repconv": StemSpec("re-parameterisable convolutions"),
    "mv2": StemSpec("MobileNetV2 inverted bottlenecks"),
}


@dataclass(frozen=True)
class PosEncSpec:
    """What the tool knows of a position encoding beyond its module: one row per encoding of
    `search_spaces.blocks.POS_ENCODINGS` (a test holds the keys equal), read by the model,
    the validity rules, the spaces and the lookup tables.

    `site`: where the model applies it: `input` (once, to the stem's tokens), `stage` (after
    the first block of every stage, as CPVT places its PEG) or `attention` (inside the mixers
    whose row says `pos_attention`, one instance per mixer); `head_multiple`: the head width of
    every attention stage it acts in must be a multiple of it (RoPE rotates pairs on two axes:
    4)."""

    words: str
    site: str
    head_multiple: int = 1


POS_ENC_SPECS: dict[str, PosEncSpec] = {
    "none": PosEncSpec("no position encoding", "input"),
    "learned": PosEncSpec("learned absolute embedding", "input"),
    "sincos": PosEncSpec("fixed 2-D sin-cos embedding", "input"),
    "cpe": PosEncSpec("conditional position encoding", "stage"),
    "posmlp": PosEncSpec("positional gating unit (PosMLP)", "stage"),
    "rope_axial": PosEncSpec("axial RoPE", "attention", head_multiple=4),
    "rope_mixed": PosEncSpec("mixed-frequency RoPE", "attention", head_multiple=4),
    "unitary": PosEncSpec("unitary (LRPE) encoding", "attention", head_multiple=4),
    "rel_bias": PosEncSpec("relative position bias", "attention"),
    "fire": PosEncSpec("FIRE relative bias", "attention"),
}
# Where each position encoding acts.
INPUT_POS_ENCS = frozenset(n for n, p in POS_ENC_SPECS.items() if p.site == "input")
STAGE_POS_ENCS = frozenset(n for n, p in POS_ENC_SPECS.items() if p.site == "stage")
ATTENTION_POS_ENCS = frozenset(n for n, p in POS_ENC_SPECS.items() if p.site == "attention")


@dataclass(frozen=True)
class StageConfig:
    """One stage: `depth` blocks of width `dim` sharing one token mixer.

    `heads` is used by attention mixers only (1 for the others). `downsample` halves the token
    grid with a stride-2 convolution at the start of the stage (hierarchical models, PVT/Swin
    style); a change of width without downsampling uses a 1x1 projection. Mixer options:
    `sr_ratio` (sra), `window` (window), `kernel_size` (dwconv), `shift_div` (shift: each of
    the four directions moves `dim // shift_div` channels; schema 4), `global_tokens`
    (mobileformer; schema 4). Token reduction: `merge_r`
    tokens merged per block (ToMe) or `keep_rate` of the tokens kept after the first block
    (EViT); 0 and 1.0 mean none.
    """

    depth: int
    dim: int
    heads: int = 1
    mlp_ratio: float = 4.0
    mixer: str = "mhsa"
    downsample: bool = False
    sr_ratio: int = 1
    window: int = 0
    kernel_size: int = 3
    merge_r: int = 0
    keep_rate: float = 1.0
    shift_div: int = field(default=0, metadata={"omit_default": True})
    global_tokens: int = field(default=0, metadata={"omit_default": True})

    def __post_init__(self) -> None:
        _require_numbers(
            self,
            (
                "depth",
                "dim",
                "heads",
                "sr_ratio",
                "window",
                "kernel_size",
                "merge_r",
                "shift_div",
                "global_tokens",
            ),
            ("mlp_ratio", "keep_rate"),
        )
        if self.depth < 1:
            raise ValueError(f"depth must be >= 1, got {self.depth}")
        if self.dim < 1 or self.heads < 1:
            raise ValueError(f"dim and heads must be >= 1, got dim={self.dim} heads={self.heads}")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")
        if self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be > 0, got {self.mlp_ratio}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 1, got {self.kernel_size}")
        if self.merge_r < 0:
            raise ValueError(f"merge_r must be >= 0, got {self.merge_r}")
        if not 0 < self.keep_rate <= 1:
            raise ValueError(f"keep_rate must be in (0, 1], got {self.keep_rate}")
        if self.merge_r and self.keep_rate < 1:
            raise ValueError("a stage reduces tokens one way: merge_r or keep_rate, not both")
        _check_limits(
            self,
            (
                "depth",
                "dim",
                "heads",
                "mlp_ratio",
                "sr_ratio",
                "window",
                "kernel_size",
                "merge_r",
                "shift_div",
                "global_tokens",
            ),
        )
        if self.mixer == "mobileformer" and self.global_tokens < 1:
            raise ValueError(f"mobileformer needs global_tokens >= 1, got {self.global_tokens}")
        if self.mixer == "shift" and not 4 <= self.shift_div <= self.dim:
            raise ValueError(
                f"shift needs 4 <= shift_div <= dim (each of four directions moves "
                f"dim // shift_div channels), got shift_div={self.shift_div} dim={self.dim}"
            )
        if self.mixer == "sra" and self.sr_ratio < 2:
            raise ValueError(f"sra needs sr_ratio >= 2, got {self.sr_ratio}")
        if self.mixer == "window" and self.window < 2:
            raise ValueError(f"window attention needs window >= 2, got {self.window}")

    @property
    def reduces_tokens(self) -> bool:
        return self.merge_r > 0 or self.keep_rate < 1


@dataclass(frozen=True)
class ArchConfig:
    """A whole model: input, stem, position encoding, stages, exits, classifier.

    The stem turns a (in_chans, img_size, img_size) image into a grid of tokens with stride
    `patch_size`; each downsampling stage halves that grid. `distill_head` adds a second
    classifier on the pooled features that learns from a teacher while the first learns the
    labels; at inference the two are averaged (DeiT's distillation token in the form LeViT gives
    it for models without a class token). `dynamic_resolution` (a multiple of `patch_size` below
    `img_size`; 0: off) is the input side of a cheap first pass: `LightViT.forward_dynamic`
    answers from it when it is confident enough and runs the full resolution only for the rest
    (every block therefore has to run on both grids).
    """

    stages: tuple[StageConfig, ...]
    stem: str = "patch"
    patch_size: int = 4
    pos_enc: str = "learned"
    img_size: int = 32
    in_chans: int = 3
    num_classes: int = 10
    exits: tuple[int, ...] = ()
    distill_head: bool = False
    dynamic_resolution: int = field(default=0, metadata={"omit_default": True})
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        _require_numbers(
            self, ("patch_size", "img_size", "in_chans", "num_classes", "dynamic_resolution"), ()
        )
        if self.schema_version not in READABLE_SCHEMAS:
            raise ValueError(
                f"schema_version {self.schema_version} is not supported (this version reads "
                f"{', '.join(map(str, READABLE_SCHEMAS))}); upgrade lightweight-vit"
            )
        if self.schema_version != SCHEMA_VERSION:  # older schemas read unchanged, then upgrade
            object.__setattr__(self, "schema_version", SCHEMA_VERSION)
        if not self.stages:
            raise ValueError("an architecture needs at least one stage")
        for kind, name, table in (
            ("stem", self.stem, STEM_SPECS),
            ("pos_enc", self.pos_enc, POS_ENC_SPECS),
            *(("mixer", s.mixer, MIXER_SPECS) for s in self.stages),
        ):
            if name not in table:
                raise ValueError(f"unknown {kind} '{name}'; use one of: {', '.join(table)}")
        if self.stages[0].downsample:
            raise ValueError("stage 1 cannot downsample: the stem sets the first grid")
        if self.patch_size < 1 or self.img_size % self.patch_size:
            raise ValueError(
                f"img_size {self.img_size} must be a multiple of patch_size {self.patch_size}"
            )
        if self.in_chans < 1 or self.num_classes < 0:
            raise ValueError("in_chans must be >= 1 and num_classes >= 0")
        _check_limits(self, ("img_size", "in_chans", "num_classes", "patch_size"))
        if len(self.stages) > ARCH_LIMITS["stages"]:
            raise ValueError(
                f"{len(self.stages)} stages, above the limit of {ARCH_LIMITS['stages']} "
                "(docs/limits.md)"
            )
        if self.dynamic_resolution:
            low = self.dynamic_resolution
            if not self.patch_size <= low < self.img_size or low % self.patch_size:
                raise ValueError(
                    f"dynamic_resolution {low} must be a multiple of patch_size "
                    f"{self.patch_size} below img_size {self.img_size}"
                )
        for size in (self.img_size, self.dynamic_resolution):  # every block runs at both
            if not size:
                continue
            grid = size // self.patch_size
            for i, stage in enumerate(self.stages):
                if stage.downsample:
                    if grid < 2:
                        raise ValueError(
                            f"stage {i + 1} downsamples a {grid}x{grid} grid (at {size}px)"
                        )
                    grid = (grid + 1) // 2
                self._check_stage(i, stage, grid)
        if self.pos_enc in ATTENTION_POS_ENCS:
            if not any(s.mixer in POS_ATTENTION_MIXERS for s in self.stages):
                raise ValueError(
                    f"pos_enc '{self.pos_enc}' acts inside attention: use an mhsa or window stage"
                )
        exits = list(self.exits)
        if exits != sorted(set(exits)) or any(e < 1 or e >= self.depth for e in exits):
            raise ValueError(
                f"exits {exits} must be increasing block numbers between 1 and {self.depth - 1}"
            )

    def _check_stage(self, i: int, stage: StageConfig, grid: int) -> None:
        where = f"stage {i + 1}"
        if stage.mixer == "window" and (grid % stage.window or stage.window >= grid):
            raise ValueError(
                f"{where}: window {stage.window} must divide the {grid}x{grid} grid and be "
                "smaller than it"
            )
        if stage.mixer == "sra" and stage.sr_ratio > grid:
            raise ValueError(f"{where}: sr_ratio {stage.sr_ratio} exceeds the {grid}x{grid} grid")
        spec = MIXER_SPECS[stage.mixer]
        value = getattr(stage, spec.option) if spec.option else None
        # the rules the spaces keep (MIXER_SPECS.fit): a shift needs a grid to shift on
        if spec.option and spec.fit_option(value, grid, stage.dim) != value:
            raise ValueError(
                f"{where}: {stage.mixer} with {spec.option} {value} cannot run on the "
                f"{grid}x{grid} grid at width {stage.dim}"
            )
        pos = POS_ENC_SPECS.get(self.pos_enc)
        if pos and pos.head_multiple > 1 and stage.mixer in POS_ATTENTION_MIXERS:
            if (stage.dim // stage.heads) % pos.head_multiple:
                raise ValueError(
                    f"{where}: {pos.words} needs a head width divisible by {pos.head_multiple}"
                )
        if stage.reduces_tokens:
            if i != len(self.stages) - 1:
                raise ValueError(f"{where}: token reduction is allowed in the last stage only")
            if stage.mixer not in GRID_FREE_MIXERS:
                raise ValueError(f"{where}: token reduction needs an mhsa or linear mixer")
            if self.pos_enc not in INPUT_POS_ENCS:
                raise ValueError(
                    f"{where}: token reduction needs a position encoding added at the input "
                    f"(none, learned, sincos), not '{self.pos_enc}'"
                )

    @property
    def depth(self) -> int:
        """Total number of blocks."""
        return sum(s.depth for s in self.stages)

    def grid_sizes(self) -> list[int]:
        """Side of the token grid at the start of each stage."""
        grid, sizes = self.img_size // self.patch_size, []
        for stage in self.stages:
            if stage.downsample:
                grid = (grid + 1) // 2
            sizes.append(grid)
        return sizes

    def to_dict(self) -> dict[str, Any]:
        """JSON values, in the oldest schema that holds this architecture (schema history)."""
        data = to_dict(self)
        used = [v for s in data["stages"] for f, v in _STAGE_FIELDS_SINCE.items() if f in s]
        used += [v for f, v in _ARCH_FIELDS_SINCE.items() if f in data]
        data["schema_version"] = max([_BASE_SCHEMA, *used])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArchConfig:
        """Validate and build; raises `ArchConfigError` naming the first bad key or rule."""
        return from_dict(cls, data, "arch")

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ArchConfig:
        return cls.from_dict(json.loads(text))

    def describe(self) -> str:
        """The architecture in one line: `conv/4 · cpe · [mhsa 2x64h2 r4 | pool 1x96↓] · 32px`.

        Mixer options follow the mixer (`sra/2`, `window/4`, `dwconv/7`), token reduction the
        stage (`tome4`, `evit0.5`), exits the list (`exits@2,4`), then `+dist` for a
        distillation head, and the input size ends it.
        """
        stages = []
        for s in self.stages:
            text = f"{mixer_label(s)} {s.depth}x{s.dim}"
            if s.mixer in ATTENTION_MIXERS:
                text += f"h{s.heads}"
            text += f" r{s.mlp_ratio:g}"
            if s.merge_r:
                text += f" tome{s.merge_r}"
            if s.keep_rate < 1:
                text += f" evit{s.keep_rate:g}"
            if s.downsample:
                text += "↓"
            stages.append(text)
        line = f"{self.stem}/{self.patch_size} · {self.pos_enc} · [{' | '.join(stages)}]"
        if self.exits:
            line += f" · exits@{','.join(map(str, self.exits))}"
        if self.distill_head:
            line += " · +dist"
        if self.dynamic_resolution:
            return f"{line} · {self.dynamic_resolution}→{self.img_size}px"
        return f"{line} · {self.img_size}px"

    def exit_stage_dims(self) -> list[int]:
        """Width of the tokens at each exit (the width of the stage the exit block is in)."""
        dims, bounds = [], []
        total = 0
        for s in self.stages:
            total += s.depth
            bounds.append((total, s.dim))
        for e in self.exits:
            dims.append(next(dim for end, dim in bounds if e <= end))
        return dims


def _check_limits(obj: object, names: tuple[str, ...]) -> None:
    for name in names:
        value, limit = getattr(obj, name), ARCH_LIMITS[name]
        if value > limit:
            raise ValueError(f"{name} {value:,} is above its limit of {limit:,} (docs/limits.md)")


def _require_numbers(obj: object, ints: tuple[str, ...], reals: tuple[str, ...]) -> None:
    """Refuse anything but plain numbers (numpy integers become ints): a search library's
    choice object (an `nni.choice`, say) must be resolved before it reaches a layer; NNI loops
    until memory runs out when a torch layer gets one."""
    import numbers

    for name in ints + reals:
        value = getattr(obj, name)
        kind = numbers.Integral if name in ints else numbers.Real
        if isinstance(value, bool) or not isinstance(value, kind):
            raise ValueError(
                f"{name} must be {'an integer' if name in ints else 'a number'}, got "
                f"{type(value).__name__} {str(value)[:60]}: resolve choices before building"
            )
        if name in ints and type(value) is not int:
            object.__setattr__(obj, name, int(value))


def largest_divisor_below(n: int, limit: int) -> int:
    """Largest divisor of `n` that is <= `limit` and < `n` (1 if none): window sizes."""
    best = 1
    for d in range(2, min(limit, n - 1) + 1):
        if n % d == 0:
            best = d
    return best
