"""The multi-objective early-stopping rule (`early_stop`): a candidate whose accuracy after an
epoch is beaten at that epoch by enough trained candidates that cost no more on every other
objective is stopped (`status: stopped`), as successive halving would drop it, but without
rungs: each candidate is compared with the learning curves already recorded."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import TrialState

from nas.config import SearchConfig
from nas.records import Status, TrialRecord

__all__ = ["dominated_reason"]


def dominated_reason(
    trial: optuna.Trial, config: SearchConfig, costs: dict[str, Any], epoch: int, acc: float
) -> str | None:
    """The multi-objective early-stopping rule (see `EarlyStopConfig`): why to stop `trial`
    after `epoch` at accuracy `acc`, or None to go on."""
    rule = config.early_stop
    if epoch < rule.min_epoch:
        return None
    trained = [
        r
        for r in map(
            TrialRecord.of, trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        )
        if r.status is Status.TRAINED
    ]
    if len(trained) < rule.min_trials:
        return None
    keys = config.study.objective_names[1:]
    better = []
    for r in trained:
        if len(r.curve) >= epoch and r.curve[epoch - 1] > acc:
            if all(r.costs.get(k, float("inf")) <= costs[k] for k in keys):
                better.append(r.number)
    if len(better) < rule.dominated_by:
        return None
    shown = ", ".join(map(str, better[:5])) + (", ..." if len(better) > 5 else "")
    return (
        f"after epoch {epoch} ({acc:.4f}) {len(better)} trained candidates were more accurate "
        f"at that epoch at no more {' and '.join(keys)} (trials {shown})"
    )
