"""The baselines benchmark (`experiments/bench_baselines.py`) end to end on a small image
folder: it searches per budget, scales the families, trains every model with one recipe over
the seeds, measures them side by side, writes a CSV that `lvit report --baselines` reads, a
Markdown table and the plot, and resumes without retraining."""

from __future__ import annotations

import argparse
import csv
import json
import struct
from pathlib import Path

import optuna
import pytest
import torch

from nas.config import TrainConfig
from nas.data import load_dataset
from nas.report import load_baselines
from nas.train import train_model
from tests.conftest import load_experiment
from tests.test_data import _make_folder


def _bench():
    return load_experiment("bench_baselines")


ARGS = [
    "--img-size", "16", "--seeds", "0", "1", "--epochs", "1",
    "--trained", "1", "--proxy-epochs", "1", "--rounds", "1", "--max-candidates", "30",
    "--families", "poolformer", "repvit",
    "--timm", "mobilevit_xxs", "efficientformer_l1",
    # the first budget is loose enough that several of random search's first 30 candidates fit
    # it on any machine (at deit:48, 173k params, about 3 in 30 did, and a CI run whose
    # latencies came out slower than its budget's measurement trained none)
    "--budgets", "deit:96", "smallest-timm",
]  # fmt: skip


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("bench")
    bench = _bench()
    images = _make_folder(folder / "photos", per_class=40)  # a user's own image folder
    args = ARGS + [
        "--data", f"imagefolder:{images}",
        "--work", str(folder / "work"), "--out", str(folder / "out"),
    ]  # fmt: skip
    assert bench.main(args) == 0
    return bench, args, folder


def _rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "out" / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_every_budget_compares_the_search_with_random_families_and_timm(bench_run) -> None:
    _, _, folder = bench_run
    rows = _rows(folder)
    assert {r["data"] for r in rows} == {"imagefolder-photos16"}
    budgets = {r["budget"] for r in rows}
    assert budgets == {"deit-style w96", "mobilevit_xxs"}
    for budget in budgets:
        mine = [r for r in rows if r["budget"] == budget]
        kinds = {r["kind"] for r in mine}
        assert {"found", "random", "timm"} <= kinds, mine
        assert {r["name"] for r in mine if r["kind"] == "random"} == {"random 1", "random 2"}
        cap = int(mine[0]["max_params"])
        for r in mine:
            if r["fits"] == "True":
                assert int(r["params"]) <= cap, r  # what fits is within the params budget
            assert float(r["latency_ms"]) > 0 and float(r["latency_2t_ms"]) > 0
            assert int(r["flops"]) > 0
            accs = [float(a) for a in r["accuracies"].split()]
            assert len(accs) == 2  # one per seed
            assert float(r["accuracy"]) == pytest.approx(sum(accs) / 2, abs=1e-4)
    # the reference model of a budget fits it
    timm_row = next(r for r in rows if r["budget"] == "mobilevit_xxs" and r["kind"] == "timm")
    assert timm_row["name"] == "mobilevit_xxs" and timm_row["fits"] == "True"
    assert timm_row["max_params"] == timm_row["params"]


