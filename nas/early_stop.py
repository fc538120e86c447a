"""The two rules that stop a candidate between epochs in multi mode (`status: stopped`).

`early_stop`: a candidate whose accuracy after an epoch is beaten at that epoch by enough
trained candidates that cost no more on every other objective is stopped, as successive
halving would drop it, but without rungs: each candidate is compared with the learning curves
already recorded.

`study.fidelity`: MO-ASHA ("Multi-objective Asynchronous Successive Halving", Schmucker et al.
2021, arXiv 2106.12639): at each rung a candidate goes on only if it ranks among the best
1/eta of the candidates that reached that rung, by non-dominated sorting of (accuracy at that
epoch, costs on the other objectives) with NSGA-II's crowding distance inside a front (the
paper's ranking; it also offers an epsilon-net, not used here). Asynchronous: the rank is taken
against whatever the study's curves hold when the candidate arrives, as in ASHA."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import TrialState

from nas.config import SearchConfig
from nas.records import Status, TrialRecord

__all__ = ["dominated_reason", "promotion_reason", "rank_order"]


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


def rank_order(points: list[tuple[float, ...]]) -> list[int]:
    """Indices of `points` (every coordinate minimised) best first: by non-dominated front,
    then by crowding distance within a front (the larger first), then by index."""
    left = list(range(len(points)))
    order: list[int] = []
    while left:
        front = [
            i for i in left if not any(_dominates(points[j], points[i]) for j in left if j != i)
        ]
        crowding = _crowding(points, front)
        order += sorted(front, key=lambda i: (-crowding[i], i))
        left = [i for i in left if i not in front]
    return order


def _dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=True)) and a != b


def _crowding(points: list[tuple[float, ...]], front: list[int]) -> dict[int, float]:
    """NSGA-II's crowding distance of each point of `front` (the ends: infinite)."""
    distance = {i: 0.0 for i in front}
    for k in range(len(points[front[0]])):
        ranked = sorted(front, key=lambda i: points[i][k])
        low, high = points[ranked[0]][k], points[ranked[-1]][k]
        distance[ranked[0]] = distance[ranked[-1]] = float("inf")
        if high == low:
            continue
        for a, i, b in zip(ranked, ranked[1:], ranked[2:], strict=False):
            distance[i] += (points[b][k] - points[a][k]) / (high - low)
    return distance


def promotion_reason(
    trial: optuna.Trial, config: SearchConfig, costs: dict[str, Any], epoch: int, acc: float
) -> str | None:
    """MO-ASHA (`study.fidelity`): why to stop `trial` at rung `epoch` with accuracy `acc`,
    or None to promote it (or when `epoch` is no rung)."""
    fidelity = config.study.fidelity
    if fidelity is None or epoch not in fidelity.rungs:
        return None
    keys = config.study.objective_names[1:]
    points = [(-acc, *(float(costs[k]) for k in keys))]
    numbers = [trial.number]
    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    for t in trial.study.get_trials(deepcopy=False, states=states):
        if t.number == trial.number:
            continue
        r = TrialRecord.of(t)
        if len(r.curve) >= epoch and all(k in r.costs for k in keys):
            points.append((-r.curve[epoch - 1], *(float(r.costs[k]) for k in keys)))
            numbers.append(t.number)
    keep = max(1, len(points) // fidelity.eta)
    place = rank_order(points).index(0)
    if place < keep:
        return None
    return (
        f"MO-ASHA: at rung {epoch} ({acc:.4f}) it ranked {place + 1} of {len(points)} "
        f"candidates that reached it (accuracy against {' and '.join(keys)}); the best {keep} "
        f"go on (eta {fidelity.eta})"
    )
