"""Bad input and hostile use, on real parts: configs whose errors only the sampler, the device or
the file system find; a grace period that must reach spawned workers on PostgreSQL; credentials
that must never be stored or served; `--force` that must never delete a study; image folders
that are not what they seem; tracebacks where one line is promised; export folders edited by
hand; the records of retried and interrupted trials."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import socket
import time
import urllib.request
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState
from PIL import Image

from nas.cli import main
from nas.config import ConfigError, DataConfig, SearchConfig, load_config, machine_cores
from nas.data import DataError, load_dataset
from nas.errors import UserError
from nas.export import load_export, read_export, save_timm_folder
from nas.records import fail_reason
from nas.storage import RetryStaleTrial, public_url, redact
from nas.study import create_or_resume_study
from search_spaces.arch import ArchConfig, StageConfig
from search_spaces.model import LightViT
from tests.conftest import lvit_process as _lvit
from tests.conftest import wait_for as _wait_for
from tests.conftest import write_config

WIDE = "budget: {max_params: 1000000, max_latency_ms: 100}"


def _one_line_error(capsys, code: int) -> str:
    """The command failed with exit code 2 and ended with one line naming the problem (progress
    bars and warnings may come before it), without a traceback."""
    assert code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("lvit: error: ")]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]), err
    assert "Traceback" not in err
    return errors[0]


# 1. Every check runs before anything is written -------------------------------------------------


def _study(folder: Path, **extra: str) -> str:
    fields = {
        "name": "t",
        "storage": f"sqlite:///{folder}/runs/study.db",
        "artifacts": f"{folder}/runs/artifacts",
        "n_trials": "1",
        **extra,
    }
    return "study: {" + ", ".join(f"{k}: {v}" for k, v in fields.items()) + "}"


# without a GPU, asking for one is a config error (with one, these configs are fine)
NO_GPU_CASES = (
    []
    if torch.cuda.is_available()
    else [
        ({"latency": "latency: {device: cuda}"}, "latency.device cuda"),
        ({"train": "train: {epochs: 1, device: cuda}"}, "train.device is cuda"),
    ]
)


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"study": {"sampler_args": "{n_startup: 3}"}}, "unexpected keyword argument 'n_startup'"),
        ({"study": {"sampler_args": "{n_startup_trials: ten}"}}, "cannot run a trial"),
        (
            {"study": {"mode": "single", "pruner": "MedianPruner", "pruner_args": "{warmup: 1}"}},
            "pruner_args do not fit MedianPruner",
        ),
        ({"study": {"storage": "sqlite:///{folder}/afile/x.db"}}, "is a file, not a folder"),
        ({"study": {"artifacts": "{folder}/afile/artifacts"}}, "is a file, not a folder"),
    ]
    + NO_GPU_CASES,
)
@pytest.mark.slow
def test_a_config_error_found_late_leaves_nothing_and_the_fix_runs(
    tmp_path: Path, capsys, sections: dict, message: str
) -> None:
    (tmp_path / "afile").write_text("a file where a folder is wanted")
    overrides = {k: v for k, v in sections.items() if k != "study"}
    study = {k: v.replace("{folder}", str(tmp_path)) for k, v in sections.get("study", {}).items()}
    config = write_config(tmp_path, study=_study(tmp_path, **study), budget=WIDE, **overrides)
    before = sorted(p.name for p in tmp_path.iterdir())
    line = _one_line_error(capsys, main(["search", str(config)]))
    assert message in line
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no runs/, no file, no folder
    # the corrected config starts the study: nothing of the failed start stands in its way
    fixed = write_config(tmp_path, study=_study(tmp_path), budget=WIDE)
    assert main(["search", str(fixed)]) == 0
    stored = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path}/runs/study.db")
    assert SearchConfig.from_stored(stored.user_attrs["config"]) == load_config(fixed)


def test_a_study_without_results_takes_a_corrected_config(tmp_path: Path) -> None:
    # a study left holding a config by an older version, with no finished trial: not a lock
    old = load_config(write_config(tmp_path, study=_study(tmp_path), budget=WIDE))
    create_or_resume_study(old)
    new = write_config(
        tmp_path, study=_study(tmp_path, sampler="RandomSampler"), budget=WIDE, space="space: tiny"
    )
    assert main(["search", str(new)]) == 0
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path}/runs/study.db")
    assert study.user_attrs["config"]["study"]["sampler"] == "RandomSampler"
    assert study.user_attrs["replaced_config"]["study"]["sampler"] == "TPESampler"
    # once it has results, a different config is refused as before
    again = write_config(tmp_path, study=_study(tmp_path), budget=WIDE)
    assert main(["search", str(again)]) == 2


def test_a_study_is_resumed_only_in_its_space_version_and_read_in_any(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nas.bench import run_until
    from nas.lifecycle import load_finished
    from search_spaces.spaces.tiny import TinySpace

    path = write_config(tmp_path, study=_study(tmp_path), budget=WIDE)
    assert main(["search", str(path)]) == 0
    config = load_config(path)
    monkeypatch.setattr(TinySpace, "version", 2)  # the space gained choices since
    # resuming would draw new trials from another space: refused in one line
    line = _one_line_error(capsys, main(["search", str(path)]))
    assert "was made with space tiny v1, this one is tiny v2" in line
    assert "set space_version" in line
    # where the space keeps version 1, a config asking for it resumes the study there
    kept = TinySpace()
    kept.version = 1
    monkeypatch.setattr(TinySpace, "at_version", lambda self, v: kept if v == 1 else self)
    resumed = path.read_text() + "space_version: 1\n"
    again = tmp_path / "again.yaml"
    again.write_text(resumed.replace("n_trials: 1", "n_trials: 2"))
    assert main(["search", str(again)]) == 0
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path}/runs/study.db")
    assert len(study.trials) == 2
    # a search that needs no more trials is read as it is (a benchmark's finished searches)
    study = load_finished(config, lambda s: True)
    assert study is not None and len(study.trials) == 2
    assert run_until(config, None, 1, _Bar(), 10).trials[0].number == 0
    assert load_finished(config, lambda s: False) is None  # not done: resumed, not read
    epochs3 = dataclasses.replace(config.train, epochs=3)
    with pytest.raises(ConfigError, match="different config .train.epochs: 2 -> 3"):
        load_finished(dataclasses.replace(config, train=epochs3), lambda s: True)
    missing = config.replace_study(name="other")
    assert load_finished(missing, lambda s: True) is None


class _Bar:
    def update(self, n: int) -> None:
        pass


def test_a_failed_start_on_postgresql_leaves_no_study(postgres_url: str, tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("a file where the artifact folder should be")
    study = f"study: {{name: f, storage: '{postgres_url}', artifacts: {tmp_path}/afile/a}}"
    config = load_config(write_config(tmp_path, study=study))
    with pytest.raises(ConfigError, match="study.artifacts"):  # no check_config: on purpose
        create_or_resume_study(config)
    summaries = optuna.get_all_study_summaries(postgres_url, include_best_trial=False)
    assert "f" not in [s.study_name for s in summaries]


def test_single_mode_refuses_objectives_and_reads_old_stored_configs() -> None:
    base = {"name": "s", "mode": "single"}
    with pytest.raises(ValueError, match="single mode maximises accuracy alone"):
        SearchConfig.from_dict({"study": {**base, "objectives": ["accuracy", "params"]}})
    assert SearchConfig.from_dict({"study": base}).study.objective_names == ("accuracy",)
    # versions before this one wrote the multi-mode default into single-mode studies
    stored = {"study": {**base, "objectives": ["accuracy", "latency_ms"]}}
    assert SearchConfig.from_stored(stored).study.objective_names == ("accuracy",)


# 2 and 3. PostgreSQL: the grace period reaches spawned workers; no credentials stored -------


@pytest.mark.slow
def test_the_grace_period_reaches_spawned_workers(postgres_url: str, tmp_path: Path) -> None:
    study = f"study: {{name: g, n_trials: 2, seed: 0, artifacts: {tmp_path}/artifacts}}"
    config = write_config(
        tmp_path, study=study, budget=WIDE, train="train: {epochs: 6, threads: 1}"
    )
    first = _lvit("search", str(config), "--storage", postgres_url)

    def training():
        s = optuna.load_study(study_name="g", storage=postgres_url)
        running = s.get_trials(states=(TrialState.RUNNING,))
        return running[0] if running and "costs" in running[0].user_attrs else None

    victim = _wait_for(training)
    first.kill()  # dies with its heartbeat: its trial stays RUNNING until the grace period
    first.communicate()
    killed_at = time.time()
    workers = _lvit(
        "search", str(config), "--storage", postgres_url, "--workers", "2", "--grace-period", "3"
    )
    out, err = workers.communicate(timeout=600)
    assert workers.returncode == 0, err
    s = optuna.load_study(study_name="g", storage=postgres_url)
    dead = s.trials[victim.number]
    assert dead.state == TrialState.FAIL
    # failed by a spawned worker after about 3 s, not after the default 120 s
    assert dead.datetime_complete.timestamp() - killed_at < 60
    assert "heartbeat" in fail_reason(dead)
    retry = [t for t in s.trials if t.user_attrs.get("retry_of") == victim.number]
    assert retry and retry[0].state == TrialState.COMPLETE and retry[0].params == dead.params
    assert "fail_reason" not in retry[0].user_attrs
    assert main(["status", "--storage", postgres_url, "--study", "g"]) == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _all_text_of(study: optuna.Study) -> str:
    """Every attribute, note and trial record of a study, as the dashboard can serve them."""
    parts = [study.user_attrs, study._storage.get_study_system_attrs(study._study_id)]
    for t in study.get_trials():
        parts += [t.user_attrs, t.system_attrs]
    return json.dumps(parts, default=str)


@pytest.mark.slow
def test_storage_credentials_are_never_stored_or_served(
    postgres_url: str, tmp_path: Path, capfd
) -> None:
    password = postgres_url.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
    study = (
        f"study: {{name: p, n_trials: 2, seed: 0, storage: '{postgres_url}', "
        f"artifacts: {tmp_path}/a}}"
    )
    config = write_config(tmp_path, study=study, budget=WIDE)
    assert main(["search", str(config)]) == 0
    s = optuna.load_study(study_name="p", storage=postgres_url)
    assert s.user_attrs["config"]["study"]["storage"] == public_url(postgres_url)
    trained = next(t.number for t in s.trials if t.user_attrs.get("status") == "trained")
    out = tmp_path / "export"
    args = ["--storage", postgres_url, "--study", "p"]
    assert main(["export", *args, "--trial", str(trained), "--out", str(out)]) == 0
    assert main(["report", *args, "--out", str(tmp_path / "report")]) == 0
    assert main(["status", *args]) == 0
    # a study written by a version that stored the full URL: served without it all the same
    old = optuna.create_study(study_name="old", storage=postgres_url)
    old.set_user_attr("config", {"study": {"name": "old", "storage": postgres_url}})
    port = _free_port()
    server = _lvit("dashboard", "--storage", postgres_url, "--port", str(port))
    try:
        served = ""
        for sid in (s._study_id, old._study_id):
            url = f"http://127.0.0.1:{port}/api/studies/{sid}"
            served += _wait_for(lambda url=url: urllib.request.urlopen(url).read().decode())
    finally:
        server.terminate()
        _, server_err = server.communicate(timeout=30)
    written = "".join(  # every file the commands wrote: weights, card, report, ...
        p.read_text(errors="ignore") for p in tmp_path.rglob("*") if p.is_file() and p != config
    )
    logs = "".join(capfd.readouterr()) + server_err
    everything = served + written + logs + _all_text_of(s)
    everything += _all_text_of(optuna.load_study(study_name="old", storage=postgres_url))
    assert password not in everything
    assert "127.0.0.1" in served  # the URL is there, without its credentials


def test_urls_lose_their_credentials_in_every_form() -> None:
    for url, shown in [
        ("postgresql://u:pw@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgresql://u:p@ss@h/db", "postgresql://u:***@h/db"),
        ("postgresql+psycopg://u@h/db?password=pw&sslmode=require", None),
        ("sqlite:////home/me@work/x.db", "sqlite:////home/me@work/x.db"),
    ]:
        assert "pw" not in redact(url) and "ss@" not in redact(url)
        assert "pw" not in public_url(url) and "u@" not in public_url(url).split("/")[2]
        if shown:
            assert redact(url) == shown
    assert public_url("postgresql://u:pw@h/db?password=pw&x=1") == "postgresql://h/db?x=1"


# 4. --force replaces only a previous export ----------------------------------------------------


def test_force_never_replaces_a_study_or_a_folder_that_is_not_an_export(
    finished_study, tmp_path: Path, capsys, monkeypatch
) -> None:
    config, study = finished_study
    storage = config.study.storage_url
    folder = Path(config.study.artifact_dir).parent
    trained = next(t.number for t in study.trials if t.user_attrs.get("status") == "trained")
    export = ["export", "--storage", storage, "--trial", str(trained), "--force", "--out"]
    before = sorted(p.name for p in folder.iterdir())
    for out, message in [
        (folder, "would hold"),  # the folder of the storage file and the artifact store
        (Path(config.study.artifact_dir) / "x", "is inside"),
        (tmp_path, "would hold"),  # the working folder, below
    ]:
        monkeypatch.chdir(tmp_path)
        assert message in _one_line_error(capsys, main([*export, str(out)]))
    assert sorted(p.name for p in folder.iterdir()) == before
    other = tmp_path / "notes"
    other.mkdir()
    (other / "thesis.tex").write_text("months of work")
    line = _one_line_error(capsys, main([*export, str(other)]))
    assert "replaces only a previous export" in line and (other / "thesis.tex").exists()
    # the same rule for lvit train's --force
    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps(study.trials[trained].user_attrs["arch"]))
    cfg = str(config_path_of(config, tmp_path))
    line = _one_line_error(
        capsys, main(["train", str(arch), "--config", cfg, "--out", str(folder), "--force"])
    )
    assert "would hold" in line and sorted(p.name for p in folder.iterdir()) == before
    # a previous export is replaced
    good = tmp_path / "good"
    assert main([*export, str(good)]) == 0
    assert main([*export, str(good)]) == 0 and (good / "config.json").exists()


def config_path_of(config: SearchConfig, tmp_path: Path) -> Path:
    """A YAML file holding `config` (the shared study's)."""
    import yaml

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(json.loads(json.dumps(config.to_dict()))))
    return path


