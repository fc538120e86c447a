"""Benchmark: search strategies at equal numbers of trained candidates, and the multi-objective
early-stopping rule.

On digits at 32x32, the survey space, fixed budgets (params, and latency predicted by a lookup
table built on this machine, so every strategy sees the same latencies), each sampler runs one
study per seed until it has trained `--trained` candidates (rejections by the budgets are
cheap and do not count). The hypervolume of the feasible front (accuracy x ms under the latency
budget) after each trained candidate gives each strategy's curve; random search is the baseline.
Then TPE runs again with `early_stop` on, for the same number of candidates as its plain run:
wall time saved against hypervolume kept.

The random-search studies also record the zero-cost proxies; `experiments/bench_proxies.py`
reads them.

    python experiments/bench_search.py --seeds 0 1 2 --trained 20 --lut luts/cpu-1t.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

import optuna
from tqdm import tqdm

from nas.bench import run_until, trained_count, wall_seconds
from nas.callbacks import dashboard_hooks
from nas.config import (
    BudgetConfig,
    DataConfig,
    EarlyStopConfig,
    LatencyConfig,
    ProxyConfig,
    SearchConfig,
    StudyConfig,
    TrainConfig,
)
from nas.cost import cpu_name
from nas.report import hypervolume, nondominated, records
from nas.study import create_or_resume_study, finished_count, prepare_inputs, run_search

SAMPLERS: dict[str, tuple[str, dict[str, Any]]] = {
    "random": ("RandomSampler", {}),
    "tpe": ("TPESampler", {"n_startup_trials": 10, "multivariate": True, "group": True}),
    "nsga2": ("NSGAIISampler", {"population_size": 10}),
    "gp": ("GPSampler", {"n_startup_trials": 10}),
}


def make_config(args: argparse.Namespace, name: str, sampler: str, seed: int, **extra: Any):
    cls, sampler_args = SAMPLERS[sampler]
    return SearchConfig(
        study=StudyConfig(
            name=name,
            storage=f"sqlite:///{args.storage_dir}/bench-search.db",
            artifacts=os.path.join(args.storage_dir, "artifacts"),
            n_trials=1,
            seed=seed,
            sampler=cls,
            sampler_args=sampler_args,
        ),
        space="survey",
        data=DataConfig(name="digits", img_size=32),
        train=TrainConfig(epochs=args.epochs, batch_size=32, threads=2, device="cpu"),
        budget=BudgetConfig(
            max_params=args.max_params,
            max_latency_ms=args.max_latency,
            latency_source={"lut": args.lut},
        ),
        latency=LatencyConfig(threads=1, measure=False),
        **extra,
    )


def run_for(config: SearchConfig, inputs: Any, candidates: int) -> optuna.Study:
    config = config.replace_study(n_trials=candidates)
    study = create_or_resume_study(config)
    return run_search(config, study=study, inputs=inputs, hooks=dashboard_hooks()).study


def hv_curve(study: optuna.Study, max_latency: float) -> list[float]:
    """Hypervolume of the front of the first k trained candidates, for k = 1, 2, ..."""
    trained = [r for r in records(study) if r.status == "trained"]
    trained.sort(key=lambda r: r.number)
    return [
        hypervolume([(r.accuracy, r.latency_ms) for r in nondominated(trained[:k])], max_latency)
        for k in range(1, len(trained) + 1)
    ]


def epochs_run(study: optuna.Study) -> int:
    """Training epochs spent: a machine-independent measure of the compute a study used."""
    return sum(len(t.user_attrs.get("curve", [])) for t in study.get_trials(deepcopy=False))


def first_reaching(curve: list[float], target: float) -> int | None:
    return next((k + 1 for k, v in enumerate(curve) if v >= target), None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trained", type=int, default=20, help="trained candidates per study")
    parser.add_argument(
        "--max-candidates", type=int, default=400, help="stop a study at this many candidates"
    )
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=list(SAMPLERS))
    parser.add_argument("--epochs", type=int, default=4, help="proxy-training epochs")
    parser.add_argument("--max-params", type=int, default=250_000)
    parser.add_argument("--max-latency", type=float, default=2.0, help="ms, from the table")
    parser.add_argument("--lut", default="luts/cpu-1t.json")
    parser.add_argument("--no-early-stop", action="store_true", help="skip the rule's runs")
    parser.add_argument("--storage-dir", default="runs/bench-search")
    parser.add_argument("--out", default="experiments/results/search")
    args = parser.parse_args()
    if not os.path.isfile(args.lut):
        print(
            f"bench_search: no lookup table at {args.lut}; build it with  lvit latency build-lut "
            f"--space survey --img-size 32 --num-classes 10 --threads 1 --out {args.lut}",
            file=sys.stderr,
        )
        return 2
    os.makedirs(args.storage_dir, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # GP's fallback notes, per parameter
    start = time.perf_counter()
    probe = make_config(args, "probe", "random", 0)
    inputs = prepare_inputs(probe)
    runs = len(args.samplers) * len(args.seeds)
    bar = tqdm(total=runs * args.trained, desc="trained candidates", unit="cand", disable=None)
    curves: dict[str, dict[int, list[float]]] = {s: {} for s in args.samplers}
    studies: dict[tuple[str, int], optuna.Study] = {}
    proxies = ProxyConfig(compute=("synflow", "naswot", "grad_norm", "snip"), batch_size=32)
    for sampler in args.samplers:
        for seed in args.seeds:
            extra = {"proxies": proxies} if sampler == "random" else {}
            config = make_config(args, f"{sampler}-s{seed}", sampler, seed, **extra)
            bar.set_postfix_str(f"{sampler} seed {seed}")
            study = run_until(config, inputs, args.trained, bar, args.max_candidates)
            studies[sampler, seed] = study
            curve = hv_curve(study, args.max_latency)[: args.trained]
            # a study stopped by the candidate cap keeps its last hypervolume
            curves[sampler][seed] = curve + [curve[-1] if curve else 0.0] * (
                args.trained - len(curve)
            )
    bar.close()

    def mean_curve(sampler: str) -> list[float]:
        return [statistics.mean(c) for c in zip(*curves[sampler].values(), strict=False)]

    summary: dict[str, Any] = {
        "space": "survey",
        "data": "digits 32x32",
        "epochs": args.epochs,
        "trained": args.trained,
        "max_candidates": args.max_candidates,
        "seeds": args.seeds,
        "budget": {"max_params": args.max_params, "max_latency_ms": args.max_latency},
        "latency": f"lookup table {args.lut} (cpu, 1 thread, batch 1)",
        "cpu": cpu_name(),
        "samplers": {},
    }
    baseline = mean_curve("random")[-1] if "random" in curves else None
    for sampler in args.samplers:
        finals = [c[-1] for c in curves[sampler].values()]
        mean = mean_curve(sampler)
        summary["samplers"][sampler] = {
            "optuna": SAMPLERS[sampler][0],
            "args": SAMPLERS[sampler][1],
            "final_hv_mean": statistics.mean(finals),
            "final_hv_sd": statistics.pstdev(finals),
            "final_hv": finals,
            "mean_curve": mean,
            "candidates": [finished_count(studies[sampler, s]) for s in args.seeds],
            "trained_counts": [trained_count(studies[sampler, s]) for s in args.seeds],
            "wall_seconds": [round(wall_seconds(studies[sampler, s]), 1) for s in args.seeds],
            "trained_to_reach_random_final": first_reaching(mean, baseline)
            if baseline is not None
            else None,
        }

    if not args.no_early_stop and "tpe" in args.samplers:
        rule = EarlyStopConfig(enabled=True, min_epoch=1, min_trials=5, dominated_by=3)
        es_rows = []
        for seed in tqdm(args.seeds, desc="tpe + early stop", disable=None):
            plain = studies["tpe", seed]
            config = make_config(args, f"tpe-es-s{seed}", "tpe", seed, early_stop=rule)
            study = run_for(config, inputs, finished_count(plain))
            outcome = [t.user_attrs.get("status") for t in study.trials]
            es_rows.append(
                {
                    "seed": seed,
                    "candidates": len(study.trials),
                    "trained": outcome.count("trained"),
                    "stopped": outcome.count("stopped"),
                    "wall_seconds": round(wall_seconds(study), 1),
                    "plain_wall_seconds": round(wall_seconds(plain), 1),
                    "epochs": epochs_run(study),
                    "plain_epochs": epochs_run(plain),
                    "hv": hypervolume(
                        [
                            (r.accuracy, r.latency_ms)
                            for r in nondominated(
                                [r for r in records(study) if r.status == "trained"]
                            )
                        ],
                        args.max_latency,
                    ),
                    "plain_hv": hv_curve(plain, args.max_latency)[-1],
                }
            )
        summary["early_stop"] = {
            "rule": {"min_epoch": 1, "min_trials": 5, "dominated_by": 3},
            "runs": es_rows,
            "epochs_saved": 1
            - sum(r["epochs"] for r in es_rows) / sum(r["plain_epochs"] for r in es_rows),
            "time_saved": 1
            - sum(r["wall_seconds"] for r in es_rows)
            / sum(r["plain_wall_seconds"] for r in es_rows),
            "hv_kept": statistics.mean(r["hv"] for r in es_rows)
            / statistics.mean(r["plain_hv"] for r in es_rows),
        }
    summary["seconds"] = round(time.perf_counter() - start, 1)

    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "search.json"), "w") as f:
        json.dump(summary, f, indent=2)
    table = markdown(summary)
    with open(os.path.join(args.out, "search.md"), "w") as f:
        f.write(table)
    plot(summary, os.path.join(args.out, "hypervolume.png"))
    print(table)
    print(
        f"Wrote {args.out}/search.json, search.md, hypervolume.png in {summary['seconds']:.0f} s"
    )
    return 0


def markdown(summary: dict[str, Any]) -> str:
    n = summary["trained"]
    lines = [
        f"| strategy (Optuna class) | final hypervolume, mean ± sd over {len(summary['seeds'])} "
        f"seeds | trained candidates to reach random's final | candidates proposed |",
        "| --- | --- | --- | --- |",
    ]
    for name, s in summary["samplers"].items():
        reach = s["trained_to_reach_random_final"]
        lines.append(
            f"| {name} ({s['optuna']}) | {s['final_hv_mean']:.4f} ± {s['final_hv_sd']:.4f} | "
            f"{f'{reach} of {n}' if reach else f'not within {n}'} | "
            + ", ".join(
                f"{c}" + (f" ({t} trained, capped)" if t < n else "")
                for c, t in zip(s["candidates"], s["trained_counts"], strict=True)
            )
            + " |"
        )
    es = summary.get("early_stop")
    if es:
        lines += [
            "",
            "| seed | candidates | trained / stopped | epochs trained, plain → early stop | "
            "wall time, plain → early stop | hypervolume, plain → early stop |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for r in es["runs"]:
            lines.append(
                f"| {r['seed']} | {r['candidates']} | {r['trained']} / {r['stopped']} | "
                f"{r['plain_epochs']} → {r['epochs']} | "
                f"{r['plain_wall_seconds']:.0f} s → {r['wall_seconds']:.0f} s | "
                f"{r['plain_hv']:.4f} → {r['hv']:.4f} |"
            )
        lines.append(
            f"\nEarly stopping saved {100 * es['epochs_saved']:.0f}% of the training epochs "
            f"({100 * es['time_saved']:.0f}% of the wall time) and kept "
            f"{100 * es['hv_kept']:.1f}% of the hypervolume."
        )
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, s in summary["samplers"].items():
        curve = s["mean_curve"]
        ax.plot(range(1, len(curve) + 1), curve, label=f"{name} ({s['optuna']})", lw=2)
    random = summary["samplers"].get("random")
    if random:
        ax.axhline(random["final_hv_mean"], color="grey", ls=":", lw=1, label="random's final")
    ax.set_xlabel("trained candidates")
    ax.set_ylabel("hypervolume (accuracy x ms under the budget)")
    ax.set_title(
        f"survey space, digits 32x32, {summary['epochs']}-epoch proxy; mean of "
        f"{len(summary['seeds'])} seeds"
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
