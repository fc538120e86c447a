"""The contract of a search space: `sample(trial, ...) -> ArchConfig`, define-by-run.

A space is data plus one function. Its `trial.suggest_*` calls are the search space, with stable
flat labels (`stage1.mixer`), so that `sample(optuna.trial.FixedTrial(trial.params), ...)`
rebuilds exactly the architecture a trial trained. Spaces never import torch.

`StagedSpace` splits `sample` into global choices, one sub-tree per stage and final choices, so
that the number of parameter combinations (`size`) and the list of every choice (`choices`) can
be computed exactly by enumerating each sub-tree once instead of the whole product.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from search_spaces.arch import (
    ATTENTION_POS_ENCS,
    POS_ATTENTION_MIXERS,
    POS_ENC_SPECS,
    ArchConfig,
    StageConfig,
)

__all__ = [
    "SearchSpace",
    "StagedSpace",
    "StageContext",
    "TrialLike",
    "enumerate_leaves",
    "usable_pos_enc",
]


def usable_pos_enc(pos_enc: str, stages: tuple[StageConfig, ...]) -> str:
    """`pos_enc`, or `none` where it cannot act: an attention-site encoding with no mhsa or
    window stage to act in, or RoPE where such a stage's head width is not a multiple of 4."""
    if pos_enc not in ATTENTION_POS_ENCS:
        return pos_enc
    attending = [s for s in stages if s.mixer in POS_ATTENTION_MIXERS]
    if not attending:
        return "none"
    multiple = POS_ENC_SPECS[pos_enc].head_multiple
    if any((s.dim // s.heads) % multiple for s in attending):
        return "none"
    return pos_enc


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

    def at_version(self, version: int) -> SearchSpace:
        """This space as it was at `version` (a space may keep its earlier versions, so that
        a study made on one still resumes there); ValueError for a version it does not keep."""
        if version == self.version:
            return self
        raise ValueError(f"space '{self.name}' keeps version {self.version} only, not {version}")

    @abstractmethod
    def sample(
        self, trial: TrialLike, *, num_classes: int, in_chans: int = 3, img_size: int = 32
    ) -> ArchConfig:
        """Draw one architecture for a task with `num_classes` classes and the given input."""

    def sample_many(
        self, n: int, *, seed: int, num_classes: int, in_chans: int = 3, img_size: int = 32
    ) -> list[ArchConfig]:
        """`n` architectures drawn by Optuna's RandomSampler with `seed` (reproducible)."""
        import optuna

        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
        archs = []
        for _ in range(n):
            trial = study.ask()
            archs.append(
                self.sample(trial, num_classes=num_classes, in_chans=in_chans, img_size=img_size)
            )
            study.tell(trial, 0.0)
        return archs

    @abstractmethod
    def choices(self, img_size: int = 32) -> dict[str, tuple[Any, ...]]:
        """Every label the space can suggest, with its options, in the order they are drawn."""

    @abstractmethod
    def size(self, img_size: int = 32) -> int:
        """Number of distinct parameter combinations `sample` can receive."""


class _PathTrial:
    """A trial that answers each suggestion with the option a path of indices names (0 past its
    end), recording the labels, their options and the branching it met."""

    def __init__(self, path: Sequence[int]) -> None:
        self.path = path
        self.branching: list[int] = []
        self.seen: dict[str, tuple[Any, ...]] = {}

    def _choose(self, name: str, options: tuple[Any, ...]) -> Any:
        self.seen.setdefault(name, options)
        depth = len(self.branching)
        self.branching.append(len(options))
        return options[self.path[depth] if depth < len(self.path) else 0]

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        return self._choose(name, tuple(choices))

    def suggest_int(self, name: str, low: int, high: int, step: int = 1) -> int:
        return self._choose(name, tuple(range(low, high + 1, step)))


def enumerate_leaves(fn: Callable[[TrialLike], Any]) -> Iterator[tuple[_PathTrial, Any]]:
    """Run a define-by-run function once per leaf of its choice tree (odometer order)."""
    path: list[int] = []
    while True:
        trial = _PathTrial(path)
        result = fn(trial)
        yield trial, result
        full = path + [0] * (len(trial.branching) - len(path))
        i = len(full) - 1
        while i >= 0 and full[i] + 1 >= trial.branching[i]:
            i -= 1
        if i < 0:
            return
        path = full[:i] + [full[i] + 1]


@dataclass(frozen=True)
class StageContext:
    """What a stage's choices may depend on."""

    index: int  # 1-based
    grid: int  # side of the token grid in this stage
    is_last: bool
    downsample: bool
    pos_enc: str


class StagedSpace(SearchSpace):
    """A space sampled as: global choices -> one sub-tree per stage -> final choices."""

    @abstractmethod
    def sample_globals(self, trial: TrialLike, img_size: int) -> dict[str, Any]:
        """Stem, patch size, resolution, position encoding, number of stages...: a dict with at
        least `img_size`, `patch_size`, `pos_enc`, `num_stages` and `downsample` (per stage)."""

    @abstractmethod
    def sample_stage(self, trial: TrialLike, ctx: StageContext) -> StageConfig: ...

    def finish(
        self,
        trial: TrialLike,
        g: dict[str, Any],
        stages: tuple[StageConfig, ...],
        num_classes: int,
        in_chans: int,
    ) -> ArchConfig:
        """Final choices (exits...) and the compatibility fix-ups that need every stage. Its
        suggestions may depend on the global choices but not on the stages' (`size` counts
        them once per set of global choices). By default: no choices, the ArchConfig as is."""
        return self.arch(g, stages, num_classes, in_chans)

    @staticmethod
    def arch(
        g: dict[str, Any],
        stages: tuple[StageConfig, ...],
        num_classes: int,
        in_chans: int,
        **changes: Any,
    ) -> ArchConfig:
        """The ArchConfig of global choices `g` and `stages`, with `changes` (fix-ups, exits)."""
        fields = {
            "stem": g["stem"],
            "patch_size": g["patch_size"],
            "pos_enc": g["pos_enc"],
            "img_size": g["img_size"],
            **changes,
        }
        return ArchConfig(stages=stages, in_chans=in_chans, num_classes=num_classes, **fields)

    def low_resolutions(self, g: dict[str, Any]) -> tuple[int, ...]:
        """The first-pass sides (`ArchConfig.dynamic_resolution`) `finish` may choose for the
        global choices `g` (none by default); the lookup tables time those passes too."""
        return ()

    def contexts(self, g: dict[str, Any]) -> list[StageContext]:
        grid = g["img_size"] // g["patch_size"]
        out = []
        for i in range(g["num_stages"]):
            down = g["downsample"][i]
            if down:
                grid = (grid + 1) // 2
            out.append(StageContext(i + 1, grid, i == g["num_stages"] - 1, down, g["pos_enc"]))
        return out

    def sample(
        self, trial: TrialLike, *, num_classes: int, in_chans: int = 3, img_size: int = 32
    ) -> ArchConfig:
        g = self.sample_globals(trial, img_size)
        stages = tuple(self.sample_stage(trial, ctx) for ctx in self.contexts(g))
        return self.finish(trial, g, stages, num_classes, in_chans)

    def _stage_tree(self, ctx: StageContext) -> tuple[int, dict[str, tuple[Any, ...]]]:
        count, seen = 0, {}
        for trial, _ in enumerate_leaves(lambda t: self.sample_stage(t, ctx)):
            count += 1
            _merge_options(seen, trial.seen)
        return count, seen

    @functools.cache  # noqa: B019 - spaces are immutable module-level singletons
    def _walk(self, img_size: int) -> tuple[int, dict[str, tuple[Any, ...]]]:
        total, seen, memo = 0, {}, {}
        for g_trial, g in enumerate_leaves(lambda t: self.sample_globals(t, img_size)):
            _merge_options(seen, g_trial.seen)
            product, stages = 1, []
            for ctx in self.contexts(g):
                if ctx not in memo:
                    memo[ctx] = self._stage_tree(ctx)
                count, stage_seen = memo[ctx]
                _merge_options(seen, stage_seen)
                product *= count
                stages.append(self.sample_stage(_PathTrial([]), ctx))
            tail = 0
            for f_trial, _ in enumerate_leaves(
                lambda t, g=g, s=tuple(stages): self.finish(t, g, s, 10, 3)
            ):
                _merge_options(seen, f_trial.seen)
                tail += 1
            total += product * tail
        return total, seen

    def size(self, img_size: int = 32) -> int:
        return self._walk(img_size)[0]

    def choices(self, img_size: int = 32) -> dict[str, tuple[Any, ...]]:
        return dict(self._walk(img_size)[1])


def _merge_options(seen: dict[str, tuple[Any, ...]], new: dict[str, tuple[Any, ...]]) -> None:
    """Add labels and options to `seen`, keeping first-seen order; options of a label that
    differ between branches are united."""
    for label, options in new.items():
        old = seen.get(label, ())
        seen[label] = old + tuple(o for o in options if o not in old)