# 5. Image folders that are not what they seem ------------------------------------------------


def _grey16(path: Path, value: int) -> None:
    Image.fromarray(np.full((12, 12), value, dtype=np.uint16)).save(path)


def test_16_bit_images_are_scaled_by_their_bit_depth(tmp_path: Path) -> None:
    for name, value in (("dark", 16384), ("light", 49152)):  # 0.25 and 0.75 of 65535
        (tmp_path / name).mkdir()
        for i in range(4):
            _grey16(tmp_path / name / f"{i}.png", value)
    assert Image.open(tmp_path / "dark" / "0.png").mode == "I;16"
    data = load_dataset(DataConfig(name="imagefolder", path=str(tmp_path), img_size=8))
    pixels = (
        data.tensors("train")[0] * torch.tensor(data.std)[:, None, None]
        + torch.tensor(data.mean)[:, None, None]
    )
    dark, light = pixels[data.train_y == 0].mean(), pixels[data.train_y == 1].mean()
    assert abs(dark - 0.25) < 0.01 and abs(light - 0.75) < 0.01  # clipping made both ~1.0


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(2):
            pixels = np.zeros((16, 16, 3), dtype=np.uint8)
            pixels[:8] = 255  # bright top half as stored
            exif = Image.Exif()
            exif[0x0112] = 6  # shown rotated 90 degrees clockwise: the bright half on the right
            Image.fromarray(pixels).save(tmp_path / name / f"{i}.jpg", exif=exif, quality=95)
    data = load_dataset(DataConfig(name="imagefolder", path=str(tmp_path), img_size=16))
    x = data.tensors("val", n=1)[0][0].mean(0)
    assert x[:, 8:].mean() > x[:, :8].mean() + 1.0


