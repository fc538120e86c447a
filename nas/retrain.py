"""Retraining a found architecture fully (optionally distilled from a teacher) and writing it
as a timm folder with its model card: `lvit train ARCH.json|EXPORT_DIR --config CONFIG`."""

from __future__ import annotations

import dataclasses
from typing import Any

from nas.config import SearchConfig, TrainConfig
from nas.data import Dataset, test_split_note
from nas.errors import UserError
from nas.export import check_out_dir, data_config_of, save_timm_folder
from nas.storage import owned_paths
from nas.train import TrainResult, train_model
from search_spaces.arch import ArchConfig
from search_spaces.model import LightViT

__all__ = ["retrain"]


def retrain(
    arch: ArchConfig,
    config: SearchConfig,
    data: Dataset,
    out: str,
    *,
    epochs: int | None = None,
    teacher: Any = None,
    seed: int | None = None,
    on_epoch: Any = None,
    on_step: Any = None,
    force: bool = False,
    recipe: TrainConfig | None = None,
) -> tuple[TrainResult, dict[str, Any]]:
    """Train `arch` from scratch on `data` with `recipe` (default: the config's `retrain`
    section, the `full` recipe unless it says otherwise) and write it to `out` (never over
    the config's study, artifacts or supernet: `check_out_dir`)."""
    protect = owned_paths(config)
    check_out_dir(out, force, protect=protect)
    if teacher is None and arch.distill_head:
        raise UserError(
            "this architecture has a distillation head, which learns from a teacher: "
            "pass --teacher DIR (or set distill.teacher in the config)"
        )
    arch = dataclasses.replace(
        arch,
        num_classes=data.num_classes,
        in_chans=data.in_chans,
        distill_head=arch.distill_head or (teacher is not None and config.distill.head),
    )
    recipe = recipe or config.retrain
    recipe = dataclasses.replace(recipe, epochs=epochs or recipe.epochs)
    seed = config.study.seed if seed is None else seed
    model = LightViT(arch)
    result = train_model(
        model,
        data,
        recipe,
        seed,
        on_epoch=on_epoch,
        on_step=on_step,
        img_size=arch.img_size,
        teacher=teacher.model if teacher else None,
        distill=config.distill,
    )
    record: dict[str, Any] = {
        "role": "retrained",
        "val_acc": result.val_acc,
        "split": "val",
        "epochs": recipe.epochs,
        "recipe": recipe.describe(),
        "seed": seed,
        "data": data.info(),
        "teacher": teacher.info if teacher else None,
        "distill": dataclasses.asdict(config.distill) if teacher else None,
    }
    if arch.exits:
        from nas.exits import calibrate_exits

        record["exits"] = calibrate_exits(
            model, data, max_drop=recipe.exit_max_drop, img_size=arch.img_size
        ).to_dict()
    if arch.dynamic_resolution:
        from nas.exits import calibrate_resolution

        record["resolution"] = calibrate_resolution(
            model, data, max_drop=recipe.exit_max_drop, img_size=arch.img_size
        ).to_dict()
    save_timm_folder(
        model,
        out,
        force=force,
        protect=protect,
        provenance=record,
        card=_card(arch, record),
        data_config=data_config_of((arch.in_chans, arch.img_size, arch.img_size), data.info()),
    )
    return result, record


def _card(arch: ArchConfig, record: dict[str, Any]) -> str:
    data, teacher = record["data"], record["teacher"]
    taught = "no teacher"
    if teacher:
        distill = record["distill"]
        head = ", through a distillation head" if arch.distill_head else ""
        taught = (
            f"distilled from `{teacher['architecture']}` ({teacher['path']}, validation "
            f"accuracy {teacher['val_acc']:.4f}; {distill['kind']} targets, alpha "
            f"{distill['alpha']}{head})"
        )
    return f"""---
library_name: timm
tags: [image-classification, timm, lightweight-vit]
---
# LightViT `{arch.describe()}`

Retrained from scratch by `lvit train` on {data["name"]} ({data["train_size"]} train images at
{data["input_size"]}) with the {record["recipe"]}; seed {record["seed"]}, {taught}.

Validation accuracy: {record["val_acc"]:.4f} (the {data["val_size"]}-image validation split,
{data.get("val_split", "carved from the training data")}; {test_split_note(data)})

```python
import search_spaces, timm  # importing search_spaces registers `lightvit` with timm
model = timm.create_model("local-dir:PATH_TO_THIS_FOLDER", pretrained=True).eval()
```
"""
