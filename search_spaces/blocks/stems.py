"""Embedding stems: image (B, C, H, W) -> token grid (B, D, H / patch_size, W / patch_size).

Every stem takes `(in_chans, embed_dim, patch_size, img_size)` and names its first convolution in
`first_conv` (relative to the stem) so that timm can adapt the input channels of exported models.
"""

from __future__ import annotations

import math

import torch
from timm.layers import ConvNormAct, PatchEmbed
from torch import nn

from search_spaces.blocks._registry import register

__all__ = ["STEMS", "PatchStem", "ConvStem"]

STEMS: dict[str, type[nn.Module]] = {}


@register(STEMS, "patch")
class PatchStem(nn.Module):
    """Non-overlapping patch embedding: one strided convolution (timm's `PatchEmbed`).

    Paper: "An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale",
    arXiv 2010.11929.
    """

    first_conv = "embed.proj"

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, img_size: int) -> None:
        super().__init__()
        self.embed = PatchEmbed(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            embed_dim=embed_dim,
            flatten=False,
            strict_img_size=False,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x)


@register(STEMS, "conv")
class ConvStem(nn.Module):
    """Early convolutions: log2(patch_size) stride-2 3x3 conv-BN-ReLU layers, then a 1x1 conv.

    Widths double towards `embed_dim`, as in the paper's stems, which replace the patchify
    convolution and make optimisation more stable.
    Paper: "Early Convolutions Help Transformers See Better", arXiv 2106.14881.
    """

    first_conv = "convs.0.conv"

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, img_size: int) -> None:
        super().__init__()
        n = int(math.log2(patch_size))
        if patch_size < 2 or 2**n != patch_size:
            raise ValueError(
                f"the conv stem needs a power-of-two patch_size >= 2, got {patch_size}"
            )
        widths = [max(8, embed_dim >> (n - i)) for i in range(n)]
        layers, chans = [], in_chans
        for width in widths:
            layers.append(ConvNormAct(chans, width, 3, stride=2, padding=1, act_layer=nn.ReLU))
            chans = width
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Conv2d(chans, embed_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.convs(x))
