"""Benchmark: what the runtime a model ships with does to the search.

The same search (the config's space, data, sampler, seed, recipe and parameter budget, run
until `--trained` candidates are trained) runs once under a latency budget in torch eager
(float32, this CPU) and once under one on ExecuTorch with XNNPACK in int8 (`latency.device:
executorch, dtype: int8`), 1 thread, batch 1. Each budget puts the same pressure on its
runtime: the median latency there of `--budget-archs` architectures sampled from the space
(seed 11), times `--budget-scale`. Then, side by side:

- which blocks each front prefers: the share of its architectures using each token mixer,
  stem, position encoding and token reduction;
- each front's best (highest validation accuracy) quantised to int8 as `lvit export
  --executorch --int8` quantises it, and its int8 validation accuracy and drop;
- both bests measured on both runtimes: what the eager search's pick costs on the phone's
  runtime, and the reverse.

    python experiments/bench_runtime_search.py                       # Fashion-MNIST, 24 trained
    python experiments/bench_runtime_search.py --config experiments/survey.yaml   # digits
    python experiments/bench_runtime_search.py --quick               # the whole path, minutes

Both studies live in one SQLite file under --work and resume. Writes results.json and
results.md to --out. The validation split decides everything; no test split is read.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import statistics
import sys
import time
from typing import Any

import optuna
import torch
from tqdm import tqdm

from nas import cost, runtimes
from nas.bench import command_line, run_until, set_mode_defaults
from nas.config import LatencyConfig, SearchConfig, load_config
from nas.data import load_dataset
from nas.export import load_trial_model
from nas.report import pareto_front, write_results
from nas.study import prepare_inputs
from nas.train import int8_accuracy
from search_spaces.arch import ArchConfig
from search_spaces.model import LightViT

RUNTIMES = {"eager": ("cpu", "float32"), "executorch-int8": ("executorch", "int8")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="check the whole path (minutes)")
    parser.add_argument(
        "--config", default="experiments/fashion.yaml", help="the search (fashion.yaml)"
    )
    parser.add_argument("--trained", type=int, help="trained candidates per search (24)")
    parser.add_argument("--max-candidates", type=int, help="stop a search at this many (200)")
    parser.add_argument("--budget-archs", type=int, help="architectures the budgets come from")
    parser.add_argument(
        "--budget-scale", type=float, default=1.0, help="each budget: median latency x this"
    )
    parser.add_argument("--work", help="where the studies live (resumes)")
    parser.add_argument("--out", help="where results.json and results.md go")
    args = parser.parse_args(argv)
    set_mode_defaults(
        args,
        "runtime-search",
        {"trained": (2, 24), "max_candidates": (8, 200), "budget_archs": (3, 12)},
    )
    try:
        cost.check_device("executorch", "int8")
    except ValueError as e:
        parser.error(str(e))
    os.makedirs(args.work, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    start = time.perf_counter()
    base = load_config(args.config)
    if args.quick:  # a short recipe on a small training set: the path, not the figures
        base = dataclasses.replace(
            base,
            data=dataclasses.replace(base.data, max_train=min(base.data.max_train or 600, 600)),
            train=dataclasses.replace(base.train, epochs=1),
        )
    data = load_dataset(base.data)
    budgets = stored_budgets(base, data, args)
    searches = {}
    bar = tqdm(total=args.trained * len(RUNTIMES), desc="trained candidates", disable=None)
    for name in RUNTIMES:
        config = search_config(base, name, budgets[name]["max_latency_ms"], args.work)
        study = run_until(config, prepare_inputs(config), args.trained, bar, args.max_candidates)
        searches[name] = study
    bar.close()
    result: dict[str, Any] = {"budgets": budgets, "fronts": {}, "bests": {}}
    for name, study in searches.items():
        front = pareto_front(study)
        result["fronts"][name] = {
            "size": len(front),
            "blocks": preferences([ArchConfig.from_dict(dict(r.arch)) for r in front]),
            "members": [
                {"trial": r.number, "accuracy": r.accuracy, "latency_ms": r.latency_ms}
                for r in front
            ],
        }
        if front:
            result["bests"][name] = best_of(study, front[0], data)
    cross_measure(result["bests"])
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "command": command_line("bench_runtime_search.py", argv),
        "machine": f"{cost.cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"executorch {runtimes.executorch_version()}",
        "config": args.config,
        "trained": args.trained,
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_results(args.out, {"meta": meta, **result}, results_md(result, meta))
    print(
        f"bench_runtime_search: {len(RUNTIMES)} searches of {args.trained} trained candidates "
        f"in {meta['seconds'] / 60:.1f} min; wrote {args.out}/results.md"
    )
    return 0


def stored_budgets(base: SearchConfig, data: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Each runtime's budget, measured once and kept in --work/budgets.json: a resumed run
    must give its studies the budgets they were created with."""
    path = os.path.join(args.work, "budgets.json")
    settings = {"config": args.config, "archs": args.budget_archs, "scale": args.budget_scale}
    if os.path.isfile(path):
        with open(path) as f:
            stored = json.load(f)
        if stored["settings"] == settings:
            return stored["budgets"]
        sys.exit(
            f"bench_runtime_search: {path} holds budgets of other settings "
            f"({stored['settings']}): pass another --work, or delete it"
        )
    budgets = {name: runtime_budget(base, data, name, args) for name in RUNTIMES}
    with open(f"{path}.part", "w") as f:
        json.dump({"settings": settings, "budgets": budgets}, f, indent=1)
    os.replace(f"{path}.part", path)
    return budgets


