"""What a trial records (`nas.records`): one typed record, one status word, one writer; and the
hooks a search runs at each trial's end (`nas.callbacks`)."""

from __future__ import annotations

import re
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from nas.cli import _trial_line
from nas.config import load_config
from nas.records import KEYS, Status, TrialRecord, set_status, write
from nas.study import run_search
from tests.conftest import write_config

ROOT = Path(__file__).resolve().parents[1]


def _old_trial(state: TrialState, **attrs) -> optuna.trial.FrozenTrial:
    """A trial as an earlier version wrote it (no `status` where it predates statuses)."""
    return create_trial(
        state=state,
        values=[0.9, 1.5] if state == TrialState.COMPLETE else None,
        params={"stem": "patch"},
        distributions={"stem": CategoricalDistribution(["patch", "conv"])},
        user_attrs=attrs,
    )


def test_records_of_old_studies_read_with_the_status_their_state_implies() -> None:
    assert TrialRecord.of(_old_trial(TrialState.COMPLETE)).status is Status.TRAINED
    pruned = TrialRecord.of(_old_trial(TrialState.PRUNED, reject_reason="params 9 > 5"))
    assert pruned.status is Status.INFEASIBLE and pruned.reason == "params 9 > 5"
    failed = TrialRecord.of(_old_trial(TrialState.FAIL, fail_reason="loss became nan"))
    assert failed.status is Status.FAILED and failed.reason == "loss became nan"
    r = TrialRecord.of(
        _old_trial(
            TrialState.COMPLETE,
            status="trained",
            costs={"params": 1200, "flops": 3400, "latency_ms": 1.5},
            train={"history": [{"val_acc": 0.5}, {"val_acc": 0.9}], "seconds": 12.0},
        )
    )
    assert (r.accuracy, r.params, r.flops, r.latency_ms, r.seconds) == (0.9, 1200, 3400, 1.5, 12)
    assert r.curve == (0.5, 0.9) and r.arch is None and r.arch_line == "?"


def test_the_status_word_is_the_one_stored_and_the_one_printed() -> None:
    stopped = _old_trial(TrialState.PRUNED, status="stopped", stop_reason="dominated")
    assert _trial_line(TrialRecord.of(stopped)).split()[1] == "stopped"
    infeasible = _old_trial(TrialState.PRUNED, status="infeasible", reject_reason="too slow")
    line = _trial_line(TrialRecord.of(infeasible))
    assert line.split()[1] == "infeasible" and "too slow" in line
    assert {s.value for s in Status} >= {"trained", "scored", "infeasible", "stopped", "failed"}
    assert Status.INFEASIBLE.words.startswith("infeasible")


def test_writes_name_only_known_keys_and_statuses_keep_their_reason() -> None:
    study = optuna.create_study()
    trial = study.ask()
    with pytest.raises(KeyError, match="not a trial record key: arhc"):
        write(trial, arhc={})
    write(trial, seed=3, arch_line="patch/4")
    set_status(trial, Status.STOPPED, "beaten at epoch 1")
    study.tell(trial, state=TrialState.PRUNED)
    r = TrialRecord.of(study.trials[0])
    assert (r.status, r.reason, r.seed, r.arch_line) == (
        Status.STOPPED,
        "beaten at epoch 1",
        3,
        "patch/4",
    )


def test_only_the_records_module_writes_trial_attributes() -> None:
    """Every other module writes a trial's record through `nas.records` (study-level
    attributes, such as the stored config, are the lifecycle's own)."""
    literal = re.compile(r"""(?<!study)\.set_user_attr\(\s*["']([a-z_]+)["']""")
    offenders = []
    for path in sorted((ROOT / "nas").glob("*.py")):
        if path.name == "records.py":
            continue
        for line in path.read_text().splitlines():
            for key in literal.findall(line):
                if key in KEYS:
                    offenders.append(f"{path.name}: {line.strip()}")
    assert not offenders, offenders


def test_hooks_run_once_per_ended_trial_and_nothing_else_is_added(tmp_path: Path) -> None:
    """A search without hooks records the same trials without notes or pictures; a hook runs
    once per trial that ends with a record, with the values of a trained one."""
    from optuna.artifacts import get_all_artifact_meta
    from optuna_dashboard import get_note

    seen: list[tuple[int, str, list[float] | None]] = []

    def hook(trial: optuna.Trial, values: list[float] | None) -> None:
        seen.append((trial.number, TrialRecord.of(trial).status.value, values))

    budget = "budget: {max_params: 30000, max_latency_ms: 50.0}"
    config = load_config(write_config(tmp_path, budget=budget)).replace_study(n_trials=4)
    run = run_search(config, hooks=[hook])
    finished = run.study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert sorted(n for n, _, _ in seen) == sorted(t.number for t in finished)
    for n, status, values in seen:
        t = run.study.trials[n]
        assert status == t.user_attrs["status"]
        assert (values is not None) == (status == "trained")
        if values is not None:
            assert values[0] == pytest.approx(t.values[0])
        assert not get_note(optuna.Trial(run.study, t._trial_id))
        names = {m.filename for m in get_all_artifact_meta(t, storage=run.study._storage)}
        assert "architecture.png" not in names