def _colour_folder(root: Path, classes=("cat", "dog"), per_class: int = 3) -> Path:
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(np.full((8, 8, 3), 60 * c + 20, np.uint8)).save(
                root / name / f"{i}.png"
            )
    return root


def test_links_are_not_followed_into_or_out_of_the_folder(tmp_path: Path) -> None:
    root = _colour_folder(tmp_path / "data")
    outside = _colour_folder(tmp_path / "elsewhere", classes=("bird",))
    (root / "dogs-again").symlink_to(root / "dog")  # would be a third class of copies
    (root / "cat" / "outside.png").symlink_to(outside / "bird" / "0.png")
    (root / "cat" / ".hidden").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "cat" / ".hidden" / "x.png")
    data = load_dataset(DataConfig(name="imagefolder", path=str(root), img_size=8))
    assert data.classes == ("cat", "dog") and data.num_classes == 2
    assert len(data.train_y) + len(data.val_y) == 6


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ("empty_class", "fewer than 2 image(s)"),
        ("single_image_class", "fewer than 2 image(s)"),
        ("split_one_class", "needs at least two class sub-folders"),
        ("split_empty_train_class", "fewer than 1 image(s)"),
        ("train_without_val", "without val/"),
        ("empty_val", "val holds no images"),
        ("only_links", "symbolic link"),
        ("float_out_of_range", "outside [0, 1]"),
        ("loose_images", "outside class folders"),
        ("split_and_classes", "also dog/"),
    ],
)
def test_layouts_that_cannot_be_trained_are_refused(
    tmp_path: Path, layout: str, message: str
) -> None:
    root = tmp_path / "data"
    if layout == "empty_class":
        _colour_folder(root)
        (root / "zebra").mkdir()
    elif layout == "single_image_class":
        _colour_folder(root)
        _colour_folder(root, classes=("zebra",), per_class=1)
    elif layout == "split_one_class":
        _colour_folder(root / "train", classes=("cat",))
        _colour_folder(root / "val", classes=("cat",))
    elif layout == "split_empty_train_class":
        _colour_folder(root / "train")
        (root / "train" / "zebra").mkdir()
        _colour_folder(root / "val")
    elif layout == "train_without_val":
        _colour_folder(root / "train")
    elif layout == "empty_val":
        _colour_folder(root / "train")
        (root / "val" / "cat").mkdir(parents=True)
    elif layout == "only_links":
        _colour_folder(root)
        real = _colour_folder(tmp_path / "real", classes=("zebra",))
        (root / "zebra").mkdir()
        for i in range(3):
            (root / "zebra" / f"{i}.png").symlink_to(real / "zebra" / f"{i}.png")
    elif layout == "loose_images":
        _colour_folder(root)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "stray.png")
    elif layout == "split_and_classes":
        _colour_folder(root / "train")
        _colour_folder(root / "val")
        _colour_folder(root / "test")  # a test split beside them is fine, and never read
        _colour_folder(root, classes=("dog",))
    else:
        _colour_folder(root)
        values = np.full((8, 8), 300.0, np.float32)
        Image.fromarray(values, mode="F").save(root / "cat" / "hdr.tif")
    strict = layout == "float_out_of_range"  # an image that cannot be read: skipped unless
    with pytest.raises(DataError, match=re.escape(message)):
        load_dataset(DataConfig(name="imagefolder", path=str(root), img_size=8, strict=strict))
    if strict:
        data = load_dataset(DataConfig(name="imagefolder", path=str(root), img_size=8))
        assert data.unreadable() == ["cat/hdr.tif"]


