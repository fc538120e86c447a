"""Warm starts (`study.warm_start`): candidates enqueued before the sampler's own proposals, so
that a search starts from known designs and can only improve on them.

`baselines`: the hand-designed families of `search_spaces.baselines`, each scaled to the
parameter budget, as the nearest point of the survey space (`SurveySpace.nearest_params`: the
space's widths, depths and options closest to the family's); a point that rebuilds the family
exactly is marked so (`exact`). `study:NAME`: the Pareto front of an earlier study of the same
space in the same storage (another data set, budget or seed), its parameters as they were.

Enqueued once, when the study has no trial yet; each enqueued trial carries `warm_start`
({"from": family or study, "exact": bool}) among its user attributes.
"""

from __future__ import annotations

from typing import Any

import optuna

from nas.config import ConfigError, SearchConfig
from nas.data import Dataset
from nas.storage import open_storage

__all__ = ["enqueue_warm_start", "warm_start_points"]


def warm_start_points(config: SearchConfig, data: Dataset) -> list[tuple[dict[str, Any], dict]]:
    """(parameters, what they stand for) of the warm start `config` asks for."""
    how = config.study.warm_start
    if how is None:
        return []
    space = config.search_space()
    if how == "baselines":
        from search_spaces.baselines import BASELINES, baseline, scale_to_budget

        if not hasattr(space, "nearest_params"):
            raise ConfigError(
                f"study.warm_start: baselines needs the survey space (survey, isotropic or "
                f"hierarchical), not '{config.space}'"
            )
        points = []
        for name in BASELINES:
            if config.budget.max_params is not None:
                arch = scale_to_budget(
                    name,
                    config.budget.max_params,
                    img_size=data.img_size,
                    num_classes=data.num_classes,
                    in_chans=data.in_chans,
                )
            else:
                arch = baseline(
                    name, 16, img_size=data.img_size, num_classes=data.num_classes,
                    in_chans=data.in_chans,
                )  # fmt: skip
            if arch is None:  # even its narrowest member is over the budget
                continue
            params = space.nearest_params(arch, data.img_size)
            rebuilt = space.sample(
                optuna.trial.FixedTrial(params),
                num_classes=data.num_classes,
                in_chans=data.in_chans,
                img_size=data.img_size,
            )
            points.append((params, {"from": name, "exact": rebuilt == arch}))
        return points
    if how.startswith("study:"):
        name = how.removeprefix("study:")
        storage = open_storage(config.study.storage_url, create=False)
        try:
            earlier = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            raise ConfigError(
                f"study.warm_start: no study '{name}' in {config.study.storage_url}"
            ) from None
        stored = earlier.user_attrs.get("space", {})
        if stored.get("name") != space.name or stored.get("version") != space.version:
            raise ConfigError(
                f"study.warm_start: study '{name}' searched space {stored.get('name')} "
                f"v{stored.get('version')}, this one {space.name} v{space.version}"
            )
        front = _front(earlier)
        return [(t.params, {"from": f"study:{name}", "trial": t.number}) for t in front]
    raise ConfigError(f"study.warm_start {how!r}: use baselines or study:NAME")


def _front(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The earlier study's Pareto front (trained or scored trials), best accuracy first."""
    from nas.records import Status, TrialRecord, nondominated

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    trained = [TrialRecord.of(t) for t in complete]
    front = nondominated([r for r in trained if r.status in (Status.TRAINED, Status.SCORED)])
    by_number = {t.number: t for t in complete}
    return [by_number[r.number] for r in front]


def enqueue_warm_start(config: SearchConfig, study: optuna.Study, data: Dataset) -> int:
    """Enqueue the warm start once, into a study with no trial yet; how many were enqueued."""
    if config.study.warm_start is None or study.get_trials(deepcopy=False):
        return 0
    points = warm_start_points(config, data)
    for params, origin in points:
        study.enqueue_trial(params, user_attrs={"warm_start": origin}, skip_if_exists=True)
    return len(points)
