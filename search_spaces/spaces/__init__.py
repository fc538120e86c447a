"""Named search spaces. `get_space(name)` returns one; `SPACES` lists the ArchConfig spaces,
`CELL_SPACES` those whose candidates are looked up in a table (`evaluation: table`)."""

from __future__ import annotations

from typing import Any

from search_spaces.spaces.base import SearchSpace, StagedSpace, TrialLike
from search_spaces.spaces.nb201 import NB201Space
from search_spaces.spaces.survey import SurveySpace
from search_spaces.spaces.tiny import TinySpace

__all__ = ["CELL_SPACES", "SPACES", "SearchSpace", "StagedSpace", "TrialLike", "get_space"]

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


CELL_SPACES: dict[str, NB201Space] = {"nb201": NB201Space()}


def get_space(name: str, args: dict[str, Any] | None = None) -> SearchSpace | NB201Space:
    """A registered space by name, or one of NNI's hub spaces (`nni:autoformer`, built with
    `args`; the `nni` extra, ImportError without it)."""
    if name.startswith("nni:"):
        from search_spaces.spaces.hub import hub_space

        return hub_space(name, args)
    if name in CELL_SPACES:
        return CELL_SPACES[name]
    try:
        return SPACES[name]
    except KeyError:
        known = ", ".join([*SPACES, *CELL_SPACES])
        raise KeyError(f"unknown search space '{name}'; available: {known}") from None
