"""Benchmark: search strategies against random search on tabular benchmarks, over many seeds.

Each strategy runs through the engine (`nas.study.run_search`, `evaluation: table`) on
NAS-Bench-201 (arXiv 2001.00326; CIFAR-10, CIFAR-100, ImageNet16-120) or on a table `lvit table
build` made of one of our spaces (`--tables PATH.csv`) under a latency budget
(by default the table's median latency, so half the cells are feasible), multi-objective
(accuracy up, latency down), until `--evals` candidates are trained (looked up), with
`--seeds` seeds each. A looked-up candidate's accuracy is one of its cell's trainings, chosen
by the trial's seed, so each search sees the noise of one training; the figures below are
computed on the cells' true accuracy (the mean over the table's trainings):

- hypervolume after each training paid (accuracy x ms, reference point accuracy 0 and the
  budget), as a share of the table's true feasible front's: mean and 95% confidence band
  (Student's t over seeds);
- regret: the true accuracy of the table's best feasible cell minus that of the cell the
  search returns (its most accurate trained candidate, by what the search saw), and the share
  of seeds within 0.3 points;
- for each strategy, the number of trainings after which its mean hypervolume reaches random
  search's final mean, and whether at half of random's trainings its confidence band is above
  random's final one (the goal).

Strategies: `random` (RandomSampler), `tpe` (TPESampler, the engine's default), `tpe-warm`
(TPE with `study.warm_start: study:NAME`, the front of the same seed's TPE search on the next
table in `--tables`, as a search on another data set would start), `nsga2` (NSGAIISampler with
a population of 20: Optuna's default 50 would spend half of 100 trainings on its random first
generation), `gp` (GPSampler, seconds per trial: `--gp-seeds` seeds, on the first table only),
`tpe-asha` (TPE with `study.fidelity`, MO-ASHA with eta 3 at rungs 1, 3, 9, ... epochs: on
built tables only, which record every epoch; NAS-Bench-201's holds final accuracies). Every
strategy runs with the engine's defaults otherwise, so no cell is trained twice
(`study.repeats: false`: a repeated proposal reuses the earlier result and is not counted as a
training paid). The cost axis is full trainings paid: a candidate MO-ASHA stopped at epoch e of
E costs e/E of one. The one-shot supernet does not apply (a table has no weights).

Studies are kept in `--work` (one SQLite file), so an interrupted run resumes.
Writes `results.json`, `results.md` and `hypervolume.png` to `--out`.

    python experiments/bench_strategies.py --quick   # every step, 2 seeds, about a minute
    python experiments/bench_strategies.py           # 20 seeds, 100 trainings, 3 tables
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from typing import Any

import numpy as np
import optuna
from scipy import stats
from tqdm import tqdm

from nas.bench import set_mode_defaults
from nas.config import NB201_DATASETS, BudgetConfig, FidelityConfig, SearchConfig, StudyConfig
from nas.errors import UserError
from nas.records import Status, TrialRecord
from nas.report import hypervolume, write_results
from nas.study import create_or_resume_study, prepare_inputs, run_search
from nas.tables import NB201Table, SampledTable, load_table

STRATEGIES: dict[str, dict[str, Any]] = {
    "random": {"sampler": "RandomSampler"},
    "tpe": {"sampler": "TPESampler"},
    "tpe-warm": {"sampler": "TPESampler", "warm": True},
    "nsga2": {"sampler": "NSGAIISampler", "args": {"population_size": 20}},
    "gp": {"sampler": "GPSampler"},
    "tpe-asha": {"sampler": "TPESampler", "fidelity": True},
}
Table = NB201Table | SampledTable


def rungs(epochs: int, eta: int = 3) -> tuple[int, ...]:
    """MO-ASHA's rungs below a table's `epochs`: 1, eta, eta^2, ..."""
    out, r = [], 1
    while r < epochs:
        out.append(r)
        r *= eta
    return tuple(out)


def applies(strategy: str, table: str, tables: list[str]) -> bool:
    """Whether `strategy` runs on `table`: gp on the first only, tpe-warm where another table
    of the same space is listed, tpe-asha on built tables (every epoch recorded)."""
    spec = STRATEGIES[strategy]
    if strategy == "gp":
        return table == tables[0]
    if spec.get("warm"):
        return next_table(tables, table) is not None
    if spec.get("fidelity"):
        return table not in NB201_DATASETS and load_table(table).epochs > 1
    return True


def config_for(args: argparse.Namespace, table: str, strategy: str, seed: int, budget: float):
    spec = STRATEGIES[strategy]
    warm = None
    if spec.get("warm"):
        source = next_table(args.tables, table)
        warm = f"study:tpe-{label(source)}-{seed}" if source else None
    fidelity = None
    if spec.get("fidelity"):
        fidelity = FidelityConfig(rungs=rungs(load_table(table).epochs), eta=3)
    study = StudyConfig(
        name=f"{strategy}-{label(table)}-{seed}",
        storage=f"sqlite:///{os.path.abspath(args.work)}/strategies.db",
        artifacts=os.path.join(args.work, "artifacts"),
        n_trials=args.evals * args.max_multiple,
        n_trained=args.evals,
        seed=seed,
        sampler=spec["sampler"],
        sampler_args=spec.get("args", {}),
        warm_start=warm,
        fidelity=fidelity,
    )
    return SearchConfig(
        study=study,
        space="nb201" if table in NB201_DATASETS else load_table(table).space,
        evaluation="table",
        table=table,
        budget=BudgetConfig(max_latency_ms=budget),
    )


def label(table: str) -> str:
    """A table's name in study names and results: NB201's data set, or the file's stem."""
    return table if table in NB201_DATASETS else os.path.splitext(os.path.basename(table))[0]


