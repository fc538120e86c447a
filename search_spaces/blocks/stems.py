"""Embedding stems: image (B, C, H, W) -> token grid (B, D, H / patch_size, W / patch_size).

Every stem takes `(in_chans, embed_dim, patch_size, img_size)` and names its first convolution(s)
in `first_conv` (relative to the stem) so that timm can adapt the input channels of exported
models. Stems that need halving layers (conv, repconv, mv2) take power-of-two patch sizes.
"""

from __future__ import annotations

import math

import torch
from timm.layers import ConvNormAct, LayerNorm2d, PatchEmbed
from torch import nn

from search_spaces.blocks._registry import register

__all__ = [
    "STEMS",
    "PatchStem",
    "ConvStem",
    "OverlapStem",
    "MultiScaleStem",
    "RepConvStem",
    "MobileNetV2Stem",
    "RepConvBN",
    "InvertedResidual",
]

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
        n = _stride2_layers(patch_size, "conv")
        widths = [max(8, embed_dim >> (n - i)) for i in range(n)]
        layers, chans = [], in_chans
        for width in widths:
            layers.append(ConvNormAct(chans, width, 3, stride=2, padding=1, act_layer=nn.ReLU))
            chans = width
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Conv2d(chans, embed_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.convs(x))


@register(STEMS, "overlap")
class OverlapStem(nn.Module):
    """Overlapping patch embedding: one strided convolution whose kernel (2 * stride - 1) is
    larger than its stride, so neighbouring patches share pixels; then LayerNorm.

    Papers: "CvT: Introducing Convolutions to Vision Transformers", arXiv 2103.15808;
    "PVT v2: Improved Baselines with Pyramid Vision Transformer", arXiv 2106.13797.
    """

    first_conv = "proj"

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, img_size: int) -> None:
        super().__init__()
        kernel = 2 * patch_size - 1 if patch_size > 1 else 3
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel, stride=patch_size, padding=kernel // 2)
        self.norm = LayerNorm2d(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


@register(STEMS, "multiscale")
class MultiScaleStem(nn.Module):
    """Tokens from two patch sizes fused: a fine branch (kernel = stride = patch_size) and a
    coarse, overlapping branch (kernel 2 * patch_size, same stride) each give half the channels
    of every token; a 1x1 convolution fuses them. Each token thus sees two scales at once.

    After "CrossViT: Cross-Attention Multi-Scale Vision Transformer", arXiv 2103.14899, and the
    multi-scale token aggregation of "Shunted Self-Attention via Multi-Scale Token Aggregation",
    arXiv 2111.15193.
    """

    first_conv = ("fine", "coarse")

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, img_size: int) -> None:
        super().__init__()
        if embed_dim % 2:
            raise ValueError(f"the multiscale stem needs an even width, got {embed_dim}")
        half = embed_dim // 2
        self.fine = nn.Conv2d(in_chans, half, patch_size, stride=patch_size)
        self.coarse = nn.Conv2d(
            in_chans, half, 2 * patch_size, stride=patch_size, padding=patch_size // 2
        )
        self.norm = LayerNorm2d(embed_dim)
        self.fuse = nn.Conv2d(embed_dim, embed_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fine = self.fine(x)
        coarse = self.coarse(x)[..., : fine.shape[2], : fine.shape[3]]
        return self.fuse(self.norm(torch.cat([fine, coarse], dim=1)))


def _fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of one convolution equal to conv followed by bn (in eval mode)."""
    std = (bn.running_var + bn.eps).sqrt()
    weight = conv.weight * (bn.weight / std).reshape(-1, 1, 1, 1)
    bias = bn.bias - bn.running_mean * bn.weight / std
    if conv.bias is not None:
        bias = bias + conv.bias * bn.weight / std
    return weight, bias


class RepConvBN(nn.Module):
    """A 3x3 conv-BN and a 1x1 conv-BN branch in parallel (RepVGG style) that `reparameterize()`
    fuses into one 3x3 convolution with bias, for inference.

    Paper: "RepVGG: Making VGG-style ConvNets Great Again", arXiv 2101.03697.
    """

    def __init__(self, in_chans: int, out_chans: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv3 = nn.Conv2d(in_chans, out_chans, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chans)
        self.conv1 = nn.Conv2d(in_chans, out_chans, 1, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chans)
        self.fused: nn.Conv2d | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused is not None:
            return self.fused(x)
        return self.bn3(self.conv3(x)) + self.bn1(self.conv1(x))

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.fused is not None:
            return
        w3, b3 = _fuse_conv_bn(self.conv3, self.bn3)
        w1, b1 = _fuse_conv_bn(self.conv1, self.bn1)
        fused = nn.Conv2d(
            self.conv3.in_channels, self.conv3.out_channels, 3, stride=self.stride, padding=1
        ).to(w3)
        fused.weight.copy_(w3 + nn.functional.pad(w1, (1, 1, 1, 1)))
        fused.bias.copy_(b3 + b1)
        self.fused = fused
        for name in ("conv3", "bn3", "conv1", "bn1"):
            delattr(self, name)


@register(STEMS, "repconv")
class RepConvStem(nn.Module):
    """Re-parameterisable convolutional stem: log2(patch_size) stride-2 layers, each a 3x3 and a
    1x1 conv-BN branch followed by GELU, as in RepViT's stem; `reparameterize()` fuses every
    layer into a single 3x3 convolution (same outputs in eval mode).

    Paper: "RepViT: Revisiting Mobile CNN From ViT Perspective", arXiv 2307.09283.
    """

    first_conv = "layers.0.conv3"

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, img_size: int) -> None:
        super().__init__()
        n = _stride2_layers(patch_size, "repconv")
        widths = [max(8, embed_dim >> (n - 1 - i)) for i in range(n)]
        layers, acts, chans = [], [], in_chans
        for width in widths:
            layers.append(RepConvBN(chans, width, stride=2))
            acts.append(nn.GELU())
            chans = width
        self.layers = nn.ModuleList(layers)
        self.acts = nn.ModuleList(acts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer, act in zip(self.layers, self.acts, strict=True):
            x = act(layer(x))
        return x

    def reparameterize(self) -> None:
        for layer in self.layers:
            layer.reparameterize()


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expansion, 3x3 depthwise (strided), linear 1x1 projection;
    residual when the shape is kept.

    Paper: "MobileNetV2: Inverted Residuals and Linear Bottlenecks", arXiv 1801.04381.
    """

    def __init__(self, in_chans: int, out_chans: int, stride: int, expansion: int = 4) -> None:
        super().__init__()
        hidden = in_chans * expansion
        self.use_residual = stride == 1 and in_chans == out_chans
        self.expand = ConvNormAct(in_chans, hidden, 1, act_layer=nn.SiLU)
        self.dw = ConvNormAct(
            hidden, hidden, 3, stride=stride, padding=1, groups=hidden, act_layer=nn.SiLU
        )
        self.project = ConvNormAct(hidden, out_chans, 1, apply_act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.dw(self.expand(x)))
        return x + y if self.use_residual else y


@register(STEMS, "mv2")
class MobileNetV2Stem(nn.Module):
    """MobileViT's convolutional stem: a stride-2 3x3 conv-BN-SiLU, one MobileNetV2 inverted
    residual block at stride 1, then one stride-2 inverted residual block per further halving.

    Papers: "MobileViT: Light-weight, General-purpose, and Mobile-friendly Vision Transformer",
    arXiv 2110.02178; MobileNetV2, arXiv 1801.04381.
    """

    first_conv = "conv.conv"

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, img_size: int) -> None:
        super().__init__()
        n = _stride2_layers(patch_size, "mv2")
        width = max(8, embed_dim >> n)
        self.conv = ConvNormAct(in_chans, width, 3, stride=2, padding=1, act_layer=nn.SiLU)
        blocks: list[nn.Module] = []
        chans = width
        for i in range(n):  # block 0 keeps the resolution; each later one halves it
            out = embed_dim if i == n - 1 else max(8, embed_dim >> (n - 1 - i))
            blocks.append(InvertedResidual(chans, out, stride=1 if i == 0 else 2))
            chans = out
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.conv(x))


def _stride2_layers(patch_size: int, name: str) -> int:
    n = int(math.log2(patch_size)) if patch_size > 0 else 0
    if patch_size < 2 or 2**n != patch_size:
        raise ValueError(f"the {name} stem needs a power-of-two patch_size >= 2, got {patch_size}")
    return n
