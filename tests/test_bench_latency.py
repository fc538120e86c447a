"""The latency-table benchmark (`experiments/bench_latency.py`) on a real table of the tiny
space: it validates, gives the median error by token mixer, and the repeat check measures the
same architectures again and says how far two figures of one model differ."""

from __future__ import annotations

import csv
import json
import statistics

import pytest

from tests.conftest import load_experiment


def _bench():
    return load_experiment("bench_latency")


@pytest.mark.slow
def test_validation_by_mixer_and_the_repeat_check(tiny_table, tmp_path, capsys) -> None:
    table, path = tiny_table
    out = tmp_path / "out"
    args = ["--space", "tiny", "--img-size", "16", "--num-classes", "4", "--lut", str(path)]
    args += ["--n", "6", "--repeat", "2", "--repeat-n", "3", "--tag", "t", "--out", str(out)]
    assert _bench().main(args) == 0
    summary = json.loads((out / "tiny-cpu-1t-t.json").read_text())
    with open(out / "tiny-cpu-1t-t.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6
    # the median error by mixer is the median of the errors of the rows that use the mixer
    by_mixer = summary["median_error_by_mixer"]
    assert by_mixer and sum(n for _, n in by_mixer.values()) >= 6
    for mixer, (error, n) in by_mixer.items():
        mine = [float(r["error"]) for r in rows if mixer in r["architecture"]]
        assert len(mine) == n
        assert abs(error - statistics.median(mine)) < 1e-3
    repeat = summary["repeat"]
    assert repeat["archs"] == 3 and repeat["passes"] == 3
    assert len(repeat["table_error_by_pass"]) == 3
    for kind in ("corrected", "raw"):
        assert 0 <= repeat[kind]["median"] <= repeat[kind]["p90"]
    assert "repeat check, 3 architectures measured 3 times" in capsys.readouterr().out
