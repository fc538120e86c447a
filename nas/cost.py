"""What a candidate costs: parameters, FLOPs and latency measured on this machine's CPU.

Every figure travels with the conditions it was measured under (`LatencyResult.conditions`).

FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` at batch 1, with scaled
dot-product attention forced onto its math path so that the two attention matrix products are
counted (the fused CPU kernel is invisible to the counter). One multiply-add counts as 2 FLOPs;
only matrix products and convolutions are counted (norms, softmax, pooling and activations not).
"""

from __future__ import annotations

import contextlib
import copy
import io
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "DEVICES",
    "LatencyResult",
    "check_device",
    "conditions",
    "count_flops",
    "count_params",
    "cpu_name",
    "export_onnx",
    "measure_latency",
    "time_calls",
]


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


DEVICES = ("cpu", "cuda", "onnxruntime")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def time_calls(
    fn: Callable[[], Any],
    *,
    warmup: int = 10,
    runs: int = 50,
    max_seconds: float = 2.0,
    target_spread: float = 0.05,
    timer: Callable[[Callable[[], Any]], float] | None = None,
) -> list[float]:
    """Milliseconds of repeated `fn()` calls: `warmup` untimed, then rounds of `runs` timed calls
    until the inter-quartile spread is at most `target_spread` of the median or `max_seconds`
    have passed (5 calls at least). `timer(fn)` times one call (default: wall clock)."""
    timer = timer or _wall_clock
    for _ in range(warmup):
        fn()
    times: list[float] = []
    deadline = time.perf_counter() + max_seconds
    while True:
        for _ in range(runs):
            times.append(timer(fn))
            if len(times) >= 5 and time.perf_counter() > deadline:
                return times
        if _spread(times) <= target_spread or time.perf_counter() > deadline:
            return times


def _wall_clock(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def _cuda_events(fn: Callable[[], Any]) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end)


def _quartiles(times: list[float]) -> tuple[float, float, float]:
    if len(times) == 1:
        return times[0], times[0], times[0]
    q1, median, q3 = statistics.quantiles(times, n=4)
    return q1, median, q3


def _spread(times: list[float]) -> float:
    q1, median, q3 = _quartiles(times)
    return (q3 - q1) / median if median else 0.0


def device_name(device: str) -> str:
    """The hardware a device string runs on, for the record."""
    if device == "cuda":
        return torch.cuda.get_device_name()
    return cpu_name()


def check_device(device: str, dtype: str = "float32") -> None:
    """Raise ValueError with the fix when a device or dtype cannot be used here."""
    if device not in DEVICES:
        raise ValueError(f"device '{device}' is unknown; use one of: {', '.join(DEVICES)}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype '{dtype}' is unknown; use one of: {', '.join(DTYPES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "device 'cuda' needs a CUDA GPU, and torch sees none here; measure on cpu or "
            "onnxruntime, or run on the GPU machine"
        )
    if device == "onnxruntime":
        if dtype != "float32":
            raise ValueError("the onnxruntime device measures float32 models only")
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise ValueError(
                "device 'onnxruntime' needs the onnx extra: pip install 'lightweight-vit[onnx]'"
            ) from None


def conditions(
    device: str, threads: int, batch_size: int, input_size: Sequence[int], dtype: str, warmup: int
) -> dict[str, Any]:
    """The record that travels with every latency figure."""
    record = {
        "device": device,
        "hardware": device_name(device),
        "cpu": cpu_name(),
        "threads": threads,
        "batch_size": batch_size,
        "input_size": list(input_size),
        "dtype": dtype,
        "mode": {"onnxruntime": "ONNX Runtime, CPU provider"}.get(device, "eager, eval, no_grad"),
        "warmup": warmup,
        "torch": torch.__version__,
    }
    if device == "onnxruntime":
        import onnxruntime

        record["onnxruntime"] = onnxruntime.__version__
    return record


@torch.no_grad()
def measure_latency(
    model: nn.Module,
    input_size: tuple[int, ...],
    *,
    device: str = "cpu",
    threads: int = 1,
    batch_size: int = 1,
    dtype: str = "float32",
    warmup: int = 10,
    runs: int = 50,
    max_seconds: float = 2.0,
    target_spread: float = 0.05,
) -> LatencyResult:
    """Latency of one forward pass of `model` on `device`, in eval mode under no_grad.

    cpu: torch eager with `threads` intra-op threads (restored afterwards); cuda: CUDA events
    around each call with synchronisation; onnxruntime: the model exported to ONNX and run by
    ONNX Runtime's CPU provider with `threads` intra-op threads. Timing follows `time_calls`.
    The model is not modified (a copy is cast or moved when needed).
    """
    check_device(device, dtype)
    was_training = model.training
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model.eval()
        fn, timer = _forward_fn(model, (batch_size, *input_size), device, threads, dtype)
        times = time_calls(
            fn,
            warmup=warmup,
            runs=runs,
            max_seconds=max_seconds,
            target_spread=target_spread,
            timer=timer,
        )
    finally:
        torch.set_num_threads(previous_threads)
        model.train(was_training)
    q1, median, q3 = _quartiles(times)
    record = conditions(device, threads, batch_size, input_size, dtype, warmup)
    # 6 decimals (nanoseconds): tiny models run in microseconds, and the spread is read back
    return LatencyResult(round(median, 6), round(q1, 6), round(q3, 6), len(times), record)


def _forward_fn(
    model: nn.Module, shape: tuple[int, ...], device: str, threads: int, dtype: str
) -> tuple[Callable[[], Any], Callable | None]:
    if device == "onnxruntime":
        session, feed = _onnx_session(model, shape, threads)
        return (lambda: session.run(None, feed)), None
    target = torch.device("cuda" if device == "cuda" else "cpu")
    torch_dtype = DTYPES[dtype]
    if torch_dtype != torch.float32 or target.type != "cpu":
        model = copy.deepcopy(model).to(device=target, dtype=torch_dtype)
    x = torch.randn(*shape, device=target, dtype=torch_dtype)
    return (lambda: model(x)), (_cuda_events if device == "cuda" else None)


def _onnx_session(model: nn.Module, shape: tuple[int, ...], threads: int) -> tuple[Any, dict]:
    """Export to a temporary ONNX file and open an ONNX Runtime CPU session on it."""
    import onnxruntime as ort

    x = torch.randn(*shape)
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/model.onnx"
        export_onnx(model, x, path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return session, {session.get_inputs()[0].name: x.numpy()}


def export_onnx(model: nn.Module, x: torch.Tensor, path: str) -> None:
    """torch.onnx export (the dynamo exporter, opset 18), quietly."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), path, dynamo=True, opset_version=18, verbose=False)
