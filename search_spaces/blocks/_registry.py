"""Block registries: plain dicts filled by a decorator, as timm's `register_model` does."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T", bound=type)


def register(registry: dict[str, type], name: str) -> Callable[[T], T]:
    """Register a block class under `name`; a duplicate name warns and replaces the old entry."""

    def wrap(cls: T) -> T:
        if name in registry:
            warnings.warn(
                f"block '{name}' registered twice; {cls.__name__} replaces it", stacklevel=2
            )
        registry[name] = cls
        cls.registry_name = name
        return cls

    return wrap


def lookup(registry: dict[str, type], kind: str, name: str) -> type:
    """Get a block class, or raise a KeyError that lists the registered names."""
    try:
        return registry[name]
    except KeyError:
        raise KeyError(
            f"unknown {kind} '{name}'; registered: {', '.join(sorted(registry))}"
        ) from None


_CITATION = re.compile(r'"([^"]+)"(?:\s*\([^)]*\))?,\s*arXiv\s+(\d{4}\.\d{4,5})')


def citations(cls: type) -> list[tuple[str, str]]:
    """The papers a block's docstring cites, as (title, arXiv id), in order."""
    text = " ".join((cls.__doc__ or "").split())
    return [(title, arxiv) for title, arxiv in _CITATION.findall(text)]
