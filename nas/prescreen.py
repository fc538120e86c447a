"""Pre-screening by a zero-cost proxy (`proxies.prescreen_sample`): candidates are proposed in
rounds, and only the best share by the proxy is trained; the rest end as `screened`."""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import TrialState

from nas.config import SearchConfig
from nas.objective import Candidate, Duplicate, Objective, Surplus
from nas.optuna_api import heartbeat
from nas.records import Status, TrialRecord, record_failure, set_status, trial_counts, write
from nas.train import TrainingFailed

__all__ = ["prescreen_round"]


def prescreen_round(
    study: optuna.Study,
    objective: Objective,
    config: SearchConfig,
    record: Callable[[str, dict[str, Any]], None],
) -> None:
    """Propose up to `prescreen_sample` candidates, rank those within the budgets by the
    pre-screen proxy, train the best `prescreen_keep` fraction and end the rest as screened.
    Every asked trial is told, whatever happens: none is left RUNNING."""
    proxies = config.proxies
    counts = trial_counts(study)
    room = config.study.n_trials - counts["finished"] - counts["running"]
    running: list[optuna.Trial] = []
    proposed: list[tuple[optuna.Trial, Candidate]] = []
    beats = contextlib.ExitStack()  # Optuna's heartbeat, as optimize() keeps it, per trial
    try:
        for _ in range(min(proxies.prescreen_sample, room)):
            with warnings.catch_warnings():  # "heartbeat ... with Study.optimize": kept below
                warnings.simplefilter("ignore", UserWarning)
                trial = study.ask()
            beats.enter_context(heartbeat(study, trial))
            running.append(trial)
            try:
                proposed.append((trial, objective.propose(trial)))
            except Duplicate as d:  # trained already: its result, not a place in the round
                study.tell(trial, d.values)
                running.remove(trial)
            except optuna.TrialPruned:
                study.tell(trial, state=TrialState.PRUNED)
                running.remove(trial)
            except Surplus:
                study.tell(trial, state=TrialState.FAIL)
                running.remove(trial)
        score = proxies.prescreen_proxy

        def rank_key(item: tuple[optuna.Trial, Candidate]) -> float:
            value = (item[1].proxies or {}).get(score)
            return -value if value is not None else float("inf")

        ranked = sorted(proposed, key=rank_key)
        keep = max(1, math.ceil(proxies.prescreen_keep * len(ranked))) if ranked else 0
        for rank, (trial, _) in enumerate(ranked, 1):
            write(trial, prescreen={"proxy": score, "rank": rank, "of": len(ranked)})
        for trial, candidate in ranked[keep:]:
            set_status(trial, Status.SCREENED)
            objective.ended(trial)
            value = (candidate.proxies or {}).get(score)
            record(
                "screened",
                {
                    "trial": trial.number,
                    "record": TrialRecord.of(trial),
                    "proxy": score,
                    "value": value,
                },
            )
            study.tell(trial, state=TrialState.PRUNED)
            running.remove(trial)
        for trial, candidate in ranked[:keep]:
            try:
                values = objective.train(trial, candidate)
            except optuna.TrialPruned:
                study.tell(trial, state=TrialState.PRUNED)
            except TrainingFailed:
                study.tell(trial, state=TrialState.FAIL)
            else:
                study.tell(trial, values)
            running.remove(trial)
    except BaseException as e:  # Ctrl-C or a bug: end every trial this round still holds
        for trial in running:
            record_failure(trial, e)
            study.tell(trial, state=TrialState.FAIL)
        raise
    finally:
        beats.close()
