"""The few private parts of Optuna this project needs, in one place, each behind a function
that `tests/test_optuna_api.py` checks against the installed Optuna: when Optuna changes
one, that test fails and names it, instead of a search failing somewhere else.

- a study's storage and a trial's id (to write a dead worker's trial, which no public call
  reaches: its owner is gone);
- Optuna's heartbeat thread (kept for trials asked outside `Study.optimize`, as the
  pre-screen asks them);
- a live `Trial` for a finished one (optuna-dashboard's notes take a `Trial`).
"""

from __future__ import annotations

import contextlib
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial

__all__ = ["heartbeat", "live_trial", "storage_of", "trial_id"]


def storage_of(study: optuna.Study) -> BaseStorage:
    """The storage a study reads and writes."""
    return study._storage


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """A trial's id in its storage (not its number in the study)."""
    return trial._trial_id


def heartbeat(study: optuna.Study, trial: optuna.Trial) -> contextlib.AbstractContextManager[Any]:
    """Optuna's heartbeat for `trial` while the context is open, as `Study.optimize` keeps it
    (a no-op on storages without one)."""
    from optuna.storages._heartbeat import get_heartbeat_thread

    return get_heartbeat_thread(trial_id(trial), storage_of(study))


def live_trial(study: optuna.Study, frozen: FrozenTrial) -> optuna.Trial:
    """A `Trial` handle on a stored trial."""
    return optuna.Trial(study, trial_id(frozen))
