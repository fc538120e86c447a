"""The blocks benchmark (`experiments/bench_blocks.py`) end to end on generated Fashion-MNIST
files: every new block trains beside its alternative, the table sets them side by side, and a
second run resumes without training again."""

from __future__ import annotations

import json

import pytest

from tests.conftest import load_experiment


def _bench():
    return load_experiment("bench_blocks")


@pytest.mark.slow
def test_each_new_block_is_measured_beside_its_alternative_and_the_run_resumes(
    tmp_path, capsys
) -> None:
    from tests.test_data import make_fashion

    fashion = make_fashion(tmp_path / "fashion", n_train=300, n_test=100)
    bench = _bench()
    args = [
        "--data", str(fashion), "--max-train", "200", "--epochs", "1", "--seeds", "0", "1",
        "--rounds", "1", "--threads", "1", "--only", "mobileformer", "dwconv",
        "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"),
    ]  # fmt: skip
    assert bench.main(args) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    rows = {s["variant"]: s for s in results["summary"]}
    assert set(rows) == {"mobileformer", "dwconv"}
    mf, dw = rows["mobileformer"], rows["dwconv"]
    assert mf["against"] == "dwconv" and mf["n"] == dw["n"] == 2
    assert 0 <= mf["test_acc"] <= 1 and mf["val_sd"] is not None  # two seeds
    assert mf["params"] > dw["params"] > 0 and mf["latency_ms"] > 0
    table = (tmp_path / "out" / "results.md").read_text()
    assert f"{mf['test_acc'] - dw['test_acc']:+.4f}" in table
    assert "mobileformer/6" in mf["arch"]
    # resumes: every training is read back, none is run again
    calls = []
    bench.train_model = lambda *a, **k: calls.append(a)
    assert bench.main(args) == 0 and not calls
    with pytest.raises(SystemExit):
        bench.main([*args[:-6], "--only", "attention"])
    assert "unknown variant 'attention'" in capsys.readouterr().err
