"""Position encodings, on token sequences (B, N, C) laid out on an (H, W) grid.

Each encoding takes `(dim, grid)` and says where the model applies it in `site`:
    "input": once, to the stem's tokens (absolute encodings);
    "stage": after the first block of every stage (conditional encodings, as CPVT places its PEG).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from timm.layers import resample_abs_pos_embed, trunc_normal_
from torch import nn

from search_spaces.blocks._registry import register

__all__ = ["POS_ENCODINGS", "NoPosEnc", "LearnedPosEnc", "ConditionalPosEnc"]

POS_ENCODINGS: dict[str, type[nn.Module]] = {}


@register(POS_ENCODINGS, "none")
class NoPosEnc(nn.Module):
    """No position information beyond what the stem and mixers carry (pooling and conv mixers
    are position-aware by construction)."""

    site: ClassVar[str] = "input"

    def __init__(self, dim: int, grid: tuple[int, int]) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        return x


@register(POS_ENCODINGS, "learned")
class LearnedPosEnc(nn.Module):
    """Learned absolute position embedding added to the tokens; bicubically resampled when the
    token grid differs from the one it was built for (timm's `resample_abs_pos_embed`).

    Paper: "An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale",
    arXiv 2010.11929.
    """

    site: ClassVar[str] = "input"
    no_weight_decay_params: ClassVar[tuple[str, ...]] = ("pos_embed",)

    def __init__(self, dim: int, grid: tuple[int, int]) -> None:
        super().__init__()
        self.grid = tuple(grid)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid[0] * grid[1], dim))
        trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        pos = self.pos_embed
        if tuple(hw) != self.grid:
            pos = resample_abs_pos_embed(
                pos, new_size=list(hw), old_size=list(self.grid), num_prefix_tokens=0
            )
        return x + pos


@register(POS_ENCODINGS, "cpe")
class ConditionalPosEnc(nn.Module):
    """Conditional position encoding: the positional encoding generator (PEG), a residual 3x3
    depthwise convolution over the token grid, generated from each token's neighbourhood.

    Works at any resolution and is translation-equivariant away from the borders.
    Paper: "Conditional Positional Encodings for Vision Transformers" (CPVT), arXiv 2102.10882.
    """

    site: ClassVar[str] = "stage"

    def __init__(self, dim: int, grid: tuple[int, int], kernel_size: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        b, n, c = x.shape
        feat = x.transpose(1, 2).reshape(b, c, hw[0], hw[1])
        return x + self.proj(feat).flatten(2).transpose(1, 2)
