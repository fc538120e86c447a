"""TPE against random search over search seeds (`experiments/bench_search_seeds.py`), read from
the published Fashion-MNIST run of bench_baselines and copies of it under other seeds."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import load_experiment

PUBLISHED = Path(__file__).parent.parent / "experiments" / "results" / "baselines-fashion"


def _seeds():
    return load_experiment("bench_search_seeds")


def _copy(tmp_path: Path, seed: int, found_delta: float) -> Path:
    """The published run as if searched with `seed`, TPE's picks `found_delta` more accurate."""
    folder = tmp_path / f"seed{seed}"
    folder.mkdir()
    run = json.loads((PUBLISHED / "run.json").read_text())
    run["args"]["search_seed"] = seed
    (folder / "run.json").write_text(json.dumps(run))
    with open(PUBLISHED / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        if r["kind"] == "found":
            r["test_accuracy"] = f"{float(r['test_accuracy']) + found_delta:.4f}"
    with open(folder / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder


def test_the_published_run_reads_as_its_test_accuracies(tmp_path) -> None:
    out = tmp_path / "seeds.md"
    assert _seeds().main([str(PUBLISHED), "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("Test accuracy")  # the run has a test split: it is what is compared
    assert "| poolformer-style w8 | TPE | 0.7522 | 0.7522 ± 0.0000" in text
    assert "| poolformer-style w8 | random | 0.7586 |" in text
    assert "poolformer-style w8: TPE − random -0.64 points" in text
    assert "TPE higher in 0 of 1" in text


def test_seeds_average_and_count_wins(tmp_path) -> None:
    runs = [PUBLISHED, _copy(tmp_path, 1, 0.02), _copy(tmp_path, 2, 0.03)]
    assert _seeds().main([str(r) for r in runs] + ["--out", str(tmp_path / "s.md")]) == 0
    text = (tmp_path / "s.md").read_text()
    # TPE at the smallest budget: 0.7522, 0.7722, 0.7822 -> mean 0.7689, sd 0.0153
    assert "| TPE | 0.7522 | 0.7722 | 0.7822 | 0.7689 ± 0.0153" in text
    # random is the same pick in each copy: lead = mean(-0.64, +1.36, +2.36) = +1.03 points
    assert "poolformer-style w8: TPE − random +1.03 points (mean over 3 search seeds; " in text
    assert "TPE higher in 2 of 3" in text


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: [PUBLISHED, PUBLISHED], "share a search seed"),
        (lambda tmp: [tmp], "results.csv is missing"),
    ],
)
def test_bad_runs_stop_with_one_line(make, message, tmp_path, capsys) -> None:
    out = tmp_path / "s.md"
    assert _seeds().main([str(p) for p in make(tmp_path)] + ["--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_a_run_without_its_run_json_stops(tmp_path) -> None:
    shutil.copytree(PUBLISHED, tmp_path / "run", ignore=shutil.ignore_patterns("work"))
    (tmp_path / "run" / "run.json").unlink()
    assert _seeds().main([str(tmp_path / "run")]) == 2