def test_confirmation_retrains_the_front_with_more_seeds_and_reports_the_mean(
    tmp_path: Path, capsys
) -> None:
    """`study.confirm_top_k`: the front's best retrained with more seeds after the search,
    each training kept on the study as it ends (a re-run trains nothing again); the front
    table and `lvit status` give mean ± sd and the best by the mean."""
    from nas.cli import main
    from nas.confirm import confirm_front, pending
    from nas.report import front_table, pareto_front, study_summary
    from nas.study import prepare_inputs

    study_yaml = f"""study:
      name: confirm
      storage: sqlite:///{tmp_path}/study.db
      artifacts: {tmp_path}/artifacts
      n_trials: 4
      confirm_top_k: 2
      confirm_seeds: 1"""
    config = load_config(write_config(tmp_path, "confirm", study=study_yaml))
    assert main(["search", str(tmp_path / "confirm.yaml")]) == 0
    out = capsys.readouterr().out
    assert "confirmed, mean ± sd (n)" in out
    study = optuna.load_study(study_name="confirm", storage=config.study.storage_url)
    front = pareto_front(study)
    from nas.records import confirmations

    stored = confirmations(study)
    assert sorted(stored) == sorted(r.number for r in front[:2])
    assert all(len(e["val_acc"]) == 1 and 0 <= e["val_acc"][0] <= 1 for e in stored.values())
    assert not pending(config, study)
    calls = []
    assert confirm_front(config, study, prepare_inputs(config), lambda *a: calls.append(a))
    assert not calls  # resumed: nothing left to train
    assert "± " in front_table(study) and "(2)" in front_table(study)
    assert "best by confirmed mean: trial" in study_summary(study)


def test_a_warm_start_enqueues_the_families_then_an_earlier_front(tmp_path: Path) -> None:
    """`study.warm_start: baselines` puts the hand-designed families, scaled to the budget,
    first (as the survey space's nearest points, each marked exact or not); `study:NAME`
    starts a second study from the first one's front; each is enqueued once."""
    from search_spaces.baselines import BASELINES

    study_yaml = f"""study:
      name: warm
      storage: sqlite:///{tmp_path}/study.db
      artifacts: {tmp_path}/artifacts
      n_trials: 3
      warm_start: baselines"""
    budget = "budget: {max_params: 200000, max_latency_ms: 100.0}"
    config = load_config(
        write_config(tmp_path, "warm", study=study_yaml, space="space: survey", budget=budget)
    )
    run = run_search(config)
    trials = run.study.get_trials()
    origins = [t.user_attrs.get("warm_start") for t in trials]
    assert all(o is not None and o["from"] in BASELINES for o in origins[:3])
    queued = run.study.get_trials(states=(TrialState.WAITING,))
    assert len(trials) >= 3 and all(t.user_attrs["warm_start"] for t in queued)
    assert {"exact"} <= set(origins[0])
    again = run_search(config.replace_study(n_trials=4))  # not enqueued a second time
    assert len(again.study.get_trials()) == max(len(trials), 4)
    second = config.replace_study(name="warm2", warm_start="study:warm", n_trials=2)
    follow = run_search(second).study.trials
    assert follow[0].user_attrs["warm_start"]["from"] == "study:warm"


def test_an_architecture_already_trained_is_not_trained_again(tmp_path: Path) -> None:
    """With `study.repeats` off (the default), a candidate whose architecture a trained trial
    has reuses that trial's values, costs and weights (`status: duplicate`, `duplicate_of`)
    without training; fronts list it once; with repeats on it trains again."""
    from nas.lifecycle import create_or_resume_study
    from nas.report import front_table, pareto_front

    budget = "budget: {max_params: 1000000, max_latency_ms: 100.0}"
    config = load_config(write_config(tmp_path, budget=budget)).replace_study(n_trials=1)
    first = run_search(config).study.trials[0]
    assert first.user_attrs["status"] == "trained"
    study = create_or_resume_study(config.replace_study(n_trials=2))
    study.enqueue_trial(first.params)
    run = run_search(config.replace_study(n_trials=2), study=study)
    again = run.study.trials[1]
    assert run.trained == 0 and run.duplicate == 1
    assert again.user_attrs["status"] == "duplicate" and again.user_attrs["duplicate_of"] == 0
    assert again.values == first.values and again.constraints == first.constraints
    assert again.user_attrs["weights_artifact_id"] == first.user_attrs["weights_artifact_id"]
    assert "train" not in again.user_attrs
    assert [r.number for r in pareto_front(run.study)] == [0]
    assert "1 already trained (result reused)" in front_table(run.study)
    repeat = config.replace_study(name="repeats", n_trials=2, repeats=True)
    study = create_or_resume_study(repeat)
    study.enqueue_trial(first.params)
    study.enqueue_trial(first.params)
    run = run_search(repeat, study=study)
    assert run.trained == 2 and run.duplicate == 0  # seed-averaging: trained twice
