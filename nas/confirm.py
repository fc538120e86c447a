"""Confirming a search's best: the `study.confirm_top_k` most accurate candidates of the Pareto
front retrained from scratch with `study.confirm_seeds` more seeds once the search has its
count, so that noise is measured, not ignored. One proxy training of a small model varies by
several points between seeds, and the search's best is the one whose single training was
luckiest (the winner's curse): `lvit status` and the front table then give each confirmed
candidate's mean ± sd over all its trainings and pick the best by the mean.

Each training is stored on the study as it finishes (`nas.records.confirmations`), so an
interrupted confirmation resumes where it stopped, and nothing about the search's trials
changes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna
import torch

from nas.config import SearchConfig
from nas.inputs import Inputs
from nas.lifecycle import trial_seed
from nas.records import CONFIRMATIONS, confirmations
from nas.report import pareto_front
from nas.train import train_model
from search_spaces.arch import ArchConfig
from search_spaces.model import LightViT

__all__ = ["confirm_front", "confirmation_seed", "pending"]


def confirmation_seed(study_seed: int, trial_number: int, k: int) -> int:
    """The seed of a trial's k-th confirmation (k from 1; the search trained it with
    `trial_seed`)."""
    return trial_seed(study_seed, trial_number) + 7_919 * k


def pending(config: SearchConfig, study: optuna.Study) -> list[tuple[int, int]]:
    """(trial, seed) trainings the confirmation still has to run."""
    k = config.study.confirm_top_k
    if not k:
        return []
    done = {(n, s) for n, entry in confirmations(study).items() for s in entry["seeds"]}
    return [
        (r.number, seed)
        for r in pareto_front(study)[:k]
        for j in range(1, config.study.confirm_seeds + 1)
        if (r.number, seed := confirmation_seed(config.study.seed, r.number, j)) not in done
    ]


def confirm_front(
    config: SearchConfig,
    study: optuna.Study,
    inputs: Inputs,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[int, dict[str, list]]:
    """Run the confirmation trainings still pending (same data, recipe and teacher as the
    search); `on_event("confirmed", {trial, seed, val_acc})` after each. Returns every
    confirmation of the study."""
    teacher = inputs.teacher
    for number, seed in pending(config, study):
        arch = ArchConfig.from_dict(dict(study.trials[number].user_attrs["arch"]))
        torch.manual_seed(seed)
        model = LightViT(arch)
        result = train_model(
            model,
            inputs.data,
            config.train,
            seed,
            img_size=arch.img_size,
            teacher=teacher.model if teacher else None,
            distill=config.distill,
        )
        stored = {str(n): e for n, e in confirmations(study).items()}
        entry = stored.setdefault(str(number), {"seeds": [], "val_acc": []})
        entry["seeds"].append(seed)
        entry["val_acc"].append(round(result.val_acc, 5))
        study.set_user_attr(CONFIRMATIONS, stored)  # after each training: nothing is lost
        if on_event is not None:
            on_event("confirmed", {"trial": number, "seed": seed, "val_acc": result.val_acc})
    return confirmations(study)
