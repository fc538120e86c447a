"""Benchmark: each block added for the rest of the survey against its nearest existing
alternative, in the same small architecture on Fashion-MNIST.

Pairs (issue 21): LiSA against multi-head self-attention, Mobile-Former against the depthwise
conv mixer, ShiftViT's shift against pooling, and the unitary and PosMLP position encodings
against RoPE-Axial and the relative position bias (with multi-head self-attention). Every
variant is the same two-stage model (`patch/4 · POS · [MIXER 2x64 | mhsa 2x96↓] · 32px`, two
heads where the mixer attends), trained from scratch with the `full` recipe on a class-balanced
subset of Fashion-MNIST's training split (validation carved from it), with the same seeds.
Reported per variant: validation accuracy and the official test split's accuracy (read once per
trained model, after its training, for the table only: nothing is selected on it), mean ± sd
over the seeds; params; FLOPs; CPU latency at batch 1 on 1 thread, every variant measured once
per round in interleaved rounds after the trainings (median of the rounds), deployment form.

    python experiments/bench_blocks.py            # 4,000 images, 5 epochs, seeds 0 1 2
    python experiments/bench_blocks.py --quick    # 600 images, 1 epoch, seed 0 (about 5 min)

Resumes: each (variant, seed) is written to --work when it finishes. Writes results.json and
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
from nas.config import DataConfig, LatencyConfig, TrainConfig
from nas.cost import count_flops, count_params, cpu_name, measure_latency
from nas.data import load_dataset
from nas.evaluation import evaluate_model, load_split
from nas.export import deployment_form
from nas.report import write_results
from nas.train import TrainingFailed, train_model
from search_spaces.arch import ArchConfig, StageConfig
from search_spaces.model import LightViT

# (variant, mixer of stage 1 with its option, position encoding, the alternative it is set
# against)
VARIANTS: list[tuple[str, str, dict[str, int], str, str | None]] = [
    ("mhsa", "mhsa", {}, "learned", None),
    ("lisa", "lisa", {}, "learned", "mhsa"),
    ("dwconv", "dwconv", {"kernel_size": 3}, "learned", None),
    ("mobileformer", "mobileformer", {"global_tokens": 6}, "learned", "dwconv"),
    ("pool", "pool", {}, "learned", None),
    ("shift", "shift", {"shift_div": 12}, "learned", "pool"),
    ("mhsa + rope_axial", "mhsa", {}, "rope_axial", None),
    ("mhsa + rel_bias", "mhsa", {}, "rel_bias", None),
    ("mhsa + unitary", "mhsa", {}, "unitary", "mhsa + rope_axial"),
    ("mhsa + posmlp", "mhsa", {}, "posmlp", "mhsa + rel_bias"),
]
ATTENDS = {"mhsa", "lisa", "mobileformer"}


def arch_of(mixer: str, options: dict[str, int], pos_enc: str, in_chans: int) -> ArchConfig:
    heads = 2 if mixer in ATTENDS else 1
    return ArchConfig(
        stages=(
            StageConfig(2, 64, heads, 2.0, mixer, **options),
            StageConfig(2, 96, 2, 2.0, "mhsa", downsample=True),
        ),
        stem="patch",
        patch_size=4,
        pos_enc=pos_enc,
        img_size=32,
        in_chans=in_chans,
        num_classes=10,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (about 5 minutes)")
    parser.add_argument("--max-train", type=int, help="training images (balanced subset)")
    parser.add_argument("--epochs", type=int, help="epochs of the full recipe")
    parser.add_argument("--seeds", type=int, nargs="+", help="training seeds")
    parser.add_argument("--rounds", type=int, help="interleaved latency rounds")
    parser.add_argument("--threads", type=int, default=2, help="training threads")
    parser.add_argument(
        "--data",
        default=None,
        help="Fashion-MNIST's idx folder (default: Debian's dataset-fashion-mnist package)",
    )
    parser.add_argument("--only", nargs="*", help="variant names to run")
    parser.add_argument("--work", help="where finished trainings are kept (resumes)")
    parser.add_argument("--out", help="where results.json and results.md go")
    args = parser.parse_args(argv)
    set_mode_defaults(
        args,
        "blocks",
        {
            "max_train": (600, 4000),
            "epochs": (1, 5),
            "seeds": ([0], [0, 1, 2]),
            "rounds": (1, 5),
        },
    )
    names = [v[0] for v in VARIANTS]
    unknown = sorted(set(args.only or ()) - set(names))
    if unknown:
        parser.error(f"unknown variant {unknown[0]!r}; use any of: {', '.join(names)}")
    variants = [v for v in VARIANTS if not args.only or v[0] in args.only]
    os.makedirs(args.work, exist_ok=True)
    start = time.perf_counter()
    data_cfg = DataConfig(
        name="fashion_mnist",
        path=args.data,
        img_size=32,
        val_fraction=0.05,
        seed=0,
        max_train=args.max_train,
    )
    data = load_dataset(data_cfg)
    recipe = TrainConfig(recipe="full", epochs=args.epochs, threads=args.threads, device="cpu")
    test_part = None
    rows: list[dict[str, Any]] = []
    jobs = [(v, seed) for v in variants for seed in args.seeds]
    for (name, mixer, options, pos_enc, _), seed in tqdm(
        jobs, desc="trainings", unit="model", disable=None
    ):
        path = Path(args.work) / f"{name.replace(' ', '').replace('+', '-')}-seed{seed}.json"
        if path.is_file():
            rows.append(json.loads(path.read_text()))
            continue
        arch = arch_of(mixer, options, pos_enc, data.in_chans)
        torch.manual_seed(seed)
        model = LightViT(arch)
        row: dict[str, Any] = {"variant": name, "seed": seed, "arch": arch.describe()}
        try:
            result = train_model(model, data, recipe, seed)
            if test_part is None:  # read once, for every model, after its training
                test_part = load_split(data_cfg, data, "test")
            test = evaluate_model(model, data_cfg, data, "test", part=test_part)
            row.update(
                val_acc=round(result.val_acc, 5),
                test_acc=round(test.accuracy, 5),
                seconds=round(result.seconds, 1),
            )
        except TrainingFailed as e:
            row.update(val_acc=None, test_acc=None, failed=str(e))
        path.write_text(json.dumps(row))
        rows.append(row)
    costs = measure_costs(variants, data.in_chans, args.rounds)
    summary = summarise(variants, rows, costs)
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "command": "python experiments/bench_blocks.py" + (" --quick" if args.quick else ""),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "data": f"Fashion-MNIST 32px, {len(data.train)} training images (balanced subset), "
        f"{len(data.val)} validation images, the official 10,000-image test split",
        "recipe": recipe.describe(),
        "seeds": args.seeds,
        "latency": f"1 thread, batch 1, median of {args.rounds} interleaved round(s)",
        "seconds": round(time.perf_counter() - start, 1),
    }
    payload = {"meta": meta, "summary": summary, "rows": rows}
    write_results(args.out, payload, results_md(summary, meta))
    print(
        f"bench_blocks: {len(rows)} trainings of {len(variants)} variants in "
        f"{meta['seconds'] / 60:.1f} min; wrote {args.out}/results.md"
    )
    return 0


def measure_costs(
    variants: list[tuple], in_chans: int, rounds: int
) -> dict[str, dict[str, float]]:
    """Params, FLOPs and 1-thread latency of each variant (untrained weights: the same
    operations), every variant once per round."""
    cfg = LatencyConfig()
    models = {}
    costs: dict[str, dict[str, Any]] = {}
    for name, mixer, options, pos_enc, _ in variants:
        model = LightViT(arch_of(mixer, options, pos_enc, in_chans)).eval()
        costs[name] = {
            "params": count_params(model),
            "flops": count_flops(deployment_form(model), (in_chans, 32, 32)),
            "latency": [],
        }
        models[name] = deployment_form(model)
    with tqdm(total=rounds * len(models), desc="latency", unit="model", disable=None) as bar:
        for _ in range(rounds):
            for name, model in models.items():
                result = measure_latency(
                    model,
                    (in_chans, 32, 32),
                    threads=1,
                    warmup=cfg.warmup,
                    runs=cfg.runs,
                    max_seconds=cfg.max_seconds,
                )
                costs[name]["latency"].append(result.median_ms)
                bar.update(1)
    for c in costs.values():
        c["latency_ms"] = round(statistics.median(c.pop("latency")), 4)
    return costs


def _mean_sd(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    sd = statistics.stdev(values) if len(values) > 1 else None
    return round(statistics.mean(values), 4), (round(sd, 4) if sd is not None else None)


def summarise(
    variants: list[tuple], rows: list[dict[str, Any]], costs: dict[str, dict[str, float]]
) -> list[dict[str, Any]]:
    out = []
    for name, _, _, _, against in variants:
        mine = [r for r in rows if r["variant"] == name and r.get("val_acc") is not None]
        val, val_sd = _mean_sd([r["val_acc"] for r in mine])
        test, test_sd = _mean_sd([r["test_acc"] for r in mine])
        out.append(
            {
                "variant": name,
                "against": against,
                "arch": next((r["arch"] for r in rows if r["variant"] == name), ""),
                "val_acc": val,
                "val_sd": val_sd,
                "test_acc": test,
                "test_sd": test_sd,
                "n": len(mine),
                "failed": sum(1 for r in rows if r["variant"] == name and r.get("failed")),
                **costs[name],
            }
        )
    return out


def results_md(summary: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    def acc(mean: float | None, sd: float | None) -> str:
        if mean is None:
            return "failed"
        return f"{mean:.4f}" + (f" ± {sd:.4f}" if sd is not None else "")

    by_name = {s["variant"]: s for s in summary}
    lines = [
        f"New blocks against their nearest alternative ({meta['date']}; `{meta['command']}`; "
        f"{meta['machine']}): {meta['data']}; recipe {meta['recipe']}; seeds {meta['seeds']}; "
        f"latency {meta['latency']}. Mean ± sd over the seeds.",
        "",
        "| variant | against | params | FLOPs | latency | val accuracy | test accuracy | "
        "test, against it |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in summary:
        other = by_name.get(s["against"]) if s["against"] else None
        diff = (
            f"{s['test_acc'] - other['test_acc']:+.4f}"
            if other and s["test_acc"] is not None and other["test_acc"] is not None
            else ""
        )
        lines.append(
            f"| {s['variant']} | {s['against'] or ''} | {s['params'] / 1e3:.1f}k | "
            f"{s['flops'] / 1e6:.1f}M | {s['latency_ms']:.3f} ms | "
            f"{acc(s['val_acc'], s['val_sd'])} | {acc(s['test_acc'], s['test_sd'])} | {diff} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