@pytest.mark.slow
def test_outputs_are_readable_by_the_report_and_people(bench_run) -> None:
    _, _, folder = bench_run
    out = folder / "out"
    baselines = load_baselines(str(out / "results.csv"))  # `lvit report --baselines` input
    assert baselines and all(b["latency_ms"] > 0 for b in baselines)
    text = (out / "results.md").read_text()
    assert "| **found (TPE)** |" in text and "Found (TPE) against each model that fits (" in text
    assert "efficientformer_l1 does not run at this size" in text
    png = (out / "pareto.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert width > 2 * height  # one panel per budget, side by side
    run = json.loads((out / "run.json").read_text())
    assert run["versions"]["torch"] and run["seconds"] > 0


@pytest.mark.slow
def test_a_second_run_resumes_without_retraining(bench_run) -> None:
    bench, args, folder = bench_run
    log = folder / "work" / "trained.jsonl"
    before, rows_before = log.read_text(), _rows(folder)
    assert bench.main(args) == 0
    assert log.read_text() == before  # every (architecture, seed) came from the record
    accuracy = {(r["budget"], r["name"]): r["accuracy"] for r in rows_before}
    assert {(r["budget"], r["name"]): r["accuracy"] for r in _rows(folder)} == accuracy


@pytest.mark.slow
def test_budgets_and_every_study_refer_latency_to_the_work_folders_reference(bench_run) -> None:
    # a budget measured in one sitting and a search made in a later one (a faster or busier
    # machine) compare latencies at one machine speed
    _, _, folder = bench_run
    work = folder / "work"
    reference = json.loads((work / "latency-reference.json").read_text())
    storage = f"sqlite:///{work}/search.db"
    summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
    assert len(summaries) == 4  # TPE and random at each of the two budgets
    assert all(s.user_attrs["latency_reference"] == reference for s in summaries)


def test_a_work_folder_keeps_one_reference_and_an_old_one_takes_its_first_studys(tmp_path):
    from nas.bench import work_reference

    new = work_reference(str(tmp_path / "new"), seconds=0.2)  # calibrated now, then kept
    assert new.threads == 1 and new.ms > 0
    assert work_reference(str(tmp_path / "new"), seconds=0.2) == new
    # a folder from before the file existed: its budgets were measured in its first sitting
    old = tmp_path / "old"
    old.mkdir()
    storage = f"sqlite:///{old}/search.db"
    for name, ms, at in (("later", 0.4, "2026-12-02T10:00:00+0000"),
                         ("first", 0.6, "2026-12-01T22:00:00+0000")):  # fmt: skip
        study = optuna.create_study(study_name=name, storage=storage)
        study.set_user_attr("latency_reference", {**new.to_dict(), "ms": ms, "measured_at": at})
    adopted = work_reference(str(old), seconds=0.2)
    assert (adopted.ms, adopted.measured_at) == (0.6, "2026-12-01T22:00:00+0000")
    assert json.loads((old / "latency-reference.json").read_text())["ms"] == 0.6


def test_each_search_seed_searches_in_its_own_study(tmp_path) -> None:
    bench = _bench()
    budget = bench.Budget("deit-style w48", 175_642, 2.47)
    data_cfg = bench.DataConfig(name="digits", img_size=16)
    names = {}
    for seed in (0, 1, 2):
        args = argparse.Namespace(
            search_seed=seed,
            work=str(tmp_path),
            space_version=1,
            proxy_epochs=1,
            threads=1,
            tpe_mode="multi",
        )
        cfg = bench.search_config(args, data_cfg, budget, "tpe")
        names[seed] = cfg.study.name
        assert cfg.study.seed == seed
    assert names[0] == "digits-deit-style w48-tpe"  # the name earlier runs resume from
    assert len(set(names.values())) == 3


def test_single_mode_tpe_maximises_accuracy_alone_in_its_own_study(tmp_path) -> None:
    bench = _bench()
    budget = bench.Budget("deit-style w48", 175_642, 2.47)
    data_cfg = bench.DataConfig(name="digits", img_size=16)
    args = argparse.Namespace(
        search_seed=0, work=str(tmp_path), space_version=1, proxy_epochs=1, threads=1
    )
    configs = {}
    for mode in ("multi", "single"):
        args.tpe_mode = mode
        configs[mode] = {
            s: bench.search_config(args, data_cfg, budget, s) for s in ("tpe", "random")
        }
    single, multi = configs["single"]["tpe"].study, configs["multi"]["tpe"].study
    assert (single.mode, single.objective_names) == ("single", ("accuracy",))
    assert (multi.mode, multi.objective_names) == ("multi", ("accuracy", "latency_ms"))
    assert single.name != multi.name  # a multi-mode study is never resumed as single
    # random search is the same study (and draws) in both runs: its trainings are reused
    assert configs["single"]["random"].study == configs["multi"]["random"].study
    # the budgets stay constraints in both modes
    assert configs["single"]["tpe"].budget == configs["multi"]["tpe"].budget


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "imagefolder"], "imagefolder needs a folder"),
        (["--data", "mnist"], "use digits, fashion_mnist[:PATH], imagefolder:PATH"),
        (["--budgets", "poolformer:x"], "use FAMILY:WIDTH"),
    ],
)
def test_bad_arguments_stop_with_one_line(args, message, tmp_path, capsys) -> None:
    assert _bench().main(args + ["--work", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "w").exists()  # nothing started


def test_a_timm_distillation_head_trains_on_the_labels_without_a_teacher() -> None:
    """LeViT in timm carries a second head; without a teacher both learn the labels."""

    class TwoHeads(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 8))
            self.head, self.head_dist = torch.nn.Linear(8, 4), torch.nn.Linear(8, 4)

        def forward(self, x):
            h = self.body(x)
            return (self.head(h) + self.head_dist(h)) / 2

    from nas.config import DataConfig

    data = load_dataset(DataConfig(name="synthetic", img_size=16, num_classes=4))
    torch.manual_seed(0)  # its start, whatever the tests before it drew
    model = TwoHeads()
    before = model.head_dist.weight.detach().clone()
    result = train_model(model, data, TrainConfig(epochs=3, threads=1, device="cpu"), 0)
    assert result.val_acc >= 0.6  # four classes: chance is 0.25
    # the second head learned the labels too: on its own it predicts them
    assert not torch.equal(model.head_dist.weight, before)
    x, y = data.tensors("val")
    with torch.no_grad():
        alone = model.head_dist(model.body(x)).argmax(1)
    assert (alone == y).float().mean() >= 0.4  # well above chance (0.25), on its own