# 6. One line, exit 2, nothing half-written ---------------------------------------------------


def test_absurd_sizes_and_alias_bombs_are_refused_with_one_line(tmp_path: Path, capsys) -> None:
    cases = {
        "data: {name: synthetic, img_size: 100000}": "above its limit",
        "data: {name: synthetic, img_size: 1024, num_samples: 200000}": "GiB in memory",
        "train: {epochs: 1, batch_size: 10000000}": "above its limit",
        "latency: {runs: 1000000000}": "above its limit",
    }
    for section, message in cases.items():
        name = section.split(":")[0]
        config = write_config(tmp_path, study=_study(tmp_path), **{name: section})
        assert message in _one_line_error(capsys, main(["search", str(config)]))
    bomb = tmp_path / "bomb.yaml"
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    bomb.write_text("\n".join(lines) + "\nstudy: {name: b}\nspace_args: *a9\n")
    assert "aliases expand" in _one_line_error(capsys, main(["search", str(bomb)]))
    loop = tmp_path / "loop.yaml"
    loop.write_text("study: &s {name: l, sampler_args: *s}\n")
    assert "refers to the value" in _one_line_error(capsys, main(["search", str(loop)]))
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("study: {name: x}\ntrain: {lr: .nan}\n", "train.lr must be a finite number"),
        ("study: {name: x}\nbudget: {max_latency_ms: .inf}\n", "got inf"),
        ("study: {name: x}\ndata: {img_size: 1.0e+400}\n", "must be an integer"),
        ('study: {name: "a\\0b"}\n', "must not hold control characters"),
        ("study: {name: x}\nstudy: {name: y}\n", "the key 'study' is given twice"),
        ("study: {name: x, seed: -1}\n", "study.seed must be 0 to"),
        ("study: {name: x, seed: 99999999999999}\n", "study.seed must be 0 to"),
        ("study: {name: x, pruner_args: {n_startup_trials: 1}}\n", "need a study.pruner"),
        ("study: {name: x}\ndata: {name: digits, path: /data}\n", "data.path is for"),
        ("study: {name: x}\ndata: {name: digits, max_train: 3}\n", "below the 10 classes"),
        ("\xff\xfe binary", "not UTF-8 text"),
    ],
)
def test_bad_values_of_every_kind_are_one_line(
    tmp_path: Path, capsys, text: str, message: str
) -> None:
    config = tmp_path / "c.yaml"
    config.write_bytes(text.encode("latin-1"))
    assert message in _one_line_error(capsys, main(["search", str(config)]))
    assert not (tmp_path / "runs").exists()


