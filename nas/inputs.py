"""What a search reads from disk, loaded and checked before any study is created or changed:
the data set, the latency table, the distillation teacher and the supernet, or, for
`evaluation: table`, the tabular benchmark alone (`prepare_inputs`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from nas import cost
from nas.config import ConfigError, SearchConfig
from nas.data import Dataset, load_dataset
from nas.lifecycle import check_config

__all__ = ["Inputs", "prepare_inputs"]


def _load_table(config: SearchConfig, data: Dataset, space: Any) -> Any:
    """The search's latency table, refused (with the command that builds the right one) when it
    was made for another space version, device, precision, thread count, data size or class
    count."""
    from nas.lut import LatencyTable, LutError

    path = config.budget.lut_path
    try:
        table = LatencyTable.load(path)
        table.check(
            space=space.name,
            space_version=space.version,
            device=config.latency.device,
            dtype=config.latency.dtype,
            threads=config.latency.threads,
            img_size=data.img_size,
            num_classes=data.num_classes,
            path=path,
        )
    except LutError as e:
        raise ConfigError(str(e)) from None
    if config.latency.normalise and table.reference is None:
        raise ConfigError(
            f"latency table {path} was built before drift correction (it has no reference "
            "latency): build it again with `lvit latency build-lut`, or set latency.normalise: "
            "false"
        )
    if config.latency.normalise and config.latency.measure:
        reference = cost.Reference.from_dict(table.reference)
        if not reference.fits(config.latency.device, config.latency.threads):
            raise ConfigError(
                f"latency table {path} was built with torch {reference.torch}; measurements "
                f"here (torch {torch.__version__}) cannot be normalised to it: build it again "
                "here, or set latency.measure: false to use its predictions alone"
            )
    return table


@dataclass
class Inputs:
    """What a search reads from disk: the data set and the latency table (if any); with
    `evaluation: table`, no data set and the benchmark's table."""

    data: Dataset | None
    table: Any = None
    teacher: Any = None  # nas.distill.Teacher
    supernet: Any = None  # nas.supernet.SharedWeights (evaluation: supernet)
    benchmark: Any = None  # nas.tables.NB201Table (evaluation: table)


def prepare_inputs(config: SearchConfig) -> Inputs:
    """Check the config (`check_config`) and load the data, the latency table, the teacher
    and the supernet; anything wrong fails here, before any study is created or changed."""
    check_config(config)
    if config.evaluation == "table":
        from nas.tables import load_table

        table = load_table(config.table, config.search_space())
        fidelity = config.study.fidelity
        if fidelity is not None and fidelity.rungs[-1] >= table.epochs:
            raise ConfigError(
                f"study.fidelity.rungs {list(fidelity.rungs)} must be below the table's "
                f"{table.epochs} epochs: the last rung is the full training"
            )
        return Inputs(None, benchmark=table)
    space = config.search_space()
    data = load_dataset(config.data)
    table = _load_table(config, data, space) if config.budget.lut_path else None
    teacher = None
    if config.distill.teacher:
        from nas.distill import load_teacher

        teacher = load_teacher(config.distill.teacher, data)
    supernet = _load_supernet(config, data) if config.evaluation == "supernet" else None
    return Inputs(data, table, teacher, supernet)


def _load_supernet(config: SearchConfig, data: Dataset) -> Any:
    """The trained supernet that scores candidates, refused (with the fix) when it was trained
    for another space or another task."""
    from nas.supernet import SharedWeights, SupernetError

    folder = config.supernet.folder(config.study.name)
    try:
        shared, meta = SharedWeights.load(folder)
    except SupernetError as e:
        raise ConfigError(str(e)) from None
    wanted = config.supernet.space().fingerprint()
    task = (data.num_classes, data.in_chans, data.img_size)
    if (
        meta["fingerprint"] != wanted
        or (
            meta["num_classes"],
            meta["in_chans"],
            meta["img_size"],
        )
        != task
    ):
        raise ConfigError(
            f"the supernet in {folder} was trained for another space or task (space "
            f"{meta['fingerprint']} vs {wanted}, classes/channels/size "
            f"{meta['num_classes']}/{meta['in_chans']}/{meta['img_size']} vs "
            f"{'/'.join(map(str, task))}): retrain it with `lvit supernet train CONFIG`"
        )
    return shared
