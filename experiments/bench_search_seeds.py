"""TPE against random search over several search seeds: the runs of `bench_baselines.py` with
different `--search-seed`s, side by side.

Each run (an `--out` folder of bench_baselines: results.csv and run.json) holds, per budget, the
architecture TPE found and random search's, each trained with the recipe for every training
seed. This reads them and reports, per budget and strategy, the accuracy of each search seed's
pick (mean over its training seeds), the mean ± sd over search seeds, and TPE's lead over random
search (mean of the per-seed differences, how many seeds TPE wins). The accuracy is the test
split's where the runs have one, the validation split's otherwise; nothing is selected on it.

    python experiments/bench_search_seeds.py experiments/results/baselines-fashion \\
        experiments/results/baselines-fashion-seed1 experiments/results/baselines-fashion-seed2 \\
        --out experiments/results/baselines-fashion-seeds.md
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys

STRATEGIES = {"found": "TPE", "random": "random"}


class BadRun(Exception):
    pass


def read_run(folder: str) -> dict:
    """{search_seed, tpe_mode, picks: {(data, budget): {kind: accuracy}}, metric} of one run."""
    paths = [os.path.join(folder, name) for name in ("results.csv", "run.json")]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise BadRun(f"{missing[0]} is missing: give an --out folder of bench_baselines.py")
    with open(paths[1]) as f:
        args = json.load(f)["args"]
    with open(paths[0], newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["kind"] in STRATEGIES]
    test = all(r.get("test_accuracy") for r in rows)
    picks: dict[tuple[str, str], dict[str, float]] = {}
    for r in rows:
        value = r["test_accuracy"] if test else r["accuracy"]
        if value:
            picks.setdefault((r["data"], r["budget"]), {})[r["kind"]] = float(value)
    return {
        "folder": folder,
        "search_seed": args.get("search_seed", 0),
        "tpe_mode": args.get("tpe_mode", "multi"),
        "picks": picks,
        "metric": "test" if test else "validation",
    }


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def summarise(runs: list[dict]) -> str:
    metrics = {r["metric"] for r in runs}
    if len(metrics) > 1:
        raise BadRun("the runs measure different splits (test in some, validation in others)")
    seeds = [r["search_seed"] for r in runs]
    if len(set(seeds)) != len(seeds):
        raise BadRun(f"two runs share a search seed ({seeds}): give one run per --search-seed")
    budgets = list(dict.fromkeys(b for r in runs for b in r["picks"]))  # in the runs' order
    lines = [
        f"{metrics.pop().capitalize()} accuracy of each search's pick (mean over its training "
        f"seeds), search seeds {' '.join(map(str, seeds))}; TPE mode "
        f"{', '.join(sorted({r['tpe_mode'] for r in runs}))}.",
        "",
        "data | budget | strategy | "
        + " | ".join(f"seed {s}" for s in seeds)
        + " | mean ± sd over seeds",
        "--- | --- | --- | " + " | ".join("---" for _ in seeds) + " | ---",
    ]
    leads = []
    for data, budget in budgets:
        per = {k: [r["picks"].get((data, budget), {}).get(k) for r in runs] for k in STRATEGIES}
        for kind, label in STRATEGIES.items():
            got = [v for v in per[kind] if v is not None]
            cells = " | ".join("—" if v is None else f"{v:.4f}" for v in per[kind])
            lines.append(
                f"{data} | {budget} | {label} | {cells} | {_mean_sd(got) if got else '—'}"
            )
        pairs = [
            (t, r) for t, r in zip(per["found"], per["random"], strict=True) if None not in (t, r)
        ]
        if pairs:
            diffs = [t - r for t, r in pairs]
            wins = sum(d > 0 for d in diffs)
            leads.append(
                f"- {data} / {budget}: TPE − random {statistics.mean(diffs) * 100:+.2f} points "
                f"(mean over {len(diffs)} search seed{'s' * (len(diffs) > 1)}; "
                f"TPE higher in {wins} of {len(diffs)})"
            )
    return "\n".join(lines + [""] + leads) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="--out folders of bench_baselines.py")
    parser.add_argument("--out", help="write the Markdown summary here as well")
    args = parser.parse_args(argv)
    try:
        table = summarise([read_run(folder) for folder in args.runs])
    except BadRun as e:
        print(f"bench_search_seeds: {e}", file=sys.stderr)
        return 2
    print(table, end="")
    if args.out:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            f.write(table)
        os.replace(tmp, args.out)
        print(f"Summarised {len(args.runs)} runs; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