def test_bad_flags_are_one_line(tmp_path: Path, capsys) -> None:
    config = write_config(tmp_path)
    arch = tmp_path / "arch.json"
    arch.write_text('{"stages": [{"depth": 1, "dim": 8, "mlp_ratio": NaN}]}')
    for args, message in [
        (["search", str(config), "--workers", "100000"], "--workers must be 1 to"),
        (["dashboard", "--storage", "sqlite:///x.db", "--port", "99999"], "--port must be"),
        (["space", "sample", "tiny", "--seed", "-5"], "--seed must be 0 to"),
        (["latency", "measure", str(arch)], "must be a finite number"),
        (["teacher", "train", str(config), "--arch", str(arch), "--out", "t"], "finite number"),
    ]:
        assert message in _one_line_error(capsys, main(args)), args
    assert not (tmp_path / "t").exists()


def test_small_classes_keep_a_training_image_whatever_the_split(tmp_path: Path) -> None:
    root = _colour_folder(tmp_path / "data", per_class=2)
    data = load_dataset(
        DataConfig(name="imagefolder", path=str(root), img_size=8, val_fraction=0.95)
    )
    assert sorted(data.train_y.tolist()) == [0, 1] and sorted(data.val_y.tolist()) == [0, 1]
    digits = load_dataset(DataConfig(name="digits", img_size=8, max_train=10))
    assert sorted(digits.train_y.tolist()) == list(range(10))  # one of each, exactly 10


