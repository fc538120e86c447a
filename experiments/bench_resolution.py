"""Benchmark: what dynamic resolution buys. Trains one dynamic-resolution architecture (a
16px first pass before the 32px one; both passes trained together) on Fashion-MNIST or digits,
calibrates the first pass's threshold for at most 1 point of validation accuracy lost, and
reports per seed: the accuracy with both passes and with the dynamic path, the share of images
that needed the second pass, the latency of the full resolution alone, of the first pass, of
both, the expected latency and the dynamic path measured image by image (CPU, 1 thread, batch
1); then mean ± sd over the seeds.

    python experiments/bench_resolution.py          # Fashion-MNIST: 4,000 images, 10 epochs
    python experiments/bench_resolution.py --data digits
    python experiments/bench_resolution.py --quick   # 600 images, 1 epoch, 1 seed

Resumes: each seed's result is written to --work when it finishes. Writes results.json and
results.md to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from nas.bench import set_mode_defaults
from nas.config import DataConfig, TrainConfig
from nas.cost import cpu_name
from nas.data import load_dataset
from nas.exits import calibrate_resolution
from nas.report import write_results
from nas.train import train_model
from search_spaces.arch import ArchConfig, StageConfig
from search_spaces.model import LightViT


def arch_of(in_chans: int) -> ArchConfig:
    return ArchConfig(
        stages=(
            StageConfig(2, 64, 2, 2.0, "mhsa"),
            StageConfig(2, 96, 2, 2.0, "dwconv", downsample=True),
        ),
        stem="conv",
        patch_size=2,
        pos_enc="learned",
        img_size=32,
        in_chans=in_chans,
        num_classes=10,
        dynamic_resolution=16,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (a few minutes)")
    parser.add_argument("--data", default="fashion_mnist", help="fashion_mnist[:PATH] or digits")
    parser.add_argument("--max-train", type=int, help="training images (balanced subset)")
    parser.add_argument("--epochs", type=int, help="epochs of the full recipe")
    parser.add_argument("--seeds", type=int, nargs="+", help="training seeds")
    parser.add_argument("--max-drop", type=float, default=0.01, help="accuracy drop (0.01)")
    parser.add_argument("--measure-images", type=int, help="images timed one by one")
    parser.add_argument("--threads", type=int, default=2, help="training threads")
    parser.add_argument("--work", help="where finished seeds are kept (resumes)")
    parser.add_argument("--out", help="where results.json and results.md go")
    args = parser.parse_args(argv)
    set_mode_defaults(
        args,
        "resolution",
        {
            "max_train": (600, 4000),
            "epochs": (1, 10),
            "seeds": ([0], [0, 1, 2]),
            "measure_images": (50, 500),
        },
    )
    name, _, path = args.data.partition(":")
    if name not in ("fashion_mnist", "digits"):
        parser.error(f"--data {args.data}: use fashion_mnist[:PATH] or digits")
    os.makedirs(args.work, exist_ok=True)
    data_cfg = DataConfig(
        name=name,
        path=path or None,
        img_size=32,
        val_fraction=0.05 if name == "fashion_mnist" else 0.2,
        seed=0,
        max_train=args.max_train if name == "fashion_mnist" else None,
    )
    data = load_dataset(data_cfg)
    arch = arch_of(data.in_chans)
    recipe = TrainConfig(recipe="full", epochs=args.epochs, threads=args.threads, device="cpu")
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for seed in tqdm(args.seeds, desc="seeds", unit="seed", disable=None):
        done = Path(args.work) / f"{name}-seed{seed}.json"
        if done.is_file():
            rows.append(json.loads(done.read_text()))
            continue
        torch.manual_seed(seed)
        model = LightViT(arch)
        result = train_model(model, data, recipe, seed)
        report = calibrate_resolution(
            model, data, max_drop=args.max_drop, threads=1, measure_images=args.measure_images
        )
        row = {"seed": seed, "train_seconds": round(result.seconds, 1), **report.to_dict()}
        done.write_text(json.dumps(row))
        rows.append(row)
    summary = summarise(rows)
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "command": "python experiments/bench_resolution.py"
        + (f" --data {args.data}" if args.data != "fashion_mnist" else "")
        + (" --quick" if args.quick else ""),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "arch": arch.describe(),
        "data": f"{data.name} 32px, {len(data.train)} training / {len(data.val)} validation "
        "images",
        "recipe": recipe.describe(),
        "max_drop": args.max_drop,
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_results(
        args.out, {"meta": meta, "summary": summary, "rows": rows}, results_md(rows, summary, meta)
    )
    print(
        f"bench_resolution: {len(rows)} seed(s) in {meta['seconds'] / 60:.1f} min; "
        f"wrote {args.out}/results.md"
    )
    return 0


KEYS = (
    "full_accuracy",
    "dynamic_accuracy",
    "second_pass_share",
    "full_only_latency_ms",
    "low_latency_ms",
    "both_latency_ms",
    "expected_latency_ms",
    "measured_dynamic_ms",
)


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in KEYS:
        values = [r[key] for r in rows]
        out[key] = round(statistics.mean(values), 5)
        out[key + "_sd"] = round(statistics.stdev(values), 5) if len(values) > 1 else None
    full = out["full_only_latency_ms"]
    out["expected_vs_full"] = round(out["expected_latency_ms"] / full, 4)
    out["measured_vs_full"] = round(out["measured_dynamic_ms"] / full, 4)
    out["accuracy_lost"] = round(out["full_accuracy"] - out["dynamic_accuracy"], 5)
    return out


def results_md(rows: list[dict[str, Any]], s: dict[str, Any], meta: dict[str, Any]) -> str:
    def cell(key: str, fmt: str) -> str:
        sd = s[key + "_sd"]
        return format(s[key], fmt) + (f" ± {format(sd, fmt)}" if sd is not None else "")

    lines = [
        f"Dynamic resolution ({meta['date']}; `{meta['command']}`; {meta['machine']}): "
        f"`{meta['arch']}` on {meta['data']}; {meta['recipe']}; first-pass threshold "
        f"calibrated on validation for at most {meta['max_drop']:.0%} accuracy lost; latency at "
        "1 thread, batch 1.",
        "",
        "| seed | accuracy, both passes | dynamic | needed 32px | 32px alone | 16px pass | both "
        "| expected | measured |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['seed']} | {r['full_accuracy']:.4f} | {r['dynamic_accuracy']:.4f} | "
            f"{r['second_pass_share']:.2f} | {r['full_only_latency_ms']:.3f} ms | "
            f"{r['low_latency_ms']:.3f} ms | {r['both_latency_ms']:.3f} ms | "
            f"{r['expected_latency_ms']:.3f} ms | {r['measured_dynamic_ms']:.3f} ms |"
        )
    lines.append(
        f"| mean | {cell('full_accuracy', '.4f')} | {cell('dynamic_accuracy', '.4f')} | "
        f"{cell('second_pass_share', '.2f')} | {cell('full_only_latency_ms', '.3f')} ms | "
        f"{cell('low_latency_ms', '.3f')} ms | {cell('both_latency_ms', '.3f')} ms | "
        f"{cell('expected_latency_ms', '.3f')} ms | {cell('measured_dynamic_ms', '.3f')} ms |"
    )
    lines += [
        "",
        f"Expected latency {s['expected_vs_full']:.2f}x the full resolution alone, measured "
        f"image by image {s['measured_vs_full']:.2f}x, for {100 * s['accuracy_lost']:.2f} "
        "points of accuracy (both passes against the dynamic path).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
