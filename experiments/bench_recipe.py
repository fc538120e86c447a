"""Benchmark: what each piece of a ViT training recipe does, on Fashion-MNIST: the measurements
behind the `full` preset.

One architecture of about 200k parameters (experiments/archs/hybrid-200k.json) trained from
scratch on a class-balanced subset of Fashion-MNIST's training split at 32x32 with: the
`proxy` recipe (the light augmentation every search candidate gets, at the same length), a
DeiT-style recipe from timm's pieces, that recipe with one piece taken out or changed at a time
(mixup and cutmix, RandAugment, random erasing, drop path, the crop, the optimisation), the
`full` preset these measurements chose, and that with a piece out or EMA added. Validation
accuracy (the 6,000 images carved from the training split) after the last epoch, over seeds:
the recipe is a choice made on validation data, so the test split is not read here.

    python experiments/bench_recipe.py                       # 10,000 images, 15 epochs, 2 seeds
    python experiments/bench_recipe.py --quick               # 1,000 images, 2 epochs, 1 seed

Resumes: each (variant, seed) is saved to --work when it finishes. Writes results.json and
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

from nas.config import DataConfig, TrainConfig
from nas.data import load_dataset
from nas.report import write_results
from nas.train import train_model
from search_spaces.arch import ArchConfig
from search_spaces.model import LightViT

ARCH = ArchConfig.from_dict(
    json.loads((Path(__file__).parent / "archs" / "hybrid-200k.json").read_text())
)

# DeiT's recipe for training vision transformers from scratch ("Training data-efficient image
# transformers & distillation through attention", arXiv 2012.12877) with timm's pieces, scaled
# to small data: the learning rate for batches of 128, a crop of at least 35% of a 32px image.
# It was the `full` preset before these measurements.
DEIT: dict[str, Any] = {
    "batch_size": 128,
    "lr": 2e-3,
    "warmup_epochs": 5.0,
    "crop_scale": (0.35, 1.0),
    "auto_augment": "rand-m9-mstd0.5-inc1",
    "re_prob": 0.25,
    "mixup": 0.8,
    "cutmix": 1.0,
    "drop_path": 0.1,
}
PROXY_OPTIMISATION = {"batch_size": 32, "lr": 3e-3, "warmup_epochs": 1.0}
LIGHTER = {"crop_scale": (0.8, 1.0), "auto_augment": "none", "mixup": 0.0, "cutmix": 0.0}

# (name, the recipe: changes to the `full` preset); "proxy" is the search's recipe at the same
# length; "full" is the preset as it is now, the last DeiT-style variant (main checks).
VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("proxy", {"recipe": "proxy"}),
    ("DeiT-style", DEIT),
    ("DeiT-style, no mixup/cutmix", {**DEIT, "mixup": 0.0, "cutmix": 0.0}),
    ("DeiT-style, no RandAugment", {**DEIT, "auto_augment": "none"}),
    ("DeiT-style, TrivialAugment", {**DEIT, "auto_augment": "trivial"}),
    ("DeiT-style, no random erasing", {**DEIT, "re_prob": 0.0}),
    ("DeiT-style, no drop path", {**DEIT, "drop_path": 0.0}),
    ("DeiT-style, crop scale [0.8, 1]", {**DEIT, "crop_scale": (0.8, 1.0)}),
    ("DeiT-style, proxy's optimisation", {**DEIT, **PROXY_OPTIMISATION}),
    (
        "DeiT-style, proxy's optimisation, no RandAugment, no mixup/cutmix",
        {**DEIT, **PROXY_OPTIMISATION, "auto_augment": "none", "mixup": 0.0, "cutmix": 0.0},
    ),
    (
        "full: DeiT-style, proxy's optimisation, crop scale [0.8, 1], no RandAugment, no "
        "mixup/cutmix",
        {**DEIT, **PROXY_OPTIMISATION, **LIGHTER},
    ),
    ("full, no random erasing", {"re_prob": 0.0}),
    ("full, no drop path", {"drop_path": 0.0}),
    ("full + EMA 0.999", {"ema_decay": 0.999}),
]
FULL = VARIANTS[10][0]


def recipe_of(changes: dict[str, Any], epochs: int, threads: int) -> TrainConfig:
    base = {"recipe": "full", "epochs": epochs, "threads": threads, "device": "cpu"}
    return TrainConfig(**{**base, **changes})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--max-train", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="*", default=None, help="variant names to run")
    parser.add_argument("--work", default="runs/bench-recipe")
    parser.add_argument("--out", default="experiments/results/recipe")
    args = parser.parse_args()
    if args.quick:
        args.max_train, args.epochs, args.seeds = 1_000, 2, [0]
        args.work, args.out = args.work + "-quick", args.out + "-quick"
    os.makedirs(args.work, exist_ok=True)
    preset = recipe_of({}, args.epochs, args.threads)
    if recipe_of(dict(VARIANTS)[FULL], args.epochs, args.threads) != preset:
        raise SystemExit(f"bench_recipe: the variant {FULL!r} is no longer the full preset")
    torch.set_num_threads(args.threads)
    data_cfg = DataConfig(
        name="fashion_mnist", img_size=32, val_fraction=0.1, seed=0, max_train=args.max_train
    )
    data = load_dataset(data_cfg)
    variants = [v for v in VARIANTS if args.only is None or v[0] in args.only]
    jobs = [(name, changes, seed) for name, changes in variants for seed in args.seeds]
    start = time.perf_counter()
    rows = []
    for name, changes, seed in tqdm(jobs, desc="recipes", unit="training", disable=None):
        path = Path(args.work) / f"{name.replace(' ', '_').replace('/', '-')}-seed{seed}.json"
        if path.is_file():
            rows.append(json.loads(path.read_text()))
            continue
        recipe = recipe_of(changes, args.epochs, args.threads)
        torch.manual_seed(seed)
        model = LightViT(ARCH)
        result = train_model(model, data, recipe, seed)
        row = {
            "variant": name,
            "seed": seed,
            "recipe": recipe.describe(),
            "val_acc": result.val_acc,
            "best_epoch_val_acc": max(h["val_acc"] for h in result.history),
            "curve": [h["val_acc"] for h in result.history],
            "seconds": round(result.seconds, 1),
            "images_per_second": round(result.images_per_second, 1),
            "data_seconds": result.data_seconds,
        }
        path.write_text(json.dumps(row))
        rows.append(row)
    summary = summarise(rows, [v[0] for v in variants])
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "command": "python experiments/bench_recipe.py" + (" --quick" if args.quick else ""),
        "arch": ARCH.describe(),
        "data": f"Fashion-MNIST 32px, {len(data.train)} training images (balanced subset), "
        f"{len(data.val)} validation images",
        "epochs": args.epochs,
        "seeds": args.seeds,
        "seconds": round(time.perf_counter() - start, 1),
    }
    payload = {"meta": meta, "summary": summary, "rows": rows}
    write_results(args.out, payload, results_md(summary, meta))
    print(f"bench_recipe: {len(rows)} trainings; wrote {args.out}")
    return 0


def summarise(rows: list[dict[str, Any]], order: list[str]) -> list[dict[str, Any]]:
    out = []
    for name in order:
        accs = [r["val_acc"] for r in rows if r["variant"] == name]
        if not accs:
            continue
        out.append(
            {
                "variant": name,
                "mean": round(statistics.mean(accs), 4),
                "sd": round(statistics.stdev(accs), 4) if len(accs) > 1 else None,
                "n": len(accs),
                "minutes": round(
                    statistics.mean(r["seconds"] for r in rows if r["variant"] == name) / 60, 1
                ),
                "recipe": next(r["recipe"] for r in rows if r["variant"] == name),
            }
        )
    return out


def results_md(summary: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    deit = next((s["mean"] for s in summary if s["variant"] == "DeiT-style"), None)
    lines = [
        f"Training recipes ({meta['date']}; `{meta['command']}`): {meta['arch']} on "
        f"{meta['data']}, {meta['epochs']} epochs, seeds {meta['seeds']}; validation accuracy "
        "after the last epoch.",
        "",
        "| recipe | val accuracy, mean ± sd | against DeiT-style | minutes a training |",
        "| --- | ---: | ---: | ---: |",
    ]
    for s in summary:
        sd = f" ± {s['sd']:.4f}" if s["sd"] is not None else ""
        diff = (
            f"{s['mean'] - deit:+.4f}" if deit is not None and s["variant"] != "DeiT-style" else ""
        )
        lines.append(f"| {s['variant']} | {s['mean']:.4f}{sd} | {diff} | {s['minutes']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
