"""The strategies benchmark (`experiments/bench_strategies.py`) end to end on NAS-Bench-201's
tables, small: every strategy's studies, curves on the true accuracies, the summary, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nas.records import Status, TrialRecord
from nas.report import hypervolume
from nas.storage import load_study
from nas.tables import NB201Table
from tests.conftest import load_experiment


def _bench():
    return load_experiment("bench_strategies")


@pytest.mark.slow
def test_the_strategies_benchmark_measures_true_hypervolume_and_resumes(tmp_path: Path) -> None:
    bench = _bench()
    args = [
        "--tables", "cifar10", "cifar100", "--strategies", "random", "tpe", "tpe-warm",
        "--seeds", "2", "--evals", "8", "--work", str(tmp_path / "work"),
        "--out", str(tmp_path / "out"),
    ]  # fmt: skip
    assert bench.main(args) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    table = NB201Table.load("cifar10")
    res = results["tables"]["cifar10"]
    budget = res["budget_ms"]
    assert budget == pytest.approx(float(np.median(table.latency_ms)))
    best = table.best(max_latency_ms=budget)
    assert res["best"] == best.cell
    # recompute one seed's curve from its study: true accuracies, trainings paid only
    storage = f"sqlite:///{tmp_path / 'work' / 'strategies.db'}"
    study = load_study(storage, "tpe-cifar10-1")
    records = [TrialRecord.of(t) for t in study.trials]
    trained = [r for r in records if r.status is Status.TRAINED]
    assert len(trained) == 8 and len({r.arch_line for r in trained}) == 8
    rows = [table.row(r.arch_line) for r in trained]
    points = [(row.accuracy, row.latency_ms) for row in rows]
    full = res["front_hv"]
    mean = res["tpe"]["mean"][-1]
    other = load_study(storage, "tpe-cifar10-0")
    other_points = [
        (table.row(r.arch_line).accuracy, table.row(r.arch_line).latency_ms)
        for r in map(TrialRecord.of, other.trials)
        if r.status is Status.TRAINED
    ]
    expected = (hypervolume(points, budget) + hypervolume(other_points, budget)) / 2 / full
    assert mean == pytest.approx(expected)
    assert 0 < mean < 1 and len(res["tpe"]["mean"]) == 8
    # the warm start came from the other table's TPE front
    warm = load_study(storage, "tpe-warm-cifar10-0")
    origin = warm.trials[0].user_attrs["warm_start"]
    assert origin["from"] == "study:tpe-cifar100-0"
    for name in ("random", "tpe", "tpe-warm"):
        entry = res[name]
        assert entry["seeds"] == 2 and 0 <= entry["within_0.3"] <= 1
        assert entry["regret_points"][0] >= 0  # no returned cell beats the best feasible one
    assert "| random | 2 |" in (tmp_path / "out" / "results.md").read_text()
    assert (tmp_path / "out" / "hypervolume.png").stat().st_size > 0
    # a second run resumes: nothing new is looked up
    before = len(load_study(storage, "random-cifar100-1").trials)
    assert bench.main(args) == 0
    assert len(load_study(storage, "random-cifar100-1").trials) == before


@pytest.mark.slow
def test_on_a_built_table_mo_asha_is_charged_the_epochs_it_paid(tmp_path: Path) -> None:
    from nas.cli import main as lvit
    from nas.tables import SampledTable
    from tests.conftest import write_config

    train = "train: {epochs: 3, batch_size: 32, lr: 0.003, threads: 1}"
    out = tmp_path / "tiny.csv"
    assert lvit(["table", "build", str(write_config(tmp_path, train=train)), "--n", "8",
                 "--out", str(out)]) == 0  # fmt: skip
    bench = _bench()
    args = [
        "--tables", str(out), "--strategies", "random", "tpe", "tpe-warm", "tpe-asha",
        "--seeds", "2", "--evals", "4", "--work", str(tmp_path / "work"),
        "--out", str(tmp_path / "out"),
    ]  # fmt: skip
    assert bench.main(args) == 0
    res = json.loads((tmp_path / "out" / "results.json").read_text())["tables"]["tiny"]
    assert set(res) >= {"random", "tpe", "tpe-asha"} and "tpe-warm" not in res  # one table
    table = SampledTable.load(str(out))
    storage = f"sqlite:///{tmp_path / 'work' / 'strategies.db'}"
    study = load_study(storage, "tpe-asha-tiny-0")
    assert study.user_attrs["config"]["study"]["fidelity"] == {"rungs": [1], "eta": 3}
    # the curve, recomputed: after k full trainings' worth, the front of what was trained
    paid, points, hv = 0.0, [], []
    for r in sorted(map(TrialRecord.of, study.trials), key=lambda r: r.number):
        if r.status in (Status.TRAINED, Status.STOPPED):
            paid += 1.0 if r.status is Status.TRAINED else r.train["epochs"] / 3
            if r.status is Status.TRAINED:
                row = table.row(r.attrs["table"]["row"])
                points.append((paid, row.accuracy, row.latency_ms))
    for k in range(1, 5):
        seen = [(a, lat) for at, a, lat in points if at <= k + 1e-9]
        hv.append(hypervolume(seen, res["budget_ms"]) if seen else 0.0)
    other = bench.curve(load_study(storage, "tpe-asha-tiny-1"), table, res["budget_ms"], 4)
    expected = [
        (a + b) / 2 / res["front_hv"] for a, b in zip(hv, other["hypervolume"], strict=True)
    ]
    assert res["tpe-asha"]["mean"] == pytest.approx(expected)
