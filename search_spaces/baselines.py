"""Hand-designed lightweight ViT families written as ArchConfigs in our own space, each named
after the design it follows and scalable in width, so that a benchmark can compare a search's
find against them at its budget.

Each family is a function `width -> ArchConfig` for a base width (multiplied per stage as the
design does); `scale_to_budget` picks the widest member within a parameter budget. They follow
their paper's layout (stem, position encoding, mixers, isotropic or hierarchical, depth ratios),
shrunk to small inputs: these are the designs' shapes, not their published checkpoints.

Papers:
  deit            "Training data-efficient image transformers & distillation through
                  attention", arXiv 2012.12877 (patch stem, learned position, MHSA, isotropic)
  cpvt            "Conditional Positional Encodings for Vision Transformers", arXiv 2102.10882
  early_conv      "Early Convolutions Help Transformers See Better", arXiv 2106.14881
  pvt             "PVT v2: Improved Baselines with Pyramid Vision Transformer", arXiv 2106.13797
                  (overlapping embedding, spatial-reduction attention, hierarchical)
  poolformer      "MetaFormer Is Actually What You Need for Vision", arXiv 2111.11418
  levit           "LeViT: a Vision Transformer in ConvNet's Clothing for Faster Inference",
                  arXiv 2104.01136 (conv stem, attention bias, hierarchical)
  efficientformer "EfficientFormer: Vision Transformers at MobileNet Speed", arXiv 2206.01191
                  (pooling stages, then attention)
  mobilevit       "MobileViT: Light-weight, General-purpose, and Mobile-friendly Vision
                  Transformer", arXiv 2110.02178 (MobileNetV2 stem, local convs, then attention)
  repvit          "RepViT: Revisiting Mobile CNN From ViT Perspective", arXiv 2307.09283
                  (re-parameterisable conv stem, depthwise-conv token mixers)

This module imports no torch; `scale_to_budget` builds models (lazily) to count parameters.
"""

from __future__ import annotations

from collections.abc import Callable

from search_spaces.arch import ArchConfig, StageConfig

__all__ = ["BASELINES", "PAPERS", "baseline", "scale_to_budget"]


def _heads(dim: int, head_dim: int = 16) -> int:
    return max(1, dim // head_dim)


def _isotropic(depth: int, stem: str, pos_enc: str) -> Callable[[int, int], ArchConfig]:
    """A ViT-like family: one stage of `depth` MHSA blocks after a stride-4 stem."""

    def build(w: int, img: int) -> ArchConfig:
        return ArchConfig(
            stages=(StageConfig(depth, w, _heads(w), 4.0, "mhsa"),),
            stem=stem,
            patch_size=4,
            pos_enc=pos_enc,
            img_size=img,
        )

    return build


def _pvt(w: int, img: int) -> ArchConfig:
    return ArchConfig(
        stages=(
            StageConfig(2, w, _heads(w), 4.0, "sra", sr_ratio=4),
            StageConfig(2, 2 * w, _heads(2 * w), 4.0, "sra", downsample=True, sr_ratio=2),
            StageConfig(2, 4 * w, _heads(4 * w), 4.0, "mhsa", downsample=True),
        ),
        stem="overlap",
        patch_size=2,
        pos_enc="cpe",
        img_size=img,
    )


def _poolformer(w: int, img: int) -> ArchConfig:
    return ArchConfig(
        stages=(
            StageConfig(2, w, 1, 4.0, "pool"),
            StageConfig(2, 2 * w, 1, 4.0, "pool", downsample=True),
            StageConfig(4, 4 * w, 1, 4.0, "pool", downsample=True),
        ),
        stem="conv",
        patch_size=2,
        pos_enc="none",
        img_size=img,
    )


def _levit(w: int, img: int) -> ArchConfig:
    return ArchConfig(
        stages=(
            StageConfig(2, w, _heads(w), 2.0, "mhsa"),
            StageConfig(2, 2 * w, _heads(2 * w), 2.0, "mhsa", downsample=True),
            StageConfig(2, 3 * w, _heads(3 * w), 2.0, "mhsa", downsample=True),
        ),
        stem="conv",
        patch_size=4,
        pos_enc="rel_bias",
        img_size=img,
    )


def _efficientformer(w: int, img: int) -> ArchConfig:
    return ArchConfig(
        stages=(
            StageConfig(2, w, 1, 4.0, "pool"),
            StageConfig(2, 2 * w, 1, 4.0, "pool", downsample=True),
            StageConfig(2, 4 * w, _heads(4 * w, 32), 4.0, "mhsa", downsample=True),
        ),
        stem="conv",
        patch_size=2,
        pos_enc="rel_bias",
        img_size=img,
    )


def _mobilevit(w: int, img: int) -> ArchConfig:
    return ArchConfig(
        stages=(
            StageConfig(2, w, 1, 2.0, "dwconv", kernel_size=3),
            StageConfig(2, 2 * w, _heads(2 * w), 2.0, "mhsa", downsample=True),
        ),
        stem="mv2",
        patch_size=2,
        pos_enc="none",
        img_size=img,
    )


def _repvit(w: int, img: int) -> ArchConfig:
    return ArchConfig(
        stages=(
            StageConfig(2, w, 1, 2.0, "dwconv", kernel_size=3),
            StageConfig(2, 2 * w, 1, 2.0, "dwconv", downsample=True, kernel_size=3),
            StageConfig(4, 4 * w, 1, 2.0, "dwconv", downsample=True, kernel_size=3),
        ),
        stem="repconv",
        patch_size=4,
        pos_enc="none",
        img_size=img,
    )


BASELINES: dict[str, Callable[[int, int], ArchConfig]] = {
    "deit": _isotropic(6, "patch", "learned"),
    "cpvt": _isotropic(6, "patch", "cpe"),
    "early_conv": _isotropic(5, "conv", "learned"),
    "pvt": _pvt,
    "poolformer": _poolformer,
    "levit": _levit,
    "efficientformer": _efficientformer,
    "mobilevit": _mobilevit,
    "repvit": _repvit,
}

PAPERS = {
    "deit": "2012.12877",
    "cpvt": "2102.10882",
    "early_conv": "2106.14881",
    "pvt": "2106.13797",
    "poolformer": "2111.11418",
    "levit": "2104.01136",
    "efficientformer": "2206.01191",
    "mobilevit": "2110.02178",
    "repvit": "2307.09283",
}

WIDTHS = tuple(range(8, 257, 8))  # base widths tried when scaling


def baseline(
    name: str, width: int, *, img_size: int = 32, num_classes: int = 10, in_chans: int = 3
) -> ArchConfig:
    """The `name` family at base `width` for the given task."""
    if name not in BASELINES:
        raise KeyError(f"unknown baseline '{name}'; use one of: {', '.join(BASELINES)}")
    arch = BASELINES[name](width, img_size)
    import dataclasses

    return dataclasses.replace(arch, num_classes=num_classes, in_chans=in_chans)


def scale_to_budget(
    name: str, max_params: int, *, img_size: int = 32, num_classes: int = 10, in_chans: int = 3
) -> ArchConfig | None:
    """The widest member of the `name` family (base widths 8, 16, ... 256) with at most
    `max_params` parameters, or None when even the narrowest is over."""
    from search_spaces.model import LightViT

    best = None
    for width in WIDTHS:
        try:
            arch = baseline(
                name, width, img_size=img_size, num_classes=num_classes, in_chans=in_chans
            )
        except ValueError:  # a width the family's rules refuse (heads, RoPE, windows)
            continue
        params = sum(p.numel() for p in LightViT(arch).parameters())
        if params > max_params:
            break
        best = arch
    return best
