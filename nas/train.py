"""Proxy training of a candidate: AdamW, linear warm-up then cosine decay, label smoothing,
gradient clipping; validation accuracy after every epoch (the fidelity a search can act on).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2
from torch import nn

from nas.config import DistillConfig, TrainConfig
from nas.data import Dataset, batches

__all__ = [
    "TrainResult",
    "TrainingDiverged",
    "TrainingFailed",
    "evaluate",
    "resize",
    "resolve_device",
    "soft_distillation",
    "train_model",
]


class TrainingFailed(RuntimeError):
    """Training of one candidate could not finish; the message is the reason recorded."""


class TrainingDiverged(TrainingFailed):
    """The loss became NaN or infinite."""


def resolve_device(name: str) -> torch.device:
    """`auto` is the GPU when torch sees one, else the CPU; `cuda` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device is cuda but torch sees no GPU; use auto or cpu")
    return torch.device(name)


@dataclass
class TrainResult:
    val_acc: float
    history: list[dict] = field(default_factory=list)  # per epoch: loss, val_acc, seconds
    seconds: float = 0.0
    images_per_second: float = 0.0
    device: str = "cpu"


def resize(x: torch.Tensor, img_size: int | None) -> torch.Tensor:
    """Images resized (bilinear, antialiased) to `img_size` x `img_size`; unchanged if equal."""
    if img_size is None or x.shape[-1] == img_size and x.shape[-2] == img_size:
        return x
    return F.interpolate(
        x, size=(img_size, img_size), mode="bilinear", antialias=True, align_corners=False
    )


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int = 256,
    img_size: int | None = None,
) -> float:
    """Top-1 accuracy in eval mode (inputs resized to `img_size` when given)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for xb, yb in batches(x, y, batch_size):
        logits = model(resize(xb.to(device), img_size))
        correct += (logits.argmax(dim=1).cpu() == yb).sum().item()
    model.train(was_training)
    return correct / len(y)


def _lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def train_model(
    model: nn.Module,
    data: Dataset,
    cfg: TrainConfig,
    seed: int,
    on_epoch: Callable[[int, float], None] | None = None,
    img_size: int | None = None,
    teacher: nn.Module | None = None,
    distill: DistillConfig | None = None,
) -> TrainResult:
    """Train `model` in place for `cfg.epochs` epochs; `on_epoch(epoch, val_acc)` after each.

    `img_size` is the model's input resolution when it differs from the data's (the survey
    space searches the resolution): images are resized to it, for training and validation.
    With a `teacher` (in eval mode, fed the same augmented images at the data's resolution),
    the final head also learns the teacher's temperature-softened outputs (`distill`).

    Trains on `cfg.device` (with bfloat16 autocast on a GPU when `cfg.amp`) and leaves the model
    on the CPU. Raises `TrainingFailed` (`TrainingDiverged` on a non-finite loss, or out of
    memory) with the reason. `on_epoch` may raise to stop early.
    """
    device = resolve_device(cfg.device)
    model.to(device)
    if teacher is not None:
        distill = distill or DistillConfig(teacher="given")
        teacher.to(device).eval()
    exits = bool(getattr(getattr(model, "arch", None), "exits", ()))  # train exit heads jointly
    autocast = torch.autocast(
        "cuda", dtype=torch.bfloat16, enabled=cfg.amp and device.type == "cuda"
    )
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    previous_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    optimizer = create_optimizer_v2(model, "adamw", lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(data.train_y) / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _lr_factor(step, warmup_steps, total_steps)
    )
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    result = TrainResult(val_acc=0.0)
    start = time.perf_counter()
    try:
        model.train()
        for epoch in range(1, cfg.epochs + 1):
            epoch_start, loss_sum, seen = time.perf_counter(), 0.0, 0
            for xb, yb in batches(
                data.train_x,
                data.train_y,
                cfg.batch_size,
                shuffle=True,
                augment_pad=data.augment_pad,
                flip=data.flip,
                pad_fill=data.pad_fill,
                generator=generator,
            ):
                xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
                with autocast:
                    if exits:
                        *early, final = model.forward_exits(resize(xb, img_size))
                    else:
                        early, final = [], model(resize(xb, img_size))
                    loss = criterion(final, yb)
                    if teacher is not None:
                        with torch.no_grad():
                            target = teacher(xb)
                        loss = (1 - distill.alpha) * loss + distill.alpha * soft_distillation(
                            final, target, distill.temperature
                        )
                    loss = loss + cfg.exit_weight * sum(criterion(o, yb) for o in early)
                if not torch.isfinite(loss):
                    raise TrainingDiverged(f"loss became {loss.item()} in epoch {epoch}")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.clip_grad:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                optimizer.step()
                scheduler.step()
                loss_sum += loss.item() * len(yb)
                seen += len(yb)
            train_seconds = time.perf_counter() - epoch_start
            result.val_acc = evaluate(model, data.val_x, data.val_y, img_size=img_size)
            result.history.append(
                {
                    "epoch": epoch,
                    "train_loss": round(loss_sum / seen, 5),
                    "val_acc": round(result.val_acc, 5),
                    "seconds": round(time.perf_counter() - epoch_start, 3),
                    "images_per_second": round(seen / train_seconds, 1),
                }
            )
            if on_epoch is not None:
                on_epoch(epoch, result.val_acc)
    except torch.OutOfMemoryError as e:
        model.to("cpu")
        if device.type == "cuda":
            torch.cuda.empty_cache()
        raise TrainingFailed(
            f"out of memory in epoch {len(result.history) + 1} on {device}: "
            f"{str(e).splitlines()[0][:160]}"
        ) from None
    finally:
        torch.set_num_threads(previous_threads)
        result.seconds = time.perf_counter() - start
        images = sum(len(data.train_y) for _ in result.history)
        result.images_per_second = images / result.seconds if result.seconds else 0.0
    result.device = str(device)
    model.to("cpu").eval()
    if teacher is not None:
        teacher.to("cpu")
    return result


def soft_distillation(
    student: torch.Tensor,
    teacher: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Hinton's distillation loss: T^2 x KL(softmax(teacher / T) || softmax(student / T)).

    Paper: "Distilling the Knowledge in a Neural Network", arXiv 1503.02531.
    """
    t = temperature
    return (
        F.kl_div(
            F.log_softmax(student / t, dim=-1),
            F.log_softmax(teacher / t, dim=-1),
            reduction="batchmean",
            log_target=True,
        )
        * t
        * t
    )
