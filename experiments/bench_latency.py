"""Benchmark: how well a latency lookup table predicts measured latency on this machine.

Builds (or reuses) a table for a space on the CPU, samples architectures with a seeded random
sampler, predicts each with the table and measures it end to end, drift-corrected against the
table's reference model, and reports Kendall's tau, the mean absolute percentage error, the
share within +-10%, the same against the raw (uncorrected) figures, the machine's drift during
the build and the validation, and the time to check one candidate's budget with the table and
with a measurement. Writes a JSON summary, a CSV of every architecture and the scatter plot.
`--load` keeps a second process burning one core for the whole run (build and validation), to
show what a busy machine does to the figures. The summary gives the median error by token
mixer (the mixers share a table's errors) and, with `--repeat K`, measures the first
`--repeat-n` validation architectures K more times, pass after pass, to show how far two
measurements of one model disagree, drift-corrected and raw, beside how far the table is off.

    python experiments/bench_latency.py --space survey --threads 1 --n 120
    python experiments/bench_latency.py --rebuild --tag quiet
    python experiments/bench_latency.py --rebuild --tag loaded --load
    python experiments/bench_latency.py --lut luts/cpu-1t-survey-32px-quiet.json --n 60 \
        --repeat 3 --tag repeat
    python experiments/bench_latency.py --device executorch --dtype int8 --units 1500 \
        --calibration 30 --n 120

On a runtime (`--device executorch` or `onnxruntime`) the table measures `--units` units and
predicts the rest (`nas.lut.UnitPredictor`); the summary gives its cross-validated error and
how many validation architectures the runtime could not run.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import time

from scipy.stats import kendalltau
from tqdm import tqdm

from nas.cost import cpu_name
from nas.lut import UNIT_MEASUREMENT, LatencyTable, build_lut, measure_like, validate
from nas.runtimes import NotDeployable
from search_spaces.spaces import get_space


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="survey")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, executorch, onnxruntime")
    parser.add_argument("--dtype", default="float32", help="float32 (int8 on a runtime)")
    parser.add_argument(
        "--units", type=int, default=None, help="units measured (default: all; 1,500 on a runtime)"
    )
    parser.add_argument(
        "--calibration", type=int, default=100, help="whole models the table calibrates on"
    )
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--n", type=int, default=120, help="architectures to validate on")
    parser.add_argument("--seed", type=int, default=1, help="seed of the validation sample")
    parser.add_argument("--lut", default=None, help="table to use (default: built if missing)")
    parser.add_argument("--out", default="experiments/results/latency")
    parser.add_argument("--rebuild", action="store_true", help="build the table even if present")
    parser.add_argument("--load", action="store_true", help="burn one core during the run")
    parser.add_argument("--tag", default="", help="suffix of the output files (e.g. loaded)")
    parser.add_argument("--repeat", type=int, default=0, help="passes of the repeat check")
    parser.add_argument("--repeat-n", type=int, default=30, help="architectures it measures")
    args = parser.parse_args(argv)

    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.load else None
    try:
        return _run(args)
    finally:
        if burner is not None:
            burner.kill()
            burner.wait()


def _run(args: argparse.Namespace) -> int:
    space = get_space(args.space)
    suffix = f"-{args.tag}" if args.tag else ""
    device = args.device if args.dtype == "float32" else f"{args.device}-{args.dtype}"
    lut_path = (
        args.lut or f"luts/{device}-{args.threads}t-{args.space}-{args.img_size}px{suffix}.json"
    )
    units = args.units
    if units is None and args.device in ("executorch", "onnxruntime"):
        units = 1_500
    if os.path.isfile(lut_path) and not args.rebuild:
        table = LatencyTable.load(lut_path)
        table.check(
            space=space.name,
            space_version=space.version,
            device=args.device,
            dtype=args.dtype,
            threads=args.threads,
            img_size=args.img_size,
            num_classes=args.num_classes,
            path=lut_path,
        )
    else:
        bar = tqdm(desc="building the table", unit="", disable=None)
        table = build_lut(
            space,
            device=args.device,
            dtype=args.dtype,
            threads=args.threads,
            img_size=args.img_size,
            num_classes=args.num_classes,
            calibration_archs=args.calibration,
            max_units=units,
            progress=lambda _, done, total: (
                setattr(bar, "total", total),
                bar.update(done - bar.n),
            ),
            measure_kwargs=UNIT_MEASUREMENT,
        )
        bar.close()
        table.save(lut_path)

    bar = tqdm(total=args.n, desc="predict + measure", unit="arch", disable=None)
    start = time.perf_counter()
    result = validate(
        table,
        space,
        args.n,
        seed=args.seed,
        progress=lambda _, done, total: bar.update(done - bar.n),
    )
    bar.close()
    check_ms = _full_check_ms(space, table, args)
    sampled = space.sample_many(
        args.n,
        seed=args.seed,
        num_classes=table.num_classes,
        in_chans=table.in_chans,
        img_size=table.img_size,
    )
    ran = iter(result.archs)  # in order; the runtime's refusals left out
    line = next(ran, None)
    archs = []
    for arch in sampled:
        if arch.describe() == line:
            archs.append(arch)
            line = next(ran, None)
    repeat = _repeat(table, archs[: args.repeat_n], result, args.repeat) if args.repeat else None
    os.makedirs(args.out, exist_ok=True)
    stem = f"{args.space}-{device}-{args.threads}t{suffix}"
    plot = result.plot(
        os.path.join(args.out, f"{stem}.png"),
        f"{args.space}: LUT vs measured, {table.meta.get('hardware', cpu_name())} "
        f"({args.dtype}), {args.threads} thread(s)",
    )
    with open(os.path.join(args.out, f"{stem}.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["architecture", "predicted_ms", "measured_ms", "error", "raw_ms", "drift"]
        )
        for row in zip(
            result.archs,
            result.predicted,
            result.measured,
            result.errors,
            result.raw,
            result.drifts,
            strict=True,
        ):
            writer.writerow([row[0], *(f"{v:.4f}" for v in row[1:])])
    raw_errors = [(p - m) / m for p, m in zip(result.predicted, result.raw, strict=True)]
    summary = {
        "space": args.space,
        "threads": args.threads,
        "device": args.device,
        "dtype": args.dtype,
        "n": args.n,
        "refused_by_the_runtime": result.refused,
        "seed": args.seed,
        "load": "a second process burning one core" if args.load else "none",
        "kendall_tau": round(result.kendall_tau, 4),
        "mape": round(result.mape, 4),
        "within_10pct": round(result.within_10, 4),
        "raw": {
            "kendall_tau": round(kendalltau(result.predicted, result.raw).statistic, 4),
            "mape": round(sum(abs(e) for e in raw_errors) / len(raw_errors), 4),
            "within_10pct": round(sum(abs(e) <= 0.1 for e in raw_errors) / len(raw_errors), 4),
            "within_10pct_scaled_by_drift": round(
                sum(abs(e) <= 0.1 for e in result.raw_errors) / len(raw_errors), 4
            ),
        },
        "drift_validation": {
            "min": round(min(result.drifts), 4),
            "median": round(statistics.median(result.drifts), 4),
            "max": round(max(result.drifts), 4),
        },
        "median_error_by_mixer": _by_mixer(archs, result.errors),
        "repeat": repeat,
        "lut_check_ms_median": round(result.predict_ms, 3),
        "measured_check_s_median": round(result.measure_s, 3),
        "full_check_with_lut_ms_median": round(check_ms, 2),
        "table": {
            "path": lut_path,
            "units": len(table.entries),
            "measured_units": table.meta.get("measured_units", len(table.entries)),
            "unit_predictor": table.meta.get("unit_predictor"),
            "not_deployable_units": len(table.not_deployable),
            "calibration": table.calibration,
            "build_seconds": table.meta.get("seconds"),
            "reference": table.reference,
            "drift_build": table.meta.get("drift"),
        },
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "platform": platform.platform()},
        "seconds": round(time.perf_counter() - start, 1),
    }
    with open(os.path.join(args.out, f"{stem}.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(result.summary())
    print(
        "median error by mixer (predicted over measured - 1): "
        + ", ".join(
            f"{k} {v:+.1%} ({n})" for k, (v, n) in summary["median_error_by_mixer"].items()
        )
    )
    if repeat:
        print(
            f"repeat check, {repeat['archs']} architectures measured {repeat['passes']} times: "
            f"two measurements of one model differ by a median "
            f"{repeat['corrected']['median']:.1%} "
            f"(90th percentile {repeat['corrected']['p90']:.1%}) drift-corrected, "
            f"{repeat['raw']['median']:.1%} ({repeat['raw']['p90']:.1%}) raw; "
            f"the table is off by a median {repeat['table_error_median']:+.1%} over the passes"
        )
    print(
        f"full budget check with the table (build the model, count params and FLOPs, look up "
        f"latency): {check_ms:.1f} ms median"
    )
    print(f"table {lut_path}: {len(table.entries)} units, calibration {table.calibration}")
    print(f"Wrote {plot} and {stem}.csv, {stem}.json in {args.out}")
    return 0


def _by_mixer(archs: list, errors: list[float]) -> dict[str, tuple[float, int]]:
    """The median error of the architectures with at least one block of each mixer."""
    out = {}
    for mixer in sorted({st.mixer for a in archs for st in a.stages}):
        mine = [
            e
            for a, e in zip(archs, errors, strict=True)
            if any(st.mixer == mixer for st in a.stages)
        ]
        out[mixer] = (round(statistics.median(mine), 4), len(mine))
    return out


def _repeat(table: LatencyTable, archs: list, first, passes: int) -> dict:
    """Measure `archs` `passes` more times, pass after pass (minutes apart), as `validate` does;
    with the validation's own figures, how far the figures of one model spread (max / min - 1,
    median and 90th percentile over the models) and the table's error in each pass."""
    from nas import cost

    reference = cost.Reference.from_dict(table.reference)
    n = len(archs)
    corrected = [[first.measured[i]] for i in range(n)]
    raw = [[first.raw[i]] for i in range(n)]
    bar = tqdm(total=n * passes, desc="repeat check", unit="arch", disable=None)
    for _ in range(passes):
        for i, arch in enumerate(archs):
            result = measure_like(table, arch, reference)
            corrected[i].append(result.median_ms)
            raw[i].append(result.raw_ms)
            bar.update(1)
    bar.close()

    def spread(figures: list[list[float]]) -> dict[str, float]:
        ratios = sorted(max(f) / min(f) - 1 for f in figures)
        return {
            "median": round(statistics.median(ratios), 4),
            "p90": round(ratios[min(len(ratios) - 1, int(0.9 * len(ratios)))], 4),
        }

    errors = [first.predicted[i] / m - 1 for i in range(n) for m in corrected[i]]
    return {
        "archs": n,
        "passes": passes + 1,
        "corrected": spread(corrected),
        "raw": spread(raw),
        "table_error_median": round(statistics.median(errors), 4),
        "table_error_by_pass": [
            round(statistics.median(first.predicted[i] / corrected[i][k] - 1 for i in range(n)), 4)
            for k in range(passes + 1)
        ],
    }


def _full_check_ms(space, table: LatencyTable, args: argparse.Namespace) -> float:
    """What the search spends per candidate before training when a table gives the latency."""
    import statistics

    from nas.cost import count_flops, count_params
    from search_spaces.model import LightViT

    times = []
    for arch in space.sample_many(
        min(args.n, 50), seed=args.seed, num_classes=args.num_classes, img_size=args.img_size
    ):
        start = time.perf_counter()
        model = LightViT(arch)
        count_params(model)
        count_flops(model, (arch.in_chans, arch.img_size, arch.img_size))
        try:
            table.predict(arch)
        except NotDeployable:  # rejected as the search rejects it: the check is as long
            pass
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


if __name__ == "__main__":
    sys.exit(main())
