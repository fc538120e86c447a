"""Data sets: where the images come from, how they are split, and how they are held.

Sources, all read from disk or generated, never downloaded:
- `digits`: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes).
- `fashion_mnist`: Fashion-MNIST (60,000 training and 10,000 test images, 28x28 grey, 10
  classes) from its four idx files (gzipped or not), as Debian's package
  `dataset-fashion-mnist` installs them under `/usr/share/datasets/fashion-mnist/` (the default
  `path`) or in any folder.
- `cifar10`, `cifar100`: the CIFAR batches already on disk, the binary version or the python
  version (read with an unpickler that admits only the NumPy arrays they hold); CIFAR-100 with
  its 100 fine labels.
- `imagefolder`: a user's folder, `<path>/<class>/<image>` (split by `val_fraction`) or
  `<path>/train/<class>/...` and `<path>/val/<class>/...` (and optionally `<path>/test/...`).
- `synthetic`: generated class patterns, for tests.

Splits. Every search decision uses the validation split: carved from the training images
(`val_fraction`, stratified, seeded) unless the folder has its own `val/`. An official test
split (Fashion-MNIST's t10k files, CIFAR's test batch, an image folder's `test/`) is never read
by `load_dataset`; only `load_test_split` reads it, for `lvit evaluate --split test`.

Holding (`data.cache`). `memory`: each split is decoded once, resized to `img_size` and kept as
uint8 (a quarter of float32), and batches are cut from it without worker processes. `none`:
images are read, decoded and resized one by one when a batch needs them, by the worker
processes of a `torch.utils.data.DataLoader` (nas.loader), so memory is bounded by the batches
in flight whatever the folder's size. `auto`: memory when the uint8 cache takes at most
`AUTO_CACHE_BYTES` and a quarter of the available memory, else none.

Unreadable images (corrupt files, files that are no images) are skipped and counted; with
`data.strict: true` a folder is read through once before anything else and refused with the
list of unreadable files.

Normalisation statistics come from the training split (every image of a cached split; a
seeded sample of `STATS_SAMPLE` images of a streamed one) and travel with the data set, so that
exported models carry the mean and std they were trained with. Grey sources are held with one
channel and given to models as three equal channels.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from nas.config import ConfigError, DataConfig, machine_cores

__all__ = [
    "AUTO_CACHE_BYTES",
    "Augment",
    "DataError",
    "Dataset",
    "ImageSplit",
    "UnreadableImage",
    "bound_heap",
    "FASHION_MNIST_PATH",
    "has_test_split",
    "load_dataset",
    "load_test_split",
    "resolve_workers",
]

FASHION_MNIST_PATH = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
AUTO_CACHE_BYTES = 2 * 2**30  # cache: auto keeps a split set in memory up to this size
STATS_SAMPLE = 2_000  # images of a streamed training split the mean and std come from
MAX_AUTO_WORKERS = 8
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class DataError(ConfigError):
    """The data on disk cannot be used; the message names the path and what was expected."""


class UnreadableImage(DataError):
    """One image could not be read or decoded (skipped and counted, or refused when strict)."""


@dataclass(frozen=True)
class Augment:
    """A data set's light augmentation (the `proxy` recipe's): random translations, padding
    by `pad` pixels (filled with the mean, `zero` after normalisation, or the minimum, `min`:
    the background of digits and Fashion-MNIST) and cropping back; horizontal flips when
    `flip`."""

    pad: int = 0
    flip: bool = False
    fill: str = "zero"

    def describe(self) -> str:
        parts = [f"random crop, padding {self.pad}"] if self.pad else []
        if self.flip:
            parts.append("horizontal flip")
        return ", ".join(parts) or "none"


# -- memory -----------------------------------------------------------------------------------

_HEAP_BOUNDED = False
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def bound_heap(threshold: int = 1 << 20) -> None:
    """Keep streaming from growing the heap: glibc raises its mmap threshold each time a large
    block is freed (up to 32 MiB), after which the batches and images passing through are
    carved from the heap and, freed in another order, are never handed back: a streamed epoch
    of 128px images grew the process by 420 MiB. A fixed threshold (1 MiB) sends every larger
    block to mmap, returned when freed (5 MiB of growth). A no-op off glibc; once a process."""
    global _HEAP_BOUNDED
    if _HEAP_BOUNDED:
        return
    _HEAP_BOUNDED = True
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, threshold)
    except (OSError, AttributeError):
        pass


def _worker_init(_: int) -> None:
    bound_heap()


# -- reading one image ------------------------------------------------------------------------


def _resize_uint8(images: torch.Tensor, size: int, chunk: int = 1024) -> torch.Tensor:
    """Images (N, C, H, W), uint8 or floats in [0, 1], as uint8 at `size` x `size`: resized
    bilinearly with antialiasing in float, in chunks (no float copy of the whole set)."""
    n, c, h, w = images.shape
    if (h, w) == (size, size) and images.dtype == torch.uint8:
        return images.contiguous()
    out = torch.empty((n, c, size, size), dtype=torch.uint8)
    for start in range(0, n, chunk):
        part = images[start : start + chunk].float()
        if images.dtype == torch.uint8:
            part = part / 255.0
        if (h, w) != (size, size):
            part = F.interpolate(
                part, size=(size, size), mode="bilinear", align_corners=False, antialias=True
            )
        out[start : start + chunk] = (part * 255.0).round_().clamp_(0, 255).to(torch.uint8)
    return out


class ArrayReader:
    """Images of an in-memory source (N, C, H, W; uint8, or floats in [0, 1]), resized to
    `size` one at a time."""

    def __init__(self, arrays: torch.Tensor, size: int) -> None:
        self.arrays, self.size = arrays, size

    def __len__(self) -> int:
        return len(self.arrays)

    @property
    def channels(self) -> int:
        return self.arrays.shape[1]

    def read(self, i: int) -> torch.Tensor:
        return _resize_uint8(self.arrays[i : i + 1], self.size)[0]

    def read_all(self) -> torch.Tensor:
        return _resize_uint8(self.arrays, self.size)

    def subset(self, idx: np.ndarray) -> ArrayReader:
        return ArrayReader(self.arrays[torch.as_tensor(idx, dtype=torch.long)], self.size)

    def name(self, i: int) -> str:
        return f"image {i}"


class FileReader:
    """Image files under `root` (paths kept as one NumPy array of bytes: no Python object per
    file for DataLoader workers to copy), decoded and resized to `size` one at a time."""

    def __init__(self, root: str, files: np.ndarray, size: int) -> None:
        self.root, self.files, self.size = root, files, size

    def __len__(self) -> int:
        return len(self.files)

    channels = 3

    def read(self, i: int) -> torch.Tensor:
        return _decode(Path(self.root) / os.fsdecode(self.files[i]), self.size).permute(2, 0, 1)

    def subset(self, idx: np.ndarray) -> FileReader:
        return FileReader(self.root, self.files[idx], self.size)

    def name(self, i: int) -> str:
        return os.fsdecode(self.files[i])


class ImageSplit(torch.utils.data.Dataset):
    """One split of a data set: its labels, and its images, either cached (`images`: uint8,
    (N, C, size, size)) or read on demand through `reader`. Indexing gives
    `(image uint8 (C, size, size), label)`; `read` raises `UnreadableImage` for a bad file.
    `skipped` collects the indices found unreadable while batches were made (nas.loader)."""

    def __init__(
        self,
        labels: np.ndarray | torch.Tensor,
        *,
        images: torch.Tensor | None = None,
        reader: ArrayReader | FileReader | None = None,
        unreadable: Sequence[str] = (),
    ) -> None:
        if (images is None) == (reader is None):
            raise ValueError("an ImageSplit holds either cached images or a reader")
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        self.images = images
        self.reader = reader
        self.unreadable = list(unreadable)  # names of files skipped when the cache was made
        self.skipped: set[int] = set()
        self._on_device: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.labels)

    def __getstate__(self) -> dict[str, Any]:
        # what a DataLoader worker started by spawn needs: no GPU copies, no counts
        return {**self.__dict__, "_on_device": {}, "skipped": set()}

    @property
    def cached(self) -> bool:
        return self.images is not None

    @property
    def channels(self) -> int:
        return self.images.shape[1] if self.images is not None else self.reader.channels

    def read(self, i: int) -> torch.Tensor:
        if self.images is not None:
            return self.images[i]
        return self.reader.read(i)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.read(i), int(self.labels[i])

    def name(self, i: int) -> str:
        return self.reader.name(i) if self.reader is not None else f"image {i}"

    def images_on(self, device: torch.device) -> torch.Tensor:
        """The cached images on `device`, copied there once (a GPU keeps its own copy)."""
        if device.type == "cpu":
            return self.images
        key = str(device)
        if key not in self._on_device:
            self._on_device[key] = self.images.to(device)
        return self._on_device[key]

    def skipped_names(self) -> list[str]:
        return self.unreadable + [self.name(i) for i in sorted(self.skipped)]


# -- the data set -----------------------------------------------------------------------------


@dataclass
class Dataset:
    """A data set's training and validation splits (never its test split), what a model needs
    to know about them, and how they are held."""

    name: str
    train: ImageSplit
    val: ImageSplit
    num_classes: int
    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: Augment = field(default_factory=Augment)
    classes: tuple[str, ...] = ()
    source: str = ""
    cache: str = "memory"  # how the splits are held: memory or none (streamed)
    workers: int = 0  # DataLoader worker processes for streamed or per-image work
    strict: bool = False
    stats_images: int = 0  # how many training images the mean and std come from
    val_note: str = ""  # where the validation split comes from, when not carved from training
    in_chans: int = 3  # what models are given (grey sources repeated to three channels)
    has_test: bool = False  # whether an official test split exists (for lvit evaluate only)

    @property
    def train_y(self) -> torch.Tensor:
        return self.train.labels

    @property
    def val_y(self) -> torch.Tensor:
        return self.val.labels

    def split(self, name: str) -> ImageSplit:
        if name not in ("train", "val"):
            raise ValueError(f"a Dataset holds the train and val splits, not {name!r}")
        return self.train if name == "train" else self.val

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images (N, C, H, W) as normalised float32 on their device, three channels."""
        x = images.float().div_(255.0)
        if x.shape[1] == 1 and self.in_chans == 3:
            x = x.expand(-1, 3, -1, -1)
        mean = torch.tensor(self.mean, device=x.device)[None, :, None, None]
        std = torch.tensor(self.std, device=x.device)[None, :, None, None]
        return ((x - mean) / std).contiguous()

    def tensors(
        self, split: str = "val", n: int | None = None, index: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Images of a split as one normalised float tensor, with their labels: the first `n`,
        or those at `index`, or all (for small sets and single batches; large splits are read
        in batches through nas.loader). Unreadable images are left out."""
        part = self.split(split)
        if index is None:
            index = torch.arange(len(part) if n is None else min(n, len(part)))
        if part.cached:
            return self.normalise(part.images[index]), part.labels[index]
        images, labels = [], []
        for i in index.tolist():
            try:
                images.append(part.read(i))
            except UnreadableImage:
                part.skipped.add(i)
                continue
            labels.append(int(part.labels[i]))
        if not images:
            raise DataError(f"no readable image among the {len(index)} asked of the {split} split")
        return self.normalise(torch.stack(images)), torch.tensor(labels)

    def info(self) -> dict[str, Any]:
        """What a trial records about its data."""
        return {
            "name": self.name,
            "train_size": len(self.train),
            "val_size": len(self.val),
            "val_split": self.val_description(),
            "num_classes": self.num_classes,
            "input_size": [self.in_chans, self.img_size, self.img_size],
            "mean": list(self.mean),
            "std": list(self.std),
            "augment": self.augment.describe(),
            "classes": list(self.classes),
            "source": self.source,
            "cache": self.cache,
            "unreadable": len(self.unreadable()),
            "test_split": self.has_test,
        }

    def val_description(self) -> str:
        return self.val_note or "carved from the training data"

    def unreadable(self) -> list[str]:
        """Names of the images skipped as unreadable so far (at caching, or while batches were
        made)."""
        return self.train.skipped_names() + self.val.skipped_names()


def resolve_workers(workers: int | None) -> int:
    """`data.workers`: the DataLoader worker processes (null: as many as this process has
    cores, at most `MAX_AUTO_WORKERS`)."""
    if workers is not None:
        return workers
    return min(machine_cores(), MAX_AUTO_WORKERS)


# -- splitting --------------------------------------------------------------------------------


def _split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split: each class contributes `val_fraction` of its samples to validation."""
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = min(max(1, round(len(idx) * val_fraction)), len(idx) - 1)  # both splits
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    return rng.permutation(np.concatenate(train_idx)), rng.permutation(np.concatenate(val_idx))


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


@dataclass
class _Source:
    """A source before splitting: labels and a reader over all its images (training part)."""

    name: str
    labels: np.ndarray
    reader: ArrayReader | FileReader
    classes: tuple[str, ...]
    augment: Augment
    source: str
    split: tuple[np.ndarray, np.ndarray] | None = None  # its own train/val indices
    val_note: str = ""


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


def _cache_bytes(n: int, channels: int, size: int) -> int:
    return n * channels * size * size


def _check_memory(name: str, n: int, channels: int, size: int, what: str = "uint8") -> None:
    """Refuse a data set that would not fit in memory at this size, before allocating it."""
    need = _cache_bytes(n, channels, size) * (4 if what == "float32" else 1)
    have = _available_memory()
    if need > 0.8 * have:
        raise DataError(
            f"data '{name}' at {size}px needs about {need / 2**30:,.1f} GiB in memory ({n:,} "
            f"images of {channels}x{size}x{size} {what}) and this machine has "
            f"{have / 2**30:.1f} GiB available: lower data.img_size, set data.max_train, or "
            "stream it (data.cache: none)"
        )


def _choose_cache(cfg: DataConfig, n: int, channels: int) -> str:
    if cfg.cache != "auto":
        return cfg.cache
    need = _cache_bytes(n, channels, cfg.img_size)
    return "memory" if need <= min(AUTO_CACHE_BYTES, _available_memory() / 4) else "none"


def _progress(total: int, desc: str) -> Any:
    """A bar with an ETA for long data work, on a terminal only."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=None, leave=False, mininterval=0.5)


class _Reading(torch.utils.data.Dataset):
    """Each image of a reader, or the reason it could not be read (for caching and checks)."""

    def __init__(self, reader: ArrayReader | FileReader) -> None:
        self.reader = reader

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str]:
        try:
            return i, self.reader.read(i), ""
        except UnreadableImage as e:
            return i, None, str(e)


def _read_all(
    reader: ArrayReader | FileReader, workers: int, desc: str, strict: bool
) -> tuple[torch.Tensor, np.ndarray, list[str]]:
    """Every image of `reader` decoded (in `workers` processes, with a bar): the images of
    those that could be read (uint8 (M, C, S, S)), their indices, and the names of those that
    could not. With `strict`, an unreadable image is an error naming them."""
    if isinstance(reader, ArrayReader):
        return reader.read_all(), np.arange(len(reader)), []
    n = len(reader)
    out = torch.empty((n, reader.channels, reader.size, reader.size), dtype=torch.uint8)
    good = np.zeros(n, dtype=bool)
    bad: list[str] = []  # names of the unreadable files
    first = ""  # and why the first could not be read
    bound_heap()
    loader = torch.utils.data.DataLoader(
        _Reading(reader),
        batch_size=64,
        num_workers=workers if n >= 256 else 0,
        collate_fn=list,
        worker_init_fn=_worker_init,
    )
    with _progress(n, desc) as bar:
        for batch in loader:
            for i, image, reason in batch:
                if image is None:
                    bad.append(reader.name(i))
                    first = first or reason
                else:
                    out[i] = image
                    good[i] = True
            bar.update(len(batch))
    if bad and strict:
        raise DataError(
            f"{len(bad)} unreadable image(s) (data.strict: true): {first}; remove them "
            f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}), or set data.strict: "
            "false to skip them"
        )
    keep = np.flatnonzero(good)
    if len(keep) == n:  # nothing to leave out: no copy of the whole cache
        return out, keep, bad
    return out[torch.as_tensor(keep)], keep, bad


class _Moments:
    """Per-channel sums of pixel values in [0, 1] and of their squares, added chunk by chunk
    (nothing larger than a chunk is ever held as floats)."""

    def __init__(self) -> None:
        self.total = self.squares = None
        self.pixels = self.images = 0

    CHUNK = 64

    def add(self, images: torch.Tensor) -> None:
        buffer = torch.empty((min(self.CHUNK, len(images)), *images.shape[1:]))
        for start in range(0, len(images), self.CHUNK):
            chunk = images[start : start + self.CHUNK]
            part = buffer[: len(chunk)]
            torch.div(chunk, 255.0, out=part)  # one float buffer, reused
            sums = part.sum(dim=(0, 2, 3), dtype=torch.float64)
            squares = part.square_().sum(dim=(0, 2, 3), dtype=torch.float64)
            self.total = sums if self.total is None else self.total + sums
            self.squares = squares if self.squares is None else self.squares + squares
            self.pixels += part.shape[0] * part.shape[2] * part.shape[3]
            self.images += part.shape[0]

    def mean_std(self, channels_out: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
        n = self.pixels
        mean = self.total / n
        var = (self.squares / n - mean * mean).clamp_min(0) * n / max(1, n - 1)
        std = var.sqrt().clamp_min(1e-6)
        if len(mean) == 1 and channels_out == 3:
            mean, std = mean.repeat(3), std.repeat(3)
        return tuple(round(float(m), 6) for m in mean), tuple(round(float(v), 6) for v in std)


def _stats(
    split: ImageSplit, channels_out: int, seed: int, workers: int
) -> tuple[tuple[float, ...], tuple[float, ...], int]:
    """Per-channel mean and std of a training split in [0, 1]: over every image when cached,
    over a seeded sample of `STATS_SAMPLE` readable images when streamed (read in batches,
    never held together)."""
    moments = _Moments()
    if split.cached:
        moments.add(split.images)
    else:
        rng = np.random.default_rng(seed + 2)
        sample = split.reader.subset(rng.permutation(len(split))[:STATS_SAMPLE])
        bound_heap()
        loader = torch.utils.data.DataLoader(
            _Reading(sample),
            batch_size=64,
            num_workers=workers if len(sample) >= 256 else 0,
            collate_fn=list,
            worker_init_fn=_worker_init,
        )
        with _progress(len(sample), "normalisation statistics") as bar:
            for batch in loader:
                images = [image for _, image, _ in batch if image is not None]
                if images:
                    moments.add(torch.stack(images))
                bar.update(len(batch))
        if not moments.images:
            raise DataError("no readable image in a sample of the training split")
    mean, std = moments.mean_std(channels_out)
    return mean, std, moments.images


def _hold(
    reader: ArrayReader | FileReader,
    labels: np.ndarray,
    cache: str,
    workers: int,
    desc: str,
    strict: bool,
) -> ImageSplit:
    """A split as `cache` says: decoded once into uint8, or read on demand."""
    if cache == "none":
        if strict and isinstance(reader, FileReader):
            _read_all(reader, workers, f"checking {desc}", strict=True)  # refuse up front
        return ImageSplit(labels, reader=reader)
    images, keep, bad = _read_all(reader, workers, f"decoding {desc}", strict)
    return ImageSplit(labels[keep], images=images, unreadable=bad)


def _finish(src: _Source, cfg: DataConfig) -> Dataset:
    """Split (unless the source has its own), cap, hold and normalise a source."""
    labels = src.labels
    train_idx, val_idx = src.split or _split(labels, cfg.val_fraction, cfg.seed)
    n_classes = len(src.classes)
    if cfg.max_train is not None and cfg.max_train < len(np.unique(labels[train_idx])):
        raise DataError(
            f"data.max_train {cfg.max_train} is below the {n_classes} classes of '{src.name}': "
            "every class needs training images; raise data.max_train"
        )
    if cfg.max_train is not None and cfg.max_train < len(train_idx):
        train_idx = _balanced_subset(train_idx, labels, cfg.max_train, cfg.seed)
    reader = src.reader
    cache = _choose_cache(cfg, len(train_idx) + len(val_idx), reader.channels)
    if cache == "memory":
        _check_memory(src.name, len(train_idx) + len(val_idx), reader.channels, cfg.img_size)
    workers = resolve_workers(cfg.workers)
    train = _hold(
        reader.subset(train_idx), labels[train_idx], cache, workers, "training images", cfg.strict
    )
    val = _hold(
        reader.subset(val_idx), labels[val_idx], cache, workers, "validation images", cfg.strict
    )
    if not len(train) or not len(val):
        raise DataError(
            f"data '{src.name}': no readable image in the training or validation split"
        )
    mean, std, counted = _stats(train, 3, cfg.seed, workers)
    return Dataset(
        name=src.name,
        train=train,
        val=val,
        num_classes=n_classes,
        img_size=cfg.img_size,
        mean=mean,
        std=std,
        augment=src.augment,
        classes=src.classes,
        source=src.source,
        cache=cache,
        workers=workers,
        strict=cfg.strict,
        stats_images=counted,
        val_note=src.val_note,
        has_test=has_test_split(cfg),
    )


# -- sources ----------------------------------------------------------------------------------


def _digits(cfg: DataConfig) -> _Source:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    return _Source(
        name="digits",
        labels=np.asarray(digits.target, dtype=np.int64),
        reader=ArrayReader(images, cfg.img_size),
        classes=tuple(str(c) for c in range(10)),
        augment=Augment(pad=max(1, cfg.img_size // 16), flip=False, fill="min"),
        source="scikit-learn load_digits",
    )


def _synthetic(cfg: DataConfig) -> _Source:
    _check_memory("synthetic", cfg.num_samples, 3, max(cfg.img_size, 16))
    rng = np.random.default_rng(cfg.seed)
    # one smooth template per class: low-resolution noise upsampled, so classes differ in layout
    templates = torch.as_tensor(rng.normal(size=(cfg.num_classes, 3, 4, 4)), dtype=torch.float32)
    templates = F.interpolate(templates, size=(16, 16), mode="bilinear", align_corners=False)
    labels = np.arange(cfg.num_samples) % cfg.num_classes
    noise = torch.as_tensor(
        rng.normal(scale=0.8, size=(cfg.num_samples, 3, 16, 16)), dtype=torch.float32
    )
    images = ((templates[torch.as_tensor(labels)] + noise) / 6.0 + 0.5).clamp_(0, 1)
    return _Source(
        name="synthetic",
        labels=labels.astype(np.int64),
        reader=ArrayReader(images, cfg.img_size),
        classes=tuple(str(c) for c in range(cfg.num_classes)),
        augment=Augment(),
        source="generated",
    )


FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def _idx_file(folder: Path, stem: str) -> Path | None:
    for name in (stem, f"{stem}.gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _read_idx(path: Path, dims: int) -> np.ndarray:
    """An idx file (the MNIST format: a magic number naming the type and the number of
    dimensions, the sizes, then the values), gzipped or not, as uint8 values."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    if len(raw) < 4 + 4 * dims or raw[:2] != b"\0\0" or raw[2] != 0x08 or raw[3] != dims:
        raise DataError(
            f"{path} is not an idx file of unsigned bytes with {dims} dimension(s) (the "
            "Fashion-MNIST format)"
        )
    shape = struct.unpack(f">{dims}I", raw[4 : 4 + 4 * dims])
    values = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims)
    if values.size != int(np.prod(shape)):
        raise DataError(f"{path} holds {values.size:,} values, its header says {shape}")
    return values.reshape(shape)


