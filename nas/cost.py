"""What a candidate costs: parameters, FLOPs and latency measured on this machine.

Every figure travels with the conditions it was measured under (`LatencyResult.conditions`).

Latency on a shared machine drifts: a neighbour's load, frequency scaling or a noisy VM host
slow every model by the same factor for a while. So a measurement can be drift-corrected: a
small fixed reference model (`reference_model`) is timed in blocks interleaved with the
candidate, in the same process on the same threads, and each block of the candidate is scaled
by the reference's calibrated latency over its latency in the neighbouring block
(`measure_latency(..., reference=...)`). The figure is then the candidate's latency at the
machine speed of the calibration (`calibrate_reference`), and the raw figure, the reference's
latency at that moment and the drift are recorded beside it. `stability` measures how much a
machine drifts (`lvit latency doctor`).

FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` at batch 1, with scaled
dot-product attention forced onto its math path so that the two attention matrix products are
counted (the fused CPU kernel is invisible to the counter). One multiply-add counts as 2 FLOPs;
only matrix products and convolutions are counted (norms, softmax, pooling and activations not).
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from nas import runtimes
from nas.config import LATENCY_DEVICES, LATENCY_DTYPES, dtype_problem

__all__ = [
    "DEVICES",
    "LatencyResult",
    "Reference",
    "REFERENCE_VERSION",
    "calibrate_reference",
    "reference_model",
    "reference_now",
    "stability",
    "Stability",
    "time_interleaved",
    "torch_threads",
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
    """Median latency of one forward pass, its spread, and the conditions of the measurement.

    With a reference (drift correction), `median_ms` and its quartiles are the normalised
    figure (the median over blocks of the block's latency x the reference's calibrated latency
    / the reference's latency in the neighbouring block), `raw_ms` the plain median,
    `reference_ms` the reference's median during the measurement and
    `reference_calibrated_ms` the speed the figure refers to."""

    median_ms: float
    p25_ms: float
    p75_ms: float
    runs: int
    conditions: dict[str, Any]
    raw_ms: float | None = None
    reference_ms: float | None = None
    reference_calibrated_ms: float | None = None

    @property
    def spread(self) -> float:
        """Inter-quartile range relative to the median."""
        return (self.p75_ms - self.p25_ms) / self.median_ms if self.median_ms else 0.0

    @property
    def drift(self) -> float | None:
        """How much slower the machine ran than at calibration (1.0: as fast)."""
        if self.reference_ms is None or not self.reference_calibrated_ms:
            return None
        return self.reference_ms / self.reference_calibrated_ms

    @property
    def band_ms(self) -> float:
        """The measurement's noise band: its inter-quartile range, at least 1% of it."""
        return max(self.p75_ms - self.p25_ms, 0.01 * self.median_ms)

    def to_dict(self) -> dict[str, Any]:
        record = {**asdict(self), "spread": round(self.spread, 4)}
        if self.reference_ms is None:  # a plain measurement records what it always did
            for key in ("raw_ms", "reference_ms", "reference_calibrated_ms"):
                record.pop(key)
        else:
            record["drift"] = round(self.drift, 4)
        return record


REFERENCE_VERSION = 1
REFERENCE_INPUT = (3, 32, 32)


def reference_model() -> nn.Module:
    """The fixed model whose latency tracks the machine's speed (version `REFERENCE_VERSION`):
    a 4x4 patch convolution to 64 channels, two pre-norm transformer layers (2 heads, MLP 128)
    over the 64 tokens, a norm, average pooling and a 10-way head, with seeded weights, on a
    3x32x32 input: the operations our candidates are made of, in about a tenth of a
    millisecond to a millisecond on a CPU thread. Plain torch, so it never changes with our
    blocks."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(1234)
    try:
        model = _Reference()
    finally:
        torch.random.set_rng_state(generator_state)
    return model.eval()


class _Reference(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 64, kernel_size=4, stride=4)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(64, 2, 128, dropout=0.0, batch_first=True, norm_first=True)
            for _ in range(2)
        )
        self.norm = nn.LayerNorm(64)
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x).flatten(2).transpose(1, 2)
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x).mean(1))


_REFERENCE_FNS: dict[tuple[str, int], tuple[Callable[[], Any], Callable | None]] = {}


def _reference_fn(device: str, threads: int) -> tuple[Callable[[], Any], Callable | None]:
    """The reference model's forward call on `device`, built once per process (on
    onnxruntime building means an ONNX export, which takes seconds)."""
    key = (device, threads)
    if key not in _REFERENCE_FNS:
        fn, timer, _ = _forward_fn(reference_model(), (1, *REFERENCE_INPUT), device, threads)
        _REFERENCE_FNS[key] = fn, timer
    return _REFERENCE_FNS[key]


@dataclass(frozen=True)
class Reference:
    """The reference model's calibrated latency on a device: the machine speed that
    drift-corrected figures refer to. Studies and latency tables store it."""

    ms: float
    device: str
    threads: int
    hardware: str
    torch: str
    version: int = REFERENCE_VERSION
    measured_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Reference:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def fits(self, device: str, threads: int) -> bool:
        """Whether figures measured on `device` with `threads` may be normalised to this."""
        return (
            self.version == REFERENCE_VERSION
            and self.device == device
            and self.threads == threads
            and self.torch == torch.__version__
        )


def calibrate_reference(
    device: str = "cpu", threads: int = 1, seconds: float = 3.0, block: int = 10
) -> Reference:
    """Time the reference model for `seconds` in blocks of `block` calls and take the 10th
    percentile of the block medians: the machine's speed when nothing slows it (load and
    throttling only ever slow it down), robust to single fast calls."""
    check_device(device)
    with torch_threads(threads), torch.no_grad():
        fn, timer = _reference_fn(device, threads)
        timer = timer or _wall_clock
        for _ in range(20):
            fn()
        medians: list[float] = []
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline or len(medians) < 5:
            medians.append(statistics.median(timer(fn) for _ in range(block)))
    fast = statistics.quantiles(medians, n=10)[0] if len(medians) >= 10 else min(medians)
    return Reference(
        ms=round(fast, 6),
        device=device,
        threads=threads,
        hardware=device_name(device),
        torch=torch.__version__,
        measured_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )


def reference_now(reference: Reference, calls: int = 20) -> float:
    """The reference model's latency right now (median of `calls`), on its device."""
    with torch_threads(reference.threads), torch.no_grad():
        fn, timer = _reference_fn(reference.device, reference.threads)
        timer = timer or _wall_clock
        for _ in range(3):
            fn()
        return statistics.median(timer(fn) for _ in range(calls))


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op threads set to `threads` for the block, and restored after it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


