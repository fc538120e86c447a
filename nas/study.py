"""The search: an Optuna study over a search space, under parameter, FLOPs and latency budgets.

Two modes (`study.mode`). `multi` (the default): accuracy (maximise) against latency on the
target device (minimise: measured, or predicted by a lookup table built there, as
`budget.latency_source` says) and optionally params or FLOPs, for a Pareto front. `single`:
accuracy alone, the budgets as hard limits. Either way an Optuna sampler (TPE, NSGA-II/III, GP,
random: the config names the class) sees each budget as an Optuna constraint
(`trial.set_constraint`, feasible when <= 0; Optuna 5's replacement for `constraints_func`), so
it learns where the budgets bind.

Per trial:
  1. sample an `ArchConfig` from the space and store it (user attribute `arch`) with the seed
     and the library versions;
  2. build the model and cost it: params, FLOPs, the predicted latency (with a table) and/or the
     measured latency with its conditions (`costs`; `costs.latency_ms` is the one that counts);
  3. check every budget; a candidate over budget is recorded as PRUNED with `status: infeasible`
     and its constraint values, and is never trained (the sampler still learns from it);
  4. compute the zero-cost proxies asked for (`proxies`); with a pre-screen, candidates are
     proposed in rounds and only the best by the proxy go on (the rest: `status: screened`);
  5. proxy-train with the accuracy after each epoch recorded (`curve`); in single mode Optuna's
     pruner may stop it (`trial.report`), in multi mode the dominance rule of `early_stop` may
     (`status: stopped`, PRUNED, with `stop_reason`);
  6. record the per-epoch history (`train`), keep the trained weights as a safetensors file in
     Optuna's artifact store (`weights_artifact_id`) so export never retrains, and complete the
     trial with its objective values.

`study.n_trials` counts finished candidates (trained, infeasible, stopped or screened) across
runs: re-running the same command resumes the study until it has that many. Ctrl-C ends the
running trial as FAIL (Optuna's rule), so no trial is left RUNNING, and the command exits with
130.

Where each part lives: `nas.objective` (steps 1-6 for one trial; `nas.tabular` for a trial of
`evaluation: table`, looked up in `nas.tables` instead of trained), `nas.lifecycle` (creating and
resuming the study, comparing configs, sampler and pruner), `nas.early_stop` (the dominance
rule), `nas.prescreen` (step 4's rounds), `nas.inputs` (what is read from disk), `nas.records`
(the names and types of what a trial records), `nas.oneshot_retrain` (retraining a supernet
search's best). This module runs the loop: `run_search`. Side effects of a trial's end beyond
its record (dashboard notes, architecture pictures: `nas.callbacks`) are hooks the caller
passes; progress is the `on_event` stream the CLI renders.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.trial import TrialState

from nas.config import SearchConfig
from nas.errors import UserError
from nas.inputs import Inputs, prepare_inputs
from nas.lifecycle import (
    check_config,
    create_or_resume_study,
    latency_reference,
    library_versions,
    objectives,
    trial_seed,
)
from nas.objective import Objective, Surplus, TrialHook
from nas.prescreen import prescreen_round
from nas.records import FINISHED, fail_reason, finished_count, trained_count, trial_counts
from nas.train import TrainingFailed
from nas.warm_start import enqueue_warm_start

# The engine's front door: what a caller needs to run a search, from here.
__all__ = [
    "FINISHED",
    "Inputs",
    "SearchFailed",
    "SearchRun",
    "check_config",
    "create_or_resume_study",
    "finished_count",
    "latency_reference",
    "library_versions",
    "objectives",
    "prepare_inputs",
    "run_search",
    "trained_count",
    "trial_counts",
    "trial_seed",
]


class SearchFailed(UserError):
    """Every trial of a run failed: the search cannot go on as configured."""


@dataclass
class SearchRun:
    """What a run of `run_search` did."""

    study: optuna.Study
    trained: int = 0
    scored: int = 0
    infeasible: int = 0
    stopped: int = 0
    screened: int = 0
    duplicate: int = 0  # architectures trained before: their results reused
    failed: int = 0
    seconds: float = 0.0
    events: list[str] = field(default_factory=list)


def run_search(
    config: SearchConfig,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
    study: optuna.Study | None = None,
    inputs: Inputs | None = None,
    poll_seconds: float = 2.0,
    hooks: Sequence[TrialHook] = (),
) -> SearchRun:
    """Run (or resume) the search until the study has `config.study.n_trials` finished trials
    (or `n_trained` trained ones, when set),
    counted study-wide: several processes may run this on one study (workers), and together
    they finish exactly that many. When the last places are held by other workers' running
    trials, this one waits (`poll_seconds`) in case one of them dies and is retried.

    `on_event(kind, info)` is called with kind in reference (the latency reference the run
    normalises to), training, step (progress within an epoch, at most twice a second), epoch,
    trained, scored (evaluation: supernet), infeasible (over a budget), stopped, screened,
    duplicate (an architecture trained before, its result reused), failed. `hooks` run on
    every trial as it ends, with the live trial and its values (`nas.callbacks.
    dashboard_hooks()`: the dashboard's notes and architecture pictures).
    `inputs` and `study` are what `prepare_inputs(config)` and `create_or_resume_study(config)`
    return, when the caller has them already.
    """
    inputs = inputs or prepare_inputs(config)
    if study is None:
        study = create_or_resume_study(config)
    artifact_dir = study.user_attrs["artifact_dir"]
    os.makedirs(artifact_dir, exist_ok=True)
    store = FileSystemArtifactStore(artifact_dir)
    run = SearchRun(study=study)

    def record(kind: str, info: dict[str, Any]) -> None:
        if kind in (
            "trained",
            "scored",
            "infeasible",
            "stopped",
            "screened",
            "failed",
            "duplicate",
        ):
            setattr(run, kind, getattr(run, kind) + 1)
        if on_event is not None:
            on_event(kind, info)

    enqueue_warm_start(config, study, inputs.data)  # once, into a study with no trial yet
    tabular = config.evaluation == "table"  # latency is the table's: nothing to normalise
    reference = None if tabular else latency_reference(study, config, inputs.table)
    if reference is not None:
        record("reference", {"reference": reference})
    if tabular:
        from nas.tabular import TableObjective

        objective = TableObjective(config, inputs, store, record, None, hooks)
    else:
        objective = Objective(config, inputs, store, record, reference, hooks)
    start = time.perf_counter()
    n_trials, n_trained = config.study.n_trials, config.study.n_trained
    try:
        while True:
            counts = trial_counts(study)
            if counts["finished"] >= n_trials:
                break
            if n_trained is not None and trained_count(study) >= n_trained:
                break
            if run.failed > n_trials:
                raise SearchFailed(_failed_message(study, run))
            if not counts["waiting"] and counts["finished"] + counts["running"] >= n_trials:
                # other workers hold the last places; one of them may die and be retried
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    optuna.storages.fail_stale_trials(study)
                time.sleep(poll_seconds)
                continue
            if config.proxies.prescreen_sample:
                prescreen_round(study, objective, config, record)
            else:
                # one trial per optimize() call so that failed trials are retried, not counted
                study.optimize(objective, n_trials=1, catch=(TrainingFailed, Surplus))
    finally:
        run.seconds = time.perf_counter() - start
    return run


def _failed_message(study: optuna.Study, run: SearchRun) -> str:
    """Why a run stopped after more failures than its candidate count, with the fix."""
    failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    last = fail_reason(failed[-1]) if failed else "?"
    done = run.trained + run.scored
    if "loss became" in last:
        fix = "lower train.lr (or raise train.warmup_epochs, or set train.clip_grad)"
    elif "out of memory" in last.lower():
        fix = "lower train.batch_size or the space's widths"
    else:
        fix = "fix the cause above; each trial's fail_reason is in `lvit status`"
    return (
        f"{run.failed} trials failed in this run and {done} finished training, so the search "
        f"stopped (the last failure: {last}): {fix}"
    )