def runtime_budget(
    base: SearchConfig, data: Any, name: str, args: argparse.Namespace
) -> dict[str, Any]:
    """The latency budget on runtime `name`: the median latency there of `--budget-archs`
    sampled architectures (those the runtime can run) times `--budget-scale`."""
    device, dtype = RUNTIMES[name]
    archs = base.search_space().sample_many(
        args.budget_archs,
        seed=11,
        num_classes=data.num_classes,
        in_chans=data.in_chans,
        img_size=data.img_size,
    )
    reference = cost.calibrate_reference(device, 1)
    measured = [
        ms
        for i, arch in enumerate(archs)
        if (ms := latency_on(arch, name, reference, seed=i)) is not None
    ]
    if not measured:
        sys.exit(f"bench_runtime_search: {name} ran none of the {len(archs)} sampled models")
    median = statistics.median(measured)
    return {
        "device": device,
        "dtype": dtype,
        "median_ms": round(median, 4),
        "archs": len(measured),
        "max_latency_ms": round(median * args.budget_scale, 4),
    }


def search_config(base: SearchConfig, name: str, budget_ms: float, work: str) -> SearchConfig:
    """`base` with its latency measured on runtime `name` under `budget_ms`, its study stored
    under `work`."""
    device, dtype = RUNTIMES[name]
    latency = dataclasses.replace(
        base.latency if base.latency is not None else LatencyConfig(),
        device=device,
        dtype=dtype,
        threads=1,
        batch_size=1,
    )
    budget = dataclasses.replace(base.budget, max_latency_ms=budget_ms, latency_source="measured")
    config = dataclasses.replace(base, latency=latency, budget=budget)
    return config.replace_study(
        name=f"{base.study.name}-{name}",
        storage=f"sqlite:///{os.path.abspath(work)}/runtime-search.db",
        artifacts=os.path.join(work, "artifacts"),
    )


PREFERENCES = {  # what a front's architectures are counted by
    "mixer": lambda a: {s.mixer for s in a.stages},
    "stem": lambda a: {a.stem},
    "pos_enc": lambda a: {a.pos_enc},
    "token reduction": lambda a: {
        "merge" if s.merge_r else "prune" if s.keep_rate < 1 else "none" for s in a.stages
    },
}


def preferences(archs: list[ArchConfig]) -> dict[str, dict[str, float]]:
    """For each kind of block, the share of `archs` using each choice, most used first."""
    out = {}
    for kind, of in PREFERENCES.items():
        counts = collections.Counter(choice for a in archs for choice in of(a))
        out[kind] = {k: round(v / len(archs), 3) for k, v in counts.most_common()}
    return out


