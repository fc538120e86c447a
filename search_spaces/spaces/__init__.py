"""Named search spaces. `get_space(name)` returns one; `SPACES` lists them all."""

from __future__ import annotations

from search_spaces.spaces.base import SearchSpace, StagedSpace, TrialLike
from search_spaces.spaces.survey import SurveySpace
from search_spaces.spaces.tiny import TinySpace

__all__ = ["SPACES", "SearchSpace", "StagedSpace", "TrialLike", "get_space"]

SPACES: dict[str, SearchSpace] = {
    space.name: space
    for space in (
        TinySpace(),
        SurveySpace(),
        SurveySpace(
            "isotropic", ("isotropic",), "the survey's blocks in one isotropic (ViT-like) stage"
        ),
        SurveySpace(
            "hierarchical",
            ("hierarchical",),
            "the survey's blocks in 2-3 stages, each after the first halving the grid",
        ),
    )
}


def get_space(name: str) -> SearchSpace:
    try:
        return SPACES[name]
    except KeyError:
        raise KeyError(f"unknown search space '{name}'; available: {', '.join(SPACES)}") from None