DEVICES = LATENCY_DEVICES
DTYPES = dict(
    zip(LATENCY_DTYPES, (torch.float32, torch.bfloat16, torch.float16, torch.int8), strict=True)
)


def time_calls(
    fn: Callable[[], Any],
    *,
    warmup: int = 10,
    runs: int = 50,
    max_seconds: float = 2.0,
    target_spread: float = 0.05,
    timer: Callable[[Callable[[], Any]], float] | None = None,
    target_precision: float = 0.01,
) -> list[float]:
    """Milliseconds of repeated `fn()` calls: `warmup` untimed, then rounds of `runs` timed calls
    until `_settled` (the inter-quartile spread is at most `target_spread` of the median, or
    the median is known to `target_precision`) or `max_seconds` have passed (5 calls at least).
    `timer(fn)` times one call (default: wall clock)."""
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
        if _settled(times, target_spread, target_precision) or time.perf_counter() > deadline:
            return times


def time_interleaved(
    fn: Callable[[], Any],
    ref_fn: Callable[[], Any],
    calibrated_ms: float,
    *,
    warmup: int = 10,
    runs: int = 50,
    max_seconds: float = 2.0,
    target_spread: float = 0.05,
    timer: Callable[[Callable[[], Any]], float] | None = None,
    block: int = 5,
    target_precision: float = 0.01,
) -> tuple[list[float], list[float], list[float]]:
    """Time `fn` in blocks of `block` calls, each after a block of the reference `ref_fn`,
    until the normalised blocks are `_settled` or `max_seconds` pass (3 blocks at least).
    Each block starts with one untimed call: the first call after a switch runs on caches the
    other model filled, 30-60% slower here, and more so after a larger candidate, which would
    bias the correction by the candidate's size. Returns every timed call of `fn` (ms), every
    timed call of the reference, and each block's median x `calibrated_ms` / its reference
    block's median."""
    timer = timer or _wall_clock
    for _ in range(warmup):
        ref_fn()
        fn()
    calls: list[float] = []
    refs: list[float] = []
    normalised: list[float] = []
    deadline = time.perf_counter() + max_seconds
    while True:
        for _ in range(max(1, runs // block)):
            ref_fn()
            ref = [timer(ref_fn) for _ in range(block)]
            fn()
            own = [timer(fn) for _ in range(block)]
            refs += ref
            calls += own
            normalised.append(statistics.median(own) * calibrated_ms / statistics.median(ref))
            if len(normalised) >= 3 and time.perf_counter() > deadline:
                return calls, refs, normalised
        if len(normalised) >= 3 and (
            _settled(normalised, target_spread, target_precision) or time.perf_counter() > deadline
        ):
            return calls, refs, normalised


@dataclass
class Stability:
    """What `stability` saw over its window: per second, the reference model's median
    latency and the spread of its calls, and a probe model's raw and drift-corrected medians;
    and what the OS says of the CPU (None where it says nothing)."""

    seconds: float
    device: str
    threads: int
    cores: int
    reference_ms: list[float]
    spreads: list[float]
    probe_raw_ms: list[float]
    probe_normalised_ms: list[float]
    governor: str | None = None
    mhz: tuple[float, float] | None = None  # lowest and highest "cpu MHz" seen
    loadavg: float | None = None  # 1-minute load average at the end
    steal: float | None = None  # share of CPU time the hypervisor took during the window

    @staticmethod
    def _range(values: list[float]) -> float:
        """How far apart the slow and fast seconds were: 90th over 10th percentile, - 1."""
        if len(values) < 2:
            return 0.0
        deciles = statistics.quantiles(values, n=10)
        return deciles[-1] / deciles[0] - 1

    @property
    def drift(self) -> float:
        return self._range(self.reference_ms)

    @property
    def raw_drift(self) -> float:
        return self._range(self.probe_raw_ms)

    @property
    def corrected_drift(self) -> float:
        return self._range(self.probe_normalised_ms)

    @property
    def spread(self) -> float:
        return statistics.median(self.spreads) if self.spreads else 0.0

    def verdict(self) -> tuple[bool, list[str]]:
        """Whether latency budgets measured here can be trusted, and what to do about it."""
        advice = []
        if self.corrected_drift > 0.05:
            moved = 100 * self.corrected_drift
            advice.append(
                f"even drift-corrected, a model's latency moved by {moved:.0f}% "
                "between seconds: stop other work on this machine, or build a lookup table on a "
                "quiet target device and search with it (budget.latency_source: {lut: PATH})"
            )
        elif self.raw_drift > 0.05:
            advice.append(
                f"the machine's speed moved by {100 * self.raw_drift:.0f}% between seconds; "
                "drift correction (latency.normalise: true, the default) brought that to "
                f"{100 * self.corrected_drift:.1f}%: keep it on"
            )
        if self.spread > 0.05:
            advice.append(
                f"single calls vary by {100 * self.spread:.0f}% within a second: raise "
                "latency.runs and latency.max_seconds"
            )
        if self.steal is not None and self.steal > 0.02:
            advice.append(
                f"the hypervisor took {100 * self.steal:.0f}% of the CPU time (steal): this is "
                "a shared virtual machine; absolute figures belong to the target device"
            )
        busy = (self.loadavg or 0.0) - self.threads
        if busy > max(0.5, self.cores - self.threads):
            advice.append(
                f"other processes keep about {busy:.1f} cores busy on {self.cores}: stop them, "
                "or pin the search to free cores (taskset -c N lvit search ...)"
            )
        if self.governor and self.governor != "performance":
            advice.append(
                f"the CPU frequency governor is '{self.governor}': set it to performance "
                "(cpupower frequency-set -g performance) so the clock does not follow the load"
            )
        return self.corrected_drift <= 0.05 and self.spread <= 0.10, advice


def _cpu_times() -> tuple[int, int] | None:
    """(steal, total) jiffies of all CPUs, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def _cpu_mhz() -> list[float]:
    try:
        with open("/proc/cpuinfo") as f:
            return [float(line.split(":")[1]) for line in f if line.startswith("cpu MHz")]
    except (OSError, ValueError):
        return []


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def stability(
    seconds: float = 60.0,
    device: str = "cpu",
    threads: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> Stability:
    """Time the reference model for `seconds`, a block of calls at a time, interleaved with a
    larger probe model (a transformer of width 128 and depth 4), and read what the OS says of
    the CPU (governor, clock, load, steal): how much latency moves here, raw and
    drift-corrected (`lvit latency doctor`)."""
    check_device(device)
    steal0, mhz = _cpu_times(), _cpu_mhz()
    record: dict[str, list[float]] = {k: [] for k in ("ref", "spread", "raw", "normalised")}
    with torch_threads(threads), torch.no_grad():
        ref_fn, timer = _reference_fn(device, threads)
        probe_fn, _, _ = _forward_fn(_probe_model(), (1, *REFERENCE_INPUT), device, threads)
        timer = timer or _wall_clock
        for _ in range(20):
            ref_fn()
            probe_fn()
        calibrated = statistics.median(timer(ref_fn) for _ in range(20))
        total = max(1, int(round(seconds)))
        for second in range(total):
            # one second of the same interleaved timing a measurement uses (no early stop)
            raw, refs, normalised = time_interleaved(
                probe_fn,
                ref_fn,
                calibrated,
                warmup=0,
                runs=50,
                max_seconds=1.0,
                target_spread=0.0,
                target_precision=0.0,
                timer=timer,
            )
            q1, median, q3 = _quartiles(refs)
            record["ref"].append(median)
            record["spread"].append((q3 - q1) / median)
            record["raw"].append(statistics.median(raw))
            record["normalised"].append(statistics.median(normalised))
            mhz += _cpu_mhz()
            if progress is not None:
                progress(second + 1, total)
    steal1 = _cpu_times()
    steal = None
    if steal0 and steal1 and steal1[1] > steal0[1]:
        steal = (steal1[0] - steal0[0]) / (steal1[1] - steal0[1])
    load = _read("/proc/loadavg")
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return Stability(
        seconds=seconds,
        device=device,
        threads=threads,
        cores=cores,
        reference_ms=record["ref"],
        spreads=record["spread"],
        probe_raw_ms=record["raw"],
        probe_normalised_ms=record["normalised"],
        governor=_read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        mhz=(min(mhz), max(mhz)) if mhz else None,
        loadavg=float(load.split()[0]) if load else None,
        steal=steal,
    )


def _probe_model() -> nn.Module:
    """A larger plain-torch transformer than the reference (width 128, depth 4), whose latency
    `stability` corrects by the reference's, as a search corrects a candidate's."""
    state = torch.random.get_rng_state()
    torch.manual_seed(4321)
    try:
        model = nn.Sequential(
            nn.Conv2d(3, 128, kernel_size=4, stride=4),
            nn.Flatten(2),
            _Transpose(),
            *(
                nn.TransformerEncoderLayer(
                    128, 4, 256, dropout=0.0, batch_first=True, norm_first=True
                )
                for _ in range(4)
            ),
        )
    finally:
        torch.random.set_rng_state(state)
    return model.eval()


class _Transpose(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)


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


def _settled(times: list[float], target_spread: float, target_precision: float) -> bool:
    """Enough calls: their spread is small, or their median is known well enough. On a noisy
    machine single calls may always spread by more than `target_spread` (more calls do not
    narrow a distribution), but the median's standard error, about 0.93 x IQR / sqrt(n) (a
    normal's 1.25 sigma / sqrt(n), sigma = IQR / 1.35), shrinks with every call."""
    spread = _spread(times)
    return spread <= target_spread or 0.93 * spread / len(times) ** 0.5 <= target_precision


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
    problem = dtype_problem(device, dtype)
    if problem:
        raise ValueError(problem)
    if device == "onnxruntime":
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise ValueError(
                "device 'onnxruntime' needs the onnx extra: pip install 'lightweight-vit[onnx]'"
            ) from None
    if device == "executorch":
        runtimes.check_executorch()


_MODES = {
    "onnxruntime": "ONNX Runtime, CPU provider",
    "executorch": "ExecuTorch runtime, XNNPACK delegate",
}


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
        "mode": _MODES.get(device, "eager, eval, no_grad"),
        "warmup": warmup,
        "torch": torch.__version__,
    }
    if device == "onnxruntime":
        import onnxruntime

        record["onnxruntime"] = onnxruntime.__version__
    if device == "executorch":
        record["executorch"] = runtimes.executorch_version()
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
    reference: Reference | None = None,
    target_precision: float = 0.01,
) -> LatencyResult:
    """Latency of one forward pass of `model` on `device`, in eval mode under no_grad.

    cpu: torch eager with `threads` intra-op threads (restored afterwards); cuda: CUDA events
    around each call with synchronisation; onnxruntime: the model exported to ONNX and run by
    ONNX Runtime's CPU provider with `threads` intra-op threads (int8: its static
    quantisation first); executorch: lowered to an ExecuTorch program with the XNNPACK delegate
    (int8: PT2E quantisation first) and run by ExecuTorch's runtime on `threads` threads, its
    delegation recorded (`nas.runtimes`; a model it cannot run raises
    `runtimes.NotDeployable`). Timing follows `time_calls`;
    with a `reference` (drift correction), `time_interleaved` with the reference model run the
    same way. The model is not modified (a copy is cast or moved when needed).
    """
    check_device(device, dtype)
    if reference is not None and not reference.fits(device, threads):
        raise ValueError(
            f"the latency reference was calibrated for {reference.device} with "
            f"{reference.threads} thread(s) on torch {reference.torch}, not {device} with "
            f"{threads} on torch {torch.__version__}"
        )
    was_training = model.training
    timing = {
        "warmup": warmup,
        "runs": runs,
        "max_seconds": max_seconds,
        "target_spread": target_spread,
        "target_precision": target_precision,
    }
    try:
        with torch_threads(threads):
            model.eval()
            fn, timer, built = _forward_fn(
                model, (batch_size, *input_size), device, threads, dtype
            )
            if reference is None:
                times = time_calls(fn, timer=timer, **timing)
            else:
                ref_fn, _ = _reference_fn(device, threads)
                times, refs, normalised = time_interleaved(
                    fn, ref_fn, reference.ms, timer=timer, **timing
                )
    finally:
        model.train(was_training)
    record = {**conditions(device, threads, batch_size, input_size, dtype, warmup), **built}
    # 6 decimals (nanoseconds): tiny models run in microseconds, and the spread is read back
    if reference is None:
        q1, median, q3 = _quartiles(times)
        return LatencyResult(round(median, 6), round(q1, 6), round(q3, 6), len(times), record)
    q1, median, q3 = _quartiles(normalised)
    return LatencyResult(
        round(median, 6),
        round(q1, 6),
        round(q3, 6),
        len(times),
        {**record, "normalised": f"to the reference model at {reference.ms:.4f} ms"},
        raw_ms=round(statistics.median(times), 6),
        reference_ms=round(statistics.median(refs), 6),
        reference_calibrated_ms=reference.ms,
    )


