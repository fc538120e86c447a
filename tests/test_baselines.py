"""Hand-designed baselines as ArchConfigs: every family builds, runs, and scales to a budget."""

from __future__ import annotations

import pytest
import torch

import search_spaces.baselines as baselines_module
from search_spaces.baselines import BASELINES, PAPERS, WIDTHS, baseline, scale_to_budget
from search_spaces.model import LightViT


def _params(arch) -> int:
    return sum(p.numel() for p in LightViT(arch).parameters())


@pytest.mark.parametrize("name", list(BASELINES))
@pytest.mark.parametrize("img_size", [16, 32])
def test_every_family_builds_and_runs(name: str, img_size: int) -> None:
    arch = baseline(name, 32, img_size=img_size, num_classes=7)
    with torch.no_grad():
        out = LightViT(arch).eval()(torch.randn(2, 3, img_size, img_size))
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    assert PAPERS[name] in baselines_module.__doc__  # each family cites its paper


@pytest.mark.parametrize("name", list(BASELINES))
def test_scaling_picks_the_widest_member_within_the_budget(name: str) -> None:
    budget = 150_000
    arch = scale_to_budget(name, budget)
    assert arch is not None and _params(arch) <= budget
    widths = [w for w in WIDTHS if w > arch.stages[0].dim]
    for w in widths[:2]:  # the next valid widths are over the budget
        try:
            bigger = baseline(name, w)
        except ValueError:
            continue
        assert _params(bigger) > budget
        break
    assert scale_to_budget(name, 1_000) is None


def test_an_unknown_family_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="unknown baseline 'vit'; use one of: deit, cpvt"):
        baseline("vit", 32)
