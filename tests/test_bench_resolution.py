"""The dynamic-resolution benchmark (`experiments/bench_resolution.py`) end to end on
generated Fashion-MNIST files: trains, calibrates, writes its table, and resumes."""

from __future__ import annotations

import json

import pytest

from tests.conftest import load_experiment


def _bench():
    return load_experiment("bench_resolution")


@pytest.mark.slow
def test_the_resolution_benchmark_reports_each_seed_and_resumes(tmp_path) -> None:
    from tests.test_data import make_fashion

    fashion = make_fashion(tmp_path / "fashion", n_train=300, n_test=100)
    bench = _bench()
    args = [
        "--data", f"fashion_mnist:{fashion}", "--max-train", "200", "--epochs", "1",
        "--seeds", "0", "1", "--measure-images", "5", "--threads", "1",
        "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"),
    ]  # fmt: skip
    assert bench.main(args) == 0
    payload = json.loads((tmp_path / "out" / "results.json").read_text())
    rows, summary = payload["rows"], payload["summary"]
    assert [r["seed"] for r in rows] == [0, 1] and all(r["side"] == 16 for r in rows)
    assert 0 <= summary["second_pass_share"] <= 1 and summary["second_pass_share_sd"] is not None
    assert summary["expected_vs_full"] > 0
    assert "16→32px" in (tmp_path / "out" / "results.md").read_text()
    calls = []
    bench.train_model = lambda *a, **k: calls.append(a)
    assert bench.main(args) == 0 and not calls  # resumed: nothing trained again
