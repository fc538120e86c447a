"""End to end on a real SQLite study: budgets, records, resume, export through timm, report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import timm
import torch
from optuna.trial import TrialState

import nas.objective
import nas.report
from nas.cli import main
from nas.config import ConfigError, load_config
from nas.data import load_dataset
from nas.export import export_trial, load_trial_model
from nas.report import pareto_plot
from nas.study import run_search
from nas.train import evaluate
from search_spaces.arch import ArchConfig
from tests.conftest import trained_trials, write_config


def test_every_trial_records_its_arch_and_costs(finished_study) -> None:
    config, study = finished_study
    trials = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(trials) == 6
    for t in trials:
        arch = ArchConfig.from_dict(t.user_attrs["arch"])
        assert arch.to_dict() == t.user_attrs["arch"]
        costs = t.user_attrs["costs"]
        assert costs["params"] > 0 and costs["flops"] > 0 and costs["latency_ms"] > 0
        assert costs["latency"]["conditions"]["threads"] == config.latency.threads
        assert t.user_attrs["status"] in ("trained", "infeasible", "duplicate")


def test_completed_trials_keep_their_weights(finished_study) -> None:
    _, study = finished_study
    completed = trained_trials(study)
    assert completed, "the shared study should train some candidates"
    for t in completed:
        metas = optuna.artifacts.get_all_artifact_meta(t, storage=study._storage)
        by_name = {m.filename: m.artifact_id for m in metas}
        assert by_name["model.safetensors"] == t.user_attrs["weights_artifact_id"]
        assert set(by_name) == {"model.safetensors", "architecture.png"}  # the dashboard's
        assert len(t.user_attrs["train"]["history"]) == 2  # one record per epoch


@pytest.mark.slow
def test_over_budget_candidates_are_never_trained(tmp_path: Path, monkeypatch) -> None:
    trained_params: list[int] = []
    real_train = nas.objective.train_model

    def spy(model, *args, **kwargs):
        trained_params.append(sum(p.numel() for p in model.parameters()))
        return real_train(model, *args, **kwargs)

    monkeypatch.setattr(nas.objective, "train_model", spy)
    budget = "budget: {max_params: 12000, max_latency_ms: 50.0}"
    config = load_config(write_config(tmp_path, budget=budget)).replace_study(n_trials=8)
    run = run_search(config)
    pruned = run.study.get_trials(states=(TrialState.PRUNED,))
    assert pruned, "a 12k-parameter budget should reject some tiny-space candidates"
    for t in pruned:
        assert t.user_attrs["status"] == "infeasible"
        assert t.user_attrs["costs"]["params"] > 12000
        assert "train" not in t.user_attrs and "weights_artifact_id" not in t.user_attrs
        assert t.constraints["params"] > 0  # what the sampler learns from
        assert t.user_attrs["budget_check_seconds"] > 0  # recorded; how long: benchmarks
    assert all(p <= 12000 for p in trained_params)
    assert len(trained_params) == run.trained == 8 - len(pruned)


def test_n_trained_ends_the_search_after_that_many_trained_candidates(tmp_path: Path) -> None:
    """`study.n_trained`: the search stops at N trained candidates however many the budgets
    rejected on the way, `n_trials` caps them all, and a resumed run trains the rest."""
    # 25k: tight enough that the first draws are rejected, loose enough that TPE finds 4
    # trainable ones in 40 on any host (at 12k it found 2 on one)
    budget = "budget: {max_params: 25000, max_latency_ms: 50.0}"
    config = load_config(write_config(tmp_path, budget=budget)).replace_study(
        n_trials=40, n_trained=3
    )
    run = run_search(config)
    trials = run.study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert run.trained == 3 and run.infeasible >= 1 and len(trials) < 40
    assert len(trials) == run.trained + run.infeasible + run.stopped + run.duplicate
    again = run_search(config.replace_study(n_trained=4))
    assert again.trained == 1
    with pytest.raises(ConfigError, match="study.n_trained 50 needs study.n_trials >= it"):
        config.replace_study(n_trained=50)


def test_rerunning_resumes_the_same_study(tmp_path: Path, capsys) -> None:
    path = write_config(tmp_path)
    assert main(["search", str(path), "--n-trials", "2"]) == 0
    storage = f"sqlite:///{tmp_path}/study.db"
    first = optuna.load_study(study_name="t", storage=storage).get_trials()
    assert main(["search", str(path), "--n-trials", "3"]) == 0
    study = optuna.load_study(study_name="t", storage=storage)
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2]
    assert trials[2].params != trials[0].params  # a resumed sampler does not replay run one
    assert [t.datetime_start for t in trials[:2]] == [t.datetime_start for t in first]
    assert len(optuna.get_all_study_names(storage)) == 1
    out = capsys.readouterr()
    assert "resuming: 2 of 3 candidates already finished" in out.err
    assert "Pareto front of study 't'" in out.out

    # the same storage with a different recipe is refused, not mixed in
    changed = write_config(tmp_path, train="train: {epochs: 3, batch_size: 32, threads: 1}")
    assert main(["search", str(changed), "--n-trials", "4"]) == 2
    assert "was made with a different config (train.epochs: 2 -> 3" in capsys.readouterr().err
    assert len(optuna.load_study(study_name="t", storage=storage).get_trials()) == 3


@pytest.mark.slow
def test_export_round_trip_through_timm_in_a_fresh_process(finished_study, tmp_path) -> None:
    config, study = finished_study
    best = max(study.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: t.values[0])
    out = tmp_path / "exported"
    result = export_trial(study, best.number, str(out))
    assert result.max_abs_diff < 1e-5
    assert sorted(os.listdir(out)) == [
        "README.md",
        "arch.json",
        "config.json",
        "model.safetensors",
    ]
    cfg = json.loads((out / "config.json").read_text())
    data = best.user_attrs["data"]
    assert cfg["architecture"] == "lightvit"
    assert (
        cfg["pretrained_cfg"]["mean"] == data["mean"]
        and cfg["pretrained_cfg"]["std"] == data["std"]
    )
    assert cfg["pretrained_cfg"]["input_size"] == data["input_size"]
    assert cfg["num_classes"] == data["num_classes"]
    assert (
        ArchConfig.from_json((out / "arch.json").read_text()).to_dict() == best.user_attrs["arch"]
    )

    searched, _ = load_trial_model(study, best.number)
    x = torch.randn(3, *data["input_size"], generator=torch.Generator().manual_seed(1))
    torch.save(x, tmp_path / "x.pt")
    script = (
        "import sys, torch, timm, search_spaces\n"
        f"m = timm.create_model('local-dir:{out}', pretrained=True).eval()\n"
        "dc = timm.data.resolve_data_config(model=m)\n"
        f"x = torch.load('{tmp_path / 'x.pt'}')\n"
        f"torch.save({{'logits': m(x).detach(), 'dc': dc}}, '{tmp_path / 'y.pt'}')\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path)
    got = torch.load(tmp_path / "y.pt")
    with torch.no_grad():
        expected = searched(x)
    assert (got["logits"] - expected).abs().max().item() < 1e-5
    assert tuple(got["dc"]["input_size"]) == tuple(data["input_size"])
    assert list(got["dc"]["mean"]) == data["mean"]

    # the exported model scores the trial's recorded accuracy on the same validation split
    reloaded = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    val = load_dataset(config.data)
    assert evaluate(reloaded, val) == pytest.approx(best.values[0], abs=1e-9)


def test_export_refuses_an_untrained_trial_and_an_occupied_folder(
    finished_study, tmp_path, capsys
) -> None:
    config, study = finished_study
    storage = config.study.storage_url
    numbers = [t.number for t in study.get_trials()]
    assert (
        main(["export", "--storage", storage, "--trial", "99", "--out", str(tmp_path / "a")]) == 2
    )
    assert "has no trial 99; trained trials:" in capsys.readouterr().err
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    trained = [t.number for t in study.get_trials(states=(TrialState.COMPLETE,))]
    assert (
        main(["export", "--storage", storage, "--trial", str(trained[0]), "--out", str(occupied)])
        == 2
    )
    assert "already exists and is not empty" in capsys.readouterr().err
    assert os.listdir(occupied) == ["keep.txt"]
    assert numbers  # the study itself is untouched
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".lvit-export-")]


@pytest.mark.slow
def test_report_writes_every_plot_and_the_markdown_report(finished_study, tmp_path, capsys):
    import matplotlib.image

    config, study = finished_study
    args = ["report", "--storage", config.study.storage_url, "--study", "shared"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    best = nas.report.pareto_front(study)[0].number
    sizes = {
        "pareto.png": (960, 720),
        "hypervolume.png": (840, 480),
        f"arch-{best}.png": None,
        "importances.png": None,
    }
    for name, size in sizes.items():
        png = tmp_path / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        height, width, _ = matplotlib.image.imread(str(png)).shape
        assert size is None or (width, height) == size, name
        assert width >= 800 and height >= 400
    report = (tmp_path / "report.md").read_text()
    for name in sizes:
        assert f"({name})" in report
    assert "Pareto front of study 'shared'" in report and f"trial {best}" in report
    assert "Pareto front of study 'shared'" in capsys.readouterr().out
    # another trial's architecture on request; a trial that does not exist is a clear error
    other = study.trials[0].number
    assert main([*args, "--out", str(tmp_path / "b"), "--trial", str(other)]) == 0
    assert (tmp_path / "b" / f"arch-{other}.png").exists()
    assert main([*args, "--out", str(tmp_path / "c"), "--trial", "99"]) == 2
    assert "--trial 99: study 'shared' has trials 0 to 5" in capsys.readouterr().err
    # reference models labelled on the front, from a CSV; a malformed one is a clear error
    good, bad = tmp_path / "baselines.csv", tmp_path / "bad.csv"
    good.write_text("name,latency_ms,accuracy\nDeiT-style,0.9,0.8\n")
    bad.write_text("name,latency_ms\nx,1\n")
    assert main([*args, "--out", str(tmp_path / "d"), "--baselines", str(good)]) == 0
    assert (tmp_path / "d" / "pareto.png").stat().st_size > 10_000
    assert main([*args, "--out", str(tmp_path / "e"), "--baselines", str(bad)]) == 2
    assert "line 2: needs columns name, latency_ms, accuracy" in capsys.readouterr().err


def test_report_on_a_missing_database_is_a_clear_error(tmp_path, capsys) -> None:
    url = f"sqlite:///{tmp_path}/none.db"
    assert main(["report", "--storage", url]) == 2
    assert capsys.readouterr().err.strip() == (
        f"lvit: error: no study database at {tmp_path}/none.db (from --storage {url})"
    )
    assert not (tmp_path / "none.db").exists()


def test_pareto_plot_handles_a_study_with_only_rejections(tmp_path) -> None:
    budget = "budget: {max_params: 10, max_latency_ms: 50.0}"
    config = load_config(write_config(tmp_path, budget=budget)).replace_study(n_trials=2)
    run = run_search(config)
    assert run.trained == 0 and run.infeasible == 2
    assert os.path.getsize(pareto_plot(run.study, str(tmp_path / "p.png"))) > 0


@pytest.mark.slow
def test_a_survey_search_trains_exports_and_reloads(tmp_path) -> None:
    """The survey space end to end: searched resolutions, exits and token reduction included."""
    budget = "budget: {max_params: 400000, max_latency_ms: 100.0}"
    path = write_config(tmp_path, "survey", space="space: survey", budget=budget)
    config = load_config(path).replace_study(n_trials=60, n_trained=2)  # most draws: over budget
    run = run_search(config)
    completed = run.study.get_trials(states=(TrialState.COMPLETE,))
    assert completed
    val = load_dataset(config.data)
    for t in completed[:2]:
        arch = ArchConfig.from_dict(t.user_attrs["arch"])
        assert t.user_attrs["costs"]["latency"]["conditions"]["input_size"] == [
            3,
            arch.img_size,
            arch.img_size,
        ]
        out = tmp_path / f"export-{t.number}"
        export_trial(run.study, t.number, str(out))
        model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
        assert model.pretrained_cfg["input_size"] == (3, arch.img_size, arch.img_size)
        acc = evaluate(model, val, img_size=arch.img_size)
        assert acc == pytest.approx(t.values[0], abs=1e-9)
