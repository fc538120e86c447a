"""Data sets from a user's disk: ImageFolder and CIFAR-10 (python and binary), never a download,
never an arbitrary pickle; augmentation and caps."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nas.cli import main
from nas.config import DataConfig, load_config
from nas.data import DataError, batches, load_dataset
from nas.study import run_search
from tests.conftest import write_config

COLOURS = {"cat": (200, 40, 40), "dog": (40, 200, 40), "owl": (40, 40, 200)}


def _make_folder(root: Path, per_class: int = 8, classes: dict = COLOURS) -> Path:
    rng = np.random.default_rng(0)
    for name, colour in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(rng.normal(colour, 30, size=(20, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_imagefolder_with_a_seeded_split(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "pets")
    data = load_dataset(
        DataConfig(name="imagefolder", path=str(root), img_size=16, val_fraction=0.25)
    )
    assert data.classes == ("cat", "dog", "owl") and data.num_classes == 3
    assert data.train_x.shape == (18, 3, 16, 16) and data.val_x.shape == (6, 3, 16, 16)
    assert sorted(data.val_y.tolist()) == [0, 0, 1, 1, 2, 2]
    assert data.flip and data.augment_pad == 2
    info = data.info()
    assert info["classes"] == ["cat", "dog", "owl"] and "horizontal flip" in info["augment"]
    # the red class is red: channel 0 above the others after normalisation
    cats = data.train_x[data.train_y == 0]
    assert (cats[:, 0].mean() > cats[:, 1].mean()) and (cats[:, 0].mean() > cats[:, 2].mean())


def test_imagefolder_with_train_and_val_folders(tmp_path: Path) -> None:
    _make_folder(tmp_path / "d" / "train", per_class=4)
    _make_folder(tmp_path / "d" / "val", per_class=2, classes={"dog": COLOURS["dog"]})
    data = load_dataset(DataConfig(name="imagefolder", path=str(tmp_path / "d"), img_size=8))
    assert len(data.train_y) == 12 and data.val_y.tolist() == [1, 1]  # labelled by train's names


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ("missing", "is not a folder"),
        ("one_class", "needs at least two class sub-folders"),
        ("broken", "cannot read image"),
    ],
)
def test_imagefolder_errors_name_the_problem(tmp_path: Path, layout: str, message: str) -> None:
    root = tmp_path / "data"
    if layout == "one_class":
        _make_folder(root, classes={"cat": COLOURS["cat"]})
    elif layout == "broken":
        _make_folder(root, per_class=2)
        (root / "cat" / "bad.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match=message):
        load_dataset(DataConfig(name="imagefolder", path=str(root), img_size=8))


def _cifar_records(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    data[:, :1024] = (labels * 25)[:, None]  # the red plane tells the class
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
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.val_y, b.val_y)
    assert len(a.train_y) == 50 and len(a.val_y) == 20 and a.classes[0] == "airplane"
    assert sorted(a.train_y.bincount().tolist()) == [5] * 10  # the cap keeps classes balanced
    assert a.flip and a.augment_pad == 4


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
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    y = torch.tensor([0, 1])

    def run(seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return torch.cat(
            [xb for xb, _ in batches(x, y, 2, flip=True, augment_pad=1, generator=gen)]
        )

    assert torch.equal(run(0), run(0))
    outs = [run(s) for s in range(20)]
    assert any(not torch.equal(o, outs[0]) for o in outs)
    flipped_only = torch.cat(
        [xb for xb, _ in batches(x, y, 2, flip=True, generator=torch.Generator().manual_seed(3))]
    )
    for i in range(2):
        assert torch.equal(flipped_only[i], x[i]) or torch.equal(flipped_only[i], x[i].flip(-1))


def test_a_search_on_an_image_folder(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "pets")
    config = write_config(
        tmp_path,
        data=f"data: {{name: imagefolder, path: {root}, img_size: 16, val_fraction: 0.25}}",
    )
    run = run_search(load_config(config).replace_study(n_trials=2))
    data = run.study.get_trials()[0].user_attrs["data"]
    assert data["name"] == "imagefolder" and data["classes"] == ["cat", "dog", "owl"]
