"""Batches for training and evaluation from a data set's splits, on the training device.

Two paths, one result (normalised float32 batches and their labels on the device):
- *cut*: a cached split (uint8 in memory, copied once to a GPU when training there) is cut into
  batches in this process, and the light augmentation (random translations and flips) is
  applied to whole batches; no worker processes, nothing decoded twice.
- *loaded*: a `torch.utils.data.DataLoader` with `data.workers` processes reads each image
  (decoding it from disk when the split is streamed) and applies the per-image augmentation
  of the `timm` recipe (timm.data.create_transform); pinned memory and non-blocking copies
  feed a GPU. A streamed split with light augmentation is loaded as uint8 and augmented as a
  batch, as a cached one is.

Images that cannot be read are dropped from their batch and counted in their split's
`skipped` (a file that cannot be decoded never stops a search). Each `Batches` is one pass
per iteration (an epoch) and keeps its worker processes between epochs; `data_seconds` is the
time the training loop waited for batches, which says when the loader is the bottleneck.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import torch

from nas.config import TrainConfig
from nas.data import Dataset, ImageSplit, UnreadableImage, bound_heap

__all__ = [
    "Batches",
    "check_recipe",
    "eval_batches",
    "random_crop",
    "sample_batch",
    "shuffled_batches",
    "timm_transform",
    "train_batches",
]


def random_crop(
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


def timm_transform(data: Dataset, recipe: TrainConfig) -> Any:
    """The `timm` recipe's per-image training transform: timm.data.create_transform with a
    random-resized crop of `crop_scale`, flips, the RandAugment policy and random erasing,
    normalised with the data set's statistics."""
    from timm.data import create_transform

    hflip = recipe.hflip if recipe.hflip is not None else (0.5 if data.augment.flip else 0.0)
    return create_transform(
        data.img_size,
        is_training=True,
        scale=recipe.crop_scale,
        hflip=hflip,
        color_jitter=None,
        auto_augment=recipe.timm_auto_augment,
        interpolation="bilinear",
        mean=data.mean,
        std=data.std,
        re_prob=recipe.re_prob,
    )


def _worker_init(_: int) -> None:
    bound_heap()


def check_recipe(recipe: TrainConfig, img_size: int) -> None:
    """Build the recipe's timm pieces once (the transform, Mixup), as training will: a policy
    string or a value timm refuses fails here, before anything is written. Raises ValueError
    with timm's reason."""
    from timm.data import Mixup, create_transform

    try:
        if recipe.augment == "timm":
            from PIL import Image

            transform = create_transform(
                img_size,
                is_training=True,
                scale=recipe.crop_scale,
                color_jitter=None,
                auto_augment=recipe.timm_auto_augment,
                re_prob=recipe.re_prob,
            )
            grey = Image.new("RGB", (img_size, img_size), (128, 128, 128))
            for _ in range(4):  # what fails on every image fails here
                _transformed(transform, grey)
        if recipe.mixes:
            Mixup(mixup_alpha=recipe.mixup, cutmix_alpha=recipe.cutmix, prob=recipe.mixup_prob)
    except Exception as e:  # noqa: BLE001 - timm asserts; whatever it raises, it cannot train
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ValueError(f"timm cannot build the {recipe.recipe} recipe: {reason}") from None


REDRAWS = 10


def _transformed(transform: Any, image: Any) -> torch.Tensor:
    """`transform(image)`, drawn again when a random draw is one Pillow refuses: timm 1.0's
    RandAugment can ask `ImageOps.posterize` for 0 bits (posterize at the top magnitude of
    the increasing policies, at the bottom of the others), which Pillow 12 and newer reject;
    drawing again leaves out exactly those draws."""
    for attempt in range(REDRAWS):
        try:
            return transform(image)
        except ValueError:
            if attempt == REDRAWS - 1:
                raise
    raise AssertionError("unreachable")


class _Samples(torch.utils.data.Dataset):
    """A split's images for a DataLoader: each read (decoded) in a worker, optionally put
    through a per-image transform; an unreadable one comes as a blank with label -1 (or, when
    `strict`, raises)."""

    def __init__(self, split: ImageSplit, transform: Any, strict: bool) -> None:
        self.split, self.transform, self.strict = split, transform, strict

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        try:
            image = self.split.read(i)
        except UnreadableImage:
            if self.strict:
                raise
            return self._blank(), -1, i
        if self.transform is not None:
            from PIL import Image

            pixels = image.permute(1, 2, 0).numpy()
            pil = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
            image = _transformed(self.transform, pil.convert("RGB"))
        return image, int(self.split.labels[i]), i

    def _blank(self) -> torch.Tensor:
        c, size = self.split.channels, self.split.reader.size  # only a reader fails to read
        if self.transform is not None:
            return torch.zeros((3, size, size))
        return torch.zeros((c, size, size), dtype=torch.uint8)


