"""LightViT: the one model class that builds any `ArchConfig`, with timm's model surface.

A LightViT is a stem, a position encoding (added at the input, after each stage's first block,
or inside attention), a sequence of stages of pre-norm residual blocks (`x = x + mixer(norm(x))`,
optional token merging or pruning, `x = x + mlp(norm(x))`) whose token mixer, width, depth,
heads and MLP ratio are set per stage, optional early-exit heads after chosen blocks, a final
norm, size-weighted global average pooling and a linear classifier (and, with `distill_head`, a
second classifier for DeiT-style distillation). Blocks come from the registries in
`search_spaces.blocks`; `reparameterize()` fuses multi-branch blocks.

`timm.create_model("lightvit", arch=cfg_dict)` builds one; folders written by `lvit export` load
with `timm.create_model("local-dir:DIR", pretrained=True)` once this module is imported (importing
`search_spaces` does it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import torch
from timm.layers import DropPath, Mlp, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from search_spaces.arch import (
    MIXER_SPECS,
    POS_ENC_SPECS,
    ArchConfig,
    StageConfig,
    mixer_options,
)
from search_spaces.blocks import EXITS, MIXERS, POS_ENCODINGS, STEMS, TOKEN_REDUCERS, lookup
from search_spaces.blocks.exits import pool_tokens

__all__ = ["LightViT", "Block", "Stage", "lightvit", "default_arch"]


class Block(nn.Module):
    """Pre-norm transformer block with a pluggable token mixer (the MetaFormer view):
    `x = x + mixer(norm(x))` (or `x = mixer(x)` for a mixer whose `MIXER_SPECS` row says
    `residual=False`), then optional token reduction (ToMe merging or EViT pruning, as in both
    papers between the mixer and the MLP), then `x = x + mlp(norm(x))`."""

    def __init__(
        self,
        cfg: StageConfig,
        grid: tuple[int, int],
        pos_layer: type | None,
        drop_path: float = 0.0,
        prune: bool = False,
    ) -> None:
        super().__init__()
        dim = cfg.dim
        options = mixer_options(cfg)  # the mixer's option, by MIXER_SPECS
        # a mixer whose output replaces the tokens (ShiftViT's shift) has no norm before it
        self.residual = MIXER_SPECS[cfg.mixer].residual if cfg.mixer in MIXER_SPECS else True
        self.norm1 = nn.LayerNorm(dim) if self.residual else nn.Identity()
        self.mixer = lookup(MIXERS, "mixer", cfg.mixer)(
            dim, cfg.heads, grid=grid, pos_layer=pos_layer, **options
        )
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.merge = TOKEN_REDUCERS["tome"](cfg.merge_r) if cfg.merge_r else None
        self.prune = TOKEN_REDUCERS["evit"](cfg.keep_rate) if prune else None
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, hidden_features=int(dim * cfg.mlp_ratio), act_layer=nn.GELU)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        hw: tuple[int, int],
        size: torch.Tensor | None,
        carry: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """(tokens, sizes), and the carried state after it for a mixer that carries one
        (`MIXER_SPECS`: Mobile-Former's global tokens): `(tokens, sizes, carry)`."""
        if carry is not None:
            y, carry = self.mixer(self.norm1(x), hw, size, carry)
            x = x + self.drop_path1(y)
            x = x + self.drop_path2(self.mlp(self.norm2(x)))
            return x, size, carry
        if self.prune is not None:
            y, importance = self.mixer(self.norm1(x), hw, size, need_importance=True)
            x = x + self.drop_path1(y)
            x, size = self.prune(x, importance, _ones_like_tokens(x, size))
        elif self.residual:
            x = x + self.drop_path1(self.mixer(self.norm1(x), hw, size))
        else:
            x = self.mixer(x, hw, size)
        if self.merge is not None:
            x, size = self.merge(x, _ones_like_tokens(x, size))
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return x, size


def _ones_like_tokens(x: torch.Tensor, size: torch.Tensor | None) -> torch.Tensor:
    return size if size is not None else x.new_ones(x.shape[0], x.shape[1], 1)


class Transition(nn.Module):
    """Between stages: a stride-2 3x3 conv that halves the grid (and sets the width), or a 1x1
    conv where only the width changes; followed by LayerNorm."""

    def __init__(self, in_dim: int, out_dim: int, downsample: bool) -> None:
        super().__init__()
        self.stride = 2 if downsample else 1
        k = 3 if downsample else 1
        self.conv = nn.Conv2d(in_dim, out_dim, k, stride=self.stride, padding=k // 2)
        self.norm = nn.LayerNorm(out_dim)

    def forward(
        self,
        x: torch.Tensor,
        hw: tuple[int, int],
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        b, n, c = x.shape
        feat = self.conv(x.transpose(1, 2).reshape(b, c, hw[0], hw[1]))
        hw = (feat.shape[2], feat.shape[3])
        return self.norm(feat.flatten(2).transpose(1, 2)), hw


class Stage(nn.Module):
    """`depth` blocks at one width; a stage-site position encoding follows its first block."""

    def __init__(
        self, in_dim: int, cfg: StageConfig, pos_enc: str, grid: int, drop_path: list[float]
    ) -> None:
        super().__init__()
        needs_transition = cfg.downsample or in_dim != cfg.dim
        self.transition = Transition(in_dim, cfg.dim, cfg.downsample) if needs_transition else None
        pos_cls = lookup(POS_ENCODINGS, "pos_enc", pos_enc)
        site = POS_ENC_SPECS[pos_enc].site
        attn_pos = pos_cls if site == "attention" else None
        self.blocks = nn.ModuleList(
            Block(cfg, (grid, grid), attn_pos, dp, prune=(i == 0 and cfg.keep_rate < 1))
            for i, dp in enumerate(drop_path)
        )
        self.pos = pos_cls(cfg.dim, (grid, grid), cfg.heads) if site == "stage" else None
        # the start of a state the stage's mixers carry from block to block (Mobile-Former's
        # global tokens)
        self.carry = (
            nn.Parameter(torch.zeros(1, cfg.global_tokens, cfg.dim))
            if MIXER_SPECS[cfg.mixer].carries
            else None
        )
        if self.carry is not None:
            trunc_normal_(self.carry, std=0.02)

    def iter_blocks(
        self, x: torch.Tensor, hw: tuple[int, int], size: torch.Tensor | None = None
    ) -> Iterator[tuple[torch.Tensor, tuple[int, int], torch.Tensor | None]]:
        """Run the stage, yielding (tokens, grid, sizes) after every block."""
        if self.transition is not None:
            x, hw = self.transition(x, hw)
        # repeat, not expand: under no_grad an expanded view of a parameter still claims to
        # require grad, without a graph, which module hooks (FLOP counting) cannot take
        carry = self.carry.repeat(x.shape[0], 1, 1) if self.carry is not None else None
        for i, block in enumerate(self.blocks):
            if carry is not None:
                x, size, carry = block(x, hw, size, carry)
            else:
                x, size = block(x, hw, size)
            if i == 0 and self.pos is not None:
                x = self.pos(x, hw)
            yield x, hw, size

    def forward(
        self, x: torch.Tensor, hw: tuple[int, int], size: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, tuple[int, int], torch.Tensor | None]:
        out = (x, hw, size)
        for out in self.iter_blocks(x, hw, size):  # noqa: B007 - the last block's output counts
            pass
        return out


class LightViT(nn.Module):
    """A lightweight ViT built from an `ArchConfig`; timm's classification model surface."""

    def __init__(
        self,
        cfg: ArchConfig,
        num_classes: int | None = None,
        in_chans: int | None = None,
        img_size: int | tuple[int, int] | None = None,
        global_pool: str | None = "avg",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        reparameterized: bool = False,
    ) -> None:
        """Build `cfg`; timm's `num_classes`, `in_chans` and `img_size` override its fields.
        `reparameterized` builds the fused inference form (what `reparameterize()` gives), so
        that fused weights load into it."""
        super().__init__()
        if global_pool not in ("avg", None):
            raise ValueError(f"LightViT pools by averaging tokens; global_pool={global_pool!r}")
        cfg = _override(cfg, num_classes=num_classes, in_chans=in_chans, img_size=img_size)
        self.arch = cfg
        self.num_classes = cfg.num_classes
        self.in_chans = cfg.in_chans
        self.global_pool = "avg"
        grids = cfg.grid_sizes()
        stem_dim = cfg.stages[0].dim
        stem_grid = cfg.img_size // cfg.patch_size

        self.stem = lookup(STEMS, "stem", cfg.stem)(
            cfg.in_chans, stem_dim, cfg.patch_size, cfg.img_size
        )
        pos_cls = lookup(POS_ENCODINGS, "pos_enc", cfg.pos_enc)
        self.pos_enc = (
            pos_cls(stem_dim, (stem_grid, stem_grid), cfg.stages[0].heads)
            if POS_ENC_SPECS[cfg.pos_enc].site == "input"
            else None
        )

        rates = torch.linspace(0, drop_path_rate, cfg.depth, device="cpu").tolist()
        stages, in_dim = [], stem_dim
        for stage_cfg, grid in zip(cfg.stages, grids, strict=True):
            stage_rates, rates = rates[: stage_cfg.depth], rates[stage_cfg.depth :]
            stages.append(Stage(in_dim, stage_cfg, cfg.pos_enc, grid, stage_rates))
            in_dim = stage_cfg.dim
        self.stages = nn.ModuleList(stages)
        self.exits = nn.ModuleList(
            EXITS["linear"](dim, cfg.num_classes) for dim in cfg.exit_stage_dims()
        )

        self.num_features = self.head_hidden_size = in_dim
        self.norm = nn.LayerNorm(in_dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(in_dim, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.head_dist = self._dist_head(cfg.num_classes)
        # dynamic resolution: the low-resolution pass's pooled features, projected, join the
        # full pass's before the classifier (feature reuse; zero at the start)
        self.reuse = nn.Linear(in_dim, in_dim) if cfg.dynamic_resolution else None
        self.distilled_training = False
        self.pretrained_cfg = self.default_cfg = _cfg(cfg)
        self.apply(_init_weights)
        if self.reuse is not None:
            nn.init.zeros_(self.reuse.weight)
        self.reparameterized = False
        if reparameterized:
            self.reparameterize()

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameter names exempt from weight decay: those a block lists in
        `no_weight_decay_params` (position embeddings and bias tables)."""
        return {
            f"{module_name}.{param}"
            for module_name, module in self.named_modules()
            for param in getattr(module, "no_weight_decay_params", ())
        }

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None and global_pool != "avg":
            raise ValueError(f"LightViT pools by averaging tokens; global_pool={global_pool!r}")
        self.num_classes = num_classes
        self.arch = dataclasses.replace(self.arch, num_classes=num_classes)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.head_dist = self._dist_head(num_classes)
        self.exits = nn.ModuleList(
            EXITS["linear"](dim, num_classes) for dim in self.arch.exit_stage_dims()
        )

    def _dist_head(self, num_classes: int) -> nn.Module | None:
        """DeiT's distillation token (arXiv 2012.12877) in LeViT's form (arXiv 2104.01136): a
        model that pools its tokens instead of reading a class token gets a second classifier on
        the same pooled features; it learns the teacher's predictions while `head` learns the
        labels, and inference averages the two."""
        if not self.arch.distill_head:
            return None
        return nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    @torch.jit.ignore
    def set_distilled_training(self, enable: bool = True) -> None:
        """In training mode, make `forward` return (class logits, distillation logits) (timm's
        switch of the same name on its distilled models); inference always averages them."""
        if enable and self.head_dist is None:
            raise ValueError("this architecture has no distillation head (distill_head=False)")
        self.distilled_training = enable

    @torch.jit.ignore
    def set_drop_path_rate(self, rate: float) -> None:
        """Stochastic depth ("Deep Networks with Stochastic Depth", arXiv 1603.09382) rising
        linearly from 0 in the first block to `rate` in the last, as `drop_path_rate` builds
        it; 0 removes it. A training setting: no parameters change, and a model trained with
        it is exported with `rate` 0 (identity at inference either way)."""
        blocks = [b for stage in self.stages for b in stage.blocks]
        rates = torch.linspace(0, rate, len(blocks), device="cpu").tolist()
        for block, r in zip(blocks, rates, strict=True):
            block.drop_path1 = DropPath(r) if r > 0 else nn.Identity()
            block.drop_path2 = DropPath(r) if r > 0 else nn.Identity()

    def reparameterize(self) -> None:
        """Fuse every re-parameterisable block (multi-branch convs) for inference."""
        for module in self.modules():
            if module is not self and hasattr(module, "reparameterize"):
                module.reparameterize()
        self.reparameterized = True

    @property
    def has_reparameterizable(self) -> bool:
        """Whether any block has branches that `reparameterize()` fuses."""
        return any(m is not self and hasattr(m, "reparameterize") for m in self.modules())

    def _tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        feat = self.stem(x)
        hw = (feat.shape[2], feat.shape[3])
        x = feat.flatten(2).transpose(1, 2)
        if self.pos_enc is not None:
            x = self.pos_enc(x, hw)
        return x, hw

    def iter_blocks(
        self, x: torch.Tensor
    ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor | None]]:
        """Run the model block by block, yielding (block number from 1, tokens, sizes)."""
        tokens, hw = self._tokens(x)
        size, count = None, 0
        for stage in self.stages:
            out = (tokens, hw, size)
            for out in stage.iter_blocks(tokens, hw, size):
                count += 1
                yield count, out[0], out[2]
            tokens, hw, size = out

    def _run(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        for _, tokens, size in self.iter_blocks(x):  # noqa: B007 - the last block counts
            pass
        return self.norm(tokens), size

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image (B, C, H, W) -> normalised tokens (B, N, C) of the last stage. After token
        merging the tokens have sizes: use `forward` / `forward_head` for size-aware pooling."""
        return self._run(x)[0]

    def forward_head(
        self, x: torch.Tensor, pre_logits: bool = False, size: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = self.head_drop(pool_tokens(x, size))
        if pre_logits:
            return x
        return self._logits(x)

    def _logits(self, pooled: torch.Tensor) -> torch.Tensor:
        if self.head_dist is None:
            return self.head(pooled)
        logits, dist = self.head(pooled), self.head_dist(pooled)
        if self.distilled_training and self.training and not torch.jit.is_scripting():
            return logits, dist  # type: ignore[return-value] - the training loop takes both
        return (logits + dist) / 2

    def _final(
        self, tokens: torch.Tensor, size: torch.Tensor | None, low: torch.Tensor | None
    ) -> torch.Tensor:
        """The final head on the last block's tokens, with the low-resolution pass's features
        joined in (dynamic resolution)."""
        pooled = pool_tokens(self.norm(tokens), size)
        if low is not None:
            pooled = pooled + self.reuse(low)
        return self._logits(self.head_drop(pooled))

    def low_resolution_features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled features of the whole model run on `x` resized to
        `arch.dynamic_resolution` (the first, cheap pass)."""
        side = self.arch.dynamic_resolution
        small = torch.nn.functional.interpolate(
            x, size=(side, side), mode="bilinear", align_corners=False
        )
        feats, size = self._run(small)
        return pool_tokens(feats, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reuse is not None:  # both passes: the low one, then the full one reusing it
            low = self.low_resolution_features(x)
            for _, tokens, size in self.iter_blocks(x):  # noqa: B007 - the last block counts
                pass
            return self._final(tokens, size, low)
        feats, size = self._run(x)
        return self.forward_head(feats, size=size)

    def forward_passes(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every prediction a training step learns from: the low-resolution pass's logits
        (dynamic resolution), each exit's, then the final head's; in distilled training the
        last is the (class, distillation) pair `forward` returns."""
        outputs: list[torch.Tensor] = []
        low = None
        if self.reuse is not None:
            low = self.low_resolution_features(x)
            outputs.append(self.head(self.head_drop(low)))
        exit_at = dict(zip(self.arch.exits, self.exits, strict=True))
        for count, tokens, size in self.iter_blocks(x):
            if count in exit_at:
                outputs.append(exit_at[count](tokens, size))
        outputs.append(self._final(tokens, size, low))
        return outputs

    def forward_exits(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits of every exit head, in order, then of the final head (dynamic depth); in
        distilled training the last is the (class, distillation) pair `forward` returns."""
        outputs = self.forward_passes(x)
        return outputs[1:] if self.reuse is not None else outputs

    def forward_dynamic(
        self,
        x: torch.Tensor,
        thresholds: list[float],
        resolution_threshold: float | None = None,
    ) -> tuple[torch.Tensor, int]:
        """Dynamic inference. With dynamic resolution and a `resolution_threshold`, the
        low-resolution pass answers first when its softmax confidence reaches it (for a batch:
        when every image's does): exit -1. Otherwise early exits: stop at the first exit whose
        confidence reaches its threshold, else run to the final head (which reuses the low
        pass's features). Returns the logits and the exit taken (`len(exits)` for the final
        head). Only what that answer needs runs."""
        low = None
        if self.reuse is not None:
            low = self.low_resolution_features(x)
            if resolution_threshold is not None:
                logits = self.head(low)
                if logits.softmax(dim=-1).amax(dim=-1).min() >= resolution_threshold:
                    return logits, -1
        exit_at = {block: i for i, block in enumerate(self.arch.exits)}
        for count, tokens, size in self.iter_blocks(x):
            k = exit_at.get(count)
            if k is not None:
                logits = self.exits[k](tokens, size)
                if logits.softmax(dim=-1).amax(dim=-1).min() >= thresholds[k]:
                    return logits, k
        return self._final(tokens, size, low), len(self.arch.exits)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _cfg(arch: ArchConfig | None = None, **kwargs: Any) -> dict[str, Any]:
    arch = arch or default_arch()
    stem_cls = STEMS.get(arch.stem)
    return {
        "url": "",
        "num_classes": arch.num_classes,
        "input_size": (arch.in_chans, arch.img_size, arch.img_size),
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "fixed_input_size": False,
        "mean": (0.5,) * arch.in_chans,
        "std": (0.5,) * arch.in_chans,
        "first_conv": _first_conv(stem_cls),
        "classifier": ("head", "head_dist") if arch.distill_head else "head",
        "architecture": "lightvit",
        **kwargs,
    }


def _first_conv(stem_cls: type | None) -> str | tuple[str, ...] | None:
    if stem_cls is None:
        return None
    names = stem_cls.first_conv
    return f"stem.{names}" if isinstance(names, str) else tuple(f"stem.{n}" for n in names)


def default_arch() -> ArchConfig:
    """The architecture `timm.create_model("lightvit")` builds when given none: a 4-block
    DeiT-style model for 32x32 inputs."""
    return ArchConfig(stages=(StageConfig(depth=4, dim=64, heads=2, mlp_ratio=2.0),))


def _as_arch(arch: ArchConfig | dict[str, Any] | str | None) -> ArchConfig:
    if arch is None:
        return default_arch()
    if isinstance(arch, ArchConfig):
        return arch
    if isinstance(arch, str):
        return ArchConfig.from_json(arch)
    return ArchConfig.from_dict(arch)


default_cfgs = generate_default_cfgs({"lightvit": _cfg()})


def _override(cfg: ArchConfig, **fields: Any) -> ArchConfig:
    changes = {k: v for k, v in fields.items() if v is not None}
    size = changes.get("img_size")
    if size is not None and not isinstance(size, int):
        if len(set(size)) != 1:
            raise ValueError(f"LightViT takes square inputs, got img_size={tuple(size)}")
        changes["img_size"] = int(size[0])
    return dataclasses.replace(cfg, **changes) if changes else cfg


def create(variant: str, cfg: ArchConfig, pretrained: bool = False, **kwargs: Any) -> LightViT:
    """Build a LightViT through timm's `build_model_with_cfg` under the entrypoint `variant`."""
    # timm fills num_classes / in_chans from the pretrained cfg when not given: make that the
    # architecture's own unless the caller (or an exported config.json) says otherwise.
    overlay = {
        k: v
        for k, v in _cfg(cfg).items()
        if k in ("num_classes", "input_size", "first_conv", "classifier")
    }
    overlay.update(kwargs.pop("pretrained_cfg_overlay", None) or {})
    return build_model_with_cfg(
        LightViT, variant, pretrained, model_cfg=cfg, pretrained_cfg_overlay=overlay, **kwargs
    )


@register_model
def lightvit(
    pretrained: bool = False, arch: ArchConfig | dict | str | None = None, **kwargs: Any
) -> LightViT:
    """LightViT from an ArchConfig (an `ArchConfig`, its dict, or its JSON).

    timm's usual `num_classes`, `in_chans` and `img_size` keyword arguments override the
    architecture's; `drop_rate` and `drop_path_rate` are passed to the model.
    """
    return create("lightvit", _as_arch(arch), pretrained, **kwargs)
