"""Benchmark: how well each zero-cost proxy ranks trained accuracy on our space.

Reads the trained candidates of the random-search studies that `experiments/bench_search.py`
wrote (random sampling: an unbiased sample of the survey space within the budgets; every trial
recorded synflow, naswot, grad_norm and snip on one batch before training) and reports Kendall's
tau of each proxy against the trained validation accuracy, beside two free baselines that need
no proxy at all: the parameter count and the FLOPs.

    python experiments/bench_proxies.py --storage sqlite:///runs/bench-search/bench-search.db
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import optuna
from scipy.stats import kendalltau

SCORES = ("synflow", "naswot", "grad_norm", "snip", "params", "flops")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", default="sqlite:///runs/bench-search/bench-search.db")
    parser.add_argument("--prefix", default="random-", help="studies whose names start so")
    parser.add_argument("--out", default="experiments/results/search")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    names = [
        s.study_name
        for s in optuna.get_all_study_summaries(args.storage)
        if s.study_name.startswith(args.prefix)
    ]
    if not names:
        print(
            f"bench_proxies: no study named {args.prefix}* in {args.storage}; run "
            "experiments/bench_search.py first",
            file=sys.stderr,
        )
        return 2
    rows = []
    for name in names:
        study = optuna.load_study(study_name=name, storage=args.storage)
        for t in study.get_trials(deepcopy=False):
            proxies = t.user_attrs.get("proxies")
            if t.user_attrs.get("status") != "trained" or not proxies:
                continue
            costs = t.user_attrs["costs"]
            rows.append(
                {
                    "study": name,
                    "trial": t.number,
                    "accuracy": t.values[0],
                    **{k: proxies.get(k) for k in SCORES[:4]},
                    "params": costs["params"],
                    "flops": costs["flops"],
                }
            )
    result = {"studies": names, "candidates": len(rows), "tau": {}}
    for score in SCORES:
        pairs = [(r[score], r["accuracy"]) for r in rows if r[score] is not None]
        tau, p = kendalltau([a for a, _ in pairs], [b for _, b in pairs])
        result["tau"][score] = {"tau": float(tau), "p": float(p), "n": len(pairs)}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "proxies.json"), "w") as f:
        json.dump({**result, "rows": rows}, f, indent=2)
    lines = [
        f"Kendall's tau against trained accuracy, {len(rows)} random candidates of the survey "
        f"space ({', '.join(names)}):",
        "",
        "| score | tau | p-value | candidates |",
        "| --- | --- | --- | --- |",
    ]
    for score, r in result["tau"].items():
        kind = " (baseline)" if score in ("params", "flops") else ""
        lines.append(f"| {score}{kind} | {r['tau']:+.3f} | {r['p']:.3g} | {r['n']} |")
    table = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "proxies.md"), "w") as f:
        f.write(table)
    print(table)
    print(f"Wrote {args.out}/proxies.json and proxies.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
