"""Benchmark: how well a latency lookup table predicts measured latency on this machine.

Builds (or reuses) a table for a space on the CPU, samples architectures with a seeded random
sampler, predicts each with the table and measures it end to end, and reports Kendall's tau,
the mean absolute percentage error, the share within +-10%, and the time to check one
candidate's budget with the table and with a measurement. Writes a JSON summary, a CSV of every
architecture and the scatter plot.

    python experiments/bench_latency.py --space survey --threads 1 --n 120
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time

from tqdm import tqdm

from nas.cost import cpu_name
from nas.lut import LatencyTable, build_lut, validate
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
    args = parser.parse_args()

    space = get_space(args.space)
    lut_path = args.lut or f"luts/cpu-{args.threads}t-{args.space}-{args.img_size}px.json"
    if os.path.isfile(lut_path):
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
        bar = tqdm(desc="building the table", unit="")
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
            measure_kwargs={"warmup": 3, "runs": 10, "max_seconds": 0.3, "target_spread": 0.1},
        )
        bar.close()
        table.save(lut_path)

    bar = tqdm(total=args.n, desc="predict + measure", unit="arch")
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
    stem = f"{args.space}-cpu-{args.threads}t"
    plot = result.plot(
        os.path.join(args.out, f"{stem}.png"),
        f"{args.space}: LUT vs measured, {cpu_name()}, {args.threads} thread(s)",
    )
    with open(os.path.join(args.out, f"{stem}.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["architecture", "predicted_ms", "measured_ms", "error"])
        for row in zip(
            result.archs, result.predicted, result.measured, result.errors, strict=True
        ):
            writer.writerow([row[0], f"{row[1]:.4f}", f"{row[2]:.4f}", f"{row[3]:.4f}"])
    summary = {
        "space": args.space,
        "threads": args.threads,
        "n": args.n,
        "seed": args.seed,
        "kendall_tau": round(result.kendall_tau, 4),
        "mape": round(result.mape, 4),
        "within_10pct": round(result.within_10, 4),
        "lut_check_ms_median": round(result.predict_ms, 3),
        "measured_check_s_median": round(result.measure_s, 3),
        "full_check_with_lut_ms_median": round(check_ms, 2),
        "table": {
            "path": lut_path,
            "units": len(table.entries),
            "calibration": table.calibration,
            "build_seconds": table.meta.get("seconds"),
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
