"""The private Optuna API behind `nas.optuna_api`, against the installed Optuna and a real
SQLite file: if Optuna renames or changes one of these, this test fails and says which."""

from __future__ import annotations

import time

import optuna
import pytest
from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import TrialState

from nas.optuna_api import heartbeat, live_trial, storage_of, trial_id


def _study(tmp_path, **storage_args) -> optuna.Study:
    storage = RDBStorage(f"sqlite:///{tmp_path / 's.db'}", **storage_args)
    return optuna.create_study(storage=storage, study_name="s")


def test_storage_and_trial_ids(tmp_path) -> None:
    study = _study(tmp_path)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    storage = storage_of(study)
    assert isinstance(storage, BaseStorage)
    for frozen in study.trials:
        tid = trial_id(frozen)
        assert storage.get_trial(tid).number == frozen.number
        # a dead worker's trial is written through the storage: attributes, then its state
    running = study.ask()
    storage.set_trial_user_attr(trial_id(running), "status", "failed")
    storage.set_trial_state_values(trial_id(running), state=TrialState.FAIL)
    stored = study.trials[running.number]
    assert stored.state == TrialState.FAIL and stored.user_attrs["status"] == "failed"


def test_a_live_trial_for_a_stored_one(tmp_path) -> None:
    study = _study(tmp_path)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    handle = live_trial(study, study.trials[0])
    assert isinstance(handle, optuna.Trial) and handle.number == 0
    assert handle.params == study.trials[0].params


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")
def test_the_heartbeat_beats_for_a_trial_asked_by_hand(tmp_path) -> None:
    study = _study(tmp_path, heartbeat_interval=1, grace_period=2)
    trial = study.ask()
    with heartbeat(study, trial):
        time.sleep(3)
        optuna.storages.fail_stale_trials(study)  # beating: not stale past the grace period
        assert study.trials[trial.number].state == TrialState.RUNNING
    time.sleep(3)
    optuna.storages.fail_stale_trials(study)  # stopped: now it is stale
    assert study.trials[trial.number].state == TrialState.FAIL
