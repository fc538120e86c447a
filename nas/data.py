"""Data sets held in memory as normalised tensors, with a fixed-seed train/val split.

`digits`: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes; no download),
scaled to [0, 1], resized bilinearly to `img_size` and repeated to 3 channels.
`synthetic`: generated class patterns (a smooth random template per class plus noise), for tests.

Normalisation statistics come from the training split and travel with the data set, so that
exported models carry the mean and std they were trained with.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from nas.config import DataConfig

__all__ = ["Dataset", "load_dataset", "batches"]


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
            "augment": f"random crop, padding {self.augment_pad}" if self.augment_pad else "none",
        }


def _split(n: int, labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """Stratified split: each class contributes `val_fraction` of its samples to validation."""
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = max(1, round(len(idx) * val_fraction))
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    return rng.permutation(np.concatenate(train_idx)), rng.permutation(np.concatenate(val_idx))


def _finish(
    name: str, images: torch.Tensor, labels: np.ndarray, cfg: DataConfig, augment_pad: int
) -> Dataset:
    """Resize, split, normalise with the training split's per-channel statistics."""
    images = F.interpolate(
        images, size=(cfg.img_size, cfg.img_size), mode="bilinear", align_corners=False
    )
    train_idx, val_idx = _split(len(labels), labels, cfg.val_fraction, cfg.seed)
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
    )


def _digits(cfg: DataConfig) -> Dataset:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    images = images.expand(-1, 3, -1, -1)
    return _finish("digits", images, digits.target, cfg, augment_pad=max(1, cfg.img_size // 16))


def _synthetic(cfg: DataConfig) -> Dataset:
    rng = np.random.default_rng(cfg.seed)
    # one smooth template per class: low-resolution noise upsampled, so classes differ in layout
    templates = torch.as_tensor(rng.normal(size=(cfg.num_classes, 3, 4, 4)), dtype=torch.float32)
    templates = F.interpolate(templates, size=(16, 16), mode="bilinear", align_corners=False)
    labels = np.arange(cfg.num_samples) % cfg.num_classes
    noise = torch.as_tensor(
        rng.normal(scale=0.8, size=(cfg.num_samples, 3, 16, 16)), dtype=torch.float32
    )
    images = templates[torch.as_tensor(labels)] + noise
    return _finish("synthetic", images, labels, cfg, augment_pad=0)


_LOADERS = {"digits": _digits, "synthetic": _synthetic}


def load_dataset(cfg: DataConfig) -> Dataset:
    return _LOADERS[cfg.name](cfg)


def _random_crop(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Pad by `pad` with the background (the minimum value) and crop back at a random offset per
    image: random translations of up to `pad` pixels."""
    n, _, h, w = x.shape
    fill = x.amin(dim=(0, 2, 3), keepdim=True)
    padded = fill.expand(n, -1, h + 2 * pad, w + 2 * pad).clone()
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
    generator: torch.Generator | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches from in-memory tensors (no copy of the data set; no worker processes)."""
    order = torch.randperm(len(y), generator=generator) if shuffle else torch.arange(len(y))
    for start in range(0, len(y), batch_size):
        idx = order[start : start + batch_size]
        xb = x[idx]
        if augment_pad:
            xb = _random_crop(xb, augment_pad, generator)
        yield xb, y[idx]
