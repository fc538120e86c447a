"""What the benchmark scripts under `experiments/` share: their option defaults, running a
study until it has trained enough candidates, and counting what a study spent. The scripts
import the package only, never each other."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from typing import Any

import optuna

from nas import cost
from nas.callbacks import dashboard_hooks
from nas.config import SearchConfig
from nas.lifecycle import load_finished
from nas.records import Status, TrialRecord
from nas.study import create_or_resume_study, finished_count, run_search

__all__ = [
    "command_line",
    "run_until",
    "set_mode_defaults",
    "trained_count",
    "wall_seconds",
    "work_reference",
]


def set_mode_defaults(args: argparse.Namespace, name: str, values: dict[str, tuple]) -> None:
    """Give every option left unset its (quick, full) value from `values`, by `args.quick`;
    `--work` defaults to runs/bench-NAME[-quick], `--out` to experiments/results/NAME (full)
    or runs/bench-NAME-quick/results (quick: a check, not a published result)."""
    quick = args.quick
    work = f"runs/bench-{name}" + ("-quick" if quick else "")
    out = f"{work}/results" if quick else f"experiments/results/{name}"
    for key, value in {**values, "work": (work, work), "out": (out, out)}.items():
        if getattr(args, key) is None:
            setattr(args, key, value[0] if quick else value[1])


def command_line(script: str, argv: list[str] | None) -> str:
    """The command that reproduces this run, as a results page quotes it: the options it was
    given (`argv`, or the process's own), less `--work` and `--out`, where it kept its files."""
    given = list(sys.argv[1:] if argv is None else argv)
    for flag in ("--work", "--out"):
        while flag in given:
            at = given.index(flag)
            del given[at : at + 2]
    return shlex.join(["python", f"experiments/{script}", *given])


def trained_count(study: optuna.Study) -> int:
    trials = study.get_trials(deepcopy=False)
    return sum(TrialRecord.of(t).status is Status.TRAINED for t in trials)


def work_reference(work: str, seconds: float = 3.0) -> cost.Reference:
    """The one machine speed (1-thread CPU latency reference) of a work folder: budgets measured
    outside a study and every study the folder holds refer their latencies to it, so that a
    budget measured in one sitting means the same in a study made in a later one, on a faster
    or busier machine. Kept in `WORK/latency-reference.json`; a folder from before it existed
    takes the first reference a study of `WORK/search.db` stored (calibrated in the sitting
    that measured its budgets),
    a new one calibrates the reference model now."""
    path = os.path.join(work, "latency-reference.json")
    if os.path.isfile(path):
        with open(path) as f:
            return cost.Reference.from_dict(json.load(f))
    reference = None
    db = os.path.join(work, "search.db")
    if os.path.isfile(db):
        storage = f"sqlite:///{db}"
        stored = [
            s.user_attrs["latency_reference"]
            for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
            if s.user_attrs.get("latency_reference", {}).get("threads") == 1
        ]
        if stored:
            reference = cost.Reference.from_dict(min(stored, key=lambda r: r["measured_at"]))
    if reference is None:
        reference = cost.calibrate_reference("cpu", 1, seconds)
    os.makedirs(work, exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(reference.to_dict(), f, indent=1)
    os.replace(path + ".tmp", path)
    return reference


def run_until(
    config: SearchConfig,
    inputs: Any,
    trained: int,
    bar: Any,
    max_candidates: int,
    reference: cost.Reference | None = None,
) -> optuna.Study:
    """Run the study until it has `trained` trained candidates, or `max_candidates`
    candidates in all (a strategy that keeps proposing candidates over the budgets). A study
    that already has them is read as stored (`load_finished`): a finished search stays
    readable after its space gains choices. A new study normalises its latencies to
    `reference` when given (`work_reference`: the budgets' machine speed) instead of calibrating
    its own; a study made before keeps the one it has."""

    def done(study: optuna.Study) -> bool:
        return trained_count(study) >= trained or finished_count(study) >= max_candidates

    study = load_finished(config, done)
    if study is not None:
        bar.update(min(trained_count(study), trained))
        return study
    study = create_or_resume_study(config)
    if reference is not None and "latency_reference" not in study.user_attrs:
        study.set_user_attr("latency_reference", reference.to_dict())
    while (have := trained_count(study)) < trained and finished_count(study) < max_candidates:
        n = min(finished_count(study) + trained - have, max_candidates)
        run_search(
            config.replace_study(n_trials=n), study=study, inputs=inputs, hooks=dashboard_hooks()
        )
        bar.update(trained_count(study) - have)
    return study


def wall_seconds(study: optuna.Study) -> float:
    """Seconds the study's trials ran, summed."""
    return sum(
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in study.get_trials(deepcopy=False)
        if t.datetime_complete and t.datetime_start
    )