def next_table(tables: list[str], table: str) -> str | None:
    """The table a warm start comes from: the next one in the list of the same kind (the
    first for the last); None where there is no other NAS-Bench-201 table (a built table's
    study holds another space's points than another built table's, unless both are of one)."""
    same = [t for t in tables if (t in NB201_DATASETS) == (table in NB201_DATASETS)]
    if table not in NB201_DATASETS:
        same = [t for t in same if load_table(t).space == load_table(table).space]
    if len(same) < 2:
        return None
    return same[(same.index(table) + 1) % len(same)]


def run_one(config: SearchConfig) -> Any:
    """The study of one strategy and seed, run (or resumed) until it has its trainings."""
    study = create_or_resume_study(config)
    run_search(config, study=study, inputs=prepare_inputs(config))
    return study


def key_of(r: TrialRecord) -> Any:
    """The table's key of a looked-up trial: a built table's row, or NB201's cell string."""
    return r.attrs.get("table", {}).get("row", r.arch_line)


def curve(study: Any, table: Table, budget: float, evals: int) -> dict[str, Any]:
    """Hypervolume (true accuracies) after each full training's worth of cost (a candidate
    stopped at epoch e of E costs e/E), and the returned candidate's regret."""
    records = sorted(map(TrialRecord.of, study.get_trials(deepcopy=False)), key=lambda r: r.number)
    paid, events, trained = 0.0, [], []  # events: (cost paid so far, its point or None)
    for r in records:
        if r.status is Status.STOPPED:
            paid += r.train.get("epochs", 0) / max(table.epochs, 1)
            events.append((paid, None))
        elif r.status is Status.TRAINED:
            paid += 1.0
            row = table.row(key_of(r))
            events.append((paid, (row.accuracy, row.latency_ms)))
            trained.append((paid, r))
    hv, points, i = [], [], 0
    for k in range(1, evals + 1):  # the front once k full trainings' worth is paid
        while i < len(events) and events[i][0] <= k + 1e-9:
            if events[i][1] is not None:
                points.append(events[i][1])
            i += 1
        hv.append(hypervolume(points, budget) if points else 0.0)
    within = [r for paid_at, r in trained if paid_at <= evals + 1e-9]
    chosen = max(within, key=lambda r: (r.accuracy, -r.number))  # what the search saw
    return {
        "hypervolume": hv,
        "returned": chosen.arch_line,
        "returned_accuracy": table.row(key_of(chosen)).accuracy,
        "candidates": len(study.get_trials(deepcopy=False)),
        "distinct": len({key_of(r) for r in within}),
        "paid": round(paid, 3),
    }


