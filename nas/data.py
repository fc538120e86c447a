"""Data sets held in memory as normalised tensors, with a fixed-seed train/val split.

`digits`: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes; no download),
scaled to [0, 1], resized bilinearly to `img_size` and repeated to 3 channels; augmentation:
random translations (crop with padding), no flips (digits are not mirror-symmetric).
`synthetic`: generated class patterns (a smooth random template per class plus noise), for tests.
`imagefolder`: a user's folder, `<path>/<class>/<image>` (split by `val_fraction`, seeded and
stratified) or `<path>/train/<class>/...` and `<path>/val/<class>/...`; images are decoded once,
converted to RGB and resized to `img_size`. Augmentation: random crop (padding img_size / 8) and
horizontal flips.
`cifar10`: the CIFAR-10 batches already on disk, never downloaded: the binary version
(`data_batch_1.bin` ... `data_batch_5.bin`) or the python version (`data_batch_1` ...
`data_batch_5`, read with an unpickler that admits only the NumPy arrays they hold). The
validation split is carved from the training batches (`val_fraction`, seeded), so the test
batch stays untouched. Augmentation: random crop (padding 4 at 32px) and horizontal flips.

Data sets are held in memory once per process (no copy per trial, no worker processes);
`max_train` caps the training split for quick proxies.

Normalisation statistics come from the training split and travel with the data set, so that
exported models carry the mean and std they were trained with.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from nas.config import ConfigError, DataConfig

__all__ = ["Dataset", "DataError", "load_dataset", "batches"]


@dataclass
class Dataset:
    name: str
    train_x: torch.Tensor  # (N, C, H, W), normalised
    train_y: torch.Tensor  # (N,) int64
    val_x: torch.Tensor
    val_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment_pad: int  # random-crop padding in pixels (0: no augmentation)
    flip: bool = False  # random horizontal flips
    pad_fill: str = "zero"  # what the padding holds: "zero" (the mean) or "min" (background)
    classes: tuple[str, ...] = ()
    source: str = ""

    @property
    def in_chans(self) -> int:
        return self.train_x.shape[1]

    @property
    def img_size(self) -> int:
        return self.train_x.shape[-1]

    def info(self) -> dict:
        """What a trial records about its data."""
        return {
            "name": self.name,
            "train_size": len(self.train_y),
            "val_size": len(self.val_y),
            "num_classes": self.num_classes,
            "input_size": [self.in_chans, self.img_size, self.img_size],
            "mean": list(self.mean),
            "std": list(self.std),
            "augment": self.augment_description(),
            "classes": list(self.classes),
            "source": self.source,
        }

    def augment_description(self) -> str:
        parts = [f"random crop, padding {self.augment_pad}"] if self.augment_pad else []
        if self.flip:
            parts.append("horizontal flip")
        return ", ".join(parts) or "none"


def _split(n: int, labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """Stratified split: each class contributes `val_fraction` of its samples to validation."""
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = min(max(1, round(len(idx) * val_fraction)), len(idx) - 1)  # both splits
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    return rng.permutation(np.concatenate(train_idx)), rng.permutation(np.concatenate(val_idx))


def _finish(
    name: str,
    images: torch.Tensor,
    labels: np.ndarray,
    cfg: DataConfig,
    augment_pad: int,
    *,
    flip: bool = False,
    pad_fill: str = "zero",
    split: tuple[np.ndarray, np.ndarray] | None = None,
    classes: tuple[str, ...] = (),
    source: str = "",
) -> Dataset:
    """Resize, split (unless `split` gives the indices), cap, normalise with the training
    split's per-channel statistics."""
    if images.shape[-1] != cfg.img_size or images.shape[-2] != cfg.img_size:
        images = F.interpolate(
            images,
            size=(cfg.img_size, cfg.img_size),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )
    train_idx, val_idx = split or _split(len(labels), labels, cfg.val_fraction, cfg.seed)
    n_classes = len(np.unique(labels))
    if cfg.max_train is not None and cfg.max_train < n_classes:
        raise DataError(
            f"data.max_train {cfg.max_train} is below the {n_classes} classes of '{name}': "
            "every class needs training images; raise data.max_train"
        )
    if cfg.max_train is not None and cfg.max_train < len(train_idx):
        train_idx = _balanced_subset(train_idx, labels, cfg.max_train, cfg.seed)
    train_x, val_x = images[train_idx], images[val_idx]
    mean = train_x.mean(dim=(0, 2, 3))
    std = train_x.std(dim=(0, 2, 3)).clamp_min(1e-6)

    def norm(x: torch.Tensor) -> torch.Tensor:
        return ((x - mean[None, :, None, None]) / std[None, :, None, None]).contiguous()

    y = torch.as_tensor(labels, dtype=torch.long)
    return Dataset(
        name=name,
        train_x=norm(train_x),
        train_y=y[train_idx],
        val_x=norm(val_x),
        val_y=y[val_idx],
        num_classes=int(labels.max()) + 1,
        mean=tuple(round(float(m), 6) for m in mean),
        std=tuple(round(float(s), 6) for s in std),
        augment_pad=augment_pad,
        flip=flip,
        pad_fill=pad_fill,
        classes=classes,
        source=source,
    )