def test_more_threads_than_cores_is_a_warning(tmp_path: Path, capsys) -> None:
    threads = machine_cores() + 1
    config = write_config(tmp_path, train=f"train: {{epochs: 1, threads: {threads}}}")
    assert main(["search", str(config), "--n-trials", "0"]) == 2
    err = capsys.readouterr().err
    assert f"lvit: warning: train.threads is {threads} but this machine has" in err


def test_a_read_only_storage_location_is_one_line(tmp_path: Path, capsys) -> None:
    config = write_config(
        tmp_path, study="study: {name: r, storage: 'sqlite:////proc/lvit-test/r.db'}"
    )
    line = _one_line_error(capsys, main(["search", str(config)]))
    assert "/proc" in line and "writable" in line


def test_a_latency_table_without_its_fields_is_one_line(tmp_path: Path, capsys) -> None:
    from nas.lut import LUT_FORMAT

    lut = tmp_path / "lut.json"
    lut.write_text(json.dumps({"format": LUT_FORMAT, "space": "tiny", "device": "cpu"}))
    config = write_config(tmp_path, budget=f"budget: {{latency_source: {{lut: {lut}}}}}")
    assert "not a complete latency table" in _one_line_error(capsys, main(["search", str(config)]))
    assert "not a complete latency table" in _one_line_error(
        capsys, main(["latency", "validate", "--lut", str(lut)])
    )
    assert not (tmp_path / "study.db").exists()