def _forward_fn(
    model: nn.Module, shape: tuple[int, ...], device: str, threads: int, dtype: str = "float32"
) -> tuple[Callable[[], Any], Callable | None, dict[str, Any]]:
    """The call to time, its timer (None: the wall clock) and what building it adds to the
    record (a runtime's delegation, its calibration)."""
    if device in RUNTIME_DEVICES:
        fn, built = runtime_fn(model, (torch.randn(*shape),), device, threads, dtype)
        return fn, None, built
    target = torch.device("cuda" if device == "cuda" else "cpu")
    torch_dtype = DTYPES[dtype]
    if torch_dtype != torch.float32 or target.type != "cpu":
        model = copy.deepcopy(model).to(device=target, dtype=torch_dtype)
    x = torch.randn(*shape, device=target, dtype=torch_dtype)
    return (lambda: model(x)), (_cuda_events if device == "cuda" else None), {}


RUNTIME_DEVICES = ("onnxruntime", "executorch")  # devices that run a converted program


def runtime_fn(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    device: str,
    threads: int,
    dtype: str = "float32",
) -> tuple[Callable[[], Any], dict[str, Any]]:
    """`model` (eval mode) converted for a runtime device (`RUNTIME_DEVICES`) and the call
    that runs it on `inputs`, with what converting it adds to the record. NotDeployable
    when the runtime cannot take it."""
    if device == "onnxruntime":
        session, feed, built = _onnx_session(model, inputs, threads, dtype)
        return (lambda: session.run(None, feed)), built
    if device == "executorch":
        lowered = runtimes.lower_executorch(model, inputs, dtype)
        run = runtimes.load_executorch(lowered.buffer, threads)
        built = {"delegation": lowered.delegation.to_dict(), "program_bytes": len(lowered.buffer)}
        if lowered.calibration:
            built["calibration"] = lowered.calibration
        return (lambda: run(inputs)), built
    raise ValueError(f"{device} is not a runtime device; use one of {', '.join(RUNTIME_DEVICES)}")


def _onnx_session(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], threads: int, dtype: str = "float32"
) -> tuple[Any, dict, dict[str, Any]]:
    """Export to a temporary ONNX file (int8: then ONNX Runtime's static quantisation,
    calibrated on random inputs, which latency does not depend on) and open an ONNX Runtime
    CPU session on it."""
    import onnxruntime as ort

    built: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/model.onnx"
        try:
            export_onnx(model, inputs, path)
        except Exception as e:
            raise runtimes.NotDeployable("ONNX Runtime", f"ONNX export failed: {e}") from e
        if dtype == "int8":
            runtimes.onnx_int8(path, f"{tmp}/int8.onnx", runtimes.random_calibration(inputs))
            path = f"{tmp}/int8.onnx"
            built["calibration"] = "8 random normal inputs (latency only)"
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return session, {n: x.numpy() for n, x in zip(names, inputs, strict=True)}, built


def export_onnx(model: nn.Module, x: torch.Tensor | tuple[torch.Tensor, ...], path: str) -> None:
    """torch.onnx export (the dynamo exporter, opset 18) for input `x` (or inputs), quietly."""
    inputs = x if isinstance(x, tuple) else (x,)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, inputs, path, dynamo=True, opset_version=18, verbose=False)
