"""Benchmark: scale-out on this machine.

1. Throughput: the same search (the tiny space on digits at 16x16, a fixed number of
   candidates) with 1 worker process (all cores) and with 2 local worker processes (one core
   each) on a journal file; candidates and trained candidates per hour.
2. Storage overhead per trial: the storage traffic of one real trial (its user attributes, the
   budget constraints, the dashboard note, the final values), replayed without the training,
   on SQLite, the journal file and PostgreSQL (when `--postgres URL` is given); the median
   time per trial.

    python experiments/bench_workers.py --postgres postgresql://lvit:lvit@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
import uuid

import optuna
from tqdm import tqdm

from nas.callbacks import dashboard_hooks
from nas.config import load_config
from nas.cost import cpu_name
from nas.storage import open_storage
from nas.study import run_search
from nas.workers import run_workers


def throughput(args: argparse.Namespace, workers: int) -> dict:
    folder = os.path.join(args.work, f"w{workers}")
    shutil.rmtree(folder, ignore_errors=True)
    config = load_config(args.config).replace_study(
        name=f"bench-w{workers}",
        storage=f"journal:///{os.path.abspath(folder)}/study.journal",
        n_trials=args.trials,
    )
    config = config.replace_study(artifacts=os.path.join(folder, "artifacts"))
    start = time.perf_counter()
    if workers == 1:
        study = run_search(config, hooks=dashboard_hooks()).study
    else:
        study = run_workers(config, workers).study
    seconds = time.perf_counter() - start
    trained = sum(t.user_attrs.get("status") == "trained" for t in study.trials)
    return {
        "workers": workers,
        "candidates": args.trials,
        "trained": trained,
        "seconds": round(seconds, 1),
        "candidates_per_hour": round(3600 * args.trials / seconds),
        "trained_per_hour": round(3600 * trained / seconds),
    }


def replay_overhead(url: str, template: optuna.trial.FrozenTrial, n: int) -> list[float]:
    """Seconds per trial of a real trial's storage traffic, without its training."""
    storage = open_storage(url, create=True)
    study = optuna.create_study(
        study_name=f"overhead-{uuid.uuid4().hex[:8]}",
        storage=storage,
        directions=["maximize", "minimize"],
    )
    from optuna_dashboard import save_note

    times = []
    for _ in range(n):
        start = time.perf_counter()
        trial = study.ask(fixed_distributions=template.distributions)
        for key, value in template.user_attrs.items():
            trial.set_user_attr(key, value)
        for name, value in (template.system_attrs.get("constraints") or {}).items():
            trial.set_constraint(name, value)
        save_note(trial, "## note\n" + template.user_attrs.get("arch_line", ""))
        study.tell(trial, template.values)
        times.append(time.perf_counter() - start)
    return times


def fresh_database(admin_url: str) -> str:
    """A new database on the server of `admin_url` (whose role may create databases)."""
    import psycopg

    name = f"lvit_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


def drop_database(admin_url: str, url: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {url.rsplit('/', 1)[1]} WITH (FORCE)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="experiments/quickstart.yaml")
    parser.add_argument("--trials", type=int, default=16, help="candidates per throughput run")
    parser.add_argument("--replays", type=int, default=50, help="trials per storage")
    parser.add_argument("--postgres", default=os.environ.get("LVIT_TEST_POSTGRES"))
    parser.add_argument("--work", default="runs/bench-workers")
    parser.add_argument("--out", default="experiments/results/workers")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    os.makedirs(args.work, exist_ok=True)

    runs = [throughput(args, w) for w in tqdm((1, 2), desc="throughput runs", disable=None)]
    study = optuna.load_study(
        study_name="bench-w1",
        storage=open_storage(
            f"journal:///{os.path.abspath(args.work)}/w1/study.journal", create=False
        ),
    )
    template = next(t for t in study.trials if t.user_attrs.get("status") == "trained")
    storages = {
        "sqlite": f"sqlite:///{os.path.abspath(args.work)}/overhead.db",
        "journal": f"journal:///{os.path.abspath(args.work)}/overhead.journal",
    }
    database = fresh_database(args.postgres) if args.postgres else None
    if database:
        storages["postgresql"] = database
    overhead = {}
    try:
        for name, url in tqdm(storages.items(), desc="storage overhead", disable=None):
            times = replay_overhead(url, template, args.replays)
            overhead[name] = {
                "median_ms": round(1000 * statistics.median(times), 2),
                "p90_ms": round(1000 * statistics.quantiles(times, n=10)[-1], 2),
                "trials": len(times),
            }
    finally:
        if database:
            drop_database(args.postgres, database)
    summary = {
        "cpu": cpu_name(),
        "cores": len(os.sched_getaffinity(0)),
        "config": args.config,
        "throughput": runs,
        "speedup": round(runs[1]["candidates_per_hour"] / runs[0]["candidates_per_hour"], 2),
        "storage_overhead": overhead,
        "postgres": bool(args.postgres),
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "workers.json"), "w") as f:
        json.dump(summary, f, indent=2)
    lines = [
        "| workers | candidates | trained | wall time | candidates / hour | trained / hour |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in runs:
        lines.append(
            f"| {r['workers']} | {r['candidates']} | {r['trained']} | {r['seconds']:.0f} s | "
            f"{r['candidates_per_hour']:,} | {r['trained_per_hour']:,} |"
        )
    lines += ["", "| storage | median per trial | 90th percentile |", "| --- | --- | --- |"]
    for name, o in overhead.items():
        lines.append(f"| {name} | {o['median_ms']:.1f} ms | {o['p90_ms']:.1f} ms |")
    table = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "workers.md"), "w") as f:
        f.write(table)
    print(table)
    print(f"2 workers / 1 worker: {summary['speedup']}x candidates per hour")
    print(f"Wrote {args.out}/workers.json and workers.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
