"""After a one-shot (supernet) search: the best candidates by inherited-weight accuracy,
retrained from scratch in a study of their own (`<name>-retrained`), so that their stand-alone
accuracy sits beside the inherited one (`lvit search` does it when `supernet.retrain_top_k` is
set)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from nas.config import BudgetConfig, SearchConfig
from nas.inputs import Inputs
from nas.lifecycle import create_or_resume_study
from nas.objective import TrialHook
from nas.records import Status, TrialRecord
from nas.storage import open_storage
from nas.study import SearchRun, run_search

__all__ = ["Retrained", "best_scored", "retrain_best", "retrain_config", "retrains"]


def retrains(config: SearchConfig) -> bool:
    """Whether a search with this config ends by retraining its best from scratch: a supernet
    search (`evaluation: supernet`) with `supernet.retrain_top_k` > 0."""
    return config.evaluation == "supernet" and bool(config.supernet.retrain_top_k)


def retrain_config(config: SearchConfig, n_trials: int) -> SearchConfig:
    """The from-scratch study (`<name>-retrained`, same storage, space, data and `train`
    recipe) in which the best candidates of a supernet search are retrained. It has no budget
    limits: its candidates passed them in the search (costs are still measured and recorded; a
    noisy second latency measurement must not undo the search's decision)."""
    study = dataclasses.replace(
        config.study, name=f"{config.study.name}-retrained", n_trials=max(1, n_trials)
    )
    budget = BudgetConfig(latency_source=config.budget.latency_source)
    return dataclasses.replace(config, study=study, evaluation="train", budget=budget)


def best_scored(study: optuna.Study, k: int) -> list[optuna.trial.FrozenTrial]:
    """The `k` distinct architectures with the best inherited-weight accuracy (ties: the
    faster, then the earlier); a sampler that proposes one architecture again (other values
    of labels it does not use) gets it retrained once."""
    scored = [
        (t, r)
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if (r := TrialRecord.of(t)).status is Status.SCORED
    ]
    scored.sort(key=lambda tr: (-tr[1].values[0], tr[1].latency_ms, tr[1].number))
    best, seen = [], set()
    for t, r in scored:
        key = json.dumps(r.arch, sort_keys=True)
        if key not in seen:
            seen.add(key)
            best.append(t)
    return best[:k]


@dataclass
class Retrained:
    """A supernet search's best candidates and their stand-alone (from scratch) results."""

    study: optuna.Study
    pairs: list[tuple[int, float, int, float | None]]  # scored trial, inherited, trial, alone
    run: SearchRun | None = None


def retrain_best(
    config: SearchConfig,
    study: optuna.Study,
    inputs: Inputs,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
    hooks: Sequence[TrialHook] = (),
) -> Retrained:
    """Train from scratch the `supernet.retrain_top_k` best candidates of a supernet search,
    as trials of the study `retrain_config` names (each with `from_trial` and its
    `inherited_accuracy`), so that their stand-alone accuracy sits beside the inherited one and
    they export like any trained trial. Resumes: a candidate already retrained is not again."""
    best = best_scored(study, config.supernet.retrain_top_k)
    wanted = [t.number for t in best]
    probe = retrain_config(config, len(wanted))
    storage = open_storage(probe.study.storage_url, create=True)
    try:
        existing = optuna.load_study(study_name=probe.study.name, storage=storage)
        have = {TrialRecord.of(t).from_trial for t in existing.get_trials(deepcopy=False)}
    except KeyError:
        have = set()
    total = len(have | set(wanted))
    rconfig = retrain_config(config, total)
    rstudy = create_or_resume_study(rconfig)
    for t in best:
        if t.number not in have:
            rstudy.enqueue_trial(
                t.params,
                user_attrs={"from_trial": t.number, "inherited_accuracy": t.values[0]},
            )
    run = None
    if "latency_reference" in study.user_attrs:  # the same machine speed as the search's
        rstudy.set_user_attr("latency_reference", study.user_attrs["latency_reference"])
    if total:
        plain = Inputs(inputs.data, inputs.table, None, None)
        run = run_search(rconfig, on_event=on_event, study=rstudy, inputs=plain, hooks=hooks)
    by_source = {
        TrialRecord.of(t).from_trial: t
        for t in rstudy.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    }
    pairs = []
    for t in best:
        r = by_source.get(t.number)
        pairs.append((t.number, t.values[0], r.number if r else -1, r.values[0] if r else None))
    return Retrained(rstudy, pairs, run)
