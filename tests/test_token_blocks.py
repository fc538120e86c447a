"""Token reduction, exits and re-parameterisation do what their papers say."""

from __future__ import annotations

import math

import pytest
import torch

from search_spaces.arch import ArchConfig, StageConfig
from search_spaces.blocks import EXITS, MIXERS, STEMS, TOKEN_REDUCERS
from search_spaces.blocks.tokens import bipartite_merge
from search_spaces.model import LightViT


def test_tome_with_r_zero_and_pruning_with_keep_rate_one_are_identities() -> None:
    x, size = torch.randn(2, 16, 8), torch.ones(2, 16, 1)
    y, s = TOKEN_REDUCERS["tome"](0)(x, size)
    assert torch.equal(y, x) and torch.equal(s, size)
    y, s = TOKEN_REDUCERS["evit"](1.0)(x, torch.rand(2, 16), size)
    assert torch.equal(y, x) and torch.equal(s, size)


def test_tome_merges_r_tokens_and_keeps_the_weighted_mean() -> None:
    x, size = torch.randn(2, 16, 8), torch.rand(2, 16, 1) + 0.5
    y, s = TOKEN_REDUCERS["tome"](5)(x, size)
    assert y.shape == (2, 11, 8) and s.shape == (2, 11, 1)
    assert torch.allclose(s.sum(dim=1), size.sum(dim=1))
    assert torch.allclose((y * s).sum(dim=1), (x * size).sum(dim=1), atol=1e-5)
    y, _ = bipartite_merge(x, size, 100)  # capped at N // 2
    assert y.shape[1] == 8


def test_tome_merges_the_most_similar_tokens() -> None:
    x = torch.randn(1, 8, 4)
    x[0, 2] = x[0, 3] * 1.01  # token 2 (set A) is nearly token 3 (set B)
    y, s = bipartite_merge(x, torch.ones(1, 8, 1), 1)
    assert s.max() == 2
    merged = y[0, s[0, :, 0] == 2][0]
    assert torch.allclose(merged, (x[0, 2] + x[0, 3]) / 2)


def test_evit_keeps_the_most_attended_tokens_and_fuses_the_rest() -> None:
    x, size = torch.randn(1, 10, 4), torch.ones(1, 10, 1)
    importance = torch.arange(10.0)[None]  # token 9 is the most attended
    y, s = TOKEN_REDUCERS["evit"](0.5)(x, importance, size)
    assert y.shape == (1, 6, 4)  # ceil(0.5 * 10) kept + 1 fused
    assert torch.equal(y[0, :5], x[0, [9, 8, 7, 6, 5]])
    w = torch.arange(5.0) / torch.arange(5.0).sum()
    assert torch.allclose(y[0, 5], (x[0, :5] * w[:, None]).sum(0))
    assert s[0, 5, 0] == 5 and s.sum() == 10


@pytest.mark.parametrize("name", ["mhsa", "linear"])
def test_importance_is_the_attention_each_token_receives(name: str) -> None:
    mixer = MIXERS[name](16, 2)
    x = torch.randn(2, 9, 16)
    out, importance = mixer(x, (3, 3), need_importance=True)
    assert torch.allclose(out, mixer(x, (3, 3)), atol=1e-5)
    assert importance.shape == (2, 9)
    assert torch.allclose(importance.sum(dim=1), torch.ones(2), atol=1e-3)


@pytest.mark.parametrize("reduction", [{"merge_r": 4}, {"keep_rate": 0.5}])
@pytest.mark.parametrize("mixer", ["mhsa", "linear"])
def test_models_with_token_reduction_train(reduction: dict, mixer: str) -> None:
    arch = ArchConfig(
        stages=(StageConfig(3, 16, 2, 2.0, mixer, **reduction),),
        img_size=16,
        patch_size=2,
        pos_enc="learned",
        num_classes=3,
    )
    model = LightViT(arch)
    logits = model(torch.randn(2, 3, 16, 16))
    assert logits.shape == (2, 3)
    logits.sum().backward()
    tokens = model.forward_features(torch.randn(1, 3, 16, 16)).shape[1]
    expected = 64 - 3 * 4 if "merge_r" in reduction else math.ceil(0.5 * 64) + 1
    assert tokens == expected


def test_exits_give_one_output_each_and_the_last_is_the_model_output() -> None:
    arch = ArchConfig(
        stages=(StageConfig(2, 16, 2, 2.0), StageConfig(2, 32, 2, 2.0, "pool", downsample=True)),
        img_size=16,
        patch_size=2,
        exits=(1, 3),
        num_classes=5,
    )
    model = LightViT(arch).eval()
    x = torch.randn(2, 3, 16, 16)
    outputs = model.forward_exits(x)
    assert [o.shape for o in outputs] == [(2, 5)] * 3
    assert torch.allclose(outputs[-1], model(x))
    assert [e.head.in_features for e in model.exits] == [16, 32]
    model.reset_classifier(7)
    assert [o.shape[1] for o in model.forward_exits(x)] == [7, 7, 7]
    assert EXITS["linear"](16, 4)(torch.randn(2, 5, 16)).shape == (2, 4)


def _randomise_bn(module: torch.nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)


def test_reparameterize_keeps_outputs_and_removes_branches() -> None:
    stem = STEMS["repconv"](3, 32, 4, 16).eval()
    _randomise_bn(stem)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        before = stem(x)
        stem.reparameterize()
        after = stem(x)
    assert (before - after).abs().max() < 1e-5
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in stem.modules())
    assert all(not hasattr(layer, "conv1") and layer.fused is not None for layer in stem.layers)


def test_model_reparameterize_keeps_logits() -> None:
    arch = ArchConfig(
        stages=(StageConfig(1, 16, 2, 2.0),), stem="repconv", img_size=16, patch_size=4
    )
    model = LightViT(arch).eval()
    _randomise_bn(model)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        before = model(x)
        model.reparameterize()
        after = model(x)
    assert (before - after).abs().max() < 1e-5
    assert sum(p.numel() for p in model.parameters()) < sum(
        p.numel() for p in LightViT(arch).parameters()
    )


def test_every_token_reducer_and_exit_runs_forward_and_backward() -> None:
    assert set(TOKEN_REDUCERS) == {"tome", "evit"} and set(EXITS) == {"linear"}
    x = torch.randn(2, 16, 8, requires_grad=True)
    size = torch.ones(2, 16, 1)
    merged, merged_size = TOKEN_REDUCERS["tome"](3)(x, size)
    pruned, pruned_size = TOKEN_REDUCERS["evit"](0.5)(x, torch.rand(2, 16), size)
    logits = EXITS["linear"](8, 4)(merged, merged_size)
    assert merged.shape == (2, 13, 8) and pruned.shape == (2, 9, 8) and logits.shape == (2, 4)
    (merged.sum() + pruned.sum() + logits.sum()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