def band(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% confidence interval (Student's t)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan
    half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, half


def summarise(runs: dict[str, list[dict]], table: Table, budget: float, evals: int):
    best = table.best(max_latency_ms=budget)
    full = hypervolume(
        [(a, lat) for a, lat, ok in zip(
            table.mean_accuracy, table.latency_ms, table.feasible(max_latency_ms=budget),
            strict=True) if ok],
        budget,
    )  # fmt: skip
    out: dict[str, Any] = {"best": best.cell, "best_accuracy": best.accuracy, "front_hv": full}
    random_final = None
    if "random" in runs:
        random_final = band([r["hypervolume"][-1] / full for r in runs["random"]])
    for name, seeds in runs.items():
        shares = np.array([r["hypervolume"] for r in seeds]) / full
        means = shares.mean(axis=0)
        halves = [band(list(shares[:, k]))[1] for k in range(shares.shape[1])]
        regrets = [100 * (best.accuracy - r["returned_accuracy"]) for r in seeds]
        entry = {
            "seeds": len(seeds),
            "mean": means.tolist(),
            "half_width": halves,
            "final": band(list(shares[:, -1])),
            "regret_points": band(regrets),
            "within_0.3": sum(g <= 0.3 for g in regrets) / len(regrets),
            "distinct_share": statistics.fmean(r["distinct"] / evals for r in seeds),
            "candidates": statistics.fmean(r["candidates"] for r in seeds),
        }
        if random_final is not None:
            reach = next((k + 1 for k, m in enumerate(means) if m >= random_final[0]), None)
            half = evals // 2 - 1
            entry["reaches_random_final_at"] = reach
            entry["at_half_vs_random_final"] = bool(
                means[half] - halves[half] > random_final[0] + random_final[1]
            )
        out[name] = entry
    return out


def markdown(results: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        "# Search strategies on tabular benchmarks under a latency budget",
        "",
        f"`python experiments/bench_strategies.py{' --quick' if args.quick else ''}`: "
        f"{args.evals} full trainings' worth (looked up) per search, {args.seeds} seeds per "
        "strategy "
        f"({args.gp_seeds} for gp), latency budget the table's {args.budget_quantile:.0%} "
        "quantile; hypervolume of the true accuracies as a share of the table's feasible "
        "front; mean ± 95% CI over seeds.",
        "",
    ]
    for table, res in results["tables"].items():
        lines += [
            f"## {table} (budget {res['budget_ms']:.2f} ms; best feasible cell "
            f"{100 * res['best_accuracy']:.2f}%)",
            "",
            "| strategy | seeds | HV share at the end | regret (points) | within 0.3 | "
            f"reaches random's final HV at | beats it at {args.evals // 2} |",
            "|---|---|---|---|---|---|---|",
        ]
        for name in STRATEGIES:
            e = res.get(name)
            if e is None:
                continue
            fm, fh = e["final"]
            rm, rh = e["regret_points"]
            reach = e.get("reaches_random_final_at")
            lines.append(
                f"| {name} | {e['seeds']} | {fm:.4f} ± {fh:.4f} | {rm:.2f} ± {rh:.2f} | "
                f"{e['within_0.3']:.0%} | {reach if reach else 'never'} | "
                f"{'yes' if e.get('at_half_vs_random_final') else 'no'} |"
            )
        lines.append("")
    lines.append(f"Machine: {results['machine']}; {results['seconds']:.0f} s in all.")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tables = results["tables"]
    fig, axes = plt.subplots(1, len(tables), figsize=(5 * len(tables), 4), squeeze=False)
    for ax, res in zip(axes[0], tables.values(), strict=True):
        for name in STRATEGIES:
            e = res.get(name)
            if e is None:
                continue
            x = np.arange(1, len(e["mean"]) + 1)
            mean, half = np.array(e["mean"]), np.nan_to_num(np.array(e["half_width"]))
            ax.plot(x, mean, label=f"{name} ({e['seeds']})")
            ax.fill_between(x, mean - half, mean + half, alpha=0.2)
        ax.set_title(f"{res['title']}, latency <= {res['budget_ms']:.1f} ms")
        ax.set_xlabel("trainings paid")
        ax.set_ylabel("hypervolume / true front's")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 seeds, 30 trainings, 2 tables")
    parser.add_argument(
        "--tables",
        nargs="+",
        default=None,
        help=f"NAS-Bench-201's ({', '.join(NB201_DATASETS)}) or a TABLE.csv of lvit table build",
    )
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument("--seeds", type=int, default=None, help="seeds per strategy")
    parser.add_argument("--gp-seeds", type=int, default=None, help="seeds for gp (slow)")
    parser.add_argument("--evals", type=int, default=None, help="trainings per search")
    parser.add_argument("--max-multiple", type=int, default=20, help="candidates cap / evals")
    parser.add_argument("--budget-quantile", type=float, default=0.5)
    parser.add_argument("--work", default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    set_mode_defaults(
        args,
        "strategies",
        {
            "tables": (["cifar10", "cifar100"], ["cifar10", "cifar100", "imagenet16-120"]),
            "seeds": (2, 20),
            "gp_seeds": (1, 5),
            "evals": (30, 100),
        },
    )
    if not 0 < args.budget_quantile <= 1:
        parser.error("--budget-quantile must be in (0, 1]")
    os.makedirs(args.work, exist_ok=True)
    start = time.perf_counter()
    order = sorted(args.strategies, key=lambda s: s == "tpe-warm")  # warm starts need tpe
    runs: dict[str, dict[str, list]] = {t: {} for t in args.tables}
    budgets = {}
    try:
        for table in args.tables:
            t = load_table(table)
            budgets[table] = float(np.quantile(t.latency_ms, args.budget_quantile))
        jobs = [
            (t, s, seed)
            for s in order
            for t in args.tables
            for seed in range(args.gp_seeds if s == "gp" else args.seeds)
            if applies(s, t, args.tables)
        ]
        with tqdm(total=len(jobs), unit="search", desc="strategies", disable=None) as bar:
            for table, strategy, seed in jobs:
                bar.set_postfix_str(f"{strategy} {table} seed {seed}")
                config = config_for(args, table, strategy, seed, budgets[table])
                study = run_one(config)
                runs[table].setdefault(strategy, []).append(
                    curve(study, load_table(table), budgets[table], args.evals)
                )
                bar.update(1)
    except UserError as e:
        print(f"bench_strategies: error: {e}", file=sys.stderr)
        return 2
    from nas.cost import cpu_name

    results = {
        "machine": f"{cpu_name()}, {os.cpu_count()} cores",
        "seconds": time.perf_counter() - start,
        "args": {k: v for k, v in vars(args).items()},
        "tables": {},
    }
    for table in args.tables:
        t = load_table(table)
        res = summarise(runs[table], t, budgets[table], args.evals)
        title = (
            f"NAS-Bench-201 {table}" if table in NB201_DATASETS else f"{label(table)} ({t.space})"
        )
        results["tables"][label(table)] = {"budget_ms": budgets[table], "title": title, **res}
    write_results(args.out, results, markdown(results, args))  # whole or not at all; printed
    plot(results, os.path.join(args.out, "hypervolume.png"))
    print(
        f"bench_strategies: {len(jobs)} searches in {results['seconds']:.0f} s; wrote "
        f"results.json, results.md, hypervolume.png to {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