def _fashion_folder(cfg: DataConfig) -> Path:
    folder = Path(cfg.path or FASHION_MNIST_PATH)
    if _idx_file(folder, "train-images-idx3-ubyte") is None:
        hint = (
            f"install Debian's package {FASHION_MNIST_PACKAGE} (apt-get install "
            f"{FASHION_MNIST_PACKAGE}), or set data.path to a folder holding the four idx files"
            if cfg.path is None
            else "give the folder that holds them"
        )
        raise DataError(
            f"no Fashion-MNIST under {folder}: expected train-images-idx3-ubyte(.gz) and "
            f"train-labels-idx1-ubyte(.gz) (t10k-* for the test split); {hint}; this tool "
            "never downloads data"
        )
    return folder


def _fashion_part(folder: Path, part: str) -> tuple[np.ndarray, np.ndarray]:
    images_path = _idx_file(folder, f"{part}-images-idx3-ubyte")
    labels_path = _idx_file(folder, f"{part}-labels-idx1-ubyte")
    if images_path is None or labels_path is None:
        raise DataError(
            f"{folder} lacks {part}-images-idx3-ubyte(.gz) or {part}-labels-idx1-ubyte(.gz)"
        )
    images, labels = _read_idx(images_path, 3), _read_idx(labels_path, 1).astype(np.int64)
    if len(images) != len(labels):
        raise DataError(f"{folder}: {len(images)} {part} images but {len(labels)} labels")
    if labels.size and labels.max() >= len(FASHION_CLASSES):
        raise DataError(f"{labels_path} holds labels above 9: not Fashion-MNIST")
    return images, labels


