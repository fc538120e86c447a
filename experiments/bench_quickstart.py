"""Benchmark: do fresh runs of the quickstart make the same latency decisions?

Runs `lvit search experiments/quickstart.yaml` several times, each a fresh study in its own
SQLite file (as a new user's first run is), then compares the runs' budget decisions on every
architecture that more than one run proposed: a decision may differ only for a candidate whose
latency fell inside its measured noise band of the budget in some run. Reports the agreement,
the machine's drift in each run and the range of the best feasible accuracy. Writes
`summary.json`, `decisions.csv` and `results.md`.

    python experiments/bench_quickstart.py --runs 5
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict

import optuna
from tqdm import tqdm

from nas.report import drift_line, pareto_front


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="experiments/quickstart.yaml")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--work", default="runs/bench-quickstart", help="the runs' studies")
    parser.add_argument("--out", default="experiments/results/quickstart-repeat")
    args = parser.parse_args()
    if args.runs < 2:
        print("bench_quickstart: error: --runs must be >= 2 to compare runs", file=sys.stderr)
        return 2
    os.makedirs(args.work, exist_ok=True)
    studies = []
    start = time.perf_counter()
    for k in tqdm(range(args.runs), desc="quickstart runs", unit="run", disable=None):
        url = f"sqlite:///{args.work}/run-{k}.db"
        name = f"quickstart-run-{k}"
        done = os.path.isfile(f"{args.work}/run-{k}.db")  # resumes: a finished run is kept
        if not done:
            subprocess.run(
                [sys.executable, "-m", "nas.cli", "search", args.config, "--storage", url]
                + ["--study", name],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        studies.append(optuna.load_study(study_name=name, storage=url))
    summary = compare(studies)
    summary["seconds"] = round(time.perf_counter() - start, 1)
    write(summary, args.out)
    print(results_md(summary))
    print(f"Wrote summary.json, decisions.csv and results.md in {args.out}")
    return 0


def compare(studies: list[optuna.Study]) -> dict:
    """Every run's decisions on every architecture, and where runs disagree."""
    by_arch: dict[str, list[dict]] = defaultdict(list)
    runs = []
    for k, study in enumerate(studies):
        front = pareto_front(study)
        trials = [
            t for t in study.trials if t.user_attrs.get("status") in ("trained", "infeasible")
        ]
        runs.append(
            {
                "run": k,
                "trained": sum(t.user_attrs["status"] == "trained" for t in trials),
                "rejected": sum(t.user_attrs["status"] == "infeasible" for t in trials),
                "best_accuracy": max((r.accuracy for r in front), default=None),
                "drift": drift_line(study),
            }
        )
        budget = study.user_attrs["config"]["budget"]
        for t in trials:
            costs = t.user_attrs["costs"]
            boundary = costs.get("latency_boundary")
            latency = costs["latency"]
            band = max(latency["p75_ms"] - latency["p25_ms"], 0.01 * latency["median_ms"])
            by_arch[json.dumps(t.user_attrs["arch"], sort_keys=True)].append(
                {
                    "run": k,
                    "trial": t.number,
                    "arch": t.user_attrs["arch_line"],
                    "latency_ms": costs["latency_ms"],
                    "params": costs["params"],
                    "feasible": t.user_attrs["status"] == "trained",
                    "near_budget": boundary is not None
                    or abs(costs["latency_ms"] - budget["max_latency_ms"]) <= band,
                }
            )
    shared = {a: seen for a, seen in by_arch.items() if len({s["run"] for s in seen}) > 1}
    split = {a: seen for a, seen in shared.items() if len({s["feasible"] for s in seen}) > 1}
    excused = {a for a, seen in split.items() if any(s["near_budget"] for s in seen)}
    best = [r["best_accuracy"] for r in runs if r["best_accuracy"] is not None]
    return {
        "runs": runs,
        "shared_architectures": len(shared),
        "decisions_compared": sum(len(seen) for seen in shared.values()),
        "disagreements": len(split),
        "disagreements_in_noise_band": len(excused),
        "disagreements_outside_noise_band": len(split) - len(excused),
        "best_accuracy": {
            "min": min(best),
            "max": max(best),
            "mean": round(statistics.mean(best), 4),
            "sd": round(statistics.stdev(best), 4) if len(best) > 1 else 0.0,
        },
        "decisions": [s for seen in shared.values() for s in seen],
        "split": [s for seen in split.values() for s in seen],
    }


def results_md(summary: dict) -> str:
    best = summary["best_accuracy"]
    lines = [
        f"{len(summary['runs'])} fresh runs of the quickstart: "
        f"{summary['shared_architectures']} architectures proposed by more than one run "
        f"({summary['decisions_compared']} decisions); the runs disagreed on "
        f"{summary['disagreements']} of them, {summary['disagreements_in_noise_band']} inside "
        f"the noise band of the budget and {summary['disagreements_outside_noise_band']} "
        "outside it.",
        f"Best feasible validation accuracy: {best['min']:.4f} to {best['max']:.4f} (mean "
        f"{best['mean']:.4f}, sd {best['sd']:.4f}).",
        "",
        "| run | trained | rejected | best accuracy | drift |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in summary["runs"]:
        accuracy = f"{r['best_accuracy']:.4f}" if r["best_accuracy"] is not None else "-"
        lines.append(
            f"| {r['run']} | {r['trained']} | {r['rejected']} | {accuracy} | {r['drift'] or '-'} |"
        )
    if summary["split"]:
        lines += ["", "Split decisions (architecture, run, latency, feasible, near the budget):"]
        lines += [
            f"- {s['arch']}: run {s['run']}, {s['latency_ms']:.3f} ms, "
            f"{'admitted' if s['feasible'] else 'rejected'}"
            f"{', in the noise band' if s['near_budget'] else ''}"
            for s in summary["split"]
        ]
    return "\n".join(lines)


def write(summary: dict, out: str) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump({k: v for k, v in summary.items() if k != "decisions"}, f, indent=2)
    with open(os.path.join(out, "decisions.csv"), "w", newline="") as f:
        fields = ["arch", "run", "trial", "latency_ms", "params", "feasible", "near_budget"]
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in sorted(summary["decisions"], key=lambda r: (r["arch"], r["run"])):
            writer.writerow({k: row[k] for k in fields})
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(results_md(summary) + "\n")


if __name__ == "__main__":
    sys.exit(main())
