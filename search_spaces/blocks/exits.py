"""Early-exit heads: classifiers after chosen blocks, so that easy inputs can leave early
(dynamic depth). Each takes `(dim, num_classes)` and maps tokens (B, N, C), with their sizes
(B, N, 1), to logits.
"""

from __future__ import annotations

import torch
from torch import nn

from search_spaces.blocks._registry import register

__all__ = ["EXITS", "LinearExit", "pool_tokens"]

EXITS: dict[str, type[nn.Module]] = {}


def pool_tokens(x: torch.Tensor, size: torch.Tensor | None) -> torch.Tensor:
    """Average over tokens, each weighted by how many input tokens it stands for."""
    if size is None:
        return x.mean(dim=1)
    return (x * size).sum(dim=1) / size.sum(dim=1)


@register(EXITS, "linear")
class LinearExit(nn.Module):
    """LayerNorm, size-weighted average pooling and a linear classifier on intermediate tokens.

    Papers: "BranchyNet: Fast Inference via Early Exiting from Deep Neural Networks",
    arXiv 1709.01686; for ViTs, "Multi-Exit Vision Transformer for Dynamic Inference",
    arXiv 2106.15183.
    """

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, size: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(pool_tokens(self.norm(x), size))