FASHION_ARGS = [
    "--preset", "fashion", "--img-size", "16", "--seeds", "0", "1", "--epochs", "1",
    "--max-train", "200", "--val-fraction", "0.2",
    "--trained", "2", "--retrain-top", "2", "--proxy-epochs", "1", "--rounds", "1",
    "--max-candidates", "30", "--families", "poolformer",
    "--timm", "mobilevit_xxs", "resnet18", "--budgets", "mobilevit_xxs",
]  # fmt: skip


@pytest.mark.slow
def test_the_fashion_protocol_retrains_the_best_and_reports_the_test_split(tmp_path) -> None:
    """Fashion-MNIST-style data with a test split: the best 2 of each search are retrained with
    the recipe and the best of them by validation accuracy is reported; random search trains as
    many as TPE; every trained model is measured on the test split; a model over every budget
    trains with one seed."""
    from tests.test_data import make_fashion

    fashion = make_fashion(tmp_path / "fashion", n_train=300, n_test=100)
    out, work = tmp_path / "out", tmp_path / "work"
    args = FASHION_ARGS + ["--data", f"fashion_mnist:{fashion}", "--work", str(work)]
    assert _bench().main(args + ["--out", str(out)]) == 0
    rows = {r["name"]: r for r in _rows(tmp_path)}
    assert {r["kind"] for r in rows.values()} == {"found", "random", "family", "timm"}
    assert "random 2" in rows and "random 4" not in rows  # as many as TPE, no 2x
    for r in rows.values():
        tests = [float(a) for a in r["test_accuracies"].split()]
        vals = [float(a) for a in r["accuracies"].split()]
        assert len(tests) == len(vals) and all(0 <= a <= 1 for a in tests)
        assert float(r["test_accuracy"]) == pytest.approx(sum(tests) / len(tests), abs=1e-4)
        # within the budget: every seed; over every budget (resnet18's 11M params): one seed
        assert len(tests) == (2 if r["fits"] == "True" else 1), r
    assert rows["resnet18"]["fits"] == "False" and rows["found (TPE)"]["fits"] == "True"
    run = json.loads((out / "run.json").read_text())
    search = run["search"]["fashion_mnist-fashion16/mobilevit_xxs"]
    trained = [json.loads(line) for line in (work / "trained.jsonl").read_text().splitlines()]
    for strategy in ("tpe", "random"):
        retrained = search[strategy]["retrained"]
        assert len(retrained) == 2 and search[strategy]["trained"] == 2
        # the reported one is the best of the retrained by validation accuracy
        best = max(retrained, key=lambda x: x["val_acc"])
        assert search[strategy]["best_trial"] == best["trial"]
    assert all("test_acc" in row for row in trained if row["acc"] is not None)
    text = (out / "results.md").read_text()
    assert "| test accuracy | val accuracy |" in text and "retrained (trial" in text
    assert "resnet18 (CNN)" in text
