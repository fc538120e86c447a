"""Proxy training of a candidate: AdamW, linear warm-up then cosine decay, label smoothing,
gradient clipping; validation accuracy after every epoch (the fidelity a search can act on).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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
    "distillation_loss",
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
    evaluate_fn: Callable[[nn.Module], float] | None = None,
) -> TrainResult:
    """Train `model` in place for `cfg.epochs` epochs; `on_epoch(epoch, val_acc)` after each.
    The accuracy is `evaluate` on the validation split, or what `evaluate_fn(model)` says (a
    supernet scores one of its subnets).

    `img_size` is the model's input resolution when it differs from the data's (the survey
    space searches the resolution): images are resized to it, for training and validation.
    With a `teacher` (in eval mode, fed the same augmented images at the data's resolution),
    the final head, or the model's distillation head when it has one, also learns the teacher's
    outputs (`distill`: soft or hard targets).

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
    dist_head = getattr(model, "head_dist", None) is not None
    if dist_head and teacher is None:
        if getattr(getattr(model, "arch", None), "distill_head", False):
            raise ValueError("the model has a distillation head: train it with a teacher")
        dist_head = False  # a timm model's (LeViT's): both heads learn the labels, averaged
    if dist_head:
        model.set_distilled_training(True)
    autocast = torch.autocast(
        "cuda", dtype=torch.bfloat16, enabled=cfg.amp and device.type == "cuda"
    )
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    optimizer = create_optimizer_v2(model, "adamw", lr=cfg.lr, weight_decay=cfg.weight_decay)
    hint = None
    if teacher is not None and distill.hint_weight > 0:
        try:
            hint = FeatureHint(model, teacher, distill, data, img_size, device)
        except ValueError as e:  # this candidate cannot take the hint: its trial fails
            model.to("cpu")
            teacher.to("cpu")
            raise TrainingFailed(str(e)) from None
        optimizer.add_param_group({"params": list(hint.proj.parameters()), "weight_decay": 0.0})
    previous_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
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
            epoch_start, loss_sum, seen, hint_sum = time.perf_counter(), 0.0, 0, 0.0
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
                    final, student = final if dist_head else (final, final)
                    loss = criterion(final, yb)
                    if teacher is not None:
                        with torch.no_grad():
                            target = teacher(xb)
                        loss = (1 - distill.alpha) * loss + distill.alpha * distillation_loss(
                            student, target, distill
                        )
                    loss = loss + cfg.exit_weight * sum(criterion(o, yb) for o in early)
                    if hint is not None:
                        hint_loss = hint.loss()
                        hint_sum += hint_loss.item() * len(yb)
                        loss = loss + distill.hint_weight * hint_loss
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
            if evaluate_fn is not None:
                result.val_acc = evaluate_fn(model)
            else:
                result.val_acc = evaluate(model, data.val_x, data.val_y, img_size=img_size)
            result.history.append(
                {
                    "epoch": epoch,
                    "train_loss": round(loss_sum / seen, 5),
                    "val_acc": round(result.val_acc, 5),
                    "seconds": round(time.perf_counter() - epoch_start, 3),
                    "images_per_second": round(seen / train_seconds, 1),
                    **({"hint_loss": round(hint_sum / seen, 5)} if hint is not None else {}),
                }
            )
            if on_epoch is not None:
                on_epoch(epoch, result.val_acc)
    except (torch.OutOfMemoryError, RuntimeError) as e:
        if not isinstance(e, torch.OutOfMemoryError) and "allocate memory" not in str(e):
            raise  # not the CPU allocator's out-of-memory: a bug, with its traceback
        model.to("cpu")
        if device.type == "cuda":
            torch.cuda.empty_cache()
        raise TrainingFailed(
            f"out of memory in epoch {len(result.history) + 1} on {device}: "
            f"{str(e).splitlines()[0][:160]}"
        ) from None
    finally:
        if dist_head:
            model.set_distilled_training(False)
        if hint is not None:
            hint.remove()  # the teacher is shared across trials: leave no hook behind
        torch.set_num_threads(previous_threads)
        result.seconds = time.perf_counter() - start
        images = sum(len(data.train_y) for _ in result.history)
        result.images_per_second = images / result.seconds if result.seconds else 0.0
    result.device = str(device)
    model.to("cpu").eval()
    if teacher is not None:
        teacher.to("cpu")
    return result


class FeatureHint:
    """FitNets hint: forward hooks catch the student's tokens after block `hint_block` and the
    teacher's feature map at `hint_layer`; a 1x1 conv (trained with the student, not exported)
    projects the student's grid to the teacher's channels, resized to its spatial size.

    Paper: "FitNets: Hints for Thin Deep Nets", arXiv 1412.6550.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        distill: DistillConfig,
        data: Dataset,
        img_size: int | None,
        device: torch.device,
    ) -> None:
        blocks = [m for m in student.modules() if type(m).__name__ == "Block"]
        if not 1 <= distill.hint_block <= len(blocks):
            raise ValueError(
                f"distill.hint_block {distill.hint_block} is not a block of this "
                f"student (1 to {len(blocks)})"
            )
        try:
            layer = teacher.get_submodule(distill.hint_layer)
        except AttributeError:
            raise ValueError(
                f"the teacher has no module '{distill.hint_layer}' for the hint "
                "(see teacher.named_modules())"
            ) from None
        self.student_out: torch.Tensor | None = None
        self.teacher_out: torch.Tensor | None = None
        self.handles = [
            blocks[distill.hint_block - 1].register_forward_hook(self._keep_student),
            layer.register_forward_hook(self._keep_teacher),
        ]
        with torch.no_grad():  # one batch, to learn the shapes the projection joins
            x = data.train_x[:2].to(device)
            student(resize(x, img_size))
            teacher(x)
        if self.teacher_out is None or self.teacher_out.dim() != 4:
            self.remove()
            raise ValueError(
                f"teacher module '{distill.hint_layer}' must give a (B, C, H, W) "
                "feature map for the hint"
            )
        n, c = self.student_out.shape[1:]
        side = math.isqrt(n)
        if side * side != n:
            self.remove()
            raise ValueError(
                f"student block {distill.hint_block} holds {n} tokens, not a square"
                " grid (pick a block before token merging or pruning)"
            )
        self.proj = nn.Conv2d(c, self.teacher_out.shape[1], 1).to(device)

    def _keep_student(self, module: nn.Module, args: Any, output: Any) -> None:
        self.student_out = output[0]

    def _keep_teacher(self, module: nn.Module, args: Any, output: Any) -> None:
        self.teacher_out = output

    def loss(self) -> torch.Tensor:
        """MSE between the projected student grid and the teacher map of the last forward."""
        b, n, c = self.student_out.shape
        side = math.isqrt(n)
        grid = self.student_out.transpose(1, 2).reshape(b, c, side, side)
        target = self.teacher_out.detach()
        pred = F.interpolate(
            self.proj(grid), size=target.shape[-2:], mode="bilinear", align_corners=False
        )
        return F.mse_loss(pred, target)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, distill: DistillConfig
) -> torch.Tensor:
    """The teacher term of the student's loss: `soft_distillation` for `kind: soft`; for
    `kind: hard`, cross-entropy against the teacher's predicted class (DeiT's hard-label
    distillation, "Training data-efficient image transformers & distillation through
    attention", arXiv 2012.12877)."""
    if distill.kind == "hard":
        return F.cross_entropy(student, teacher.argmax(dim=-1))
    return soft_distillation(student, teacher, distill.temperature)


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
