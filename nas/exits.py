"""Early exits after training: per-exit accuracy, confidence thresholds calibrated on the
validation split for a target accuracy drop, and the latency they buy.

An image leaves at the first exit whose softmax confidence reaches that exit's threshold
(`LightViT.forward_dynamic`). Thresholds are chosen exit by exit, in order, as the lowest value
on a grid that keeps the validation accuracy of the dynamic model within `max_drop` of the
full-depth accuracy. The expected latency is the sum over exits of the share of images leaving
there times the measured latency of the path that stops there; it is checked against measuring
the dynamic path on the validation images one by one. A dynamic-resolution model's first pass
is calibrated the same way (`calibrate_resolution`): the cheap low-resolution answer is taken
when its confidence reaches a threshold, chosen on validation for the same accuracy drop.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from nas.cost import measure_latency
from nas.data import Dataset
from nas.loader import eval_batches
from nas.train import resize

__all__ = ["ExitReport", "ResolutionReport", "calibrate_exits", "calibrate_resolution"]

GRID = [round(0.30 + 0.01 * i, 2) for i in range(71)]  # 0.30 ... 1.00
NEVER = 2.0  # a threshold no softmax confidence reaches


@dataclass
class ExitReport:
    thresholds: list[float | None]  # None: the exit never fires
    exit_accuracy: list[float]  # each exit alone on the whole validation split, then the final
    share: list[float]  # share of validation images leaving at each exit, then the final head
    full_accuracy: float
    dynamic_accuracy: float
    path_latency_ms: list[float]  # latency of the path that stops at each exit, then full depth
    expected_latency_ms: float
    measured_dynamic_ms: float  # mean of the dynamic path measured image by image

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in asdict(self).items()}


class _StopAt(torch.nn.Module):
    """The dynamic path forced to leave at exit `k` (or run to the end)."""

    def __init__(self, model: torch.nn.Module, k: int) -> None:
        super().__init__()
        self.model = model
        self.train(model.training)  # a new module trains; measuring restores this mode
        n = len(model.arch.exits)
        self.thresholds = [NEVER] * n
        if k < n:
            self.thresholds[k] = -1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_dynamic(x, self.thresholds)[0]


@torch.no_grad()
def _all_outputs(
    model: torch.nn.Module, data: Dataset, img_size: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Confidence and correctness (outputs x images) of every exit and the final head on the
    validation split."""
    confidence, correct = [], []
    for xb, yb in eval_batches(data, "val"):
        outputs = model.forward_exits(resize(xb, img_size))
        probs = torch.stack([o.softmax(dim=-1) for o in outputs])
        confidence.append(probs.amax(dim=-1))
        correct.append(probs.argmax(dim=-1) == yb[None])
    return torch.cat(confidence, dim=1), torch.cat(correct, dim=1)


def _dynamic(
    confidence: torch.Tensor,
    correct: torch.Tensor,
    thresholds: list[float],
) -> tuple[float, list[float]]:
    """Accuracy and exit shares of the dynamic model for given thresholds."""
    n_out, n = confidence.shape
    leave = torch.full((n,), n_out - 1, dtype=torch.long)
    for k in reversed(range(n_out - 1)):
        leave = torch.where(confidence[k] >= thresholds[k], torch.full_like(leave, k), leave)
    acc = correct[leave, torch.arange(n)].float().mean().item()
    share = [(leave == k).float().mean().item() for k in range(n_out)]
    return acc, share


