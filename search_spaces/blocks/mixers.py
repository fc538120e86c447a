"""Token mixers: (B, N, C) tokens on an (H, W) grid -> (B, N, C).

Every mixer is built as `cls(dim, heads, grid=(H, W), pos_layer=None, **options)` and called as
`mixer(x, hw, size=None)`; the block around it adds the residual (unless the mixer's
`MIXER_SPECS` row says `residual=False`) and the MLP. `size` (B, N, 1)
counts the original tokens each token stands for after token merging (ToMe's proportional
attention); mixers that need the grid are never given merged tokens (see the rules in
`search_spaces.arch`). `pos_layer` is the class of an attention-site position encoding; mixers
that accept one set `accepts_pos = True` and build it for their attention grid.

timm's `Attention` has no hook for a logit bias, custom RoPE coordinates and the attention
received per token together, so the attention mixers here share one small SDPA core.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from search_spaces.blocks._registry import register

__all__ = [
    "MIXERS",
    "MultiHeadSelfAttention",
    "SpatialReductionAttention",
    "LinearAttention",
    "WindowAttention",
    "PoolingMixer",
    "DepthwiseConvMixer",
    "ShiftMixer",
    "StructureAwareAttention",
    "MobileFormerMixer",
]

MIXERS: dict[str, type[nn.Module]] = {}


def _to_grid(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    b, n, c = x.shape
    return x.transpose(1, 2).reshape(b, c, hw[0], hw[1])


def _to_tokens(feat: torch.Tensor) -> torch.Tensor:
    return feat.flatten(2).transpose(1, 2)


def _split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, C) -> (B, heads, N, C / heads)."""
    b, n, c = t.shape
    return t.reshape(b, n, heads, c // heads).transpose(1, 2)


def _merge_heads(t: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, hd) -> (B, N, heads * hd)."""
    b, h, n, d = t.shape
    return t.transpose(1, 2).reshape(b, n, h * d)


class _Attention(nn.Module):
    """q, k, v projections, optional position encoding, SDPA, output projection."""

    accepts_pos = False

    def __init__(
        self,
        dim: int,
        heads: int,
        grid: tuple[int, int],
        pos_layer: type | None,
    ) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.pos = (
            pos_layer(dim, grid, heads) if (pos_layer is not None and self.accepts_pos) else None
        )

    def attend(
        self,
        x: torch.Tensor,
        hw: tuple[int, int],
        size: torch.Tensor | None = None,
        need_importance: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Self-attention over x (B, N, C) whose tokens lie on grid `hw` (for the encoding)."""
        b, n, c = x.shape
        q, k, v = (_split_heads(t, self.heads) for t in self.qkv(x).chunk(3, dim=-1))
        bias = None
        if self.pos is not None:
            q, k = self.pos.rotate(q, k, hw)
            bias = self.pos.bias(hw)
        if size is not None:  # ToMe proportional attention: a key counts as many as it merged
            log_size = size.log().transpose(1, 2)[:, None]  # (B, 1, 1, N)
            bias = log_size if bias is None else bias + log_size
        if need_importance:  # explicit attention map, to score tokens (EViT)
            logits = (q @ k.transpose(-2, -1)) * self.head_dim**-0.5
            if bias is not None:
                logits = logits + bias
            attn = logits.softmax(dim=-1)
            out = attn @ v
            importance = attn.mean(dim=(1, 2))  # (B, N): attention each token receives
        else:
            mask = bias.to(q.dtype).expand(b, self.heads, n, n) if bias is not None else None
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = self.proj(_merge_heads(out))
        return (out, importance) if need_importance else out


@register(MIXERS, "mhsa")
class MultiHeadSelfAttention(_Attention):
    """Global multi-head self-attention over all tokens (fused SDPA).

    Papers: "Attention Is All You Need", arXiv 1706.03762; as used in ViT, arXiv 2010.11929.
    """

    accepts_pos = True

    def __init__(
        self,
        dim: int,
        heads: int = 1,
        grid: tuple[int, int] = (1, 1),
        pos_layer: type | None = None,
    ) -> None:
        super().__init__(dim, heads, grid, pos_layer)

    def forward(
        self,
        x: torch.Tensor,
        hw: tuple[int, int],
        size: torch.Tensor | None = None,
        need_importance: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return self.attend(x, hw, size, need_importance)


@register(MIXERS, "window")
class WindowAttention(_Attention):
    """Local attention inside non-overlapping `window` x `window` windows of the token grid
    (Swin's window attention, without the shift); position encodings act per window.

    Paper: "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows",
    arXiv 2103.14030.
    """

    accepts_pos = True

    def __init__(
        self,
        dim: int,
        heads: int = 1,
        grid: tuple[int, int] = (1, 1),
        pos_layer: type | None = None,
        window: int = 2,
    ) -> None:
        super().__init__(dim, heads, (window, window), pos_layer)
        self.window = window

    def forward(
        self,
        x: torch.Tensor,
        hw: tuple[int, int],
        size: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, n, c = x.shape
        w = self.window
        h_win, w_win = hw[0] // w, hw[1] // w
        if hw[0] % w or hw[1] % w:
            raise ValueError(f"window {w} does not divide the {hw[0]}x{hw[1]} token grid")
        windows = (
            x.reshape(b, h_win, w, w_win, w, c)
            .permute(0, 1, 3, 2, 4, 5)
            .reshape(b * h_win * w_win, w * w, c)
        )
        out = self.attend(windows, (w, w))
        return out.reshape(b, h_win, w_win, w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(b, n, c)


@register(MIXERS, "sra")
class SpatialReductionAttention(nn.Module):
    """Spatial-reduction attention: queries from every token, keys and values from the grid
    shrunk by a stride-`sr_ratio` convolution and LayerNorm, cutting the cost by sr_ratio^2.

    Paper: "Pyramid Vision Transformer: A Versatile Backbone for Dense Prediction without
    Convolutions" (PVT), arXiv 2102.12122.
    """

    def __init__(
        self,
        dim: int,
        heads: int = 1,
        grid: tuple[int, int] = (1, 1),
        pos_layer: type | None = None,
        sr_ratio: int = 2,
    ) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, dim * 2)
        self.reduce = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio)
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self,
        x: torch.Tensor,
        hw: tuple[int, int],
        size: torch.Tensor | None = None,
    ) -> torch.Tensor:
        q = _split_heads(self.q(x), self.heads)
        reduced = self.norm(_to_tokens(self.reduce(_to_grid(x, hw))))
        k, v = (_split_heads(t, self.heads) for t in self.kv(reduced).chunk(2, dim=-1))
        return self.proj(_merge_heads(F.scaled_dot_product_attention(q, k, v)))


@register(MIXERS, "linear")
class LinearAttention(nn.Module):
    """ReLU linear attention: softmax(QK^T)V replaced by relu(Q)(relu(K)^T V), normalised by
    relu(Q)(relu(K)^T 1), linear in the number of tokens. Merged tokens (ToMe) weigh their keys
    by their size, the linear-attention form of proportional attention.

    Paper: "EfficientViT: Multi-Scale Linear Attention for High-Resolution Dense Prediction",
    arXiv 2205.14756.
    """

    def __init__(
        self,
        dim: int,
        heads: int = 1,
        grid: tuple[int, int] = (1, 1),
        pos_layer: type | None = None,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.heads, self.eps = heads, eps
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self,
        x: torch.Tensor,
        hw: tuple[int, int],
        size: torch.Tensor | None = None,
        need_importance: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        n = x.shape[1]
        q, k, v = (_split_heads(t, self.heads) for t in self.qkv(x).chunk(3, dim=-1))
        q, k = F.relu(q), F.relu(k)
        if size is not None:
            k = k * size[:, None]  # (B, 1, N, 1)
        kv = k.transpose(-2, -1) @ v  # (B, heads, hd, hd)
        numerator = q @ kv
        denominator = q @ k.sum(dim=2, keepdim=True).transpose(-2, -1) + self.eps  # (B, h, N, 1)
        out = self.proj(_merge_heads(numerator / denominator))
        if not need_importance:
            return out
        # attention token j receives, averaged over queries and heads, without the N x N map:
        # sum_i (q_i . k_j) / z_i = (sum_i q_i / z_i) . k_j
        weights = (q / denominator).sum(dim=2, keepdim=True)  # (B, heads, 1, hd)
        importance = (weights @ k.transpose(-2, -1)).squeeze(2).mean(dim=1) / n  # (B, N)
        return out, importance


@register(MIXERS, "pool")
class PoolingMixer(nn.Module):
    """Average pooling minus identity (the block adds the identity back), no parameters.

    Paper: "MetaFormer Is Actually What You Need for Vision" (PoolFormer), arXiv 2111.11418.
    """

    def __init__(
        self,
        dim: int,
        heads: int = 1,
        grid: tuple[int, int] = (1, 1),
        pos_layer: type | None = None,
        pool_size: int = 3,
    ) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(
            pool_size, stride=1, padding=pool_size // 2, count_include_pad=False
        )

    def forward(
        self,
        x: torch.Tensor,
        hw: tuple[int, int],
        size: torch.Tensor | None = None,
    ) -> torch.Tensor:
        feat = _to_grid(x, hw)
        return _to_tokens(self.pool(feat) - feat)


@register(MIXERS, "dwconv")
class DepthwiseConvMixer(nn.Module):
    """Depthwise k x k convolution with BatchNorm as the token mixer.

    Papers: "RepViT: Revisiting Mobile CNN From ViT Perspective", arXiv 2307.09283 (3x3);
    "A ConvNet for the 2020s" (ConvNeXt), arXiv 2201.03545 (7x7).
    """

    def __init__(
        self,
        dim: int,
        heads: int = 1,
        grid: tuple[int, int] = (1, 1),
        pos_layer: type | None = None,
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.BatchNorm2d(dim)

    def forward(
        self,
        x: torch.Tensor,
        hw: tuple[int, int],
        size: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return _to_tokens(self.norm(self.conv(_to_grid(x, hw))))


@register(MIXERS, "shift")
class ShiftMixer(nn.Module):
    """Partial shift: four groups of `dim // shift_div` channels move one token left, right, up
    and down, one direction each; the other channels stay. No parameters, no arithmetic.
    Values shifted off the grid are dropped, vacated places are zero. In the paper's block the
    shift replaces the attention branch, with no norm before it and no residual around it
    (`x = shift(x); x = x + mlp(norm(x))`; its `MIXER_SPECS` row says `residual=False`), and
    `shift_div` 12 (a third of the channels shifted, the paper's gamma = 1/3) is its default.

    Paper: "When Shift Operation Meets Vision Transformer: An Extremely Simple Alternative to
    Attention Mechanism" (ShiftViT), arXiv 2201.10801.
    """

    def __init__(
        self,
        dim: int,
        heads: int = 1,
        grid: tuple[int, int] = (1, 1),
        pos_layer: type | None = None,
        shift_div: int = 12,
    ) -> None:
        super().__init__()
        self.group = dim // shift_div  # channels per direction

    def forward(
        self,
        x: torch.Tensor,
        hw: tuple[int, int],
        size: torch.Tensor | None = None,
    ) -> torch.Tensor:
        feat, g = _to_grid(x, hw), self.group
        # padding on one side and cutting the other moves the content by one token; slicing and
        # padding export to ONNX and lower to mobile runtimes as plain copies
        left = F.pad(feat[:, :g, :, 1:], (0, 1))
        right = F.pad(feat[:, g : 2 * g, :, :-1], (1, 0))
        up = F.pad(feat[:, 2 * g : 3 * g, 1:, :], (0, 0, 0, 1))
        down = F.pad(feat[:, 3 * g : 4 * g, :-1, :], (0, 0, 1, 0))
        return _to_tokens(torch.cat([left, right, up, down, feat[:, 4 * g :]], dim=1))


@register(MIXERS, "lisa")
class StructureAwareAttention(nn.Module):
    """Lightweight structure-aware attention: each head holds `patterns` learned relative
    position embeddings E_k (one weight per 2-D offset, a (2H-1) x (2W-1) table, resized
    bicubically to other grids), and a token mixes the values by the kernel these patterns make,
    weighted by coefficients its own content chooses:
    y_i = sum_k a_k(x_i) sum_j E_k(p_j - p_i) v_j, with a(x_i) a softmax over the patterns.
    Each inner sum is a 2-D convolution of the values with a full-size kernel, computed with
    FFTs (O(N log N), the paper's form for long sequences) or directly as an N x N Toeplitz
    product; `fft=None` takes the FFT above `FFT_ABOVE` tokens (on the small grids of
    lightweight models the direct product is faster, and it exports to ONNX).

    Paper: "Lightweight Structure-Aware Attention for Visual Understanding" (LiSA),
    arXiv 2211.16289. How the paper's queries weight its patterns could not be recovered from
    the text available here; this reading takes a softmax over the patterns from a linear map of
    each token, with the patterns as multiplicative weights of the values.
    """

    FFT_ABOVE = 1024

    def __init__(
        self,
        dim: int,
        heads: int = 1,
        grid: tuple[int, int] = (1, 1),
        pos_layer: type | None = None,
        patterns: int = 4,
        fft: bool | None = None,
    ) -> None:
        super().__init__()
        self.heads, self.patterns, self.fft = heads, patterns, fft
        self.grid = tuple(grid)
        self.coef = nn.Linear(dim, heads * patterns)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.table = nn.Parameter(
            torch.randn(heads, patterns, 2 * grid[0] - 1, 2 * grid[1] - 1) * 0.02
        )
        # the Toeplitz lookup of the grid it was built for, a buffer: a tensor made outside
        # the module would be a constant torch.export lifts, which PT2E's graph cannot export
        # again (int8 on ExecuTorch)
        self.register_buffer("offsets", grid_offsets(self.grid), persistent=False)

    def kernels(self, hw: tuple[int, int]) -> torch.Tensor:
        """(heads, patterns, 2H-1, 2W-1): entry (dy + H - 1, dx + W - 1) weighs the value at
        offset (dy, dx) from the query."""
        table = self.table
        if tuple(hw) != self.grid:
            size = (2 * hw[0] - 1, 2 * hw[1] - 1)
            table = F.interpolate(
                table.flatten(0, 1)[:, None], size=size, mode="bicubic", align_corners=True
            )[:, 0].unflatten(0, table.shape[:2])
        return table

    def _mix(self, v: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """(B, heads, patterns, N, hd): each pattern's kernel applied to the values."""
        b, h, n, d = v.shape
        kernel = self.kernels(hw)
        if not (self.fft if self.fft is not None else n > self.FFT_ABOVE):
            # (N, N, 2): p_j - p_i, shifted to >= 0
            coords = self.offsets if tuple(hw) == self.grid else grid_offsets(hw, v.device)
            toeplitz = kernel[:, :, coords[..., 0], coords[..., 1]]  # (h, K, N, N)
            return torch.einsum("hkij,bhjd->bhkid", toeplitz, v)
        (gh, gw), size = hw, (2 * hw[0] - 1 + hw[0] - 1, 2 * hw[1] - 1 + hw[1] - 1)
        grid = v.transpose(-2, -1).reshape(b, h, 1, d, gh, gw)
        # y_i = sum_j E(p_j - p_i) v_j is a correlation: flip the kernel to convolve
        flipped = kernel.flip(-2, -1)[None, :, :, None]  # (1, h, K, 1, 2H-1, 2W-1)
        spectrum = torch.fft.rfft2(grid, s=size) * torch.fft.rfft2(flipped, s=size)
        full = torch.fft.irfft2(spectrum, s=size)  # linear convolution, no wrap-around
        out = full[..., gh - 1 : 2 * gh - 1, gw - 1 : 2 * gw - 1]  # (B, h, K, hd, H, W)
        return out.flatten(-2).transpose(-2, -1)

    def forward(
        self,
        x: torch.Tensor,
        hw: tuple[int, int],
        size: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, n, _ = x.shape
        coef = self.coef(x).reshape(b, n, self.heads, self.patterns).softmax(dim=-1)
        v = _split_heads(self.v(x), self.heads)  # (B, heads, N, hd)
        mixed = self._mix(v, hw)  # (B, heads, K, N, hd)
        out = torch.einsum("bnhk,bhknd->bhnd", coef, mixed)
        return self.proj(_merge_heads(out))


def grid_offsets(hw: tuple[int, int], device: torch.device | None = None) -> torch.Tensor:
    """(N, N, 2) long: p_j - p_i + (H - 1, W - 1) for tokens i, j of a row-major grid (a
    copy: a module may keep it)."""
    return _grid_offsets(tuple(hw)).to(device, copy=True)


@functools.lru_cache(maxsize=64)
def _grid_offsets(hw: tuple[int, int]) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(hw[0]), torch.arange(hw[1]), indexing="ij")
    coords = torch.stack([ys.flatten(), xs.flatten()], dim=-1)
    offset = coords[None, :, :] - coords[:, None, :]
    offset[..., 0] += hw[0] - 1
    offset[..., 1] += hw[1] - 1
    return offset


@register(MIXERS, "mobileformer")
class MobileFormerMixer(nn.Module):
    """A Mobile-Former block: a MobileNet-style inverted bottleneck on the token grid (Mobile)
    in parallel with `global_tokens` global tokens (Former), joined by two lightweight
    cross-attention bridges. In order: Mobile->Former (the global tokens attend to the grid,
    queries projected, keys and values the local features unprojected, split into heads);
    Former (self-attention and an MLP on the global tokens); Mobile (expand 1x1, depthwise 3x3,
    project 1x1, with BatchNorm and GELU); Former->Mobile (the grid attends to the global
    tokens, queries the local features unprojected, keys and values projected). The global
    tokens are carried from block to block through the stage (`MIXER_SPECS` row:
    `carries=True`; the stage holds their learned start), so the mixer is called with them and
    returns them updated: `mixer(x, hw, size, carry) -> (update, carry)`.

    Paper: "Mobile-Former: Bridging MobileNet and Transformer", arXiv 2108.05895. Differences:
    the global tokens have the stage's width (the paper gives them their own, 192), start
    afresh in each stage, and do not reach the classifier (the paper concatenates the first
    one with the pooled features); the bottleneck uses GELU where the paper has dynamic ReLU
    (whose coefficients come from the global tokens). Without the bridges (their outputs zero),
    the local path is the plain inverted bottleneck.
    """

    def __init__(
        self,
        dim: int,
        heads: int = 1,
        grid: tuple[int, int] = (1, 1),
        pos_layer: type | None = None,
        global_tokens: int = 6,
        expansion: int = 2,
    ) -> None:
        super().__init__()
        self.heads = heads
        hidden = dim * expansion
        self.bottleneck = nn.Sequential(
            nn.Conv2d(dim, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.GELU(),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.GELU(),
            nn.Conv2d(hidden, dim, 1, bias=False),
            nn.BatchNorm2d(dim),
        )
        self.to_former_q = nn.Linear(dim, dim)  # Mobile->Former
        self.to_former_out = nn.Linear(dim, dim)
        self.former_norm1 = nn.LayerNorm(dim)  # Former
        self.former_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.former_norm2 = nn.LayerNorm(dim)
        self.former_mlp = nn.Sequential(
            nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim)
        )
        self.to_mobile_kv = nn.Linear(dim, 2 * dim)  # Former->Mobile

    def local(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """The Mobile path alone: the inverted bottleneck on the grid."""
        return _to_tokens(self.bottleneck(_to_grid(x, hw)))

    def forward(
        self,
        x: torch.Tensor,
        hw: tuple[int, int],
        size: torch.Tensor | None = None,
        carry: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if carry is None:
            raise ValueError("a Mobile-Former block needs its stage's global tokens (carry)")
        z = carry
        # Mobile->Former: global tokens gather from the grid (no projection on its side)
        q = _split_heads(self.to_former_q(z), self.heads)
        local = _split_heads(x, self.heads)
        gathered = F.scaled_dot_product_attention(q, local, local)
        z = z + self.to_former_out(_merge_heads(gathered))
        # Former: a transformer block on the global tokens
        zn = self.former_norm1(z)
        z = z + self.former_attn(zn, zn, zn, need_weights=False)[0]
        z = z + self.former_mlp(self.former_norm2(z))
        # Mobile, then Former->Mobile: the grid reads the global tokens (no projection on its
        # side)
        y = self.local(x, hw)
        k, v = (_split_heads(t, self.heads) for t in self.to_mobile_kv(z).chunk(2, dim=-1))
        y = y + _merge_heads(F.scaled_dot_product_attention(_split_heads(y, self.heads), k, v))
        return y, z