def best_of(study: optuna.Study, record: Any, data: Any) -> dict[str, Any]:
    """A front's best: its validation accuracy, its int8 accuracy and drop."""
    model, _ = load_trial_model(study, record.number)
    arch = ArchConfig.from_dict(dict(record.arch))
    try:
        int8 = int8_accuracy(model, data, arch.img_size, seed=0, accuracy_float=record.accuracy)
        quantised = {"int8_accuracy": round(int8.accuracy, 4), "int8_drop": round(int8.drop, 4)}
    except runtimes.NotDeployable as e:
        quantised = {"int8_accuracy": None, "not_deployable": e.reason}
    return {
        "trial": record.number,
        "arch": record.arch_line,
        "arch_config": dict(record.arch),
        "accuracy": round(record.accuracy, 4),
        "params": record.costs.get("params"),
        **quantised,
    }


def cross_measure(bests: dict[str, dict[str, Any]]) -> None:
    """Every best measured on every runtime, one after the other, drift-corrected on each."""
    references = {n: cost.calibrate_reference(RUNTIMES[n][0], 1) for n in RUNTIMES}
    for best in bests.values():
        arch = ArchConfig.from_dict(best["arch_config"])
        best["latency_ms"] = {n: latency_on(arch, n, references[n]) for n in RUNTIMES}


def latency_on(
    arch: ArchConfig, name: str, reference: cost.Reference, seed: int = 0
) -> float | None:
    """`arch`'s latency on runtime `name` (1 thread, batch 1, drift-corrected against
    `reference`), or None when the runtime cannot run it."""
    device, dtype = RUNTIMES[name]
    torch.manual_seed(seed)
    try:
        result = cost.measure_latency(
            LightViT(arch),
            (arch.in_chans, arch.img_size, arch.img_size),
            device=device,
            dtype=dtype,
            threads=1,
            reference=reference,
        )
    except runtimes.NotDeployable:
        return None
    return result.median_ms


def results_md(result: dict[str, Any], meta: dict[str, Any]) -> str:
    names = list(RUNTIMES)
    lines = [
        "# The runtime in the search: eager float32 against ExecuTorch int8",
        "",
        f"`{meta['command']}` on {meta['machine']}, {meta['date']}, "
        f"{meta['seconds'] / 60:.0f} min; {meta['trained']} trained candidates per search "
        f"({meta['config']}).",
        "",
        "| | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
        "| latency budget (ms) | "
        + " | ".join(f"{result['budgets'][n]['max_latency_ms']:.3f}" for n in names)
        + " |",
        "| front size | " + " | ".join(str(result["fronts"][n]["size"]) for n in names) + " |",
    ]
    bests = result["bests"]

    def cell(name: str, key: str, fmt: str) -> str:
        value = bests.get(name, {}).get(key)
        return "-" if value is None else fmt.format(value)

    lines += [
        "| best's validation accuracy | "
        + " | ".join(cell(n, "accuracy", "{:.2%}") for n in names)
        + " |",
        "| its int8 accuracy (points lost) | "
        + " | ".join(
            f"{cell(n, 'int8_accuracy', '{:.2%}')} ({cell(n, 'int8_drop', '{:.2%}')})"
            for n in names
        )
        + " |",
    ]
    for runtime in names:
        lines.append(
            f"| best's latency on {runtime} (ms) | "
            + " | ".join(
                "-"
                if (bests.get(n, {}).get("latency_ms") or {}).get(runtime) is None
                else f"{bests[n]['latency_ms'][runtime]:.3f}"
                for n in names
            )
            + " |"
        )
    lines += ["", "Blocks each front prefers (share of its architectures using each):", ""]
    for kind in PREFERENCES:
        for n in names:
            shares = result["fronts"][n]["blocks"].get(kind, {})
            text = ", ".join(f"{k} {v:.0%}" for k, v in shares.items()) or "-"
            lines.append(f"- {kind}, {n}: {text}")
    lines += ["", "Bests:", ""]
    lines += [f"- {n}: {bests[n]['arch']}" for n in names if n in bests]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
