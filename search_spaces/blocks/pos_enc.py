"""Position encodings, on token sequences (B, N, C) laid out on an (H, W) grid.

Each encoding takes `(dim, grid, heads)`; its `POS_ENC_SPECS` row (search_spaces/arch.py) says
where the model applies it, its `site`:
    "input": once, to the stem's tokens (absolute encodings: `forward(x, hw) -> x`);
    "stage": after the first block of every stage (conditional encodings, as CPVT places its PEG);
    "attention": inside every attention mixer that supports it (`POS_ATTENTION_MIXERS`), one
        instance per mixer, built for that mixer's attention grid (the window, for window
        attention). Such encodings implement `rotate(q, k, hw)` and/or `bias(hw)`.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from timm.layers import build_sincos2d_pos_embed, resample_abs_pos_embed, trunc_normal_
from timm.layers.pos_embed_sincos import apply_rot_embed
from torch import nn

from search_spaces.blocks._registry import register

__all__ = [
    "POS_ENCODINGS",
    "AttentionPosEnc",
    "NoPosEnc",
    "LearnedPosEnc",
    "SinCosPosEnc",
    "ConditionalPosEnc",
    "PositionalGatingUnit",
    "RoPE",
    "RoPEAxial",
    "RoPEMixed",
    "UnitaryRPE",
    "RelPosBias",
    "FIRE",
    "grid_coords",
]

POS_ENCODINGS: dict[str, type[nn.Module]] = {}


def grid_coords(hw: tuple[int, int], device: torch.device | None = None) -> torch.Tensor:
    """(N, 2) float (row, col) coordinates of a row-major token grid."""
    ys, xs = torch.meshgrid(
        torch.arange(hw[0], device=device), torch.arange(hw[1], device=device), indexing="ij"
    )
    return torch.stack([ys.flatten(), xs.flatten()], dim=-1).float()


class AttentionPosEnc(nn.Module):
    """Base of attention-site encodings: identity rotation, no bias."""

    def rotate(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        hw: tuple[int, int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return q, k

    def bias(self, hw: tuple[int, int]) -> torch.Tensor | None:
        """Additive attention-logit bias of shape (heads, N, N), or None."""
        return None


@register(POS_ENCODINGS, "none")
class NoPosEnc(nn.Module):
    """No position information beyond what the stem and mixers carry (pooling and conv mixers
    are position-aware by construction)."""

    def __init__(self, dim: int, grid: tuple[int, int], heads: int = 1) -> None:
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

    no_weight_decay_params: ClassVar[tuple[str, ...]] = ("pos_embed",)

    def __init__(self, dim: int, grid: tuple[int, int], heads: int = 1) -> None:
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


@register(POS_ENCODINGS, "sincos")
class SinCosPosEnc(nn.Module):
    """Fixed 2-D sine-cosine position embedding added to the tokens (timm's
    `build_sincos2d_pos_embed`), computed for whatever grid arrives; no parameters.

    Paper: "An Empirical Study of Training Self-Supervised Vision Transformers" (MoCo v3),
    arXiv 2104.02057.
    """

    def __init__(self, dim: int, grid: tuple[int, int], heads: int = 1) -> None:
        super().__init__()
        if dim % 4:
            raise ValueError(f"2-D sincos needs a width divisible by 4, got {dim}")
        self.dim = dim

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        pos = build_sincos2d_pos_embed(list(hw), self.dim, temperature=10000.0, dtype=x.dtype)
        return x + pos.to(x.device).unsqueeze(0)


@register(POS_ENCODINGS, "cpe")
class ConditionalPosEnc(nn.Module):
    """Conditional position encoding: the positional encoding generator (PEG), a residual 3x3
    depthwise convolution over the token grid, generated from each token's neighbourhood.

    Works at any resolution and is translation-equivariant away from the borders.
    Paper: "Conditional Positional Encodings for Vision Transformers" (CPVT), arXiv 2102.10882.
    """

    def __init__(
        self, dim: int, grid: tuple[int, int], heads: int = 1, kernel_size: int = 3
    ) -> None:
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        b, n, c = x.shape
        feat = x.transpose(1, 2).reshape(b, c, hw[0], hw[1])
        return x + self.proj(feat).flatten(2).transpose(1, 2)


@register(POS_ENCODINGS, "posmlp")
class PositionalGatingUnit(nn.Module):
    """PosMLP's positional spatial gating unit (PoSGU) with its generalised quadratic position
    encoding (GQPE), as a residual position encoding: `x + W_out((M u) * v)` with
    `[u, v] = GELU(W_in(LN(x)))`. Token mixing `M` is parameterised by relative position
    only: for each of `groups` channel groups, a token m takes from token n the weight
    softmax_n(-(d - c)^T S S^T (d - c) / 2), d = pos_n - pos_m, a Gaussian-shaped kernel with a
    learned centre c and spread S (O(1) parameters per group, at any resolution).

    Paper: "Parameterization of Cross-Token Relations with Relative Positional Encoding for
    Vision MLP" (PosMLP), arXiv 2207.07284. PosMLP uses the unit as the token mixer of its own
    blocks, over windows; here it is a position encoding placed where conditional encodings go
    (after each stage's first block, as CPVT places its PEG), over the whole stage grid (small
    here), and without the paper's per-token absolute bias, so that its mixing depends on
    relative offsets only. The learnable-table (LRPE) and FFT forms of the paper are not built.
    """

    def __init__(self, dim: int, grid: tuple[int, int], heads: int = 1, groups: int = 4) -> None:
        super().__init__()
        groups = math.gcd(groups, dim)
        self.groups = groups
        self.norm = nn.LayerNorm(dim)
        self.proj_in = nn.Linear(dim, 2 * dim)
        self.proj_out = nn.Linear(dim, dim)
        self.centres = nn.Parameter(torch.randn(groups, 2) * 0.01)
        self.spreads = nn.Parameter(
            torch.eye(2).repeat(groups, 1, 1) + 0.01 * torch.randn(groups, 2, 2)
        )

    def scores(self, hw: tuple[int, int]) -> torch.Tensor:
        """(groups, N, N) logits of the token-mixing weights: entry (m, n) is a quadratic
        function of pos_n - pos_m alone."""
        coords = grid_coords(hw, self.centres.device)
        offset = coords[None, :, :] - coords[:, None, :]  # (N, N, 2): pos_n - pos_m
        d = offset[None] - self.centres[:, None, None, :]  # (groups, N, N, 2)
        precision = self.spreads @ self.spreads.transpose(-2, -1)  # S S^T, positive semi-definite
        return -0.5 * torch.einsum("gmni,gij,gmnj->gmn", d, precision, d)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        b, n, c = x.shape
        u, v = F.gelu(self.proj_in(self.norm(x))).chunk(2, dim=-1)
        mixing = self.scores(hw).softmax(dim=-1)  # (groups, N, N)
        u = u.reshape(b, n, self.groups, c // self.groups)
        mixed = torch.einsum("gmn,bngc->bmgc", mixing, u).reshape(b, n, c)
        return x + self.proj_out(mixed * v)


class RoPE(AttentionPosEnc):
    """2-D rotary position embedding: each pair of query/key channels is rotated by the angle
    `row * f_y + col * f_x`, so attention logits depend only on the offset between positions.

    Frequencies have shape (heads, head_dim / 2, 2): one (f_y, f_x) per channel pair and head.
    Paper: "Rotary Position Embedding for Vision Transformer" (RoPE-ViT), arXiv 2403.13298.
    """

    def __init__(self, freqs: torch.Tensor, learnable: bool) -> None:
        super().__init__()
        if learnable:
            self.freqs = nn.Parameter(freqs)
        else:
            self.register_buffer("freqs", freqs, persistent=False)

    def rotate(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        hw: tuple[int, int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        coords = grid_coords(hw, q.device)  # (N, 2)
        angles = torch.einsum("nc,hpc->hnp", coords, self.freqs)  # (heads, N, head_dim / 2)
        sin = angles.sin().repeat_interleave(2, dim=-1)
        cos = angles.cos().repeat_interleave(2, dim=-1)
        return apply_rot_embed(q, sin, cos), apply_rot_embed(k, sin, cos)


@register(POS_ENCODINGS, "rope_axial")
class RoPEAxial(RoPE):
    """RoPE-Axial: half of the channel pairs rotate with the row, half with the column, at
    fixed frequencies theta^(-4i/head_dim) (theta = 100, as RoPE-ViT uses for images).

    Paper: "Rotary Position Embedding for Vision Transformer", arXiv 2403.13298.
    """

    def __init__(
        self, dim: int, grid: tuple[int, int], heads: int = 1, theta: float = 100.0
    ) -> None:
        quarter, mags = _rope_magnitudes(dim, heads, theta)
        freqs = torch.zeros(heads, 2 * quarter, 2)
        freqs[:, :quarter, 0] = mags  # rows
        freqs[:, quarter:, 1] = mags  # columns
        super().__init__(freqs, learnable=False)


@register(POS_ENCODINGS, "rope_mixed")
class RoPEMixed(RoPE):
    """RoPE-Mixed: learnable frequencies that mix both axes, initialised per head at a random
    direction (two orthogonal directions per magnitude, theta = 10), trained with the model.

    Paper: "Rotary Position Embedding for Vision Transformer", arXiv 2403.13298.
    """

    def __init__(
        self, dim: int, grid: tuple[int, int], heads: int = 1, theta: float = 10.0
    ) -> None:
        quarter, mags = _rope_magnitudes(dim, heads, theta)
        phase = torch.rand(heads, 1) * 2 * math.pi
        dirs = torch.cat([phase, phase + math.pi / 2], dim=1)  # two orthogonal directions
        angle = dirs.repeat_interleave(quarter, dim=1)  # (heads, head_dim / 2)
        mag = mags.repeat(2)[None]  # (1, head_dim / 2)
        super().__init__(
            torch.stack([mag * angle.sin(), mag * angle.cos()], dim=-1), learnable=True
        )


@register(POS_ENCODINGS, "unitary")
class UnitaryRPE(RoPEAxial):
    """Unitary relative position encoding: queries and keys at position s are transformed by a
    unitary M_s = P Lambda_s P^H, so that a logit q_s^H M_s^H M_t k_t = (P^H q_s)^H
    Lambda_(t-s) (P^H k_t) depends only on the offset t - s, and no vector changes its norm.
    Lambda_s is a diagonal of phases exp(i s alpha): its real form is the block-diagonal
    rotation of RoPE, here RoPE-Axial's 2-D one (half of the channel pairs turn with the row,
    half with the column). P is a learned orthogonal basis per head, the product of
    `reflections` Householder reflections (I - 2 u u^T / |u|^2); P = I is RoPE-Axial itself.
    Since P is orthogonal and acts on queries and keys alike, the outer P drops out of every
    logit, so the block applies P^T, then the rotation.

    Paper: "Linearized Relative Positional Encoding" (LRPE), arXiv 2307.09270, earlier
    "Relative Positional Encoding Family via Unitary Transformation" (OpenReview xMWFqb5Uyk).
    The paper leaves P free (any unitary matrix; identity, a permutation and learned forms are
    its examples) and states it for sequences; the Householder parametrisation and the 2-D
    phases of RoPE-Axial are the readings chosen here for a learned P on image grids.
    """

    def __init__(
        self,
        dim: int,
        grid: tuple[int, int],
        heads: int = 1,
        theta: float = 100.0,
        reflections: int = 2,
    ) -> None:
        super().__init__(dim, grid, heads, theta)
        self.householder = nn.Parameter(torch.randn(heads, reflections, dim // heads))

    def basis(self, x: torch.Tensor) -> torch.Tensor:
        """P^T x for x (B, heads, N, head_dim): the reflections in reverse order (each is its
        own transpose)."""
        for r in reversed(range(self.householder.shape[1])):
            u = self.householder[:, r]
            u = (u / u.norm(dim=-1, keepdim=True).clamp_min(1e-12))[None, :, None, :]
            x = x - 2 * (x * u).sum(dim=-1, keepdim=True) * u
        return x

    def rotate(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        hw: tuple[int, int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return super().rotate(self.basis(q), self.basis(k), hw)


def _rope_magnitudes(dim: int, heads: int, theta: float) -> tuple[int, torch.Tensor]:
    """A quarter of the head width, and that many frequency magnitudes theta^(-i / quarter)."""
    head_dim = dim // heads
    if head_dim % 4:
        raise ValueError(f"2-D RoPE needs a head width divisible by 4, got {head_dim}")
    quarter = head_dim // 4
    return quarter, theta ** (-torch.arange(quarter).float() / quarter)


@register(POS_ENCODINGS, "rel_bias")
class RelPosBias(AttentionPosEnc):
    """Relative position bias: a learned table of one logit bias per head and 2-D offset
    (2H-1 x 2W-1 entries), added to the attention logits; bicubically resized when the grid
    differs from the one it was built for.

    Papers: "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows",
    arXiv 2103.14030; "LeViT: a Vision Transformer in ConvNet's Clothing for Faster Inference",
    arXiv 2104.01136.
    """

    no_weight_decay_params: ClassVar[tuple[str, ...]] = ("table",)

    def __init__(self, dim: int, grid: tuple[int, int], heads: int = 1) -> None:
        super().__init__()
        self.grid = tuple(grid)
        self.table = nn.Parameter(torch.zeros(heads, 2 * grid[0] - 1, 2 * grid[1] - 1))
        trunc_normal_(self.table, std=0.02)
        # the lookup of the grid it was built for, a constant: computed in the forward pass,
        # its integer arithmetic would be quantised with the rest by PT2E (and fail)
        self.register_buffer("index", relative_index(self.grid), persistent=False)

    def bias(self, hw: tuple[int, int]) -> torch.Tensor:
        table = self.table
        index = self.index
        if tuple(hw) != self.grid:
            table = nn.functional.interpolate(
                table[None],
                size=(2 * hw[0] - 1, 2 * hw[1] - 1),
                mode="bicubic",
                align_corners=True,
            )[0]
            index = relative_index(hw, table.device)
        return table.flatten(1)[:, index]


def relative_index(hw: tuple[int, int], device: torch.device | None = None) -> torch.Tensor:
    """(N, N) long: where the offset p_i - p_j of tokens i, j of a row-major grid sits in a
    flattened (2H-1) x (2W-1) table of offsets, (dy + H - 1) * (2W - 1) + dx + W - 1."""
    coords = grid_coords(hw, device).long()
    offset = coords[:, None, :] - coords[None, :, :]  # (N, N, 2), in [-(H-1), H-1]
    return (offset[..., 0] + hw[0] - 1) * (2 * hw[1] - 1) + offset[..., 1] + hw[1] - 1


@register(POS_ENCODINGS, "fire")
class FIRE(AttentionPosEnc):
    """FIRE, functional interpolation for relative positions: the logit bias is a small MLP of
    the progressively interpolated offset psi(|d|) / psi(max(L, extent)), psi(x) = log(c x + 1),
    with c and L learned, so it is defined for any grid (length generalisation).

    Two-dimensional here: the MLP takes the signed, normalised row and column offsets and gives
    one bias per head. Paper: "Functional Interpolation for Relative Positions Improves Long
    Context Transformers", arXiv 2310.04418.
    """

    def __init__(self, dim: int, grid: tuple[int, int], heads: int = 1, hidden: int = 32) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, heads))
        self.log_c = nn.Parameter(torch.zeros(()))  # c = exp(log_c) > 0, starts at 1
        self.threshold = nn.Parameter(torch.tensor(float(max(grid))))  # L

    def _psi(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log1p(self.log_c.exp() * x)

    def bias(self, hw: tuple[int, int]) -> torch.Tensor:
        coords = grid_coords(hw, self.log_c.device)
        offset = coords[:, None, :] - coords[None, :, :]  # (N, N, 2)
        extent = torch.tensor([hw[0], hw[1]], device=offset.device, dtype=offset.dtype)
        norm = self._psi(torch.maximum(self.threshold.abs(), extent))
        feats = offset.sign() * self._psi(offset.abs()) / norm
        return self.mlp(feats).permute(2, 0, 1)  # (heads, N, N)
