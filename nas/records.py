"""What a trial records, read and written in one place: `TrialRecord` and `Status`.

Every trial of a study keeps what the search learnt about its candidate as Optuna user
attributes (so that optuna-dashboard, `lvit status`, reports and exports read the same thing).
This module is the only one that knows their names: the engine writes them with `write` and
`set_status`, every reader builds a `TrialRecord` with `TrialRecord.of(trial)`. Studies written
by earlier versions read unchanged (a missing key has a default that says "absent"; a trial
without a status gets the one its state implies). docs/trial-records.md lists the keys.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

__all__ = [
    "CONFIRMATIONS",
    "FINISHED",
    "confirmations",
    "confirmed_accuracy",
    "KEYS",
    "Status",
    "TrialRecord",
    "curve_of",
    "fail_reason",
    "finished_count",
    "nondominated",
    "record_failure",
    "set_status",
    "set_stored_status",
    "trial_counts",
    "trained_count",
    "write",
]

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class Status(str, enum.Enum):
    """How a trial ended, in the tool's words (stored as the `status` user attribute, and the
    word every command, report and dashboard note shows)."""

    TRAINED = "trained"  # proxy-trained: COMPLETE, with its objective values
    SCORED = "scored"  # scored with a supernet's weights: COMPLETE
    # over a budget, or not runnable on the target runtime; never trained: PRUNED (`reject_reason`)
    INFEASIBLE = "infeasible"
    STOPPED = "stopped"  # stopped early by the pruner or the dominance rule: PRUNED
    SCREENED = "screened"  # not in the pre-screen's best share: PRUNED
    FAILED = "failed"  # FAIL (`fail_reason`)
    SURPLUS = "surplus"  # FAIL: created past the study's count while other workers ran
    DUPLICATE = "duplicate"  # COMPLETE: an architecture already trained; its result reused
    RUNNING = "running"  # not ended (or ended by an older version without a status)

    def __str__(self) -> str:
        return self.value

    @property
    def words(self) -> str:
        """The status in a run's summary: `3 infeasible (over a budget)`."""
        return _WORDS.get(self, self.value)


_WORDS = {
    Status.SCORED: "scored with inherited weights",
    Status.DUPLICATE: "already trained (result reused)",
    Status.INFEASIBLE: "infeasible (over a budget)",
    Status.STOPPED: "stopped early",
    Status.SCREENED: "screened out by the proxy",
}


# The user attribute that says why, per status that has a reason.
_REASON_KEY = {
    Status.INFEASIBLE: "reject_reason",
    Status.STOPPED: "stop_reason",
    Status.FAILED: "fail_reason",
    Status.SURPLUS: "fail_reason",
}
# Every trial user attribute the tool writes (docs/trial-records.md says what each holds).
KEYS = frozenset(
    {
        "arch",
        "arch_line",
        "budget_check_seconds",
        "costs",
        "curve",
        "data",
        "distill",
        "duplicate_of",
        "exits",
        "fail_reason",
        "from_trial",
        "inherited",
        "inherited_accuracy",
        "int8",
        "prescreen",
        "proxies",
        "reject_reason",
        "resolution",
        "retry_of",
        "seed",
        "status",
        "stop_reason",
        "table",
        "train",
        "versions",
        "warm_start",
        "weights_artifact_id",
        "worker",
    }
)


def write(trial: optuna.Trial, **attrs: Any) -> None:
    """Record `attrs` on a running trial (names from `KEYS`; a typo is a bug, not data)."""
    unknown = sorted(set(attrs) - KEYS)
    if unknown:
        raise KeyError(f"not a trial record key: {', '.join(unknown)}")
    for key, value in attrs.items():
        trial.set_user_attr(key, value)


def set_stored_status(
    storage: optuna.storages.BaseStorage, trial_id: int, status: Status, reason: str = ""
) -> None:
    """`set_status` for a trial another process holds (a dead worker's), through its storage."""
    storage.set_trial_user_attr(trial_id, "status", status.value)
    if reason and status in _REASON_KEY:
        storage.set_trial_user_attr(trial_id, _REASON_KEY[status], reason)


def set_status(trial: optuna.Trial, status: Status, reason: str = "") -> None:
    """Record how the trial ends, with the reason where the status has one."""
    trial.set_user_attr("status", status.value)
    if reason and status in _REASON_KEY:
        trial.set_user_attr(_REASON_KEY[status], reason)


def _status_of(attrs: Mapping[str, Any], state: TrialState) -> Status:
    stored = attrs.get("status")
    if stored is not None:
        return Status(stored)
    return {  # studies from before statuses were recorded
        TrialState.COMPLETE: Status.TRAINED,
        TrialState.PRUNED: Status.INFEASIBLE,
        TrialState.FAIL: Status.FAILED,
    }.get(state, Status.RUNNING)


