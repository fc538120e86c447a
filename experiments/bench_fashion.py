"""Benchmark: a search on Fashion-MNIST, its best retrained, and the test split measured once.

The manual's commands (docs/benchmarks.md), in order, on experiments/fashion.yaml
(Fashion-MNIST at 32x32, the survey space, 500k parameters and 2.5 ms on one CPU thread):

  1. `lvit search experiments/fashion.yaml`: the proxy recipe (4 epochs on a balanced 10,000
     of the 54,000 training images), TPE, 40 candidates;
  2. the best trained candidate by validation accuracy (the Pareto front's first row);
  3. `lvit train BEST --recipe full --max-train 0`: the full recipe on all 54,000 training
     images, and `--recipe proxy` at the same length ("today's recipe"), for each seed;
  4. `lvit evaluate ... --split test` of each: the only time the 10,000 test images are read.

    python experiments/bench_fashion.py                 # about 1.5 hours on the 2-core machine
    python experiments/bench_fashion.py --quick         # every step, tiny (a few minutes)

Resumes: the study resumes, and a retrained folder that is already there is kept. Writes
results.json and results.md to --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from nas.config import load_config
from nas.report import pareto_front, write_results
from nas.storage import load_study


def lvit(*args: str) -> str:
    """Run an lvit command as a user would; its stdout (stderr shown on failure)."""
    done = subprocess.run([sys.executable, "-m", "nas.cli", *args], capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"bench_fashion: lvit {' '.join(args)} failed ({done.returncode})")
    return done.stdout


def study_span(study: Any) -> float:
    """Seconds from the first trial's start to the last one's end."""
    done = [t for t in study.trials if t.datetime_start and t.datetime_complete]
    if not done:
        return 0.0
    first = min(t.datetime_start for t in done)
    return (max(t.datetime_complete for t in done) - first).total_seconds()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="experiments/fashion.yaml")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--epochs", type=int, default=15, help="retraining epochs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--work", default="runs/bench-fashion")
    parser.add_argument("--out", default="experiments/results/fashion")
    args = parser.parse_args()
    work = Path(args.work + ("-quick" if args.quick else ""))
    out = args.out + ("-quick" if args.quick else "")
    work.mkdir(parents=True, exist_ok=True)
    config_path = args.config
    if args.quick:  # the same steps on a sliver of the data
        raw = yaml.safe_load(Path(args.config).read_text())
        raw["study"].update(n_trials=4, name="fashion32-quick")
        raw["study"]["storage"] = f"sqlite:///{work}/fashion32-quick.db"
        raw["study"]["artifacts"] = str(work / "artifacts")
        raw["data"]["max_train"] = 500
        raw["train"]["epochs"] = 1
        config_path = str(work / "fashion-quick.yaml")
        Path(config_path).write_text(yaml.safe_dump(raw))
        args.epochs, args.seeds = 1, [0]
    config = load_config(config_path)
    start = time.perf_counter()

    print(f"bench_fashion: 1/4 lvit search {config_path}", file=sys.stderr)
    t0 = time.perf_counter()
    lvit("search", config_path)
    search_seconds = time.perf_counter() - t0
    study = load_study(config.study.storage_url, config.study.name)
    front = pareto_front(study)
    best = study.trials[front[0].number]
    arch_path = work / "best-arch.json"
    arch_path.write_text(json.dumps(best.user_attrs["arch"]))
    trials = [t.user_attrs.get("status") for t in study.trials]
    search = {
        "study": config.study.name,
        "candidates": len(study.trials),
        "trained": trials.count("trained"),
        "rejected": trials.count("infeasible"),
        # the study's own span (a resumed search takes seconds to confirm it is done)
        "seconds": round(max(search_seconds, study_span(study)), 1),
        "best_trial": best.number,
        "best_arch": best.user_attrs["arch_line"],
        "best_val_acc": best.values[0],
        "best_params": best.user_attrs["costs"]["params"],
        "best_latency_ms": best.user_attrs["costs"]["latency_ms"],
        "front": [
            {
                "trial": r.number,
                "val_acc": r.accuracy,
                "latency_ms": r.latency_ms,
                "params": r.params,
            }
            for r in front
        ],
    }
    print(f"bench_fashion: 2/4 best: trial {best.number}, {search['best_arch']}", file=sys.stderr)

    runs = []
    jobs = [(recipe, seed) for seed in args.seeds for recipe in ("full", "proxy")]
    for k, (recipe, seed) in enumerate(jobs, 1):
        folder = work / f"best-{recipe}-seed{seed}"
        print(
            f"bench_fashion: 3/4 lvit train --recipe {recipe} --seed {seed} ({k}/{len(jobs)})",
            file=sys.stderr,
        )
        t0 = time.perf_counter()
        timing = work / f"{folder.name}.seconds"  # how long its training took, when this ran it
        if not (folder / "config.json").is_file():
            lvit(
                "train",
                str(arch_path),
                "--config",
                config_path,
                "--recipe",
                recipe,
                "--epochs",
                str(args.epochs),
                "--max-train",
                "0",
                "--seed",
                str(seed),
                "--out",
                str(folder),
            )
            timing.write_text(f"{time.perf_counter() - t0:.1f}\n")
        seconds = float(timing.read_text()) if timing.is_file() else None
        record = json.loads((folder / "config.json").read_text())["lightweight_vit"]
        print(f"bench_fashion: 4/4 lvit evaluate {folder} --split test", file=sys.stderr)
        report_dir = work / "reports" / folder.name
        lvit(
            "evaluate",
            str(folder),
            "--config",
            config_path,
            "--split",
            "test",
            "--out",
            str(report_dir),
        )
        test = json.loads((report_dir / "evaluation-test.json").read_text())
        runs.append(
            {
                "recipe": recipe,
                "seed": seed,
                "epochs": args.epochs,
                "val_acc": record["val_acc"],
                "test_acc": test["accuracy"],
                "test_loss": test["loss"],
                "per_class_test_acc": dict(zip(test["classes"], test["per_class"], strict=True)),
                "seconds": seconds,
                "folder": str(folder),
            }
        )
    summary = {
        recipe: {
            "test_mean": round(statistics.mean(r["test_acc"] for r in rs), 4),
            "test_sd": round(statistics.stdev(r["test_acc"] for r in rs), 4)
            if len(rs) > 1
            else None,
            "val_mean": round(statistics.mean(r["val_acc"] for r in rs), 4),
            "n": len(rs),
        }
        for recipe in ("full", "proxy")
        if (rs := [r for r in runs if r["recipe"] == recipe])
    }
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "command": "python experiments/bench_fashion.py" + (" --quick" if args.quick else ""),
        "config": config_path,
        "seconds": round(time.perf_counter() - start, 1),
    }
    payload = {"meta": meta, "search": search, "runs": runs, "summary": summary}
    write_results(out, payload, results_md(meta, search, runs, summary))
    print(f"bench_fashion: done in {meta['seconds'] / 60:.1f} min; wrote {out}")
    return 0


def minutes(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 60:.1f}"


def results_md(
    meta: dict[str, Any], search: dict[str, Any], runs: list[dict], summary: dict[str, Any]
) -> str:
    lines = [
        f"Fashion-MNIST ({meta['date']}; `{meta['command']}`, config `{meta['config']}`)",
        "",
        f"Search: {search['candidates']} candidates ({search['trained']} trained, "
        f"{search['rejected']} rejected by the budgets) in {search['seconds'] / 60:.1f} min; "
        f"best by validation accuracy: trial {search['best_trial']}, `{search['best_arch']}`, "
        f"{search['best_params']:,} params, {search['best_latency_ms']:.3f} ms, validation "
        f"accuracy {search['best_val_acc']:.4f} after the proxy.",
        "",
        "| recipe | seed | epochs | val accuracy | test accuracy | minutes |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in runs:
        lines.append(
            f"| {r['recipe']} | {r['seed']} | {r['epochs']} | {r['val_acc']:.4f} | "
            f"{r['test_acc']:.4f} | {minutes(r['seconds'])} |"
        )
    if any(r["seconds"] is None for r in runs):
        lines.append("")
        lines.append("-: trained by an earlier run of this script, before it recorded the time.")
    lines.append("")
    for recipe, s in summary.items():
        sd = f" ± {s['test_sd']:.4f}" if s["test_sd"] is not None else ""
        lines.append(f"- {recipe}: test accuracy {s['test_mean']:.4f}{sd} over {s['n']} seed(s)")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
