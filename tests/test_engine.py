"""The search engine: modes, Optuna samplers and pruners from the config, the multi-objective
early-stopping rule, zero-cost proxies and the pre-screen, Ctrl-C, `lvit status`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
import torch.nn.functional as F
from optuna.trial import TrialState

from nas.cli import main
from nas.config import (
    ConfigError,
    EarlyStopConfig,
    FidelityConfig,
    SearchConfig,
    StudyConfig,
    TrainConfig,
    load_config,
)
from nas.early_stop import dominated_reason, promotion_reason, rank_order
from nas.proxies import compute_proxies
from nas.report import hypervolume, nondominated, pareto_front, records, study_summary
from nas.study import run_search
from search_spaces.arch import ArchConfig, StageConfig
from search_spaces.model import LightViT
from tests.conftest import trained_trials, write_config

WIDE = "budget: {max_params: 1000000, max_latency_ms: 100}"


def _outcomes(study: optuna.Study) -> dict[str, list[optuna.trial.FrozenTrial]]:
    out: dict[str, list] = {}
    for t in study.get_trials():
        out.setdefault(t.user_attrs.get("status", "?"), []).append(t)
    return out


def _study(folder: Path, **keys: str) -> str:
    """A `study:` section in `folder` with these extra keys (YAML values)."""
    lines = [f"storage: sqlite:///{folder}/study.db", f"artifacts: {folder}/artifacts"]
    lines += [f"{k}: {v}" for k, v in {"name": "t", **keys}.items()]
    return "study:\n" + "\n".join(f"  {line}" for line in lines)


def test_single_mode_uses_the_configured_optuna_pruner(tmp_path: Path) -> None:
    # ThresholdPruner(lower=1.01) prunes any accuracy: every trained candidate stops after epoch 1
    study_yaml = _study(
        tmp_path,
        n_trials="3",
        mode="single",
        sampler="RandomSampler",
        pruner="ThresholdPruner",
        pruner_args="{lower: 1.01}",
    )
    config = load_config(write_config(tmp_path, study=study_yaml, budget=WIDE))
    run = run_search(config)
    study = run.study
    assert len(study.directions) == 1 and study.metric_names == ["accuracy"]
    assert isinstance(study.pruner, optuna.pruners.ThresholdPruner)
    stopped = _outcomes(study)["stopped"]
    assert len(stopped) == 3 and run.stopped == 3
    for t in stopped:
        assert t.state == TrialState.PRUNED and t.intermediate_values.keys() == {1}
        assert (
            len(t.user_attrs["curve"]) == 1
            and "ThresholdPruner stopped it" in (t.user_attrs["stop_reason"])
        )


@pytest.mark.parametrize(
    ("pruner", "args"),
    [
        ("MedianPruner", "{n_startup_trials: 1, n_warmup_steps: 0}"),
        ("SuccessiveHalvingPruner", "{min_resource: 1, reduction_factor: 2}"),
        ("HyperbandPruner", "{min_resource: 1, max_resource: 3, reduction_factor: 2}"),
    ],
)
@pytest.mark.slow
def test_optuna_pruners_act_on_the_per_epoch_accuracy(tmp_path: Path, pruner, args) -> None:
    study_yaml = _study(tmp_path, n_trials="5", mode="single", pruner=pruner, pruner_args=args)
    train = "train: {epochs: 3, batch_size: 32, lr: 0.003, threads: 1}"
    config = load_config(write_config(tmp_path, study=study_yaml, budget=WIDE, train=train))
    study = run_search(config).study
    assert type(study.pruner).__name__ == pruner
    for t in study.get_trials():
        status = t.user_attrs["status"]
        assert status in ("trained", "stopped")
        if t.state == TrialState.COMPLETE:
            assert status == "trained" and sorted(t.intermediate_values) == [1, 2, 3]
        else:  # stopped by the pruner before the last epoch, with its reason and curve
            assert t.state == TrialState.PRUNED and pruner in t.user_attrs["stop_reason"]
            assert len(t.user_attrs["curve"]) == max(t.intermediate_values) < 3


@pytest.mark.slow
def test_single_mode_without_a_pruner_trains_every_candidate_fully(tmp_path: Path) -> None:
    study_yaml = _study(tmp_path, n_trials="2", mode="single")
    study = run_search(load_config(write_config(tmp_path, study=study_yaml, budget=WIDE))).study
    assert isinstance(study.pruner, optuna.pruners.NopPruner)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 2 and all(len(t.values) == 1 for t in done)
    assert all(len(t.user_attrs["curve"]) == 2 for t in done)


@pytest.mark.parametrize(
    ("sampler", "args"),
    [
        ("NSGAIISampler", "{population_size: 2}"),
        ("NSGAIIISampler", "{population_size: 2}"),
        ("GPSampler", "{n_startup_trials: 2}"),
        ("RandomSampler", "{}"),
    ],
)
@pytest.mark.slow
def test_optuna_samplers_run_from_the_config(tmp_path: Path, sampler: str, args: str) -> None:
    study_yaml = _study(
        tmp_path,
        n_trials="4",
        seed="3",
        sampler=sampler,
        sampler_args=args,
        objectives="[accuracy, latency_ms, params]",
    )
    config = load_config(
        write_config(
            tmp_path,
            study=study_yaml,
            train="train: {epochs: 1, batch_size: 32, threads: 1}",
            budget="budget: {max_params: 60000, max_latency_ms: 50.0}",
        )
    )
    study = run_search(config).study
    assert type(study.sampler).__name__ == sampler
    assert study.metric_names == ["accuracy", "latency_ms", "params"]
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(finished) == 4
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        assert t.values[2] == t.user_attrs["costs"]["params"]


def _trained(study: optuna.Study, latency: float, curve: list[float]) -> None:
    study.add_trial(
        optuna.trial.create_trial(
            values=[curve[-1], latency],
            user_attrs={
                "status": "trained",
                "costs": {"latency_ms": latency, "params": 1000},
                "train": {
                    "history": [{"epoch": i + 1, "val_acc": a} for i, a in enumerate(curve)]
                },
            },
        )
    )


def test_the_early_stopping_rule_needs_enough_dominating_candidates() -> None:
    config = SearchConfig(
        study=StudyConfig(name="x"),
        early_stop=EarlyStopConfig(enabled=True, min_trials=3, dominated_by=2),
    )
    study = optuna.create_study(directions=["maximize", "minimize"])
    _trained(study, 1.0, [0.6, 0.9])
    _trained(study, 1.0, [0.7, 0.92])
    trial = study.ask()
    assert dominated_reason(trial, config, {"latency_ms": 2.0}, 1, 0.5) is None  # 2 < min_trials
    _trained(study, 3.0, [0.8, 0.95])
    reason = dominated_reason(trial, config, {"latency_ms": 2.0}, 1, 0.5)
    assert reason and "2 trained candidates were more accurate" in reason and "0, 1" in reason
    # faster than all but one of them, or as accurate: it goes on
    assert dominated_reason(trial, config, {"latency_ms": 0.9}, 1, 0.5) is None
    assert dominated_reason(trial, config, {"latency_ms": 2.0}, 1, 0.75) is None
    # epoch 2 compares with their epoch-2 accuracy
    assert dominated_reason(trial, config, {"latency_ms": 2.0}, 2, 0.85) is not None
    assert dominated_reason(trial, config, {"latency_ms": 2.0}, 2, 0.95) is None


def test_status_says_what_de_duplication_and_stopping_saved() -> None:
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr("config", {"train": {"epochs": 3}})
    _trained(study, 1.0, [0.5, 0.6, 0.7])
    _trained(study, 2.0, [0.4, 0.6, 0.8])
    study.add_trial(
        optuna.trial.create_trial(
            values=[0.7, 1.0],
            user_attrs={"status": "duplicate", "duplicate_of": 0, "costs": {"latency_ms": 1.0}},
        )
    )
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.PRUNED,
            user_attrs={"status": "stopped", "curve": [0.3], "costs": {"latency_ms": 3.0}},
        )
    )
    line = next(x for x in study_summary(study).splitlines() if x.startswith("saved:"))
    assert line == (
        "saved: 1 training by reusing an architecture trained before; 2 epochs by stopping 1 "
        "candidate early (22% of 9 had all trained in full)"
    )


def test_mo_asha_ranks_by_front_then_crowding() -> None:
    # (1 - accuracy, latency), minimised: three on the first front, one behind them
    points = [(0.1, 3.0), (0.2, 2.0), (0.3, 1.0), (0.25, 2.5), (0.15, 2.2)]
    order = rank_order(points)
    # front {0, 1, 2, 4}: the two ends first (infinite crowding), then the less crowded
    assert set(order[:4]) == {0, 1, 2, 4} and order[4] == 3
    assert set(order[:2]) == {0, 2}
    assert rank_order([(0.5, 1.0)]) == [0]


def test_mo_asha_promotes_the_best_third_at_a_rung() -> None:
    config = SearchConfig(
        study=StudyConfig(name="x", fidelity=FidelityConfig(rungs=(1,), eta=3)),
        train=TrainConfig(epochs=3),
    )
    study = optuna.create_study(directions=["maximize", "minimize"])
    trial = study.ask()
    # alone at the rung: the best goes on (the first eta - 1 arrivals)
    assert promotion_reason(trial, config, {"latency_ms": 2.0}, 1, 0.5) is None
    for latency, acc in ((1.0, 0.9), (1.5, 0.8), (3.0, 0.7), (4.0, 0.6), (5.0, 0.55)):
        _trained(study, latency, [acc, acc + 0.05, acc + 0.06])
    # six at the rung, the best two go on: on the fourth front, it stops, with its rank
    reason = promotion_reason(trial, config, {"latency_ms": 3.5}, 1, 0.65)
    assert reason and "ranked 4 of 6" in reason and "the best 2 go on" in reason
    # the fastest of all is on the first front, an end of it: promoted
    assert promotion_reason(trial, config, {"latency_ms": 0.5}, 1, 0.4) is None
    assert promotion_reason(trial, config, {"latency_ms": 3.5}, 2, 0.1) is None  # no rung


@pytest.mark.slow
def test_a_multi_objective_search_with_early_stopping_stops_dominated_candidates(
    tmp_path: Path,
) -> None:
    config = load_config(
        write_config(
            tmp_path,
            budget=WIDE,
            train="train: {epochs: 3, batch_size: 32, lr: 0.003, threads: 1}",
            early_stop="early_stop: {enabled: true, min_trials: 1, dominated_by: 1}",
        )
    ).replace_study(n_trials=8)
    run = run_search(config)
    outcomes = _outcomes(run.study)
    # a duplicate: the sampler drew an architecture trained already (which draws, the host's
    # float results decide)
    assert set(outcomes) <= {"trained", "stopped", "infeasible", "duplicate"}
    assert run.stopped == len(outcomes.get("stopped", []))
    for t in outcomes.get("stopped", []):
        assert t.state == TrialState.PRUNED
        assert (
            1 <= len(t.user_attrs["curve"]) < 3 and "more accurate" in t.user_attrs["stop_reason"]
        )
    assert "stopped" in outcomes, "with dominated_by 1 some of 8 candidates should stop"


def test_a_search_with_mo_asha_promotes_exactly_whom_its_rung_ranks_first(
    tmp_path: Path,
) -> None:
    """One process, so each candidate met at its rung exactly the earlier ones: the rule,
    replayed on their recorded curves and costs, says who went on."""
    config = load_config(
        write_config(
            tmp_path,
            budget=WIDE,
            train="train: {epochs: 2, batch_size: 32, lr: 0.003, threads: 1}",
            study=f"""study:
              name: asha
              storage: sqlite:///{tmp_path}/asha.db
              n_trials: 7
              sampler: RandomSampler
              fidelity: {{rungs: [1], eta: 2}}""",
        )
    )
    study = run_search(config).study
    reached: list[tuple[float, float]] = []
    went_on = stopped = 0
    for t in sorted(study.trials, key=lambda t: t.number):
        curve, costs = t.user_attrs.get("curve", []), t.user_attrs.get("costs", {})
        if not curve:
            continue  # over a budget: never trained
        point = (-curve[0], costs["latency_ms"])
        place = rank_order([point, *reached]).index(0)
        promoted = place < max(1, (len(reached) + 1) // 2)
        assert len(curve) == (2 if promoted else 1), (t.number, curve)
        if not promoted:
            assert (
                t.state == TrialState.PRUNED
                and "MO-ASHA: at rung 1" in t.user_attrs["stop_reason"]
            )
        went_on += promoted
        stopped += not promoted
        reached.append(point)
    assert went_on >= 2 and stopped >= 1
    saved = f"saved: {stopped} epochs by stopping {stopped} candidate"  # 1 of 2 epochs each
    assert saved in study_summary(study)


def test_zero_cost_proxies_are_computed_without_touching_the_model() -> None:
    arch = ArchConfig(stages=(StageConfig(2, 16, 2, 2.0),), img_size=16, num_classes=4)
    model = LightViT(arch)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(0)
    x, y = torch.randn(16, 3, 16, 16), torch.randint(0, 4, (16,))
    names = ("synflow", "naswot", "grad_norm", "snip")
    first = compute_proxies(model, x, y, names)
    again = compute_proxies(model, x, y, names)
    assert all(isinstance(first[n], float) for n in names)
    assert {n: first[n] for n in names} == pytest.approx({n: again[n] for n in names})
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # snip and grad_norm are what their papers define, on the Linear and Conv weights
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    weights = [
        m.weight for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))
    ]
    assert first["snip"] == pytest.approx(sum((w * w.grad).abs().sum().item() for w in weights))
    assert first["grad_norm"] == pytest.approx(sum(w.grad.norm().item() for w in weights))
    # synflow needs no data; naswot cannot tell identical images apart
    assert compute_proxies(model, x * 0, y, ("synflow",))["synflow"] == pytest.approx(
        first["synflow"]
    )
    same = x[:1].expand(16, -1, -1, -1)
    assert compute_proxies(model, same, y, ("naswot",))["naswot"] is None


@pytest.mark.slow
def test_a_prescreen_trains_only_the_best_by_the_proxy(tmp_path: Path) -> None:
    config = load_config(
        write_config(
            tmp_path,
            budget=WIDE,
            train="train: {epochs: 1, batch_size: 32, threads: 1}",
            proxies="proxies: {compute: [snip], batch_size: 32, prescreen_proxy: naswot, "
            "prescreen_sample: 4, prescreen_keep: 0.5}",
        )
    ).replace_study(n_trials=4)
    run = run_search(config)
    study = run.study
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    outcomes = _outcomes(study)
    trained, screened = outcomes.get("trained", []), outcomes.get("screened", [])
    feasible = len(trained) + len(screened)
    assert len(trained) == -(-feasible // 2) and run.screened == len(screened)
    worst_trained = min(t.user_attrs["proxies"]["naswot"] for t in trained)
    for t in screened:
        assert t.state == TrialState.PRUNED and t.user_attrs["proxies"]["naswot"] <= worst_trained
        assert set(t.user_attrs["proxies"]) >= {"snip", "naswot", "seconds"}
    ranks = sorted(t.user_attrs["prescreen"]["rank"] for t in trained)
    assert ranks == list(range(1, len(trained) + 1))


def test_a_flops_budget_rejects_before_training(tmp_path: Path) -> None:
    budget = "budget: {max_params: 1000000, max_latency_ms: 100, max_flops: 1000}"
    run = run_search(load_config(write_config(tmp_path, budget=budget)).replace_study(n_trials=2))
    for t in run.study.trials:
        assert t.user_attrs["status"] == "infeasible" and "flops" in t.user_attrs["reject_reason"]
        assert t.user_attrs["budget_check_seconds"] < 1.0


def test_trials_record_their_curve_seed_and_library_versions(finished_study) -> None:
    _, study = finished_study
    for t in trained_trials(study):
        assert len(t.user_attrs["curve"]) == 2 and isinstance(t.user_attrs["seed"], int)
        assert set(t.user_attrs["versions"]) == {"python", "torch", "timm", "optuna"}


def test_lvit_status_summarises_a_study(finished_study, capsys) -> None:
    config, study = finished_study
    assert main(["status", "--storage", config.study.storage_url]) == 0
    out = capsys.readouterr().out
    trained = len(study.get_trials(states=(TrialState.COMPLETE,)))
    assert f"{trained} complete" in out and "of 6 candidates asked for" in out
    best = pareto_front(study)[0]
    assert f"best feasible: trial {best.number}, validation accuracy {best.accuracy:.4f}" in out
    assert f"Pareto front: {len(pareto_front(study))} trials" in out and "min in trials" in out


def test_hypervolume_and_the_front() -> None:
    # two points under a 2 ms budget: 0.8 x (1.0 - 0.5) + 0.9 x (2.0 - 1.0)
    assert hypervolume([(0.9, 1.0), (0.8, 0.5)], 2.0) == pytest.approx(1.3)
    assert hypervolume([(0.9, 1.0), (0.8, 0.5), (0.7, 0.7), (0.99, 3.0)], 2.0) == pytest.approx(
        1.3
    )
    assert hypervolume([], 2.0) == 0.0


def test_the_report_front_is_the_nondominated_set(finished_study) -> None:
    _, study = finished_study
    trained = [r for r in records(study) if r.accuracy is not None]
    front = nondominated(trained)

    def covers(o, r) -> bool:  # o is at least as good as r on both
        return o.accuracy >= r.accuracy and o.latency_ms <= r.latency_ms

    for r in front:
        assert not any(
            covers(o, r) and (o.accuracy, o.latency_ms) != (r.accuracy, r.latency_ms)
            for o in trained
        )
    for r in trained:
        assert any(covers(f, r) for f in front)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("study: {name: x, pruner: MedianPruner}", "study.pruner works in single mode only"),
        ("study: {name: x, mode: single, pruner: Median}", "'Median' is not an Optuna pruner"),
        ("study: {name: x, objectives: [latency_ms]}", "study.objectives starts with accuracy"),
        ("study: {name: x, objectives: [accuracy, speed]}", "use accuracy plus one or more of"),
        ("study: {name: x, mode: double}", "study.mode must be multi or single"),
    ],
)
def test_engine_config_errors_are_one_line(tmp_path, capsys, section, message) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(section + "\n")
    assert main(["search", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_engine_section_errors() -> None:
    with pytest.raises(ValueError, match="early_stop is for multi mode"):
        SearchConfig(
            study=StudyConfig(name="x", mode="single"),
            early_stop=EarlyStopConfig(enabled=True),
        )
    for study, rest, message in (
        ({"mode": "single", "fidelity": {"rungs": [1]}}, {}, "MO-ASHA, for multi mode"),
        ({"fidelity": {"rungs": [2, 1]}}, {}, "rungs must be increasing epochs"),
        ({"fidelity": {"eta": 1}}, {}, "eta must be >= 2"),
        ({"fidelity": {"rungs": [3]}}, {"train": {"epochs": 3}}, "must be below train.epochs"),
        ({"fidelity": {}}, {"early_stop": {"enabled": True}}, "keep one of them"),
    ):
        with pytest.raises(ConfigError, match=message):
            SearchConfig.from_dict({"study": {"name": "x", **study}, **rest})
    with pytest.raises(ConfigError, match="proxy 'zen' is unknown"):
        SearchConfig.from_dict({"study": {"name": "x"}, "proxies": {"compute": ["zen"]}})
    with pytest.raises(ConfigError, match="needs prescreen_proxy"):
        SearchConfig.from_dict({"study": {"name": "x"}, "proxies": {"prescreen_sample": 4}})


@pytest.mark.slow
def test_ctrl_c_ends_the_running_trial_and_exits_130(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        budget=WIDE,
        train="train: {epochs: 200, batch_size: 32, threads: 1}",  # long enough to interrupt
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "nas.cli", "search", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        # a shell without job control starts background jobs with SIGINT ignored, and Python
        # keeps an ignored SIGINT ignored: give the child Ctrl-C's default, as a terminal does
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    storage = f"sqlite:///{tmp_path}/study.db"
    deadline = time.monotonic() + 60
    running = False
    while time.monotonic() < deadline and not running:
        time.sleep(0.5)
        try:
            study = optuna.load_study(study_name="t", storage=storage)
            running = any(
                "costs" in t.user_attrs and t.user_attrs.get("status") is None
                for t in study.get_trials(states=(TrialState.RUNNING,))
            )
        except (KeyError, Exception):  # the study is not created yet
            continue
    assert running, "the search never started a trial"
    time.sleep(1.0)  # inside training
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:  # say where it hung
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"no exit 60 s after SIGINT; stderr ends: {err[-1500:]!r}")
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Run the same command to resume" in err
    study = optuna.load_study(study_name="t", storage=storage)
    states = [t.state for t in study.get_trials()]
    assert TrialState.RUNNING not in states and TrialState.FAIL in states
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert all("interrupted" in t.user_attrs["fail_reason"] for t in failed)
    assert all(t.user_attrs["status"] == "failed" for t in failed)
