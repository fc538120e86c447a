"""`lvit table build`: a tabular benchmark of any architecture space, made by this engine.

N architectures are drawn uniformly from the config's space (Optuna's RandomSampler, seeded by
`study.seed`) under the config's budgets (rejections do not count, as in a search), each
trained once with the config's data and recipe, and, with `seeds` > 1, trained again that many
times (the same parameters enqueued, each training with its own trial seed). It is a study
like any other, kept beside the table (`TABLE.db`, weights in `TABLE-artifacts/`), so a build
resumes where it stopped and can be watched in optuna-dashboard; after every trained candidate
the table is rewritten whole from the study (`TABLE.csv`, one line per training, and
`TABLE.json`, what it was built from).

Columns: `arch_id` (rows of one architecture share it), `trial`, `seed`, `params_json` (the
space's parameters that drew it, which a replay matches), `arch` (the ArchConfig JSON),
`arch_line`, `params`, `flops`, `latency_ms` (as the search measured it), `epochs`,
`val_acc` (the last epoch's validation accuracy), `val_acc_by_epoch` (every epoch's,
separated by `;`: the table's fidelities) and `train_seconds`. The test split is never read.

`evaluation: table` with `table: TABLE.csv` and the same space replays a search over it
(`nas.tables.SampledTable`).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections.abc import Callable
from typing import Any

import optuna

from nas.config import ConfigError, SearchConfig
from nas.cost import cpu_name
from nas.lifecycle import library_versions
from nas.records import Status, TrialRecord

__all__ = ["COLUMNS", "build_config", "enqueue_seeds", "write_table"]

COLUMNS = (
    "arch_id",
    "trial",
    "seed",
    "params_json",
    "arch",
    "arch_line",
    "params",
    "flops",
    "latency_ms",
    "epochs",
    "val_acc",
    "val_acc_by_epoch",
    "train_seconds",
)


def table_paths(out: str) -> tuple[str, str, str, str]:
    """(TABLE.csv, TABLE.json, TABLE.db, TABLE-artifacts) of `--out TABLE[.csv]`."""
    base = out[:-4] if out.endswith(".csv") else out
    return f"{base}.csv", f"{base}.json", f"{base}.db", f"{base}-artifacts"


def build_config(config: SearchConfig, out: str, n: int, seeds: int) -> SearchConfig:
    """The study that builds the table: the config's space, data, recipe, budgets and
    latency, drawn at random until `n` x `seeds` are trained (at most 100 proposals per
    wanted training)."""
    if config.evaluation != "train":
        raise ConfigError(
            "lvit table build trains every architecture: use a config with evaluation: train "
            f"(this one has evaluation: {config.evaluation})"
        )
    if n < 1 or seeds < 1:
        raise ConfigError(f"--n and --seeds must be >= 1, got {n} and {seeds}")
    csv_path, _, db, artifacts = table_paths(out)
    study = dataclasses.replace(
        config.study,
        name="table-" + os.path.splitext(os.path.basename(csv_path))[0],
        storage=f"sqlite:///{os.path.abspath(db)}",
        artifacts=artifacts,
        sampler="RandomSampler",
        sampler_args={},
        n_trained=n * seeds,
        n_trials=max(config.study.n_trials, 100 * n * seeds),
        repeats=True,  # further seeds train the same parameters again
        warm_start=None,
        confirm_top_k=0,
    )
    return dataclasses.replace(config, study=study)


def _trained(study: optuna.Study) -> list[TrialRecord]:
    records = (TrialRecord.of(t) for t in study.get_trials(deepcopy=False))
    return sorted((r for r in records if r.status is Status.TRAINED), key=lambda r: r.number)


def enqueue_seeds(study: optuna.Study, n: int, seeds: int) -> int:
    """Once the first `n` architectures are trained, enqueue each of them until it has been
    trained (or is waiting) `seeds` times; returns how many were enqueued."""
    trained = _trained(study)
    firsts: dict[str, TrialRecord] = {}
    for r in trained:
        firsts.setdefault(json.dumps(r.arch, sort_keys=True), r)
    counts = {key: 0 for key in firsts}
    for r in trained:
        counts[json.dumps(r.arch, sort_keys=True)] += 1
    waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
    for t in waiting:
        for key, r in firsts.items():
            if t.params == study.trials[r.number].params:
                counts[key] += 1
    added = 0
    for key, r in list(firsts.items())[:n]:
        for _ in range(seeds - counts[key]):
            study.enqueue_trial(study.trials[r.number].params, skip_if_exists=False)
            added += 1
    return added


def write_table(study: optuna.Study, config: SearchConfig, out: str, data: Any) -> int:
    """Write TABLE.csv and TABLE.json from the study's trained trials (whole, through a
    temporary file: a reader never sees half a table); returns the number of lines. `data`:
    the data set it trains on (its classes and channels are what a replay samples for)."""
    csv_path, meta_path, _, _ = table_paths(out)
    ids: dict[str, int] = {}
    lines = []
    for r in _trained(study):
        key = json.dumps(r.arch, sort_keys=True)
        ids.setdefault(key, len(ids))
        history = r.train.get("history", [])
        by_epoch = [h.get("val_acc") for h in history]
        lines.append(
            {
                "arch_id": ids[key],
                "trial": r.number,
                "seed": r.seed,
                "params_json": json.dumps(study.trials[r.number].params, sort_keys=True),
                "arch": key,
                "arch_line": r.arch_line,
                "params": r.costs.get("params"),
                "flops": r.costs.get("flops"),
                "latency_ms": r.costs.get("latency_ms"),
                "epochs": len(by_epoch),
                "val_acc": r.accuracy,
                "val_acc_by_epoch": ";".join(f"{a:.6f}" for a in by_epoch if a is not None),
                "train_seconds": r.train.get("seconds"),
            }
        )
    _atomic(csv_path, lambda f: _csv(f, lines))
    space = config.search_space()
    meta = {
        "format": "lightweight-vit-table/1",
        "space": {"name": space.name, "version": space.version},
        "data": dataclasses.asdict(config.data),
        "num_classes": data.num_classes,
        "img_size": data.img_size,
        "in_chans": data.in_chans,
        "train": dataclasses.asdict(config.train),
        "latency": dataclasses.asdict(config.latency),
        "budget": dataclasses.asdict(config.budget),
        "seed": config.study.seed,
        "architectures": len(ids),
        "trainings": len(lines),
        "study": {"name": study.study_name, "storage": config.study.storage_url},
        "machine": cpu_name(),
        "versions": library_versions(),
    }
    _atomic(meta_path, lambda f: json.dump(meta, f, indent=2))
    return len(lines)


def _csv(f: Any, lines: list[dict[str, Any]]) -> None:
    writer = csv.DictWriter(f, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(lines)


def _atomic(path: str, write: Callable[[Any], None]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", newline="") as f:
        write(f)
    os.replace(tmp, path)
