"""The contract of a search space: `sample(trial, ...) -> ArchConfig`, define-by-run.

A space is data plus one function. Its `trial.suggest_*` calls are the search space, with stable
flat labels (`stage1.mixer`), so that `sample(optuna.trial.FixedTrial(trial.params), ...)`
rebuilds exactly the architecture a trial trained. Spaces never import torch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Protocol

from search_spaces.arch import ArchConfig

__all__ = ["SearchSpace", "TrialLike"]


class TrialLike(Protocol):
    """The part of Optuna's trial API a space uses (`Trial`, `FixedTrial`)."""

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...

    def suggest_int(self, name: str, low: int, high: int, step: int = 1) -> int: ...


class SearchSpace(ABC):
    """A named, versioned space. Bump `version` whenever `sample` changes what a set of
    parameters means: studies and latency tables record it."""

    name: str
    version: int
    description: str

    @abstractmethod
    def sample(
        self, trial: TrialLike, *, num_classes: int, in_chans: int = 3, img_size: int = 32
    ) -> ArchConfig:
        """Draw one architecture for a task with `num_classes` classes and the given input."""
