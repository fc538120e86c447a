"""Tabular benchmarks: NAS-Bench-201's cell space and table, and searches over it through the
engine (`space: nb201`, `evaluation: table`), on real SQLite files."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import optuna
import pytest

from nas.cli import main
from nas.config import ConfigError, load_config
from nas.records import Status, TrialRecord
from nas.study import run_search
from nas.tables import NB201Table
from search_spaces.spaces import get_space
from search_spaces.spaces.nb201 import cell_string, parse_cell

RESNET = "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|skip_connect~2|"


def nb201_config(folder: Path, name: str = "nb", extra: str = "", **study: object) -> Path:
    fields = {"n_trials": 40, "seed": 0, **study}
    study_lines = "\n".join(f"  {k}: {v}" for k, v in fields.items())
    text = f"""study:
  name: {name}
  storage: sqlite:///{folder}/study.db
  artifacts: {folder}/artifacts
{study_lines}
space: nb201
evaluation: table
table: cifar10
budget: {{max_latency_ms: 15.0}}
{textwrap.dedent(extra)}"""
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


def test_a_cell_string_is_the_papers_and_round_trips() -> None:
    space = get_space("nb201")
    assert space.size() == 5**6 == 15_625
    assert list(space.choices()) == [
        "edge1<-0", "edge2<-0", "edge2<-1", "edge3<-0", "edge3<-1", "edge3<-2"
    ]  # fmt: skip
    ops = parse_cell(RESNET)
    assert ops == ("nor_conv_3x3", "none", "nor_conv_3x3", "skip_connect", "none", "skip_connect")
    assert cell_string(ops) == RESNET
    cell = space.sample(optuna.trial.FixedTrial(space.params_of(RESNET)))
    assert cell == RESNET
    for bad in ("|conv~0|+|none~0|none~1|+|none~0|none~1|none~2|", "|none~1|", ""):
        with pytest.raises(ValueError, match="not a NAS-Bench-201 cell"):
            parse_cell(bad)


@pytest.mark.parametrize(
    ("dataset", "best"),
    [("cifar10", 91.61), ("cifar100", 73.49), ("imagenet16-120", 46.77)],
)
def test_the_table_is_nas_bench_201(dataset: str, best: float) -> None:
    """15,625 cells with 2-3 seeds each; the best mean validation accuracy is the optimum the
    paper reports (arXiv 2001.00326, Table 5: 91.61, 73.49, 46.77), and ResNet's cell scores
    what the paper gives ResNet on CIFAR-10 (90.83)."""
    table = NB201Table.load(dataset)
    assert len(table) == 15_625
    seeds = (~np.isnan(table.accuracies)).sum(axis=1)
    assert set(np.unique(seeds)) <= {2, 3}
    top = table.best()
    assert abs(top.accuracy * 100 - best) < 0.05
    assert table.row(top.cell).accuracy == pytest.approx(float(table.mean_accuracy.max()))
    if dataset == "cifar10":
        assert abs(table.row(RESNET).accuracy * 100 - 90.83) < 0.1
        assert 0.5e6 < table.row(RESNET).params < 0.6e6
    # a budget changes the best, and the best feasible respects it
    limit = float(np.median(table.latency_ms))
    fast = table.best(max_latency_ms=limit)
    assert fast.latency_ms <= limit and fast.accuracy <= top.accuracy
    # a cell with no path from input to output passes nothing on: chance accuracy
    assert table.row(cell_string(("none",) * 6)).accuracy < 0.11


def test_a_search_looks_candidates_up_through_the_engine(tmp_path: Path) -> None:
    """Budgets, statuses, constraints and counts as in a real search; a candidate's accuracy
    is one of its cell's trainings in the table, chosen by the trial's seed; a re-run resumes."""
    config = load_config(nb201_config(tmp_path, n_trained=15))
    run = run_search(config)
    table = NB201Table.load("cifar10")
    records = [TrialRecord.of(t) for t in run.study.trials]
    trained = [r for r in records if r.status is Status.TRAINED]
    infeasible = [r for r in records if r.status is Status.INFEASIBLE]
    assert len(trained) == 15 and infeasible and run.trained == 15
    for r in trained:
        row = table.row(r.arch_line)
        assert r.accuracy in row.accuracies
        assert r.latency_ms == pytest.approx(row.latency_ms) and r.latency_ms <= 15.0
        assert r.params == row.params and r.attrs["table"]["dataset"] == "cifar10"
        assert r.attrs["table"]["training"] in range(len(row.accuracies))
        assert r.values == (r.accuracy, pytest.approx(row.latency_ms))
    assert len({r.arch_line for r in trained}) == len(trained)  # none looked up twice
    duplicates = [r for r in records if r.status is Status.DUPLICATE]
    assert duplicates  # TPE proposes cells again (9 of 39 candidates here), never retrained
    for r in duplicates:
        first = run.study.trials[r.attrs["duplicate_of"]]
        assert TrialRecord.of(first).arch_line == r.arch_line and r.values == tuple(first.values)
    for r in infeasible:
        assert r.latency_ms > 15.0 and r.reason.startswith("latency")
    trial = run.study.trials[infeasible[0].number]
    assert trial.system_attrs  # the sampler saw the constraint
    again = run_search(config.replace_study(n_trained=20, n_trials=200))
    assert sum(TrialRecord.of(t).status is Status.TRAINED for t in again.study.trials) == 20


def test_the_same_seed_gives_the_same_search(tmp_path: Path) -> None:
    a = run_search(load_config(nb201_config(tmp_path / "a", seed=3, n_trials=25))).study
    b = run_search(load_config(nb201_config(tmp_path / "b", seed=3, n_trials=25))).study
    assert [t.values for t in a.trials] == [t.values for t in b.trials]
    assert [t.params for t in a.trials] == [t.params for t in b.trials]


@pytest.fixture(autouse=True)
def _folders(tmp_path: Path) -> None:
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("evaluation: train\ntable: null\n", "space: nb201 is searched through its table"),
        ("table: cifar11\n", "table must name NAS-Bench-201's data set"),
        ("budget: {max_flops: 1000000}\n", "has no FLOPs"),
        ("proxies: {compute: [synflow]}\n", "it trains nothing: remove proxies"),
    ],
)
def test_a_wrong_table_config_is_refused_in_one_line(
    tmp_path: Path, change: str, message: str
) -> None:
    path = nb201_config(tmp_path)
    text = path.read_text()
    keys = tuple(line.split(":")[0] + ":" for line in change.splitlines())
    lines = [line for line in text.splitlines() if not line.startswith(keys)]
    path.write_text("\n".join(lines) + "\n" + change)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_evaluation_table_needs_a_table_of_its_space(tmp_path: Path) -> None:
    # an architecture space is replayed over a table lvit table build made of it, not NB201's
    path = nb201_config(tmp_path)
    path.write_text(path.read_text().replace("space: nb201", "space: survey"))
    with pytest.raises(ConfigError, match="the TABLE.csv lvit table build made of space survey"):
        load_config(path)
    path.write_text(path.read_text().replace("space: survey", "space: nni:autoformer"))
    with pytest.raises(ConfigError, match="set space: nb201"):
        load_config(path)


def test_lvit_search_status_report_on_a_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI runs a table search end to end and says the candidates were looked up; export
    refuses a looked-up cell with the reason."""
    path = nb201_config(tmp_path, n_trials=12)
    assert main(["search", str(path)]) == 0
    out = capsys.readouterr()
    assert "table NAS-Bench-201 cifar10" in out.err
    assert "looked up" in out.out and "looked up in its table" in out.out
    assert "Export:" not in out.out
    storage = f"sqlite:///{tmp_path}/study.db"
    assert main(["status", "--storage", storage]) == 0
    status = capsys.readouterr().out
    assert "space nb201" in status and "min training, as the table records it" in status
    assert main(["report", "--storage", storage, "--out", str(tmp_path / "report")]) == 0
    assert "|+|" in (tmp_path / "report" / "report.md").read_text()
    capsys.readouterr()
    study = optuna.load_study(study_name="nb", storage=storage)
    best = next(t.number for t in study.trials if t.state.name == "COMPLETE")
    out_dir = str(tmp_path / "x")
    assert main(["export", "--storage", storage, "--trial", str(best), "--out", out_dir]) != 0
    assert "looked up in a tabular benchmark" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
