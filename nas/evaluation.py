"""The explicit evaluation of a trained model folder on a split: `lvit evaluate EXPORT_DIR
--config CONFIG --split test|val`.

The only reader of a data set's test split. The images are prepared as the model was trained:
the config's data set at the model's input size, normalised with the mean and std the folder
records. It writes `evaluation-<split>.json` (accuracy, loss, per-class accuracy, confusion
matrix, what was measured) and `confusion-<split>.png`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from typing import Any

from nas.config import DataConfig, SearchConfig
from nas.data import Dataset, ImageSplit, load_dataset, load_test_split
from nas.errors import UserError
from nas.export import load_export, read_export
from nas.train import Evaluation, evaluate_split

__all__ = ["EvaluationReport", "evaluate_export", "evaluate_model", "load_split", "SPLITS"]

SPLITS = ("test", "val")


@dataclass
class EvaluationReport:
    evaluation: Evaluation
    classes: list[str]
    json_path: str
    png_path: str
    seconds: float
    record: dict[str, Any]


def evaluate_export(
    folder: str, config: SearchConfig, split: str, out: str | None = None
) -> EvaluationReport:
    """Measure the model in `folder` (a timm folder `read_export` accepts) on the `split` of
    the config's data set and write the report under `out` (default
    `reports/<folder name>/`)."""
    if split not in SPLITS:
        raise UserError(f"--split must be test or val, got {split!r}")
    start = time.perf_counter()
    export = read_export(folder)
    model = load_export(folder)
    pretrained = export.config.get("pretrained_cfg") or {}
    input_size = pretrained.get("input_size") or [3, config.data.img_size, config.data.img_size]
    data = _prepared(load_dataset(config.data), pretrained)
    classes = int(export.config.get("num_classes") or getattr(model, "num_classes", 0))
    if classes != data.num_classes:
        raise UserError(
            f"{folder} predicts {classes} classes and the config's data "
            f"'{config.data.name}' has {data.num_classes}: pass the config it was trained with"
        )
    evaluation = evaluate_model(model, config.data, data, split, img_size=input_size[-1])
    out = out or os.path.join("reports", os.path.basename(os.path.normpath(folder)))
    os.makedirs(out, exist_ok=True)
    record = {
        "model": os.path.abspath(folder),
        "architecture": export.architecture,
        "data": {
            "name": data.name,
            "source": data.source,
            "split": split,
            "split_note": (
                "the official test split" if split == "test" else data.val_description()
            ),
            "images": evaluation.images,
            "unreadable": evaluation.skipped,
            "input_size": list(input_size),
            "mean": list(data.mean),
            "std": list(data.std),
        },
        **{k: v for k, v in dataclasses.asdict(evaluation).items() if k not in ("split",)},
        "classes": list(data.classes),
    }
    record["per_class"] = [None if math.isnan(v) else v for v in evaluation.per_class]
    json_path = os.path.join(out, f"evaluation-{split}.json")
    tmp = json_path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
    os.replace(tmp, json_path)
    from nas.plots import confusion_plot

    png_path = confusion_plot(
        evaluation.confusion,
        list(data.classes),
        os.path.join(out, f"confusion-{split}.png"),
        f"{os.path.basename(os.path.normpath(folder))} on {data.name} {split} "
        f"({evaluation.images} images): accuracy {evaluation.accuracy:.4f}",
    )
    return EvaluationReport(
        evaluation, list(data.classes), json_path, png_path, time.perf_counter() - start, record
    )


def load_split(cfg: DataConfig, data: Dataset, split: str) -> ImageSplit:
    """The `split` of the data set `data` was loaded from (`cfg`): `val`, or `test`, the
    official test split, read here and nowhere else. For final evaluation only: nothing
    measured on it may select, tune or stop anything."""
    if split not in SPLITS:
        raise UserError(f"split must be test or val, got {split!r}")
    return load_test_split(cfg, data) if split == "test" else data.val


def evaluate_model(
    model: Any,
    cfg: DataConfig,
    data: Dataset,
    split: str,
    img_size: int | None = None,
    part: ImageSplit | None = None,
) -> Evaluation:
    """`model` (trained on `data`, loaded from `cfg`) measured on the `split` of that data set
    (`part`: that split as `load_split` gave it, to read it once for many models)."""
    part = part if part is not None else load_split(cfg, data, split)
    return evaluate_split(model, data, part, split, img_size=img_size)


def _prepared(data: Dataset, pretrained: dict[str, Any]) -> Dataset:
    """The data normalised as the model was trained (the folder's recorded mean and std)."""
    mean, std = pretrained.get("mean"), pretrained.get("std")
    if mean and std and len(mean) == len(data.mean):
        return dataclasses.replace(data, mean=tuple(mean), std=tuple(std))
    return data
