"""The runtime benchmark (`experiments/bench_runtimes.py`) end to end on the tiny space: every
architecture measured on each runtime, the rank correlations and the by-mixer table written,
and a rerun resumes from the measured rows."""

from __future__ import annotations

import json

import pytest

from tests.conftest import load_experiment

pytest.importorskip("executorch.runtime", reason="the executorch extra is part of dev")


def _bench():
    return load_experiment("bench_runtimes")


@pytest.mark.slow
def test_the_runtime_benchmark_ranks_runtimes_and_resumes(tmp_path, capsys) -> None:
    bench = _bench()
    args = [
        "--n", "3", "--space", "tiny", "--img-size", "16", "--max-seconds", "0.2",
        "--runtimes", "eager", "executorch", "executorch-int8",
        "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"),
    ]  # fmt: skip
    assert bench.main(args) == 0
    payload = json.loads((tmp_path / "out" / "results.json").read_text())
    rows, summary = payload["rows"], payload["summary"]
    assert [r["index"] for r in rows] == [0, 1, 2]
    for r in rows:
        assert set(r["latency_ms"]) | set(r["not_deployable"]) == {
            "eager", "executorch", "executorch-int8"
        }  # fmt: skip
        assert all(v > 0 for v in r["latency_ms"].values())
    assert set(summary["kendall_tau"]) == {
        "eager vs executorch", "eager vs executorch-int8", "executorch vs executorch-int8"
    }  # fmt: skip
    assert all(-1 <= t <= 1 for t in summary["kendall_tau"].values())
    md = (tmp_path / "out" / "results.md").read_text()
    assert "--n 3 --space tiny" in md and str(tmp_path) not in md
    assert "| executorch-int8 | " in md and "Kendall tau" in md
    capsys.readouterr()

    # a rerun measures nothing again: the rows are read back
    before = (tmp_path / "work" / "rows.jsonl").read_text()
    assert bench.main(args) == 0
    assert (tmp_path / "work" / "rows.jsonl").read_text() == before
    assert "3 architecture(s)" in capsys.readouterr().out

    # other settings are refused, not mixed in
    with pytest.raises(SystemExit, match="holds rows of other settings"):
        bench.main([*args[:2], "--seed", "1", *args[2:]])