def _one_by_one(call: Any, data: Dataset, img_size: int | None, threads: int, n: int) -> float:
    """Mean latency in ms of `call` on the first `n` validation images one by one, each after
    one warm-up call, on `threads` threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    images, _ = data.tensors("val", n=n)
    try:
        times = []
        for i in range(len(images)):
            image = resize(images[i : i + 1], img_size)
            call(image)  # warm
            start = time.perf_counter()
            call(image)
            times.append((time.perf_counter() - start) * 1e3)
    finally:
        torch.set_num_threads(previous)
    return statistics.mean(times)


@torch.no_grad()
def calibrate_exits(
    model: torch.nn.Module,
    data: Dataset,
    *,
    max_drop: float = 0.01,
    img_size: int | None = None,
    threads: int = 1,
    measure_images: int = 100,
    reference: Any = None,
) -> ExitReport:
    """Calibrate the exit thresholds of a trained model on the validation split of `data` and
    measure what they buy (CPU,
    `threads` threads, batch 1); the path latencies drift-corrected against `reference` (a
    `nas.cost.Reference` for the CPU) when one is given."""
    model.eval()
    confidence, correct = _all_outputs(model, data, img_size)
    n_exits = confidence.shape[0] - 1
    full = correct[-1].float().mean().item()
    thresholds = [NEVER] * n_exits
    for k in range(n_exits):
        for value in GRID:
            trial = thresholds[:k] + [value] + thresholds[k + 1 :]
            if _dynamic(confidence, correct, trial)[0] >= full - max_drop - 1e-9:
                thresholds = trial
                break
    accuracy, share = _dynamic(confidence, correct, thresholds)
    size = img_size or data.img_size
    input_size = (data.in_chans, size, size)
    paths = [
        measure_latency(
            _StopAt(model, k), input_size, threads=threads, reference=reference
        ).median_ms
        for k in range(n_exits + 1)
    ]
    expected = sum(s * ms for s, ms in zip(share, paths, strict=True))
    measured = _one_by_one(
        lambda image: model.forward_dynamic(image, thresholds), data, img_size, threads,
        measure_images,
    )  # fmt: skip
    return ExitReport(
        thresholds=[min(t, 1.0) if t != NEVER else None for t in thresholds],
        exit_accuracy=correct.float().mean(dim=1).tolist(),
        share=share,
        full_accuracy=full,
        dynamic_accuracy=accuracy,
        path_latency_ms=paths,
        expected_latency_ms=expected,
        measured_dynamic_ms=measured,
    )


@dataclass
class ResolutionReport:
    """What a dynamic-resolution model's first pass buys, calibrated on the validation split."""

    side: int  # the first pass's input side
    threshold: float | None  # None: the first pass never answers within the accuracy drop
    low_accuracy: float  # the first pass alone, on the whole validation split
    full_accuracy: float  # both passes (the final head, reusing the first pass's features)
    dynamic_accuracy: float
    second_pass_share: float  # share of validation images that needed the full resolution
    low_latency_ms: float  # the first pass alone
    both_latency_ms: float  # both passes (an image that needs the second)
    full_only_latency_ms: float  # the full-resolution pass alone, for comparison
    expected_latency_ms: float
    measured_dynamic_ms: float  # mean of the dynamic path measured image by image

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in asdict(self).items()}


class _Pass(torch.nn.Module):
    """One way through a dynamic-resolution model: the first pass alone (`low`), both
    (`both`, what `forward` runs), or the full resolution alone (`full`)."""

    def __init__(self, model: torch.nn.Module, which: str) -> None:
        super().__init__()
        self.model, self.which = model, which
        self.train(model.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        if self.which == "low":
            return m.head(m.low_resolution_features(x))
        if self.which == "both":
            return m(x)
        for _, tokens, size in m.iter_blocks(x):  # noqa: B007 - the last block counts
            pass
        return m._final(tokens, size, None)


@torch.no_grad()
def calibrate_resolution(
    model: torch.nn.Module,
    data: Dataset,
    *,
    max_drop: float = 0.01,
    img_size: int | None = None,
    threads: int = 1,
    measure_images: int = 100,
    reference: Any = None,
) -> ResolutionReport:
    """Calibrate the confidence threshold at which a dynamic-resolution model's first pass
    answers (the lowest on the grid that keeps the validation accuracy within `max_drop` of
    both passes'), and measure what it buys: the expected latency (share answered at low
    resolution x the first pass's latency + the rest x both passes'), checked against the
    dynamic path measured image by image (CPU, `threads` threads, batch 1, drift-corrected
    against `reference` when given). Exits do not fire here (`calibrate_exits` sets theirs)."""
    model.eval()
    confidence, correct = [], []
    for xb, yb in eval_batches(data, "val"):
        outputs = model.forward_passes(resize(xb, img_size))
        probs = torch.stack([outputs[0].softmax(dim=-1), outputs[-1].softmax(dim=-1)])
        confidence.append(probs.amax(dim=-1))
        correct.append(probs.argmax(dim=-1) == yb[None])
    conf, corr = torch.cat(confidence, dim=1), torch.cat(correct, dim=1)
    full = corr[1].float().mean().item()
    threshold = NEVER
    for value in GRID:
        if _dynamic(conf, corr, [value])[0] >= full - max_drop - 1e-9:
            threshold = value
            break
    accuracy, share = _dynamic(conf, corr, [threshold])
    size = img_size or data.img_size
    input_size = (data.in_chans, size, size)
    lat = {
        which: measure_latency(
            _Pass(model, which), input_size, threads=threads, reference=reference
        ).median_ms
        for which in ("low", "both", "full")
    }
    never_exit = [NEVER] * len(model.arch.exits)
    measured = _one_by_one(
        lambda image: model.forward_dynamic(image, never_exit, threshold), data, img_size,
        threads, measure_images,
    )  # fmt: skip
    return ResolutionReport(
        side=model.arch.dynamic_resolution,
        threshold=min(threshold, 1.0) if threshold != NEVER else None,
        low_accuracy=corr[0].float().mean().item(),
        full_accuracy=full,
        dynamic_accuracy=accuracy,
        second_pass_share=share[1],
        low_latency_ms=lat["low"],
        both_latency_ms=lat["both"],
        full_only_latency_ms=lat["full"],
        expected_latency_ms=share[0] * lat["low"] + share[1] * lat["both"],
        measured_dynamic_ms=measured,
    )
