"""Benchmark: how well a latency lookup table predicts measured latency on this machine.

Builds (or reuses) a table for a space on the CPU, samples architectures with a seeded random
sampler, predicts each with the table and measures it end to end, drift-corrected against the
table's reference model, and reports Kendall's tau, the mean absolute percentage error, the
share within +-10%, the same against the raw (uncorrected) figures, the machine's drift during
the build and the validation, and the time to check one candidate's budget with the table and
with a measurement. Writes a JSON summary, a CSV of every architecture and the scatter plot.
`--load` keeps a second process burning one core for the whole run (build and validation), to
show what a busy machine does to the figures.

    python experiments/bench_latency.py --space survey --threads 1 --n 120
    python experiments/bench_latency.py --rebuild --tag quiet
    python experiments/bench_latency.py --rebuild --tag loaded --load
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
from nas.lut import UNIT_MEASUREMENT, LatencyTable, build_lut, validate
from search_spaces.spaces import get_space


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="survey")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--n", type=int, default=120, help="architectures to validate on")
    parser.add_argument("--seed", type=int, default=1, help="seed of the validation sample")
    parser.add_argument("--lut", default=None, help="table to use (default: built if missing)")
    parser.add_argument("--out", default="experiments/results/latency")
    parser.add_argument("--rebuild", action="store_true", help="build the table even if present")
    parser.add_argument("--load", action="store_true", help="burn one core during the run")
    parser.add_argument("--tag", default="", help="suffix of the output files (e.g. loaded)")
    args = parser.parse_args()

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
    lut_path = args.lut or f"luts/cpu-{args.threads}t-{args.space}-{args.img_size}px{suffix}.json"
    if os.path.isfile(lut_path) and not args.rebuild:
        table = LatencyTable.load(lut_path)
        table.check(
            space=space.name,
            space_version=space.version,
            device="cpu",
            threads=args.threads,
            img_size=args.img_size,
            num_classes=args.num_classes,
            path=lut_path,
        )
    else:
        bar = tqdm(desc="building the table", unit="", disable=None)
        table = build_lut(
            space,
            device="cpu",
            threads=args.threads,
            img_size=args.img_size,
            num_classes=args.num_classes,
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
    os.makedirs(args.out, exist_ok=True)
    stem = f"{args.space}-cpu-{args.threads}t{suffix}"
    plot = result.plot(
        os.path.join(args.out, f"{stem}.png"),
        f"{args.space}: LUT vs measured, {cpu_name()}, {args.threads} thread(s)",
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
        "n": args.n,
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
        "lut_check_ms_median": round(result.predict_ms, 3),
        "measured_check_s_median": round(result.measure_s, 3),
        "full_check_with_lut_ms_median": round(check_ms, 2),
        "table": {
            "path": lut_path,
            "units": len(table.entries),
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
        f"full budget check with the table (build the model, count params and FLOPs, look up "
        f"latency): {check_ms:.1f} ms median"
    )
    print(f"table {lut_path}: {len(table.entries)} units, calibration {table.calibration}")
    print(f"Wrote {plot} and {stem}.csv, {stem}.json in {args.out}")
    return 0


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
        table.predict(arch)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


if __name__ == "__main__":
    sys.exit(main())
