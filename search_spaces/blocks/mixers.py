"""Token mixers: (B, N, C) tokens on an (H, W) grid -> (B, N, C).

Every mixer takes `(dim, heads)`; the block around it adds the residual and the MLP. Mixers that
use `heads` are listed in `search_spaces.arch.ATTENTION_MIXERS`.
"""

from __future__ import annotations

import torch
from timm.layers import Attention
from torch import nn

from search_spaces.blocks._registry import register

__all__ = ["MIXERS", "MultiHeadSelfAttention", "PoolingMixer"]

MIXERS: dict[str, type[nn.Module]] = {}


@register(MIXERS, "mhsa")
class MultiHeadSelfAttention(Attention):
    """Global multi-head self-attention (timm's `Attention`, fused SDPA where available).

    Paper: "Attention Is All You Need", arXiv 1706.03762; as used in ViT, arXiv 2010.11929.
    """

    def __init__(self, dim: int, heads: int = 1) -> None:
        super().__init__(dim, num_heads=heads, qkv_bias=True)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x)


@register(MIXERS, "pool")
class PoolingMixer(nn.Module):
    """Average pooling minus identity (the block adds the identity back), no parameters.

    Paper: "MetaFormer Is Actually What You Need for Vision" (PoolFormer), arXiv 2111.11418.
    """

    def __init__(self, dim: int, heads: int = 1, pool_size: int = 3) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(
            pool_size, stride=1, padding=pool_size // 2, count_include_pad=False
        )

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        b, n, c = x.shape
        feat = x.transpose(1, 2).reshape(b, c, hw[0], hw[1])
        return (self.pool(feat) - feat).flatten(2).transpose(1, 2)
