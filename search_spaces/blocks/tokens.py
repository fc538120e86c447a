"""Token reduction inside a block, between the token mixer and the MLP: fewer tokens for the
rest of the network. Both track `size` (B, N, 1), how many input tokens each token stands for,
so that pooling and attention can weigh merged tokens properly.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from search_spaces.blocks._registry import register

__all__ = ["TOKEN_REDUCERS", "TokenMerging", "TokenPruning", "bipartite_merge"]

TOKEN_REDUCERS: dict[str, type[nn.Module]] = {}


def descending(t: torch.Tensor, dim: int) -> torch.Tensor:
    """The indices that sort `t` along `dim` in descending order: argsort's answer, computed
    as a full top-k, which ExecuTorch's runtime has a kernel for (it has none for sort)."""
    return t.topk(t.shape[dim], dim=dim, sorted=True).indices


def bipartite_merge(
    x: torch.Tensor,
    size: torch.Tensor,
    r: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge `r` tokens of x (B, N, C) by bipartite soft matching, size-weighted.

    Tokens alternate into sets A and B; each A token finds its most similar B token (cosine);
    the r A tokens with the most similar partners are averaged into them (weighted by size),
    the other A tokens stay. r is capped at N // 2.
    """
    b, n, c = x.shape
    r = min(r, n // 2)
    if r <= 0:
        return x, size
    with torch.no_grad():
        metric = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        scores = metric[:, 0::2] @ metric[:, 1::2].transpose(1, 2)  # (B, |A|, |B|)
        best, partner = scores.max(dim=-1)
        order = descending(best, dim=-1)
        merged_a, kept_a = order[:, :r], order[:, r:]
        target_b = partner.gather(1, merged_a)
    weighted = x * size
    a_x, b_x = weighted[:, 0::2], weighted[:, 1::2]
    a_s, b_s = size[:, 0::2], size[:, 1::2]

    def take(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return t.gather(1, idx[..., None].expand(-1, -1, t.shape[-1]))

    def add_into(dst: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
        idx = target_b[..., None].expand(-1, -1, dst.shape[-1])
        return dst.scatter_add(1, idx, take(src, merged_a))

    new_b_x, new_b_s = add_into(b_x, a_x), add_into(b_s, a_s)
    out_s = torch.cat([take(a_s, kept_a), new_b_s], dim=1)
    out_x = torch.cat([take(a_x, kept_a), new_b_x], dim=1) / out_s
    return out_x, out_s


@register(TOKEN_REDUCERS, "tome")
class TokenMerging(nn.Module):
    """ToMe: merge `r` tokens per block by bipartite soft matching on token similarity, with
    size-weighted averages (and proportional attention in the mixers). r = 0 is the identity.
    Similarity is measured on the tokens themselves rather than on the attention keys.

    Paper: "Token Merging: Your ViT But Faster", arXiv 2210.09461.
    """

    def __init__(self, r: int) -> None:
        super().__init__()
        self.r = r

    def forward(self, x: torch.Tensor, size: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return bipartite_merge(x, size, self.r)


@register(TOKEN_REDUCERS, "evit")
class TokenPruning(nn.Module):
    """EViT-style attentive pruning: keep the ceil(keep_rate * N) tokens that receive the most
    attention and fuse the others into one token (their attention-weighted average), so no
    information is dropped outright. keep_rate = 1 is the identity.

    With no class token here, a token's score is the attention it receives averaged over heads
    and queries (the criterion of Patch Slimming's importance scores).
    Papers: "Not All Patches are What You Need: Expediting Vision Transformers via Token
    Reorganizations" (EViT), arXiv 2202.07800; "Patch Slimming for Efficient Vision
    Transformers", arXiv 2106.02852.
    """

    def __init__(self, keep_rate: float) -> None:
        super().__init__()
        self.keep_rate = keep_rate

    def forward(
        self,
        x: torch.Tensor,
        importance: torch.Tensor,
        size: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, c = x.shape
        keep = math.ceil(self.keep_rate * n)
        if keep >= n:
            return x, size
        order = descending(importance, dim=1)
        kept, dropped = order[:, :keep], order[:, keep:]

        def take(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            return t.gather(1, idx[..., None].expand(-1, -1, t.shape[-1]))

        weights = importance.gather(1, dropped)[..., None]  # (B, n - keep, 1)
        weights = weights / weights.sum(dim=1, keepdim=True).clamp_min(1e-12)
        fused = (take(x, dropped) * weights).sum(dim=1, keepdim=True)
        fused_size = take(size, dropped).sum(dim=1, keepdim=True)
        return (
            torch.cat([take(x, kept), fused], dim=1),
            torch.cat([take(size, kept), fused_size], dim=1),
        )
