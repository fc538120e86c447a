"""Named presets: notable architectures the search found, registered as timm entrypoints like
timm's own (`timm.create_model("lightvit_pool96_digits16")`), without weights (nothing is
downloaded; train one with `lvit train`, or load an `lvit export` folder for trained weights).

Each docstring says where the architecture came from and what it measured there.
"""

from __future__ import annotations

from typing import Any

from timm.models import generate_default_cfgs, register_model

from search_spaces.arch import ArchConfig, StageConfig
from search_spaces.model import LightViT, _cfg, create

__all__ = ["PRESETS", "lightvit_pool96_digits16", "lightvit_dwconv64_digits32"]

PRESETS: dict[str, ArchConfig] = {
    "lightvit_pool96_digits16": ArchConfig(
        stages=(StageConfig(depth=1, dim=96, heads=1, mlp_ratio=4.0, mixer="pool"),),
        stem="conv",
        patch_size=4,
        pos_enc="learned",
        img_size=16,
    ),
    "lightvit_dwconv64_digits32": ArchConfig(
        stages=(
            StageConfig(depth=2, dim=64, heads=1, mlp_ratio=4.0, mixer="dwconv", kernel_size=7),
        ),
        stem="multiscale",
        patch_size=2,
        pos_enc="none",
        img_size=32,
    ),
}

default_cfgs = generate_default_cfgs({name: _cfg(arch) for name, arch in PRESETS.items()})


@register_model
def lightvit_pool96_digits16(pretrained: bool = False, **kwargs: Any) -> LightViT:
    """`conv/4 · learned · [pool 1x96 r4] · 16px`: the quickstart's best (study `quickstart`,
    trial 15; 99.16% validation accuracy on digits after a 12-epoch proxy, 93.2k parameters,
    0.565 ms on one CPU thread at batch 1)."""
    return create(
        "lightvit_pool96_digits16", PRESETS["lightvit_pool96_digits16"], pretrained, **kwargs
    )


@register_model
def lightvit_dwconv64_digits32(pretrained: bool = False, **kwargs: Any) -> LightViT:
    """`multiscale/2 · none · [dwconv/7 2x64 r4] · 32px`: the best of a 20-candidate survey-space
    search on digits at 32x32 under 250k parameters and 2 ms (study `survey-digits32`, trial 15;
    98.89% validation accuracy after 12 epochs, 80.4k parameters, 1.87 ms)."""
    return create(
        "lightvit_dwconv64_digits32", PRESETS["lightvit_dwconv64_digits32"], pretrained, **kwargs
    )
