"""Named search spaces. `get_space(name)` returns one; `SPACES` lists them all."""

from __future__ import annotations

from search_spaces.spaces.base import SearchSpace, TrialLike
from search_spaces.spaces.tiny import TinySpace

__all__ = ["SPACES", "SearchSpace", "TrialLike", "get_space"]

SPACES: dict[str, SearchSpace] = {space.name: space for space in (TinySpace(),)}


def get_space(name: str) -> SearchSpace:
    try:
        return SPACES[name]
    except KeyError:
        raise KeyError(f"unknown search space '{name}'; available: {', '.join(SPACES)}") from None
