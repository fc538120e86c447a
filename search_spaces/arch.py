"""Architectures as data: `ArchConfig` and `StageConfig`.

An architecture is a frozen dataclass of JSON values. It round-trips through JSON exactly
(`ArchConfig.from_json(cfg.to_json()) == cfg`), every trial stores it, and `LightViT(cfg)` builds
it. Block names (`stem`, `pos_enc`, `mixer`) refer to the registries in `search_spaces.blocks`;
this module checks structure only and imports nothing but the standard library.

Schema history:
    1: stem, patch_size, pos_enc, stages of (depth, dim, heads, mlp_ratio, mixer, downsample).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from search_spaces.typed import TypeCheckError, from_dict, to_dict

__all__ = ["SCHEMA_VERSION", "ArchConfig", "StageConfig", "ArchConfigError"]

SCHEMA_VERSION = 1

ArchConfigError = TypeCheckError


@dataclass(frozen=True)
class StageConfig:
    """One stage: `depth` blocks of width `dim` sharing one token mixer.

    `heads` is used by attention mixers only (1 for the others). `downsample` halves the token
    grid with a stride-2 convolution at the start of the stage (hierarchical models, PVT/Swin
    style); a change of width without downsampling uses a 1x1 projection.
    """

    depth: int
    dim: int
    heads: int = 1
    mlp_ratio: float = 4.0
    mixer: str = "mhsa"
    downsample: bool = False

    def __post_init__(self) -> None:
        if self.depth < 1:
            raise ValueError(f"depth must be >= 1, got {self.depth}")
        if self.dim < 1 or self.heads < 1:
            raise ValueError(f"dim and heads must be >= 1, got dim={self.dim} heads={self.heads}")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")
        if self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be > 0, got {self.mlp_ratio}")


@dataclass(frozen=True)
class ArchConfig:
    """A whole model: input, stem, position encoding, stages, classifier.

    The stem turns a (in_chans, img_size, img_size) image into a grid of tokens with stride
    `patch_size`; each downsampling stage halves that grid.
    """

    stages: tuple[StageConfig, ...]
    stem: str = "patch"
    patch_size: int = 4
    pos_enc: str = "learned"
    img_size: int = 32
    in_chans: int = 3
    num_classes: int = 10
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.schema_version != SCHEMA_VERSION:
            raise ValueError(
                f"schema_version {self.schema_version} is not supported (this version reads "
                f"{SCHEMA_VERSION}); upgrade lightweight-vit or re-export the architecture"
            )
        if not self.stages:
            raise ValueError("an architecture needs at least one stage")
        if self.stages[0].downsample:
            raise ValueError("stage 1 cannot downsample: the stem sets the first grid")
        if self.patch_size < 1 or self.img_size % self.patch_size:
            raise ValueError(
                f"img_size {self.img_size} must be a multiple of patch_size {self.patch_size}"
            )
        if self.in_chans < 1 or self.num_classes < 0:
            raise ValueError("in_chans must be >= 1 and num_classes >= 0")
        grid = self.img_size // self.patch_size
        for i, stage in enumerate(self.stages):
            if stage.downsample:
                if grid < 2:
                    raise ValueError(f"stage {i + 1} downsamples a {grid}x{grid} grid")
                grid = (grid + 1) // 2

    @property
    def depth(self) -> int:
        """Total number of blocks."""
        return sum(s.depth for s in self.stages)

    def grid_sizes(self) -> list[int]:
        """Side of the token grid in each stage."""
        grid, sizes = self.img_size // self.patch_size, []
        for stage in self.stages:
            if stage.downsample:
                grid = (grid + 1) // 2
            sizes.append(grid)
        return sizes

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArchConfig:
        """Validate and build; raises `ArchConfigError` naming the first bad key."""
        return from_dict(cls, data, "arch")

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ArchConfig:
        return cls.from_dict(json.loads(text))

    def describe(self) -> str:
        """The architecture in one line, e.g. `conv/4 · cpe · [mhsa 2x64h2 r4 | pool 1x96↓]`."""
        stages = []
        for s in self.stages:
            text = f"{s.mixer} {s.depth}x{s.dim}"
            if s.mixer in ATTENTION_MIXERS:
                text += f"h{s.heads}"
            text += f" r{s.mlp_ratio:g}"
            if s.downsample:
                text += "↓"
            stages.append(text)
        return f"{self.stem}/{self.patch_size} · {self.pos_enc} · [{' | '.join(stages)}]"


# Mixers whose `heads` field is meaningful; kept here so `describe` needs no torch.
ATTENTION_MIXERS = frozenset({"mhsa"})
