"""Data sets from a user's disk: image folders (cached or streamed), Fashion-MNIST's idx files,
CIFAR-10 and CIFAR-100 (python and binary), never a download, never an arbitrary pickle;
augmentation, caps, unreadable files, bounded memory, and a test split no search touches."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nas.cli import main
from nas.config import DataConfig, TrainConfig, load_config
from nas.data import (
    FASHION_MNIST_PATH,
    DataError,
    has_test_split,
    load_dataset,
    load_test_split,
)
from nas.loader import Batches, eval_batches, train_batches
from nas.study import run_search
from tests.conftest import missing_service, write_config

COLOURS = {"cat": (200, 40, 40), "dog": (40, 200, 40), "owl": (40, 40, 200)}


def _make_folder(root: Path, per_class: int = 8, classes: dict = COLOURS, size=(20, 24)) -> Path:
    rng = np.random.default_rng(0)
    for name, colour in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(rng.normal(colour, 30, size=(*size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


@pytest.mark.parametrize("cache", ["memory", "none"])
def test_imagefolder_with_a_seeded_split(tmp_path: Path, cache: str) -> None:
    root = _make_folder(tmp_path / "pets")
    data = load_dataset(
        DataConfig(name="imagefolder", path=str(root), img_size=16, val_fraction=0.25, cache=cache)
    )
    assert data.classes == ("cat", "dog", "owl") and data.num_classes == 3
    assert data.cache == cache and data.train.cached == (cache == "memory")
    train_x, train_y = data.tensors("train")
    assert train_x.shape == (18, 3, 16, 16) and data.tensors("val")[0].shape == (6, 3, 16, 16)
    assert sorted(data.val_y.tolist()) == [0, 0, 1, 1, 2, 2]
    assert data.augment.flip and data.augment.pad == 2
    info = data.info()
    assert info["classes"] == ["cat", "dog", "owl"] and "horizontal flip" in info["augment"]
    # the red class is red: channel 0 above the others after normalisation
    cats = train_x[train_y == 0]
    assert (cats[:, 0].mean() > cats[:, 1].mean()) and (cats[:, 0].mean() > cats[:, 2].mean())


def test_streamed_and_cached_folders_give_the_same_images(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "pets", per_class=6)
    cfg = {"name": "imagefolder", "path": str(root), "img_size": 12, "workers": 2}
    cached = load_dataset(DataConfig(**cfg, cache="memory"))
    streamed = load_dataset(DataConfig(**cfg, cache="none"))
    assert streamed.train.reader is not None and cached.train.images is not None
    assert cached.mean == streamed.mean  # a small folder: the stats sample is all of it
    a = torch.cat([x for x, _ in eval_batches(cached, "val")])
    b = torch.cat([x for x, _ in eval_batches(streamed, "val", batch_size=4)])
    assert torch.equal(a, b)
    # streamed batches get the light augmentation too, every image once an epoch
    recipe = TrainConfig(batch_size=5)
    xs = [
        torch.cat([x for x, _ in train_batches(d, recipe, torch.device("cpu"), seed=2)])
        for d in (cached, streamed)
    ]
    assert xs[0].shape == xs[1].shape == (15, 3, 12, 12)


def test_imagefolder_with_train_and_val_folders(tmp_path: Path) -> None:
    _make_folder(tmp_path / "d" / "train", per_class=4)
    _make_folder(tmp_path / "d" / "val", per_class=2, classes={"dog": COLOURS["dog"]})
    data = load_dataset(DataConfig(name="imagefolder", path=str(tmp_path / "d"), img_size=8))
    assert len(data.train_y) == 12 and data.val_y.tolist() == [1, 1]  # labelled by train's names
    assert data.info()["val_split"] == "the folder's val/"


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ("missing", "is not a folder"),
        ("one_class", "needs at least two class sub-folders"),
    ],
)
def test_imagefolder_errors_name_the_problem(tmp_path: Path, layout: str, message: str) -> None:
    root = tmp_path / "data"
    if layout == "one_class":
        _make_folder(root, classes={"cat": COLOURS["cat"]})
    with pytest.raises(DataError, match=message):
        load_dataset(DataConfig(name="imagefolder", path=str(root), img_size=8))


def _awkward_folder(root: Path) -> Path:
    """Good images in every mode a camera or a scanner writes, and two files that are not
    images (one corrupt PNG, one text file with an image's name)."""
    _make_folder(root, per_class=4, classes={"cat": COLOURS["cat"], "dog": COLOURS["dog"]})
    Image.fromarray(np.full((10, 10), 90, np.uint8), mode="L").save(root / "cat" / "grey.png")
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 250, 255
    Image.fromarray(rgba, mode="RGBA").save(root / "cat" / "alpha.png")
    Image.fromarray(np.full((10, 10), 40000, np.uint16)).save(root / "dog" / "deep.png")
    Image.fromarray(np.full((10, 10, 3), 30, np.uint8)).convert("P").save(root / "dog" / "p.gif")
    good = (root / "dog" / "0.png").read_bytes()
    (root / "dog" / "cut.png").write_bytes(good[: len(good) // 2])  # truncated
    (root / "cat" / "notes.jpg").write_text("not an image\n")
    return root


@pytest.mark.parametrize("cache", ["memory", "none"])
def test_unreadable_files_are_skipped_and_counted(tmp_path: Path, cache: str) -> None:
    root = _awkward_folder(tmp_path / "d")
    cfg = DataConfig(
        name="imagefolder", path=str(root), img_size=8, val_fraction=0.3, cache=cache, workers=2
    )
    data = load_dataset(cfg)
    seen = [len(y) for _, y in train_batches(data, TrainConfig(), torch.device("cpu"), 0)]
    seen += [len(y) for _, y in eval_batches(data, "val")]
    assert sorted(data.unreadable()) == ["cat/notes.jpg", "dog/cut.png"]
    assert sum(seen) == 8 + 4 - 2 + 2  # every readable image, once (grey, RGBA, 16-bit, P)
    assert data.info()["unreadable"] == 2


def test_strict_refuses_a_folder_with_unreadable_files(tmp_path: Path) -> None:
    root = _awkward_folder(tmp_path / "d")
    for cache in ("memory", "none"):
        with pytest.raises(DataError, match=r"2 unreadable image\(s\) \(data.strict: true\)"):
            load_dataset(
                DataConfig(
                    name="imagefolder", path=str(root), img_size=8, cache=cache, strict=True
                )
            )


def test_mixed_modes_are_read_as_rgb_with_their_values(tmp_path: Path) -> None:
    root = _awkward_folder(tmp_path / "d")
    for bad in ("dog/cut.png", "cat/notes.jpg"):
        (root / bad).unlink()
    data = load_dataset(DataConfig(name="imagefolder", path=str(root), img_size=8, cache="none"))
    reader = data.train.reader
    split = [data.train, data.val]
    pixels = {
        os.path.basename(part.name(i)): part.read(i) for part in split for i in range(len(part))
    }
    assert pixels["grey.png"].shape == (3, 8, 8) and set(pixels["grey.png"].unique().tolist()) == {
        90
    }
    assert pixels["alpha.png"][0].float().mean() > 240 and pixels["alpha.png"][1].max() == 0
    assert abs(pixels["deep.png"].float().mean() - 40000 / 65535 * 255) < 1.5  # by bit depth
    assert reader.channels == 3


def _cifar_records(n: int, seed: int, classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    data[:, :1024] = (labels * (250 // classes))[:, None]  # the red plane tells the class
    return data, labels


def test_cifar10_binary_and_python_versions_read_the_same(tmp_path: Path) -> None:
    binary, python = tmp_path / "cifar-10-batches-bin", tmp_path / "py"
    binary.mkdir()
    python.mkdir()
    for i in range(1, 6):
        data, labels = _cifar_records(20, i)
        records = np.concatenate([labels[:, None].astype(np.uint8), data], axis=1)
        records.tofile(binary / f"data_batch_{i}.bin")
        with open(python / f"data_batch_{i}", "wb") as f:  # protocol 2, as the real files
            pickle.dump(
                {b"data": data, b"labels": labels.tolist(), b"batch_label": b"x"}, f, protocol=2
            )
    a = load_dataset(DataConfig(name="cifar10", path=str(tmp_path), img_size=32, max_train=50))
    b = load_dataset(DataConfig(name="cifar10", path=str(python), img_size=32, max_train=50))
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.val_y, b.val_y)
    assert len(a.train_y) == 50 and len(a.val_y) == 20 and a.classes[0] == "airplane"
    assert sorted(a.train_y.bincount().tolist()) == [5] * 10  # the cap keeps classes balanced
    assert a.augment.flip and a.augment.pad == 4
    assert not has_test_split(DataConfig(name="cifar10", path=str(tmp_path)))


def test_cifar100_reads_fine_labels_and_names_from_either_version(tmp_path: Path) -> None:
    binary, python = tmp_path / "cifar-100-binary", tmp_path / "cifar-100-python"
    binary.mkdir()
    python.mkdir()
    names = [f"class{i:03d}" for i in range(100)]
    for part, n, seed in (("train", 300, 1), ("test", 100, 2)):
        data, fine = _cifar_records(n, seed, classes=100)
        coarse = fine // 5
        records = np.concatenate(
            [coarse[:, None].astype(np.uint8), fine[:, None].astype(np.uint8), data], axis=1
        )
        records.tofile(binary / f"{part}.bin")
        with open(python / part, "wb") as f:
            pickle.dump(
                {b"data": data, b"fine_labels": fine.tolist(), b"coarse_labels": coarse.tolist()},
                f,
                protocol=2,
            )
    (binary / "fine_label_names.txt").write_text("\n".join(names) + "\n")
    with open(python / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [n.encode() for n in names]}, f, protocol=2)
    a = load_dataset(DataConfig(name="cifar100", path=str(binary), img_size=32))
    b = load_dataset(DataConfig(name="cifar100", path=str(tmp_path), img_size=32))
    assert a.num_classes == b.num_classes == 100 and a.classes == b.classes == tuple(names)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.train_y, b.train_y)
    assert len(a.train_y) + len(a.val_y) == 300
    test = load_test_split(DataConfig(name="cifar100", path=str(binary), img_size=32), a)
    assert len(test) == 100 and sorted(set(test.labels.tolist())) == list(range(100))


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_cifar10_refuses_a_pickle_that_is_more_than_arrays(tmp_path: Path, capsys) -> None:
    for i in range(1, 6):
        with open(tmp_path / f"data_batch_{i}", "wb") as f:
            pickle.dump({b"data": _Evil(), b"labels": [0]}, f)
    with pytest.raises(DataError, match="refusing builtins.print"):
        load_dataset(DataConfig(name="cifar10", path=str(tmp_path)))
    assert "pwned" not in capsys.readouterr().out


def test_missing_cifar10_is_a_clear_error_with_exit_code_2(tmp_path: Path, capsys) -> None:
    path = write_config(tmp_path, data=f"data: {{name: cifar10, path: {tmp_path}/nothing}}")
    assert main(["search", str(path)]) == 2
    err = capsys.readouterr().err
    assert "expected data_batch_1 ... data_batch_5" in err and "never downloads" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "study.db").exists()  # nothing half-written


def test_a_folder_dataset_needs_its_path(tmp_path: Path, capsys) -> None:
    path = write_config(tmp_path, data="data: {name: imagefolder}")
    assert main(["search", str(path)]) == 2
    assert "data.path is required for imagefolder" in capsys.readouterr().err


def test_flips_and_crops_are_seeded_augmentation() -> None:
    data = load_dataset(DataConfig(name="synthetic", img_size=8, num_samples=40))
    data.augment = type(data.augment)(pad=1, flip=True)

    def run(seed: int) -> torch.Tensor:
        batches = Batches(data, data.train, 4, torch.device("cpu"), light=True, seed=seed)
        return torch.cat([xb for xb, _ in batches])

    assert torch.equal(run(0), run(0))
    outs = [run(s) for s in range(20)]
    assert any(not torch.equal(o, outs[0]) for o in outs)
    data.augment = type(data.augment)(pad=0, flip=True)
    plain = data.tensors("train")[0]
    flipped_only = run(3)
    for i in range(len(plain)):
        assert torch.equal(flipped_only[i], plain[i]) or torch.equal(
            flipped_only[i], plain[i].flip(-1)
        )


def test_a_search_on_an_image_folder(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "pets")
    config = write_config(
        tmp_path,
        data=f"data: {{name: imagefolder, path: {root}, img_size: 16, val_fraction: 0.25, "
        "cache: none, workers: 1}",
    )
    run = run_search(load_config(config).replace_study(n_trials=2))
    trial = run.study.get_trials()[0]
    data = trial.user_attrs["data"]
    assert data["name"] == "imagefolder" and data["classes"] == ["cat", "dog", "owl"]
    assert data["cache"] == "none"
    trained = [t for t in run.study.get_trials() if t.user_attrs.get("status") == "trained"]
    assert trained and trained[0].user_attrs["train"]["loader"] == "loaded (1 worker processes)"


# -- Fashion-MNIST ------------------------------------------------------------------------------


def _idx(path: Path, array: np.ndarray, compress: bool) -> None:
    magic = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    raw = magic + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(f"{path}.gz", "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)


def make_fashion(
    folder: Path, n_train: int = 300, n_test: int = 100, compress: bool = True
) -> Path:
    """Fashion-MNIST's four idx files, generated: class c is a bright bar at row 2c + 4."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for part, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 60, size=(n, 28, 28))
        for i, c in enumerate(labels):
            images[i, 2 * c + 4 : 2 * c + 6, 4:24] = 250
        _idx(folder / f"{part}-images-idx3-ubyte", images, compress)
        _idx(folder / f"{part}-labels-idx1-ubyte", labels, compress)
    return folder


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_is_read_from_its_idx_files(tmp_path: Path, compress: bool) -> None:
    folder = make_fashion(tmp_path / "fm", compress=compress)
    cfg = DataConfig(name="fashion_mnist", path=str(folder), img_size=32, val_fraction=0.2)
    data = load_dataset(cfg)
    assert len(data.train) + len(data.val) == 300 and data.num_classes == 10
    assert data.classes[0] == "T-shirt/top" and data.classes[9] == "Ankle boot"
    assert data.train.images.shape[1:] == (1, 32, 32) and data.in_chans == 3
    assert data.augment.flip and data.augment.fill == "min"
    assert has_test_split(cfg)
    test = load_test_split(cfg, data)
    assert len(test) == 100 and test.labels.bincount().tolist() == [10] * 10
    x, y = data.tensors("train", n=20)  # the bar of class c sits at row 2c + 4 of 28
    row = (x[:, 0].mean(dim=2).argmax(dim=1).float() * 28 / 32).round()
    assert ((row - (2 * y + 4)).abs() <= 2).all()


def test_fashion_mnist_files_that_are_wrong_or_missing_say_what_to_do(
    tmp_path: Path, monkeypatch
) -> None:
    import nas.data

    monkeypatch.setattr(nas.data, "FASHION_MNIST_PATH", str(tmp_path / "not-installed"))
    with pytest.raises(DataError, match="install Debian's package dataset-fashion-mnist"):
        load_dataset(DataConfig(name="fashion_mnist", img_size=28))
    with pytest.raises(DataError, match="give the folder that holds them"):
        load_dataset(DataConfig(name="fashion_mnist", path=str(tmp_path), img_size=28))
    folder = make_fashion(tmp_path / "fm", compress=False)
    (folder / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x03garbage")
    with pytest.raises(DataError, match="not an idx file of unsigned bytes with 1 dimension"):
        load_dataset(DataConfig(name="fashion_mnist", path=str(folder), img_size=28))


def test_the_real_fashion_mnist_from_debians_package() -> None:
    if not Path(FASHION_MNIST_PATH).is_dir():
        missing_service(
            f"no {FASHION_MNIST_PATH}: `make test` installs Debian's dataset-fashion-mnist"
        )
    cfg = DataConfig(name="fashion_mnist", img_size=28, val_fraction=0.1)
    data = load_dataset(cfg)
    assert len(data.train) + len(data.val) == 60_000 and len(data.val) == 6_000
    assert data.val_y.bincount().tolist() == [600] * 10  # stratified
    assert 0.25 < data.mean[0] < 0.32 and 0.33 < data.std[0] < 0.37  # the known statistics
    test = load_test_split(cfg, data)
    assert len(test) == 10_000 and test.labels.bincount().tolist() == [1000] * 10


_AUDIT = """
import os, sys
log = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
def hook(event, args):
    if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        name = os.fsdecode(args[0])
        if "idx" in name:
            os.write(log, (name + "\\n").encode())
sys.addaudithook(hook)
from nas.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _opened(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run `lvit ARGS` in a child process that logs every idx file it (or a worker) opens."""
    log = tmp_path / f"opened-{args[0]}.log"
    done = subprocess.run(
        [sys.executable, "-c", _AUDIT, str(log), *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    return done, log.read_text().splitlines() if log.exists() else []


@pytest.mark.slow
def test_nothing_in_a_search_touches_the_test_images(tmp_path: Path) -> None:
    """A search, its export and an evaluation on the validation split open the training idx
    files and never the test split's; `lvit evaluate --split test` is what opens those."""
    folder = make_fashion(tmp_path / "fm")
    data = f"data: {{name: fashion_mnist, path: {folder}, img_size: 16, val_fraction: 0.2}}"
    config = write_config(
        tmp_path,
        data=data,
        budget="budget: {max_params: 1000000, max_latency_ms: 100.0}",
        space="space: tiny",
    )
    done, opened = _opened(tmp_path, "search", str(config), "--n-trials", "3")
    assert done.returncode == 0, done.stderr
    assert "its test split is not read" in done.stderr
    assert any("train-images" in p for p in opened) and any("train-labels" in p for p in opened)
    assert not [p for p in opened if "t10k" in p]
    study = load_config(config).study
    out = tmp_path / "export"
    export = subprocess.run(
        [
            sys.executable,
            "-m",
            "nas.cli",
            "export",
            "--storage",
            f"sqlite:///{tmp_path}/study.db",
            "--study",
            study.name,
            "--trial",
            _best(tmp_path),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert export.returncode == 0, export.stderr
    card = (out / "README.md").read_text()  # the card says how to measure the test split
    assert "the test split was not used" in card and "--split test" in card

    def evaluate(split: str) -> list[str]:
        args = ["evaluate", str(out), "--config", str(config), "--split", split]
        done, opened = _opened(tmp_path, *args, "--out", str(tmp_path / f"r{split}"))
        assert done.returncode == 0, done.stderr
        return opened

    assert not [p for p in evaluate("val") if "t10k" in p]
    opened = evaluate("test")
    assert any("t10k-images" in p for p in opened)  # the hook sees what evaluation opens
    report = json.loads((tmp_path / "rtest" / "evaluation-test.json").read_text())
    assert report["data"]["split"] == "test" and report["images"] == 100
    assert (tmp_path / "rtest" / "confusion-test.png").stat().st_size > 1000


def _best(folder: Path) -> str:
    import optuna

    study = optuna.load_study(study_name="t", storage=f"sqlite:///{folder}/study.db")
    trained = [t for t in study.trials if t.user_attrs.get("status") == "trained"]
    return str(max(trained, key=lambda t: t.values[0]).number)


@pytest.mark.slow
def test_evaluate_measures_what_the_search_measured_and_refuses_a_missing_test_split(
    finished_study, tmp_path: Path, capsys
) -> None:
    from nas.export import export_trial

    config, study = finished_study
    trial = next(t for t in study.trials if t.user_attrs.get("status") == "trained")
    out = tmp_path / "exported"
    export_trial(study, trial.number, str(out))
    path = tmp_path / "c.yaml"
    import yaml

    path.write_text(yaml.safe_dump(config.to_dict()))
    assert (
        main(
            [
                "evaluate",
                str(out),
                "--config",
                str(path),
                "--split",
                "val",
                "--out",
                str(tmp_path / "r"),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "r" / "evaluation-val.json").read_text())
    assert report["accuracy"] == pytest.approx(trial.values[0], abs=1e-9)
    assert report["images"] == trial.user_attrs["data"]["val_size"]
    assert sum(map(sum, report["confusion"])) == report["images"]
    assert f"accuracy {trial.values[0]:.4f}" in printed and "per class" in printed
    assert main(["evaluate", str(out), "--config", str(path), "--split", "test"]) == 2
    err = capsys.readouterr().err.strip()
    assert "synthetic data has no test split" in err and "--split val" in err
    assert len(err.splitlines()) == 1


_MEMORY = """
import json, resource, sys, threading, time
import torch
from nas.config import DataConfig, TrainConfig
from nas.data import load_dataset
from nas.loader import train_batches

def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS"))

torch.set_num_threads(1)
root, cache = sys.argv[1], sys.argv[2]
before, peak, done = rss(), [0], []

def watch():  # the resident memory's peak from here on, sampled every 5 ms
    while not done:
        peak[0] = max(peak[0], rss())
        time.sleep(0.005)

threading.Thread(target=watch, daemon=True).start()
data = load_dataset(DataConfig(name="imagefolder", path=root, img_size=128, cache=cache,
                               workers=2, val_fraction=0.1))
seen = 0
for xb, yb in train_batches(data, TrainConfig(batch_size=32), torch.device("cpu"), 0):
    seen += len(yb)
done.append(1)
time.sleep(0.02)
workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(json.dumps({"growth": peak[0] - before, "worker": workers, "seen": seen}))
"""


@pytest.mark.slow
def test_a_streamed_folder_stays_within_a_bounded_memory(tmp_path: Path) -> None:
    """3,200 noise images at 128px (600 MiB as float32, 150 MiB as uint8): streamed, the
    process grows by what the batches in flight take (a batch of 32 is 6 MiB as floats; 8
    are prefetched by 2 workers), not by the data set; cached, the same measurement sees the
    cache grow it."""
    root = tmp_path / "big"
    rng = np.random.default_rng(0)
    for c in range(4):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(800):
            pixels = rng.integers(0, 256, size=(128, 128, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"c{c}" / f"{i}.bmp")
    cache_bytes = 2880 * 3 * 128 * 128  # the training split as uint8

    def measure(cache: str) -> dict:
        done = subprocess.run(
            [sys.executable, "-c", _MEMORY, str(root), cache],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    streamed, cached = measure("none"), measure("memory")
    assert streamed["seen"] == cached["seen"] == 2880
    assert cached["growth"] > cache_bytes  # the measurement sees a cache
    assert streamed["growth"] < 80 * 2**20  # about a dozen float batches
    assert streamed["worker"] < 1.5 * 2**30


def test_an_old_stored_config_resumes_with_the_recipe_it_ran(tmp_path: Path) -> None:
    """A study written before recipes existed (no train.recipe, no augmentation keys) reads
    as the proxy recipe, which is what it ran, so it resumes instead of being refused."""
    from nas.lifecycle import _comparable, _with_defaults

    config = load_config(write_config(tmp_path))
    current = config.to_dict()
    old = json.loads(json.dumps(current))
    for key in (
        "recipe",
        "augment",
        "crop_scale",
        "auto_augment",
        "re_prob",
        "hflip",
        "mixup",
        "cutmix",
        "mixup_prob",
        "ema_decay",
        "drop_path",
    ):
        old["train"].pop(key)
    for key in ("cache", "workers", "strict"):
        old["data"].pop(key)
    old.pop("retrain")
    assert _comparable(_with_defaults(old)) == _comparable(current)


def test_data_options_are_checked(tmp_path: Path, capsys) -> None:
    for section, message in {
        "data: {name: digits, cache: disk}": "data.cache must be one of auto, memory, none",
        "data: {name: digits, workers: -1}": "data.workers must be >= 0",
        "data: {name: digits, workers: 1000}": "above its limit",
        "train: {recipe: long}": "train.recipe must be one of proxy, full",
        "train: {augment: heavy}": "train.augment must be one of light, timm, none",
        "train: {crop_scale: [0.5, 0.2]}": "train.crop_scale is [min, max]",
        "train: {mixup: -1}": "alphas",
        "retrain: {ema_decay: 1.5}": "ema_decay and train.drop_path must be in [0, 1)",
    }.items():
        name = section.split(":")[0]
        config = write_config(tmp_path, **{name: section})
        assert main(["search", str(config)]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("auto_augment", ["rand-m9-mstd0.5-inc1", "trivial", "rand-m10-inc1"])
def test_timm_recipes_run_on_every_draw_pillow_accepts(auto_augment: str) -> None:
    """timm's RandAugment policies, TrivialAugment included, on small grey images: every
    image transformed (draws Pillow refuses are drawn again), shapes and statistics kept."""
    from nas.loader import timm_transform

    data = load_dataset(DataConfig(name="synthetic", img_size=16, num_samples=200))
    recipe = TrainConfig(recipe="full", auto_augment=auto_augment, mixup=0.0, cutmix=0.0)
    assert timm_transform(data, recipe) is not None
    batches = train_batches(data, recipe, torch.device("cpu"), seed=0)
    for _ in range(3):
        n = sum(len(y) for _, y in batches)
        assert n == len(data.train)


def test_a_test_split_is_never_part_of_a_dataset() -> None:
    data = load_dataset(DataConfig(img_size=8))
    with pytest.raises(ValueError, match="not 'test'"):
        data.split("test")
    with pytest.raises(DataError, match="digits has no official test split"):
        load_test_split(DataConfig(img_size=8), data)