class Batches:
    """Batches of one split, normalised, on `device`; iterate once per epoch."""

    def __init__(
        self,
        data: Dataset,
        split: ImageSplit,
        batch_size: int,
        device: torch.device,
        *,
        shuffle: bool = False,
        light: bool = False,
        transform: Any = None,
        drop_last: bool = False,
        seed: int = 0,
        workers: int | None = None,
    ) -> None:
        self.data, self.split, self.batch_size, self.device = data, split, batch_size, device
        self.shuffle, self.light, self.transform = shuffle, light, transform
        self.drop_last = drop_last and len(split) > batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.data_seconds = 0.0
        self._loader: torch.utils.data.DataLoader | None = None
        if transform is not None or not split.cached:
            workers = data.workers if workers is None else workers
            bound_heap()
            self._loader = torch.utils.data.DataLoader(
                _Samples(split, transform, data.strict),
                batch_size=batch_size,
                shuffle=shuffle,
                drop_last=self.drop_last,
                num_workers=workers,
                persistent_workers=workers > 0,
                pin_memory=device.type == "cuda",
                generator=torch.Generator().manual_seed(seed + 1),
                prefetch_factor=4 if workers > 0 else None,
                worker_init_fn=_worker_init if workers > 0 else None,
            )

    @property
    def path(self) -> str:
        """How batches are made: `cut` from a cache, or `loaded` by worker processes."""
        if self._loader is None:
            return "cut"
        return f"loaded ({self._loader.num_workers} worker processes)"

    def __len__(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        source = self._cut() if self._loader is None else self._loaded()
        while True:
            start = time.perf_counter()
            try:
                batch = next(source)
            except StopIteration:
                return
            finally:
                self.data_seconds += time.perf_counter() - start
            yield batch

    def _cut(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.split)
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator)
        else:
            order = torch.arange(n)
        images = self.split.images_on(self.device)
        end = n - n % self.batch_size if self.drop_last else n
        for start in range(0, end, self.batch_size):
            idx = order[start : start + self.batch_size]
            xb = self.data.normalise(images[idx.to(self.device)])
            yield self._augmented(xb), self.split.labels[idx].to(self.device)

    def _loaded(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        blocking = self.device.type != "cuda"
        for xb, yb, index in self._loader:
            bad = yb < 0
            if bad.any():
                self.split.skipped.update(index[bad].tolist())
                xb, yb = xb[~bad], yb[~bad]
                if not len(yb):
                    continue
            xb = xb.to(self.device, non_blocking=not blocking)
            yb = yb.to(self.device, non_blocking=not blocking)
            if xb.dtype == torch.uint8:
                xb = self._augmented(self.data.normalise(xb))
            yield xb, yb

    def _augmented(self, xb: torch.Tensor) -> torch.Tensor:
        """The light augmentation of a whole batch (random translations, flips), drawn from
        this loader's seeded generator."""
        if not self.light:
            return xb
        aug = self.data.augment
        if aug.pad:
            xb = random_crop(xb, aug.pad, self.generator, aug.fill)
        if aug.flip:
            mirror = torch.rand(len(xb), generator=self.generator) < 0.5
            xb = torch.where(mirror.to(xb.device)[:, None, None, None], xb.flip(-1), xb)
        return xb

    def close(self) -> None:
        """Stop the worker processes now (they also stop when this is garbage-collected)."""
        self._loader = None


def train_batches(
    data: Dataset,
    recipe: TrainConfig,
    device: torch.device,
    seed: int,
    *,
    batch_size: int | None = None,
) -> Batches:
    """The shuffled, augmented training batches of `recipe` (`augment`: light, timm or none);
    batches of an even size when the recipe mixes them (mixup and cutmix pair images)."""
    transform = timm_transform(data, recipe) if recipe.augment == "timm" else None
    return Batches(
        data,
        data.train,
        batch_size or recipe.batch_size,
        device,
        shuffle=True,
        light=recipe.augment == "light",
        transform=transform,
        drop_last=recipe.mixes,
        seed=seed,
    )


def eval_batches(
    data: Dataset,
    split: str | ImageSplit = "val",
    device: torch.device | str = "cpu",
    batch_size: int = 256,
) -> Batches:
    """The batches of a split in order, without augmentation."""
    part = data.split(split) if isinstance(split, str) else split
    return Batches(data, part, batch_size, torch.device(device))


def shuffled_batches(
    data: Dataset, batch_size: int, seed: int, split: str = "train", device: str = "cpu"
) -> Batches:
    """The batches of a split in a seeded random order, without augmentation."""
    part = data.split(split)
    return Batches(data, part, batch_size, torch.device(device), shuffle=True, seed=seed)


def sample_batch(
    data: Dataset, n: int, generator: torch.Generator, split: str = "train"
) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` images drawn from a split (seeded), normalised, without augmentation: what a
    zero-cost proxy or a shape probe looks at."""
    part = data.split(split)
    index = torch.randperm(len(part), generator=generator)[: min(n, len(part))]
    return data.tensors(split, index=index)
