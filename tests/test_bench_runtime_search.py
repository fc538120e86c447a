"""The runtime-in-the-search benchmark (`experiments/bench_runtime_search.py`) end to end on a
tiny space and digits: both searches run under their own runtime's budget, each front's best
gets its int8 accuracy and its latency on both runtimes, and a rerun resumes."""

from __future__ import annotations

import json

import pytest

from tests.conftest import load_experiment, write_config

pytest.importorskip("executorch.runtime", reason="the executorch extra is part of dev")


@pytest.mark.slow
def test_both_searches_their_bests_int8_and_cross_latency(tmp_path, capsys) -> None:
    bench = load_experiment("bench_runtime_search")
    config = write_config(
        tmp_path,
        "rs",
        data="data: {name: digits, img_size: 16, val_fraction: 0.2}",
        train="train: {epochs: 1, batch_size: 32, lr: 0.003, threads: 1}",
    )
    args = ["--quick", "--config", str(config), "--work", str(tmp_path / "w")]
    args += ["--out", str(tmp_path / "out"), "--budget-archs", "2"]
    assert bench.main(args) == 0
    result = json.loads((tmp_path / "out" / "results.json").read_text())
    budgets = result["budgets"]
    assert budgets["eager"]["device"] == "cpu" and budgets["executorch-int8"]["dtype"] == "int8"
    for name in bench.RUNTIMES:
        front = result["fronts"][name]
        assert front["size"] >= 1 and set(front["blocks"]) == set(bench.PREFERENCES)
        assert abs(sum(front["blocks"]["stem"].values()) - 1) < 1e-6  # one stem each
        best = result["bests"][name]
        assert 0 <= best["int8_accuracy"] <= 1
        assert abs(best["accuracy"] - best["int8_accuracy"] - best["int8_drop"]) < 1e-3
        assert set(best["latency_ms"]) == set(bench.RUNTIMES)
        assert all(v > 0 for v in best["latency_ms"].values())
        # the search kept its pick under its own runtime's budget
        assert front["members"][0]["latency_ms"] <= budgets[name]["max_latency_ms"]
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| latency budget (ms) |" in md and "mixer, executorch-int8:" in md
    capsys.readouterr()

    assert bench.main(args) == 0  # resumes: the stored budgets, the finished studies
    assert json.loads((tmp_path / "out" / "results.json").read_text())["budgets"] == budgets
    with pytest.raises(SystemExit, match="budgets of other settings"):
        bench.main([*args, "--budget-scale", "2"])
