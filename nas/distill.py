"""Teachers for knowledge distillation: train one on the search's data and save it as a timm
folder, and load one (safetensors only) to distil candidates from.

A teacher is any timm model name (a CNN such as `resnet18` is a strong teacher for small ViTs,
as DeiT found) or one of our architectures (an ArchConfig JSON), trained with the search
config's data and recipe.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any

import timm
import torch

from nas.config import SearchConfig, TrainConfig
from nas.cost import count_params
from nas.data import Dataset
from nas.errors import UserError
from nas.export import check_out_dir, data_config_of, load_export, read_arch, save_timm_folder
from nas.storage import owned_paths
from nas.train import TrainResult, evaluate, train_model
from search_spaces import register_with_timm

register_with_timm()  # `lightvit` and the presets, for timm.create_model

__all__ = ["Teacher", "load_teacher", "train_teacher"]


@dataclass
class Teacher:
    model: torch.nn.Module
    info: dict[str, Any]


def load_teacher(path: str, data: Dataset) -> Teacher:
    """A teacher folder for `data`: safetensors weights only, the same classes; its validation
    accuracy on the search's split is measured here and recorded."""
    model = load_export(path)
    classes = getattr(model, "num_classes", None)
    if classes != data.num_classes:
        raise UserError(
            f"teacher {path} predicts {classes} classes, the data has {data.num_classes}"
        )
    with open(os.path.join(path, "config.json")) as f:
        architecture = json.load(f).get("architecture")
    info = {
        "path": path,
        "architecture": architecture,
        "params": count_params(model),
        "val_acc": round(evaluate(model, data), 5),
    }
    return Teacher(model, info)


def _build(
    model_name: str | None, arch_path: str | None, data: Dataset, drop_path: float = 0.0
) -> torch.nn.Module:
    if arch_path:
        arch = read_arch(arch_path)
        return timm.create_model(
            "lightvit", arch=arch.to_dict(), num_classes=data.num_classes, img_size=data.img_size
        )
    if not timm.is_model(model_name):
        raise UserError(f"'{model_name}' is not a timm model name (see timm.list_models())")
    kwargs = {"drop_path_rate": drop_path} if drop_path else {}
    try:
        return timm.create_model(
            model_name,
            pretrained=False,
            num_classes=data.num_classes,
            in_chans=data.in_chans,
            **kwargs,
        )
    except TypeError:  # a model without stochastic depth
        return timm.create_model(
            model_name, pretrained=False, num_classes=data.num_classes, in_chans=data.in_chans
        )


def train_teacher(
    config: SearchConfig,
    data: Dataset,
    out: str,
    *,
    model_name: str | None = None,
    arch_path: str | None = None,
    epochs: int | None = None,
    recipe: TrainConfig | None = None,
    on_epoch: Any = None,
    on_step: Any = None,
) -> tuple[TrainResult, dict[str, Any]]:
    """Train a teacher with `recipe` (default: the config's `retrain` recipe, `full` unless
    it says otherwise) on `data` and write it to `out` (a timm folder with config.json,
    model.safetensors and a README), atomically."""
    protect = owned_paths(config)
    check_out_dir(out, protect=protect)
    recipe = recipe or config.retrain
    if epochs is not None:
        recipe = dataclasses.replace(recipe, epochs=epochs)
    model = _build(model_name, arch_path, data, recipe.drop_path)
    with torch.no_grad():  # a model that cannot take this input size fails here, clearly
        try:
            model.eval()(data.tensors("val", n=1)[0])
        except RuntimeError as e:
            raise UserError(
                f"{model_name or arch_path} does not run on {data.img_size}px "
                f"inputs: {str(e).splitlines()[0][:160]}"
            ) from None
    result = train_model(
        model, data, recipe, seed=config.study.seed, on_epoch=on_epoch, on_step=on_step
    )
    info = {
        "role": "teacher",
        "model": model_name or arch_path,
        "val_acc": result.val_acc,
        "epochs": recipe.epochs,
        "recipe": recipe.describe(),
        "data": data.info(),
        "params": count_params(model),
    }
    card = (
        f"# Teacher `{info['model']}` for `{data.name}`\n\n"
        f"Trained by `lvit teacher train` with the {recipe.describe()}; seed "
        f"{config.study.seed}, on {data.name} ({len(data.train)} training images at "
        f"{data.img_size}px). Validation accuracy {result.val_acc:.4f} (the "
        f"{len(data.val)}-image validation split, {data.val_description()}); "
        f"{info['params']:,} parameters.\n"
    )
    save_timm_folder(
        model,
        out,
        protect=protect,
        card=card,
        provenance=info,
        data_config=data_config_of((data.in_chans, data.img_size, data.img_size), data.info()),
    )
    return result, info
