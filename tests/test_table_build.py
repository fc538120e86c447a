"""`lvit table build` and a search replayed over the table it wrote: real trainings (synthetic
data, the tiny space), a real SQLite study beside the table, resume, seeds, nearest rows."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import optuna
import pytest

from nas.cli import main
from nas.report import records
from nas.tables import SampledTable
from tests.conftest import write_config

TRAIN = "train: {epochs: 2, batch_size: 32, lr: 0.003, threads: 1}"


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("table")
    config = write_config(folder, train=TRAIN)
    out = folder / "tiny.csv"
    assert main(["table", "build", str(config), "--n", "3", "--out", str(out)]) == 0
    return folder, out


def test_a_built_table_holds_every_training_with_its_epochs(built, capsys) -> None:
    folder, out = built
    rows = _rows(out)
    assert [int(r["arch_id"]) for r in rows] == [0, 1, 2]
    meta = json.loads((folder / "tiny.json").read_text())
    assert meta["space"] == {"name": "tiny", "version": 1} and meta["num_classes"] == 4
    assert meta["trainings"] == 3 and meta["data"]["name"] == "synthetic"
    study = optuna.load_study(study_name="table-tiny", storage=f"sqlite:///{folder}/tiny.db")
    trained = {r.number: r for r in records(study) if r.status.value == "trained"}
    for row in rows:
        r = trained[int(row["trial"])]
        by_epoch = [float(a) for a in row["val_acc_by_epoch"].split(";")]
        assert len(by_epoch) == int(row["epochs"]) == 2
        assert float(row["val_acc"]) == pytest.approx(r.accuracy)
        assert by_epoch[-1] == pytest.approx(r.accuracy, abs=1e-6)
        assert int(row["params"]) == r.costs["params"] <= 60_000  # the config's budget
        assert json.loads(row["params_json"]) == study.trials[r.number].params


def test_a_build_resumes_and_adds_seeds_of_the_same_architectures(built, capsys) -> None:
    folder, out = built
    before = _rows(out)
    config = write_config(folder, train=TRAIN)
    args = ["table", "build", str(config), "--n", "3", "--out", str(out), "--seeds", "2"]
    assert main(args) == 0
    rows = _rows(out)
    assert rows[:3] == before  # nothing retrained: the first three are kept as they were
    assert len(rows) == 6
    by_arch: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        by_arch.setdefault(r["arch_id"], []).append(r)
    assert sorted(by_arch) == ["0", "1", "2"] and all(len(v) == 2 for v in by_arch.values())
    for pair in by_arch.values():  # one architecture, two trainings with their own seeds
        assert pair[0]["arch"] == pair[1]["arch"] and pair[0]["seed"] != pair[1]["seed"]
    assert "Table: 6 trainings of 3 architectures" in capsys.readouterr().out


def test_a_search_replayed_over_the_table_answers_with_its_nearest_rows(built, capsys) -> None:
    folder, out = built
    table = SampledTable.load(str(out))
    study = (
        f"study: {{name: replay, storage: 'sqlite:///{folder}/replay.db', "
        f"artifacts: {folder}/replay, n_trials: 12, seed: 1, sampler: TPESampler}}"
    )
    config = write_config(
        folder, "replay", study=study, train=TRAIN, data="evaluation: table\ntable: " + str(out)
    )
    assert main(["search", str(config)]) == 0
    replay = optuna.load_study(study_name="replay", storage=f"sqlite:///{folder}/replay.db")
    looked_up = [r for r in records(replay) if r.status.value == "trained"]
    assert looked_up and len({r.attrs["table"]["row"] for r in looked_up}) == len(looked_up)
    for r in looked_up:
        t = r.attrs["table"]
        row, distance = table.nearest(replay.trials[r.number].params)
        assert (t["row"], t["distance"]) == (row, distance)
        assert r.accuracy in table.row(row).accuracies and r.arch_line == table.row(row).cell
        assert r.costs["params"] == int(table.params[row])
    assert "looked up" in capsys.readouterr().err


def test_mo_asha_replays_over_the_epochs_a_table_recorded(built, capsys) -> None:
    folder, out = built
    table = SampledTable.load(str(out))
    study = (
        f"study: {{name: asha, storage: 'sqlite:///{folder}/asha.db', n_trials: 12, seed: 2, "
        "sampler: RandomSampler, repeats: true, fidelity: {rungs: [1], eta: 2}}"
    )
    tabular = f"evaluation: table\ntable: {out}"
    config = write_config(folder, "asha", study=study, train=TRAIN, data=tabular)
    assert main(["search", str(config)]) == 0
    replay = optuna.load_study(study_name="asha", storage=f"sqlite:///{folder}/asha.db")
    ended = [r for r in records(replay) if r.status.value in ("trained", "stopped")]
    stopped = [r for r in ended if r.status.value == "stopped"]
    assert stopped and len(stopped) < len(ended)
    for r in ended:  # each went as far as its rung allowed, on the epochs its row recorded
        t = r.attrs["table"]
        curve = table.curve(t["row"], t["training"])
        kept = replay.trials[r.number].user_attrs["curve"]
        assert kept == (curve[:1] if r in stopped else curve)
        if r in stopped:
            assert "MO-ASHA: at rung 1" in r.reason and r.train["epochs"] == 1
    too_far = write_config(
        folder, "far", study=study.replace("[1]", "[2]"), train=TRAIN, data=tabular
    )
    assert main(["search", str(too_far)]) == 2
    assert "must be below the table's 2 epochs" in capsys.readouterr().err


def test_a_table_of_another_space_or_missing_is_one_line(built, tmp_path: Path, capsys) -> None:
    folder, out = built
    wrong = write_config(
        tmp_path, "w", space="space: survey", data=f"evaluation: table\ntable: {out}"
    )
    assert main(["search", str(wrong)]) == 2
    assert "was built on space tiny v1, this search is of survey v2" in capsys.readouterr().err
    missing = write_config(tmp_path, "m", data=f"evaluation: table\ntable: {tmp_path}/none.csv")
    assert main(["search", str(missing)]) == 2
    assert "build it with lvit table build" in capsys.readouterr().err