def _balanced_subset(idx: np.ndarray, labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A seeded subset of `n` indices with the classes in proportion."""
    rng = np.random.default_rng(seed + 1)
    members = [idx[labels[idx] == c] for c in np.unique(labels[idx])]
    takes = [max(1, round(n * len(m) / len(idx))) for m in members]
    while sum(takes) > n:  # rounding up: trim the largest, never a class's last image
        takes[int(np.argmax(takes))] -= 1
    while sum(takes) < n:  # rounding down: top up the class with the most images left
        takes[int(np.argmax([len(m) - t for m, t in zip(members, takes, strict=True)]))] += 1
    picked = [rng.permutation(m)[:take] for m, take in zip(members, takes, strict=True)]
    return rng.permutation(np.concatenate(picked))


def _digits(cfg: DataConfig) -> Dataset:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    digits = load_digits()
    _check_memory("digits", len(digits.target), 3, cfg.img_size)
    images = torch.as_tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    images = images.expand(-1, 3, -1, -1)
    return _finish(
        "digits",
        images,
        digits.target,
        cfg,
        augment_pad=max(1, cfg.img_size // 16),
        pad_fill="min",
        classes=tuple(str(c) for c in range(10)),
        source="scikit-learn load_digits",
    )


def _synthetic(cfg: DataConfig) -> Dataset:
    _check_memory("synthetic", cfg.num_samples, 3, max(cfg.img_size, 16))
    rng = np.random.default_rng(cfg.seed)
    # one smooth template per class: low-resolution noise upsampled, so classes differ in layout
    templates = torch.as_tensor(rng.normal(size=(cfg.num_classes, 3, 4, 4)), dtype=torch.float32)
    templates = F.interpolate(templates, size=(16, 16), mode="bilinear", align_corners=False)
    labels = np.arange(cfg.num_samples) % cfg.num_classes
    noise = torch.as_tensor(
        rng.normal(scale=0.8, size=(cfg.num_samples, 3, 16, 16)), dtype=torch.float32
    )
    images = templates[torch.as_tensor(labels)] + noise
    return _finish("synthetic", images, labels, cfg, augment_pad=0, source="generated")


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _available_memory() -> int:
    """Bytes of memory available to a new allocation (MemAvailable on Linux)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _check_memory(name: str, n: int, channels: int, size: int) -> None:
    """Refuse a data set that would not fit in memory at this size, before allocating it: held
    as float32, plus the normalised copy (three times the decoded size, with headroom)."""
    need = 3 * n * channels * size * size * 4
    have = _available_memory()
    if need > 0.8 * have:
        raise DataError(
            f"data '{name}' at {size}px needs about {need / 2**30:,.1f} GiB in memory ({n:,} "
            f"images of {channels}x{size}x{size} float32, with copies) and this machine has "
            f"{have / 2**30:.1f} GiB available: lower data.img_size or set data.max_train"
        )


class _Folder:
    """What an image folder holds, read without following symbolic links (a link could lead
    out of the folder, or back into it as a copy of another class) and without hidden entries;
    the links skipped are counted, so that an error can say so."""

    def __init__(self) -> None:
        self.links: set[Path] = set()

    def subfolders(self, root: Path) -> list[Path]:
        return [p for p in self._entries(root) if p.is_dir() and not p.is_symlink()]

    def files(self, folder: Path) -> list[Path]:
        return [p for p in self._entries(folder) if p.is_file() and not p.is_symlink()]

    def images(self, folder: Path) -> list[Path]:
        found, todo = [], [folder]
        while todo:
            for path in self._entries(todo.pop()):
                if path.is_symlink():
                    continue
                if path.is_dir():
                    todo.append(path)
                elif path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                    found.append(path)
        return sorted(found)

    def _entries(self, folder: Path) -> list[Path]:
        try:
            entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
        except OSError as e:
            raise DataError(f"cannot read the folder {folder}: {e.strerror}") from None
        self.links.update(p for p in entries if p.is_symlink())
        return entries

    def links_note(self) -> str:
        n = len(self.links)
        return f" ({n} symbolic link{'s' * (n != 1)} skipped: links are not followed)" if n else ""


def _to_rgb(img: Any, path: Path) -> Any:
    """An 8-bit RGB image, scaled by the source's bit depth: 16-bit greyscale (mode I;16) is
    divided by 65535, 32-bit integer images by their BitsPerSample (or 16 bits when their
    values fit), float images must lie in [0, 1]. Pillow's own conversion clips these."""
    from PIL import Image

    if img.mode not in ("I", "F") and not img.mode.startswith("I;16"):
        return img.convert("RGB")
    values = np.asarray(img, dtype=np.float64)
    if img.mode.startswith("I;16"):
        top = 65535.0
    elif img.mode == "I":
        bits = getattr(img, "tag_v2", {}).get(258)  # TIFF BitsPerSample
        bits = bits[0] if isinstance(bits, tuple) else bits
        top = float(2**bits - 1) if bits else (65535.0 if values.max() <= 65535 else 2.0**32 - 1)
    else:
        if values.size and (values.min() < 0 or values.max() > 1):
            raise DataError(
                f"{path} is a floating-point image with values outside [0, 1] "
                f"({values.min():.3g} to {values.max():.3g}); convert it to 8 or 16 bits"
            )
        top = 1.0
    grey = np.clip(np.round(values / top * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


def _decode(path: Path, size: int) -> torch.Tensor:
    """One image as a (size, size, 3) uint8 tensor: EXIF orientation applied, the bit depth
    scaled to 8 bits, resized bilinearly."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            rgb = _to_rgb(ImageOps.exif_transpose(img), path).resize((size, size), Image.BILINEAR)
    except Image.DecompressionBombError as e:
        raise DataError(f"{path} is too large to decode safely: {e}") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot read image {path}: {e}") from None
    return torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy())


def _read_images(
    files: dict[str, list[Path]], classes: list[str], size: int
) -> tuple[torch.Tensor, np.ndarray]:
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in files.get(name, []):
            images.append(_decode(path, size))
            labels.append(label)
    x = torch.stack(images).permute(0, 3, 1, 2).float() / 255.0
    return x, np.asarray(labels)


def _class_files(folder: _Folder, root: Path, min_images: int, what: str) -> dict[str, list[Path]]:
    """The image files of each class folder of `root`, refusing fewer than two classes and a
    class with fewer than `min_images` images (an empty class folder would shift the class
    count away from the class names)."""
    loose = [p.name for p in folder.files(root) if p.suffix.lower() in IMAGE_SUFFIXES]
    if loose:
        raise DataError(
            f"{root} holds {len(loose)} image(s) outside class folders (e.g. {loose[0]}), which "
            "would be left out: move them into <class>/ folders"
        )
    classes = [p.name for p in folder.subfolders(root)]
    if len(classes) < 2:
        raise DataError(
            f"{root} needs at least two class sub-folders, found {classes}"
            f"{folder.links_note()}: a classifier needs two classes or more"
        )
    files = {name: folder.images(root / name) for name in classes}
    few = [f"{name} ({len(f)})" for name, f in files.items() if len(f) < min_images]
    if few:
        raise DataError(
            f"{root}: class folders with fewer than {min_images} image(s) ({what}): "
            f"{', '.join(few[:5])}{folder.links_note()}; add images or remove the folders"
        )
    return files


def _imagefolder(cfg: DataConfig) -> Dataset:
    root = Path(cfg.path)
    if not root.is_dir():
        raise DataError(
            f"data.path {root} is not a folder; imagefolder needs <path>/<class>/"
            "<image> or <path>/train/<class>/... and <path>/val/<class>/..."
        )
    pad = max(1, cfg.img_size // 8)
    folder = _Folder()
    has_train, has_val = (root / "train").is_dir(), (root / "val").is_dir()
    if has_train != has_val:
        raise DataError(
            f"{root} has a {'train' if has_train else 'val'}/ folder without "
            f"{'val' if has_train else 'train'}/: give both (train/<class>/..., val/<class>/...), "
            "or class folders directly"
        )
    if has_train:
        others = [
            p.name for p in folder.subfolders(root) if p.name not in ("train", "val", "test")
        ]
        if others:
            raise DataError(
                f"{root} has train/ and val/ and also {', '.join(others[:3])}/, which would be "
                "left out: put every class inside train/ and val/ (a test/ folder is never read)"
            )
        train_files = _class_files(folder, root / "train", 1, "every class needs training images")
        classes = list(train_files)
        val_classes = [p.name for p in folder.subfolders(root / "val")]
        unknown = sorted(set(val_classes) - set(classes))
        if unknown:
            raise DataError(
                f"{root}/val has classes that {root}/train lacks: {', '.join(unknown[:5])}; "
                "give every class a training folder"
            )
        val_files = {name: folder.images(root / "val" / name) for name in val_classes}
        if not any(val_files.values()):
            raise DataError(
                f"{root}/val holds no images in class folders{folder.links_note()}: put them "
                "in val/<class>/"
            )
        n = sum(map(len, train_files.values())) + sum(map(len, val_files.values()))
        _check_memory("imagefolder", n, 3, cfg.img_size)
        train_x, train_y = _read_images(train_files, classes, cfg.img_size)
        val_x, val_y = _read_images(val_files, classes, cfg.img_size)  # labels by train's
        images = torch.cat([train_x, val_x])
        labels = np.concatenate([train_y, val_y])
        split = (np.arange(len(train_y)), np.arange(len(train_y), len(labels)))
    else:
        files = _class_files(folder, root, 2, "one for validation, one for training")
        classes = list(files)
        _check_memory("imagefolder", sum(map(len, files.values())), 3, cfg.img_size)
        images, labels = _read_images(files, classes, cfg.img_size)
        split = None
    return _finish(
        "imagefolder",
        images,
        labels,
        cfg,
        augment_pad=pad,
        flip=True,
        split=split,
        classes=tuple(classes),
        source=str(root.resolve()),
    )


CIFAR_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


class _ArrayUnpickler(pickle.Unpickler):
    """Admits only what CIFAR-10's python batches hold: dicts, lists, bytes and NumPy arrays."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 spell bytes
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing {module}.{name} in a CIFAR-10 batch")
        return super().find_class(module, name)


def _cifar_python(files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    data, labels = [], []
    for path in files:
        with open(path, "rb") as f:
            try:
                batch = _ArrayUnpickler(f, encoding="bytes").load()
            except (pickle.UnpicklingError, EOFError, ValueError) as e:
                raise DataError(f"{path} is not a CIFAR-10 python batch: {e}") from None
        try:
            data.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3072))
            labels.append(np.asarray(batch[b"labels"], dtype=np.int64).reshape(-1))
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{path} is not a CIFAR-10 python batch: {e}") from None
        if len(data[-1]) != len(labels[-1]):
            raise DataError(f"{path} holds {len(data[-1])} images and {len(labels[-1])} labels")
    return np.concatenate(data), np.concatenate(labels)


def _cifar_binary(files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    raw = np.concatenate([np.fromfile(path, dtype=np.uint8) for path in files])
    if raw.size % 3073:
        raise DataError(f"CIFAR-10 binary batches must hold 3073-byte records: {files[0].parent}")
    records = raw.reshape(-1, 3073)
    return records[:, 1:], records[:, 0].astype(np.int64)


def _cifar10(cfg: DataConfig) -> Dataset:
    root = Path(cfg.path)
    names = [f"data_batch_{i}" for i in range(1, 6)]
    for folder in (root, root / "cifar-10-batches-py", root / "cifar-10-batches-bin"):
        if all((folder / n).is_file() for n in names):
            data, labels = _cifar_python([folder / n for n in names])
            break
        if all((folder / f"{n}.bin").is_file() for n in names):
            data, labels = _cifar_binary([folder / f"{n}.bin" for n in names])
            break
    else:
        raise DataError(
            f"no CIFAR-10 batches under {root}: expected data_batch_1 ... data_batch_5 (python "
            "version) or data_batch_1.bin ... data_batch_5.bin (binary version), in that folder "
            "or in cifar-10-batches-py/ or cifar-10-batches-bin/ inside it; this tool never "
            "downloads data"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= len(CIFAR_CLASSES)):
        raise DataError(
            f"{folder} holds labels outside 0-9 ({labels.min()} to {labels.max()}): these are "
            "not CIFAR-10 batches"
        )
    _check_memory("cifar10", len(labels), 3, max(cfg.img_size, 32))
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()).float() / 255.0
    return _finish(
        "cifar10",
        images,
        labels,
        cfg,
        augment_pad=max(1, cfg.img_size // 8),
        flip=True,
        classes=CIFAR_CLASSES,
        source=str(folder.resolve()),
    )


class DataError(ConfigError):
    """The data on disk cannot be used; the message names the path and what was expected."""


_LOADERS = {
    "digits": _digits,
    "synthetic": _synthetic,
    "imagefolder": _imagefolder,
    "cifar10": _cifar10,
}


def load_dataset(cfg: DataConfig) -> Dataset:
    return _LOADERS[cfg.name](cfg)


def _random_crop(
    x: torch.Tensor, pad: int, generator: torch.Generator, fill: str = "zero"
) -> torch.Tensor:
    """Pad by `pad` (with zeros, the mean after normalisation, or with the minimum, the
    background of digits) and crop back at a random offset per image: random translations."""
    n, _, h, w = x.shape
    value = (
        x.amin(dim=(0, 2, 3), keepdim=True) if fill == "min" else x.new_zeros(1, x.shape[1], 1, 1)
    )
    padded = value.expand(n, -1, h + 2 * pad, w + 2 * pad).clone()
    padded[:, :, pad : pad + h, pad : pad + w] = x
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator).tolist()
    return torch.stack(
        [padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets)]
    )


def batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    *,
    shuffle: bool = False,
    augment_pad: int = 0,
    flip: bool = False,
    pad_fill: str = "zero",
    generator: torch.Generator | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches from in-memory tensors (no copy of the data set; no worker processes)."""
    order = torch.randperm(len(y), generator=generator) if shuffle else torch.arange(len(y))
    for start in range(0, len(y), batch_size):
        idx = order[start : start + batch_size]
        xb = x[idx]
        if augment_pad:
            xb = _random_crop(xb, augment_pad, generator, pad_fill)
        if flip:
            mirror = torch.rand(len(idx), generator=generator) < 0.5
            xb = torch.where(mirror[:, None, None, None], xb.flip(-1), xb)
        yield xb, y[idx]