def test_a_search_whose_every_trial_diverges_ends_with_one_line(tmp_path: Path, capsys) -> None:
    config = write_config(
        tmp_path,
        budget=WIDE,
        train="train: {epochs: 1, lr: 1.0e+30, warmup_epochs: 0, clip_grad: 0, threads: 1}",
    )
    line = _one_line_error(capsys, main(["search", str(config), "--n-trials", "2"]))
    assert "loss became" in line and "lower train.lr" in line
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path}/study.db")
    assert all(t.state == TrialState.FAIL and fail_reason(t) for t in study.trials)


ARCH = ArchConfig(
    stages=(StageConfig(depth=2, dim=32, heads=2, mixer="mhsa"),),
    stem="patch",
    patch_size=4,
    pos_enc="none",
    img_size=16,
    num_classes=4,
)


def _export(folder: Path) -> Path:
    torch.manual_seed(0)
    save_timm_folder(
        LightViT(ARCH).eval(),
        str(folder),
        card="card",
        provenance={},
        data_config={
            "input_size": (3, 16, 16),
            "interpolation": "bilinear",
            "crop_pct": 1.0,
            "mean": (0.5,) * 3,
            "std": (0.5,) * 3,
        },
    )
    return folder


def test_damaged_weights_are_one_line_in_every_command(
    tmp_path: Path, capsys, finished_study
) -> None:
    folder = _export(tmp_path / "exp")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    config = write_config(tmp_path, data="data: {name: synthetic, img_size: 16, num_classes: 4}")
    for args in (
        ["latency", "measure", str(folder)],
        ["train", str(folder), "--config", str(config), "--out", str(tmp_path / "o")],
    ):
        assert "damaged" in _one_line_error(capsys, main(args))
    assert not (tmp_path / "o").exists()
    # a trial's stored weights, damaged in the artifact store
    cfg, study = finished_study
    trained = next(t for t in study.trials if t.user_attrs.get("status") == "trained")
    artifacts = tmp_path / "artifacts"
    shutil.copytree(cfg.study.artifact_dir, artifacts)
    for path in artifacts.rglob("*"):
        if path.is_file() and path.name == trained.user_attrs["weights_artifact_id"]:
            path.write_bytes(b"\x00" * 64)
    out = tmp_path / "e"
    args = ["export", "--storage", cfg.study.storage_url, "--trial", str(trained.number)]
    line = _one_line_error(capsys, main([*args, "--artifacts", str(artifacts), "--out", str(out)]))
    assert "damaged" in line and not out.exists()


# 7. An export folder is read one way ---------------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda c: c["model_args"]["arch"]["stages"][0].update(heads=4),
            "different architectures",
        ),
        (lambda c: c["model_args"]["arch"]["stages"][0].update(merge_r=2), "different"),
        (lambda c: c["model_args"]["arch"].update(img_size=32), "different architectures"),
        (lambda c: c["pretrained_cfg"].update(input_size=[3, 32, 32]), "input_size"),
        (lambda c: c["model_args"]["arch"]["stages"][0].update(dim=64, heads=2), "different"),
        (lambda c: c["model_args"].update(img_size=32), "model_args.img_size 32 disagrees"),
        (lambda c: c["model_args"].update(depth=3), "model_args holds depth"),
    ],
)
def test_an_edited_config_json_is_refused_by_every_reader(
    tmp_path: Path, capsys, edit, message: str
) -> None:
    folder = _export(tmp_path / "exp")
    assert read_export(str(folder)).arch == ARCH and load_export(str(folder)).arch == ARCH
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=message):
        load_export(str(folder))
    line = _one_line_error(capsys, main(["latency", "measure", str(folder)]))
    assert message in line
    run_config = write_config(
        tmp_path, data="data: {name: synthetic, img_size: 16, num_classes: 4}"
    )
    out = str(tmp_path / "o")
    assert message in _one_line_error(
        capsys, main(["train", str(folder), "--config", str(run_config), "--out", out])
    )


