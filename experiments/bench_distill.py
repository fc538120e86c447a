"""Benchmark: response distillation. Trains (or reuses) a CNN teacher on digits at 32x32, then
the same student architecture without a teacher and with each distillation variant, for the
same epochs and seeds, and reports the accuracies and the proxy-training throughput (CPU,
2 threads). Variants: `plain` (no teacher), `soft` (Hinton, arXiv 1503.02531), `hard` (DeiT's
hard labels on the class head, arXiv 2012.12877), `deit` (hard labels through a distillation
head, DeiT's distillation token in LeViT's form, arXiv 2104.01136).

    python experiments/bench_distill.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys

from tqdm import tqdm

from nas.config import DataConfig, DistillConfig, SearchConfig, StudyConfig, TrainConfig
from nas.cost import cpu_name
from nas.data import load_dataset
from nas.distill import load_teacher, train_teacher
from nas.train import train_model
from search_spaces.arch import ArchConfig, StageConfig
from search_spaces.model import LightViT

STUDENT = ArchConfig(
    stages=(StageConfig(depth=2, dim=64, heads=2, mlp_ratio=2.0, mixer="mhsa"),),
    stem="patch",
    patch_size=4,
    pos_enc="learned",
    img_size=32,
    num_classes=10,
)

# variant -> (DistillConfig changes, distillation head); None: no teacher
VARIANTS = {
    "plain": None,
    "soft": ({"kind": "soft"}, False),
    "hard": ({"kind": "hard"}, False),
    "deit": ({"kind": "hard", "head": True}, True),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=12, help="student epochs")
    parser.add_argument("--teacher-model", default="resnet18")
    parser.add_argument("--teacher-epochs", type=int, default=20)
    parser.add_argument("--teacher", default="runs/teachers/resnet18-digits32")
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", default="experiments/results/distill")
    args = parser.parse_args()

    data = load_dataset(DataConfig(name="digits", img_size=32))
    recipe = TrainConfig(epochs=args.epochs, threads=2, device="cpu")
    if not os.path.isdir(args.teacher):
        config = SearchConfig(
            study=StudyConfig(name="teacher"),
            data=DataConfig(img_size=32),
            train=dataclasses.replace(recipe, epochs=args.teacher_epochs),
        )
        bar = tqdm(
            total=args.teacher_epochs,
            desc=f"teacher {args.teacher_model}",
            unit="epoch",
            disable=None,
        )
        train_teacher(
            config,
            data,
            args.teacher,
            model_name=args.teacher_model,
            on_epoch=lambda *_: bar.update(1),
        )
        bar.close()
    teacher = load_teacher(args.teacher, data)
    base = DistillConfig(teacher=args.teacher, alpha=args.alpha, temperature=args.temperature)
    rows = []
    for seed in tqdm(args.seeds, desc="student seeds", disable=None):
        row = {"seed": seed}
        for name in args.variants:
            arch, kwargs = STUDENT, {}
            if VARIANTS[name] is not None:
                changes, head = VARIANTS[name]
                arch = dataclasses.replace(STUDENT, distill_head=head)
                kwargs = {
                    "teacher": teacher.model,
                    "distill": dataclasses.replace(base, **changes),
                }
            result = train_model(LightViT(arch), data, recipe, seed, **kwargs)
            row[name] = round(result.val_acc, 5)
            row[f"{name}_images_per_second"] = round(result.images_per_second, 1)
        rows.append(row)
    summary = {
        "student": STUDENT.describe(),
        "teacher": teacher.info,
        "epochs": args.epochs,
        "alpha": args.alpha,
        "temperature": args.temperature,
        "seeds": args.seeds,
        "variants": args.variants,
        **{f"{v}_mean": statistics.mean(r[v] for r in rows) for v in args.variants},
        **{
            f"{v}_images_per_second": statistics.median(r[f"{v}_images_per_second"] for r in rows)
            for v in args.variants
        },
        "cpu": cpu_name(),
        "threads": 2,
        "runs": rows,
    }
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "distill-digits32.json")
    with open(path, "w") as f:
        json.dump(summary, f, indent=2)
    print(
        f"student {STUDENT.describe()}, {args.epochs} epochs; teacher "
        f"{teacher.info['architecture']} (val acc {teacher.info['val_acc']:.4f})"
    )
    print("seed  " + "  ".join(f"{v:>7}" for v in args.variants))
    for r in rows:
        print(f"{r['seed']:>4}  " + "  ".join(f"{r[v]:>7.4f}" for v in args.variants))
    print("mean  " + "  ".join(f"{summary[v + '_mean']:>7.4f}" for v in args.variants))
    speeds = ", ".join(f"{v} {summary[v + '_images_per_second']:.0f}" for v in args.variants)
    print(f"proxy-training throughput, 2 threads, images/s: {speeds}")
    print(f"Wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
