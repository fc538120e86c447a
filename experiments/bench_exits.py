"""Benchmark: what early exits buy. Trains one early-exit architecture on digits (exits trained
jointly), calibrates the thresholds for at most 1 point of accuracy lost, and reports per seed
the full-depth and early-exit accuracy, the share leaving at each exit, the full-depth latency,
the expected latency and the measured latency of the early-exit path (CPU, 1 thread, batch 1).

    python experiments/bench_exits.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

from tqdm import tqdm

from nas.config import DataConfig, TrainConfig
from nas.cost import cpu_name
from nas.data import load_dataset
from nas.exits import calibrate_exits
from nas.train import train_model
from search_spaces.arch import ArchConfig, StageConfig
from search_spaces.model import LightViT

ARCH = ArchConfig(
    stages=(StageConfig(depth=6, dim=64, heads=2, mlp_ratio=2.0, mixer="mhsa"),),
    stem="conv",
    patch_size=4,
    pos_enc="learned",
    img_size=32,
    exits=(2, 4),
    num_classes=10,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--max-drop", type=float, default=0.01)
    parser.add_argument("--out", default="experiments/results/exits")
    args = parser.parse_args()

    data = load_dataset(DataConfig(name="digits", img_size=32))
    rows = []
    for seed in tqdm(args.seeds, desc="seeds", disable=None):
        model = LightViT(ARCH)
        result = train_model(
            model, data, TrainConfig(epochs=args.epochs, threads=2, device="cpu"), seed=seed
        )
        report = calibrate_exits(
            model,
            data,
            max_drop=args.max_drop,
            threads=1,
            measure_images=len(data.val_y),
        )
        rows.append(
            {
                "seed": seed,
                "train_images_per_second": round(result.images_per_second, 1),
                **report.to_dict(),
            }
        )
    full_ms = statistics.mean(r["path_latency_ms"][-1] for r in rows)
    expected = statistics.mean(r["expected_latency_ms"] for r in rows)
    measured = statistics.mean(r["measured_dynamic_ms"] for r in rows)
    summary = {
        "architecture": ARCH.describe(),
        "seeds": args.seeds,
        "epochs": args.epochs,
        "max_drop": args.max_drop,
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "full_accuracy": statistics.mean(r["full_accuracy"] for r in rows),
        "early_exit_accuracy": statistics.mean(r["dynamic_accuracy"] for r in rows),
        "full_latency_ms": full_ms,
        "expected_latency_ms": expected,
        "measured_early_exit_ms": measured,
        "expected_saving": 1 - expected / full_ms,
        "measured_saving": 1 - measured / full_ms,
        "runs": rows,
    }
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "exits-digits32.json")
    with open(path, "w") as f:
        json.dump(summary, f, indent=2)
    print(f"{ARCH.describe()} on digits 32px, {args.epochs} epochs, seeds {args.seeds}")
    print(
        f"{'seed':>4}  {'full acc':>8}  {'exit acc':>8}  {'shares':>18}  {'full ms':>8}  "
        f"{'expected':>8}  {'measured':>8}"
    )
    for r in rows:
        shares = "/".join(f"{s:.2f}" for s in r["share"])
        print(
            f"{r['seed']:>4}  {r['full_accuracy']:>8.4f}  {r['dynamic_accuracy']:>8.4f}  "
            f"{shares:>18}  {r['path_latency_ms'][-1]:>8.3f}  {r['expected_latency_ms']:>8.3f}"
            f"  {r['measured_dynamic_ms']:>8.3f}"
        )
    print(
        f"mean: accuracy {summary['full_accuracy']:.4f} full vs "
        f"{summary['early_exit_accuracy']:.4f} with exits; latency {full_ms:.3f} ms full vs "
        f"{expected:.3f} ms expected ({100 * summary['expected_saving']:.0f}% lower) and "
        f"{measured:.3f} ms measured ({100 * summary['measured_saving']:.0f}% lower)"
    )
    print(f"Wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
