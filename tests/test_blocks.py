"""Every registered block builds, runs forward and backward, and keeps its documented shape;
LightViT offers timm's model surface."""

from __future__ import annotations

import itertools

import pytest
import timm
import torch

import search_spaces  # noqa: F401 - registers lightvit
from search_spaces.arch import ArchConfig, StageConfig
from search_spaces.blocks import MIXERS, POS_ENCODINGS, REGISTRIES, STEMS
from search_spaces.model import LightViT


def test_registries_hold_the_first_blocks() -> None:
    assert set(STEMS) >= {"patch", "conv"}
    assert set(POS_ENCODINGS) >= {"none", "learned", "cpe"}
    assert set(MIXERS) >= {"mhsa", "pool"}


def test_every_block_cites_its_paper_or_says_why_not() -> None:
    for registry in REGISTRIES.values():
        for name, cls in registry.items():
            doc = cls.__doc__ or ""
            assert "arXiv" in doc or name == "none", f"{name}: no paper cited"


@pytest.mark.parametrize("name", sorted(STEMS))
@pytest.mark.parametrize(("img", "patch"), [(16, 2), (32, 4)])
def test_stem_forward_backward(name: str, img: int, patch: int) -> None:
    stem = STEMS[name](3, 24, patch, img)
    x = torch.randn(2, 3, img, img, requires_grad=True)
    y = stem(x)
    assert y.shape == (2, 24, img // patch, img // patch)
    y.sum().backward()
    assert torch.isfinite(y).all() and x.grad is not None


@pytest.mark.parametrize("name", sorted(POS_ENCODINGS))
@pytest.mark.parametrize("hw", [(4, 4), (6, 6)])  # (6, 6): a resolution it was not built for
def test_pos_enc_forward_backward(name: str, hw: tuple[int, int]) -> None:
    block = POS_ENCODINGS[name](16, (4, 4))
    x = torch.randn(2, hw[0] * hw[1], 16, requires_grad=True)
    y = block(x, hw)
    assert y.shape == x.shape
    y.sum().backward()
    assert torch.isfinite(y).all() and x.grad is not None


@pytest.mark.parametrize("name", sorted(MIXERS))
@pytest.mark.parametrize("hw", [(4, 4), (3, 5)])
def test_mixer_forward_backward(name: str, hw: tuple[int, int]) -> None:
    block = MIXERS[name](16, 2)
    x = torch.randn(2, hw[0] * hw[1], 16, requires_grad=True)
    y = block(x, hw)
    assert y.shape == x.shape
    y.sum().backward()
    assert torch.isfinite(y).all() and x.grad is not None


def test_pooling_mixer_is_zero_on_a_constant_grid() -> None:
    """PoolFormer's mixer returns pool(x) - x: nothing to mix in a constant image."""
    x = torch.ones(1, 16, 8)
    assert MIXERS["pool"](8)(x, (4, 4)).abs().max() < 1e-6


@pytest.mark.parametrize(
    ("stem", "pos_enc", "mixer"), list(itertools.product(STEMS, POS_ENCODINGS, MIXERS))
)
def test_every_combination_builds_a_model(stem: str, pos_enc: str, mixer: str) -> None:
    arch = ArchConfig(
        stages=(StageConfig(1, 16, 2, 2.0, mixer), StageConfig(1, 24, 1, 2.0, "pool", True)),
        stem=stem,
        pos_enc=pos_enc,
        img_size=16,
        patch_size=2,
        num_classes=5,
    )
    model = LightViT(arch)
    logits = model(torch.randn(2, 3, 16, 16))
    assert logits.shape == (2, 5)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_timm_surface() -> None:
    arch = ArchConfig(
        stages=(StageConfig(2, 32, 2, 2.0, "mhsa"),),
        pos_enc="learned",
        img_size=16,
        patch_size=4,
        num_classes=7,
    )
    model = timm.create_model("lightvit", arch=arch.to_dict())
    assert isinstance(model, LightViT) and model.arch == arch
    x = torch.randn(2, 3, 16, 16)
    feats = model.forward_features(x)
    assert feats.shape == (2, 16, 32)
    assert model.forward_head(feats, pre_logits=True).shape == (2, 32)
    assert model.forward_head(feats).shape == (2, 7)
    assert model.get_classifier() is model.head
    assert model.no_weight_decay() == {"pos_enc.pos_embed"}
    model.reset_classifier(3)
    assert model(x).shape == (2, 3) and model.arch.num_classes == 3
    assert model.pretrained_cfg["input_size"] == (3, 16, 16)
    assert model.pretrained_cfg["num_classes"] == 7  # the config of the weights, not the head


def test_timm_kwargs_override_the_arch() -> None:
    arch = ArchConfig(stages=(StageConfig(1, 16, 1, 2.0, "pool"),), img_size=16, patch_size=4)
    model = timm.create_model("lightvit", arch=arch.to_json(), num_classes=4, in_chans=1)
    assert model(torch.randn(1, 1, 16, 16)).shape == (1, 4)
    assert model.arch.in_chans == 1 and model.arch.num_classes == 4


def test_learned_pos_enc_resamples_to_a_new_resolution() -> None:
    arch = ArchConfig(
        stages=(StageConfig(1, 16, 2, 2.0, "mhsa"),), pos_enc="learned", img_size=16, patch_size=4
    )
    assert LightViT(arch)(torch.randn(1, 3, 24, 24)).shape == (1, 10)