def _fashion_mnist(cfg: DataConfig) -> _Source:
    folder = _fashion_folder(cfg)
    images, labels = _fashion_part(folder, "train")
    return _Source(
        name="fashion_mnist",
        labels=labels,
        reader=ArrayReader(torch.from_numpy(images.copy())[:, None], cfg.img_size),
        classes=FASHION_CLASSES,
        augment=Augment(pad=max(1, cfg.img_size // 8), flip=True, fill="min"),
        source=str(folder.resolve()),
    )


CIFAR10_CLASSES = (
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
    """Admits only what CIFAR's python batches hold: dicts, lists, bytes and NumPy arrays."""

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
            raise pickle.UnpicklingError(f"refusing {module}.{name} in a CIFAR batch")
        return super().find_class(module, name)


def _unpickle(path: Path, what: str) -> dict:
    with open(path, "rb") as f:
        try:
            return _ArrayUnpickler(f, encoding="bytes").load()
        except (pickle.UnpicklingError, EOFError, ValueError) as e:
            raise DataError(f"{path} is not a {what} python batch: {e}") from None


def _cifar_python(files: list[Path], label_key: bytes, what: str) -> tuple[np.ndarray, ...]:
    data, labels = [], []
    for path in files:
        batch = _unpickle(path, what)
        try:
            data.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3072))
            labels.append(np.asarray(batch[label_key], dtype=np.int64).reshape(-1))
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{path} is not a {what} python batch: {e}") from None
        if len(data[-1]) != len(labels[-1]):
            raise DataError(f"{path} holds {len(data[-1])} images and {len(labels[-1])} labels")
    return np.concatenate(data), np.concatenate(labels)


def _cifar_binary(files: list[Path], label_bytes: int, what: str) -> tuple[np.ndarray, ...]:
    """Binary batches: records of `label_bytes` label bytes (CIFAR-100: coarse, then fine)
    and 3,072 pixel bytes; the last label byte is the label."""
    raw = np.concatenate([np.fromfile(path, dtype=np.uint8) for path in files])
    size = label_bytes + 3072
    if raw.size % size:
        raise DataError(f"{what} binary batches must hold {size}-byte records: {files[0].parent}")
    records = raw.reshape(-1, size)
    return records[:, label_bytes:], records[:, label_bytes - 1].astype(np.int64)


@dataclass(frozen=True)
class _CifarLayout:
    what: str
    classes: int
    train_names: tuple[str, ...]
    test_name: str
    subfolders: tuple[str, ...]
    label_key: bytes
    label_bytes: int


_CIFAR = {
    "cifar10": _CifarLayout(
        "CIFAR-10",
        10,
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test_batch",
        ("cifar-10-batches-py", "cifar-10-batches-bin"),
        b"labels",
        1,
    ),
    "cifar100": _CifarLayout(
        "CIFAR-100",
        100,
        ("train",),
        "test",
        ("cifar-100-python", "cifar-100-binary"),
        b"fine_labels",
        2,
    ),
}


def _cifar_read(
    cfg: DataConfig, part: str
) -> tuple[np.ndarray, np.ndarray, Path, tuple[str, ...]]:
    layout = _CIFAR[cfg.name]
    root = Path(cfg.path)
    names = layout.train_names if part == "train" else (layout.test_name,)
    for folder in (root, *(root / s for s in layout.subfolders)):
        if all((folder / n).is_file() for n in names):
            data, labels = _cifar_python(
                [folder / n for n in names], layout.label_key, layout.what
            )
            break
        if all((folder / f"{n}.bin").is_file() for n in names):
            data, labels = _cifar_binary(
                [folder / f"{n}.bin" for n in names], layout.label_bytes, layout.what
            )
            break
    else:
        shown = f"{names[0]} ... {names[-1]}" if len(names) > 1 else names[0]
        raise DataError(
            f"no {layout.what} {part} batches under {root}: expected {shown} (python version) "
            f"or {shown.replace(' ...', '.bin ...')}.bin (binary version), in that folder or in "
            f"{' or '.join(s + '/' for s in layout.subfolders)} inside it; this tool never "
            "downloads data"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= layout.classes):
        raise DataError(
            f"{folder} holds labels outside 0-{layout.classes - 1} ({labels.min()} to "
            f"{labels.max()}): these are not {layout.what} batches"
        )
    return data, labels, folder, _cifar_classes(folder, cfg.name)


def _cifar_classes(folder: Path, name: str) -> tuple[str, ...]:
    if name == "cifar10":
        return CIFAR10_CLASSES
    if (folder / "fine_label_names.txt").is_file():
        names = tuple((folder / "fine_label_names.txt").read_text().split())
    elif (folder / "meta").is_file():
        meta = _unpickle(folder / "meta", "CIFAR-100")
        names = tuple(n.decode() for n in meta.get(b"fine_label_names", []))
    else:
        names = ()
    return names if len(names) == 100 else tuple(str(i) for i in range(100))


def _cifar(cfg: DataConfig) -> _Source:
    data, labels, folder, classes = _cifar_read(cfg, "train")
    return _Source(
        name=cfg.name,
        labels=labels,
        reader=ArrayReader(torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), cfg.img_size),
        classes=classes,
        augment=Augment(pad=max(1, cfg.img_size // 8), flip=True),
        source=str(folder.resolve()),
    )


# -- image folders ----------------------------------------------------------------------------


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
    scaled to 8 bits, resized bilinearly. Raises `UnreadableImage` with the reason."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            rgb = _to_rgb(ImageOps.exif_transpose(img), path).resize((size, size), Image.BILINEAR)
    except Image.DecompressionBombError as e:
        raise UnreadableImage(f"{path} is too large to decode safely: {e}") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise UnreadableImage(f"cannot read image {path}: {e}") from None
    return torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy())


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


def _listing(
    files: dict[str, list[Path]], classes: list[str], root: Path
) -> tuple[np.ndarray, np.ndarray]:
    """Paths relative to `root` as one bytes array, and their labels (by `classes`)."""
    paths, labels = [], []
    for label, name in enumerate(classes):
        for path in files.get(name, []):
            paths.append(os.fsencode(path.relative_to(root)))
            labels.append(label)
    return np.array(paths, dtype=object).astype(bytes), np.asarray(labels, dtype=np.int64)


def _folder_root(cfg: DataConfig) -> Path:
    root = Path(cfg.path)
    if not root.is_dir():
        raise DataError(
            f"data.path {root} is not a folder; imagefolder needs <path>/<class>/"
            "<image> or <path>/train/<class>/... and <path>/val/<class>/..."
        )
    return root


def _imagefolder(cfg: DataConfig) -> _Source:
    root = _folder_root(cfg)
    folder = _Folder()
    has_train, has_val = (root / "train").is_dir(), (root / "val").is_dir()
    if has_train != has_val:
        raise DataError(
            f"{root} has a {'train' if has_train else 'val'}/ folder without "
            f"{'val' if has_train else 'train'}/: give both (train/<class>/..., val/<class>/...), "
            "or class folders directly"
        )
    split, note = None, ""
    if has_train:
        others = [
            p.name for p in folder.subfolders(root) if p.name not in ("train", "val", "test")
        ]
        if others:
            raise DataError(
                f"{root} has train/ and val/ and also {', '.join(others[:3])}/, which would be "
                "left out: put every class inside train/ and val/ (a test/ folder is read only "
                "by lvit evaluate --split test)"
            )
        train_files = _class_files(folder, root / "train", 1, "every class needs training images")
        classes = list(train_files)
        val_files = _val_files(folder, root / "val", classes)
        train_paths, train_labels = _listing(train_files, classes, root)
        val_paths, val_labels = _listing(val_files, classes, root)
        paths = np.concatenate([train_paths, val_paths]).astype(bytes)
        labels = np.concatenate([train_labels, val_labels])
        split = (np.arange(len(train_labels)), np.arange(len(train_labels), len(labels)))
        note = "the folder's val/"
    else:
        files = _class_files(folder, root, 2, "one for validation, one for training")
        classes = list(files)
        paths, labels = _listing(files, classes, root)
    return _Source(
        name="imagefolder",
        labels=labels,
        reader=FileReader(str(root), paths, cfg.img_size),
        classes=tuple(classes),
        augment=Augment(pad=max(1, cfg.img_size // 8), flip=True),
        source=str(root.resolve()),
        split=split,
        val_note=note,
    )


def _val_files(folder: _Folder, val_root: Path, classes: list[str]) -> dict[str, list[Path]]:
    """The images of a val/ (or test/) folder, whose classes must be among the training's."""
    names = [p.name for p in folder.subfolders(val_root)]
    unknown = sorted(set(names) - set(classes))
    if unknown:
        raise DataError(
            f"{val_root} has classes that {val_root.parent}/train lacks: "
            f"{', '.join(unknown[:5])}; give every class a training folder"
        )
    files = {name: folder.images(val_root / name) for name in names}
    if not any(files.values()):
        raise DataError(
            f"{val_root} holds no images in class folders{folder.links_note()}: put them "
            f"in {val_root.name}/<class>/"
        )
    return files


_SOURCES: dict[str, Callable[[DataConfig], _Source]] = {
    "digits": _digits,
    "synthetic": _synthetic,
    "fashion_mnist": _fashion_mnist,
    "cifar10": _cifar,
    "cifar100": _cifar,
    "imagefolder": _imagefolder,
}


def load_dataset(cfg: DataConfig) -> Dataset:
    """The training and validation splits of the data set `cfg` names, held as `cfg.cache`
    says. Never reads a test split."""
    return _finish(_SOURCES[cfg.name](cfg), cfg)


# -- the test split ---------------------------------------------------------------------------


def test_split_note(data: dict[str, Any]) -> str:
    """What a model card or summary says of the test split, from a trial's data record."""
    if data.get("test_split") is False:
        return f"{data.get('name')} has no test split"
    return (
        "the test split was not used: measure it with "
        "`lvit evaluate THIS_FOLDER --config CONFIG --split test`"
    )


def has_test_split(cfg: DataConfig) -> bool:
    """Whether the data set has an official test split (without reading it)."""
    if cfg.name == "fashion_mnist":
        folder = Path(cfg.path or FASHION_MNIST_PATH)
        return _idx_file(folder, "t10k-images-idx3-ubyte") is not None
    if cfg.name in _CIFAR:
        layout, root = _CIFAR[cfg.name], Path(cfg.path)
        return any(
            (f / layout.test_name).is_file() or (f / f"{layout.test_name}.bin").is_file()
            for f in (root, *(root / s for s in layout.subfolders))
        )
    if cfg.name == "imagefolder":
        root = Path(cfg.path)
        return (root / "train").is_dir() and (root / "test").is_dir()
    return False


def load_test_split(cfg: DataConfig, data: Dataset) -> ImageSplit:
    """The official test split of the data set `data` was loaded from (`cfg`), at the same size
    and held the same way, labelled by its class names: for final evaluation only."""
    if not has_test_split(cfg):
        where = {
            "digits": "digits has no official test split",
            "synthetic": "synthetic data has no test split",
            "imagefolder": f"{cfg.path} has no test/ folder beside train/ and val/",
        }.get(cfg.name, f"no test split of {cfg.name} under {cfg.path or FASHION_MNIST_PATH}")
        raise DataError(f"{where}: evaluate on the validation split (--split val)")
    workers = resolve_workers(cfg.workers)
    if cfg.name == "fashion_mnist":
        images, labels = _fashion_part(Path(cfg.path or FASHION_MNIST_PATH), "t10k")
        reader: ArrayReader | FileReader = ArrayReader(
            torch.from_numpy(images.copy())[:, None], cfg.img_size
        )
    elif cfg.name in _CIFAR:
        pixels, labels, _, _ = _cifar_read(cfg, "test")
        reader = ArrayReader(torch.from_numpy(pixels.reshape(-1, 3, 32, 32).copy()), cfg.img_size)
    else:
        root = _folder_root(cfg)
        files = _val_files(_Folder(), root / "test", list(data.classes))
        paths, labels = _listing(files, list(data.classes), root)
        reader = FileReader(str(root), paths, cfg.img_size)
    cache = data.cache if cfg.name == "imagefolder" else "memory"
    return _hold(reader, labels, cache, workers, "test images", cfg.strict)