@dataclass(frozen=True)
class TrialRecord:
    """One trial as the tool recorded it (read with `TrialRecord.of`)."""

    number: int
    state: TrialState
    status: Status
    values: tuple[float, ...] | None
    arch: Mapping[str, Any] | None  # the ArchConfig as JSON values
    arch_line: str
    seed: int | None
    costs: Mapping[str, Any]
    curve: tuple[float, ...]  # validation accuracy after each epoch (trained or stopped)
    train: Mapping[str, Any]
    reason: str  # why it was rejected, stopped or failed ("" when it was not)
    weights_artifact_id: str | None
    inherited: Mapping[str, Any]  # scored with a supernet's weights
    from_trial: int | None  # retrained from this trial of a supernet search
    attrs: Mapping[str, Any]  # everything recorded, for the keys above and the rest

    @classmethod
    def of(cls, trial: FrozenTrial | optuna.Trial) -> TrialRecord:
        """The record of a finished trial, or of a running one (its record so far)."""
        attrs = trial.user_attrs
        state = getattr(trial, "state", TrialState.RUNNING)  # a live trial is running
        values = getattr(trial, "values", None)
        status = _status_of(attrs, state)
        reason = attrs.get(_REASON_KEY[status], "") if status in _REASON_KEY else ""
        return cls(
            number=trial.number,
            state=state,
            status=status,
            values=tuple(values) if values is not None else None,
            arch=attrs.get("arch"),
            arch_line=attrs.get("arch_line", "?"),
            seed=attrs.get("seed"),
            costs=attrs.get("costs", {}),
            curve=tuple(curve_of(trial)),
            train=attrs.get("train", {}),
            reason=reason or (attrs.get("fail_reason", "") if status is Status.FAILED else ""),
            weights_artifact_id=attrs.get("weights_artifact_id"),
            inherited=attrs.get("inherited", {}),
            from_trial=attrs.get("from_trial"),
            attrs=attrs,
        )

    @property
    def accuracy(self) -> float | None:
        """The first objective (validation accuracy) of a COMPLETE trial."""
        return self.values[0] if self.values and self.state == TrialState.COMPLETE else None

    @property
    def params(self) -> int:
        return int(self.costs.get("params", 0))

    @property
    def flops(self) -> int:
        return int(self.costs.get("flops", 0))

    @property
    def latency_ms(self) -> float:
        return float(self.costs.get("latency_ms", float("nan")))

    @property
    def seconds(self) -> float:
        """Training (or supernet scoring) time."""
        return float((self.train or self.inherited).get("seconds", 0.0))


def nondominated(recs: list[TrialRecord]) -> list[TrialRecord]:
    """The records not dominated in (accuracy up, latency down), best accuracy first; of equal
    points the earliest trial is kept."""
    front: list[TrialRecord] = []
    for r in sorted(recs, key=lambda r: (-r.accuracy, r.latency_ms, r.number)):
        if not front or r.latency_ms < front[-1].latency_ms:
            front.append(r)
    return front


def record_failure(trial: optuna.Trial, error: BaseException) -> None:
    """Record why a trial that is about to end as FAIL failed (`status: failed`, `fail_reason`),
    unless the code that raised recorded it already."""
    if trial.user_attrs.get("fail_reason"):
        return
    if isinstance(error, KeyboardInterrupt):
        reason = "interrupted (Ctrl-C or SIGINT) while it ran; a re-run proposes anew"
    else:
        text = str(error).splitlines()[0][:300] if str(error) else ""
        reason = f"{type(error).__name__}: {text}" if text else type(error).__name__
    with contextlib.suppress(Exception):  # the storage itself may be what failed
        set_status(trial, Status.FAILED, reason)


def curve_of(trial: FrozenTrial | optuna.Trial) -> list[float]:
    """Validation accuracy after each epoch, for a trained or a stopped trial."""
    history = trial.user_attrs.get("train", {}).get("history")
    if history:
        return [h["val_acc"] for h in history]
    return list(trial.user_attrs.get("curve", []))


# The study attribute holding the confirmation trainings of `nas.confirm`: {trial number:
# {"seeds": [...], "val_acc": [...]}} (a finished trial takes no new attributes).
CONFIRMATIONS = "confirmations"


def confirmations(study: optuna.Study) -> dict[int, dict[str, list]]:
    """The confirmation trainings recorded on `study`, by trial number."""
    return {int(n): e for n, e in study.user_attrs.get(CONFIRMATIONS, {}).items()}


def confirmed_accuracy(study: optuna.Study, r: TrialRecord) -> tuple[float, float, int] | None:
    """(mean, sd, n) of a trained trial's validation accuracy over the search's training and
    its confirmations; None for a trial without confirmations."""
    import statistics

    entry = confirmations(study).get(r.number)
    if not entry or r.accuracy is None:
        return None
    accs = [r.accuracy, *entry["val_acc"]]
    return statistics.mean(accs), statistics.stdev(accs), len(accs)


def trained_count(study: optuna.Study) -> int:
    """Candidates trained, or scored with a supernet's weights (what `study.n_trained`
    counts)."""
    done = (Status.TRAINED, Status.SCORED)
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sum(TrialRecord.of(t).status in done for t in trials)


def finished_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def trial_counts(study: optuna.Study) -> dict[str, int]:
    """Trials finished (COMPLETE or PRUNED), running, waiting (enqueued retries) and failed."""
    counts = {"finished": 0, "running": 0, "waiting": 0, "failed": 0}
    key = {
        TrialState.COMPLETE: "finished",
        TrialState.PRUNED: "finished",
        TrialState.RUNNING: "running",
        TrialState.WAITING: "waiting",
        TrialState.FAIL: "failed",
    }
    for t in study.get_trials(deepcopy=False):
        counts[key[t.state]] += 1
    return counts


def fail_reason(trial: optuna.trial.FrozenTrial) -> str:
    """Why a FAIL trial failed: its `fail_reason`, recorded by every path that ends a trial
    as failed while its process lives (a training failure, Ctrl-C, a surplus trial, a dead
    local worker). A trial without one lost its process first and was failed by another
    process, through the heartbeat (a finished trial takes no more attributes)."""
    recorded = trial.user_attrs.get("fail_reason")
    if recorded:
        return recorded
    return (
        "its process stopped without saying why (killed, out of memory, or its storage "
        "connection lost); another process failed it after the heartbeat's grace period"
    )
