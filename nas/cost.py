"""What a candidate costs: parameters, FLOPs and latency measured on this machine's CPU.

Every figure travels with the conditions it was measured under (`LatencyResult.conditions`).

FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` at batch 1, with scaled
dot-product attention forced onto its math path so that the two attention matrix products are
counted (the fused CPU kernel is invisible to the counter). One multiply-add counts as 2 FLOPs;
only matrix products and convolutions are counted (norms, softmax, pooling and activations not).
"""

from __future__ import annotations

import platform
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_params", "count_flops", "measure_latency", "LatencyResult", "cpu_name"]


def count_params(model: nn.Module) -> int:
    """Number of parameters (all of them, trainable or not)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_flops(model: nn.Module, input_size: tuple[int, int, int]) -> int:
    """FLOPs of one forward pass at batch 1 (2 per multiply-add; matmuls, convs, attention)."""
    was_training = model.training
    model.eval()
    x = torch.zeros(1, *input_size)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return int(counter.get_total_flops())


def cpu_name() -> str:
    """The CPU model as the OS reports it (for the record of a measurement)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@dataclass(frozen=True)
class LatencyResult:
    """Median latency of one forward pass, its spread, and the conditions of the measurement."""

    median_ms: float
    p25_ms: float
    p75_ms: float
    runs: int
    conditions: dict[str, Any]

    @property
    def spread(self) -> float:
        """Inter-quartile range relative to the median."""
        return (self.p75_ms - self.p25_ms) / self.median_ms if self.median_ms else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "spread": round(self.spread, 4)}


@torch.no_grad()
def measure_latency(
    model: nn.Module,
    input_size: tuple[int, int, int],
    *,
    threads: int = 1,
    batch_size: int = 1,
    warmup: int = 10,
    runs: int = 50,
    max_seconds: float = 2.0,
) -> LatencyResult:
    """Wall-clock latency of `model(x)` on the CPU in eval mode with `threads` intra-op threads.

    `warmup` untimed runs, then up to `runs` timed runs, stopping early once `max_seconds` of
    timed runs have passed (at least 5 runs always). Returns the median and quartiles in ms.
    The thread count in force before the call is restored.
    """
    was_training = model.training
    model.eval()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.randn(batch_size, *input_size)
        for _ in range(warmup):
            model(x)
        times: list[float] = []
        deadline = time.perf_counter() + max_seconds
        while len(times) < runs and (len(times) < 5 or time.perf_counter() < deadline):
            start = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - start) * 1e3)
    finally:
        torch.set_num_threads(previous_threads)
        model.train(was_training)
    q1, median, q3 = statistics.quantiles(times, n=4) if len(times) > 1 else (times[0],) * 3
    conditions = {
        "device": "cpu",
        "cpu": cpu_name(),
        "threads": threads,
        "batch_size": batch_size,
        "input_size": list(input_size),
        "dtype": "float32",
        "mode": "eager, eval, no_grad",
        "warmup": warmup,
        "torch": torch.__version__,
    }
    return LatencyResult(round(median, 4), round(q1, 4), round(q3, 4), len(times), conditions)