def test_arch_json_and_replaced_weights_must_agree_with_config_json(tmp_path: Path) -> None:
    folder = _export(tmp_path / "exp")
    arch = json.loads((folder / "arch.json").read_text())
    arch["stages"][0]["depth"] = 1
    (folder / "arch.json").write_text(json.dumps(arch))
    with pytest.raises(UserError, match="arch.json describe different architectures"):
        read_export(str(folder))
    other = _export(tmp_path / "other")
    shutil.copy(other / "arch.json", folder / "arch.json")
    torch.manual_seed(1)
    from safetensors.torch import save_file

    save_file(LightViT(ARCH).state_dict(), str(folder / "model.safetensors"))
    with pytest.raises(UserError, match="not the file that was exported"):
        read_export(str(folder))


# 8. Retries start clean; every failure says why ---------------------------------------------


def test_a_retried_trial_inherits_no_record_of_the_failed_run(tmp_path: Path) -> None:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/r.db")
    trial = study.ask({"x": optuna.distributions.IntDistribution(0, 9)})
    trial.set_constraint("latency_ms", 3.0)
    for key, value in {"status": "failed", "fail_reason": "old", "costs": {"params": 5}}.items():
        trial.set_user_attr(key, value)
    study.tell(trial, state=TrialState.FAIL)
    RetryStaleTrial()(study, study.trials[0])
    retry = study.get_trials(states=(TrialState.WAITING,))[0]
    assert retry.params == study.trials[0].params
    assert retry.user_attrs == {"retry_of": 0}
    assert not any(k.startswith("constraints") for k in retry.system_attrs)
    assert retry.system_attrs["failed_trial"] == 0
    # a new trial on the same parameters sets its own constraint (Optuna keeps the first)
    again = study.ask()
    again.set_constraint("latency_ms", -1.0)
    frozen = study._storage.get_trial(again._trial_id)
    assert frozen.system_attrs["constraints:latency_ms"] == -1.0


def test_the_limits_page_lists_the_limits_of_the_code() -> None:
    from nas.cli import Latency
    from nas.config import LIMITS, MAX_CONFIG_BYTES, MAX_CONFIG_VALUES
    from search_spaces.arch import ARCH_LIMITS

    page = (Path(__file__).parents[1] / "docs" / "limits.md").read_text()
    rows = dict(
        (cells[1].strip("` "), cells[2].strip())
        for line in page.splitlines()
        if line.startswith("| `") and len(cells := line.split("|")) == 4
    )
    for key, value in {**LIMITS, **ARCH_LIMITS}.items():
        assert rows[key] == f"{value:,}", key
    assert f"{MAX_CONFIG_BYTES:,} bytes" in page and f"| {MAX_CONFIG_VALUES:,} |" in page
    for flag, top in Latency.BOUNDS.items():
        assert f"`--{flag.replace('_', '-')}`" in page and f"{top:,}" in page, flag
    from nas.cli import MAX_WORKERS
    from nas.config import MAX_SEED

    assert f"| `--workers` (`lvit search`) | 1 to {MAX_WORKERS} " in page
    assert f"0 to {MAX_SEED:,}" in page


@pytest.mark.slow
def test_a_reader_that_goes_away_stops_the_command_quietly(tmp_path: Path) -> None:
    """`lvit ... | head` closes the pipe early: the command stops with the shell's SIGPIPE
    status and no error of its own (it used to say 'cannot use: Broken pipe; choose a
    location this user can write', which sends a user looking for a disk problem)."""
    import subprocess
    import sys

    child = subprocess.Popen(
        [sys.executable, "-m", "nas.cli", "space", "show", "survey"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    child.stdout.close()  # gone before the first line is written
    err = child.stderr.read().decode()
    assert child.wait(timeout=120) == 141, err
    assert "error" not in err and "Traceback" not in err, err
