"""Training a model on a data set with a recipe (nas.config.TrainConfig): AdamW, linear warm-up
then cosine decay, label smoothing, gradient clipping; the recipe's augmentation (nas.loader),
timm's Mixup/CutMix with soft-target cross-entropy, timm's ModelEmaV3 and drop path; bfloat16
autocast and channels_last on a GPU. Validation accuracy after every epoch (the fidelity a
search can act on).
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2
from torch import nn

from nas.config import DistillConfig, TrainConfig
from nas.data import Dataset, ImageSplit
from nas.loader import Batches, eval_batches, train_batches

__all__ = [
    "TrainResult",
    "TrainingDiverged",
    "TrainingFailed",
    "Evaluation",
    "evaluate",
    "evaluate_split",
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
    loader: str = ""  # how batches were made (nas.loader.Batches.path)
    data_seconds: float = 0.0  # time spent waiting for training batches
    skipped: int = 0  # unreadable images left out so far


def resize(x: torch.Tensor, img_size: int | None) -> torch.Tensor:
    """Images resized (bilinear, antialiased) to `img_size` x `img_size`; unchanged if equal."""
    if img_size is None or x.shape[-1] == img_size and x.shape[-2] == img_size:
        return x
    return F.interpolate(
        x, size=(img_size, img_size), mode="bilinear", antialias=True, align_corners=False
    )


def _device_of(model: nn.Module) -> torch.device:
    tensors = [*model.parameters(), *model.buffers()]  # a quantised graph keeps buffers only
    return tensors[0].device if tensors else torch.device("cpu")


INT8_CALIBRATION_IMAGES = 32


@dataclass(frozen=True)
class Int8Accuracy:
    """A trained model's validation accuracy once quantised to int8 (PT2E for XNNPACK),
    beside its float accuracy."""

    accuracy: float
    accuracy_float: float
    calibration: str
    seconds: float

    @property
    def drop(self) -> float:
        return self.accuracy_float - self.accuracy

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": round(self.accuracy, 5),
            "accuracy_float": round(self.accuracy_float, 5),
            "drop": round(self.drop, 5),
            "calibration": self.calibration,
            "quantisation": "PT2E, XNNPACKQuantizer (symmetric, per-channel weights)",
            "seconds": round(self.seconds, 2),
        }


@torch.no_grad()
def int8_accuracy(
    model: nn.Module, data: Dataset, img_size: int, seed: int, accuracy_float: float
) -> Int8Accuracy:
    """`model` (trained, on the CPU) quantised to int8 as an ExecuTorch int8 export quantises
    it (`nas.runtimes.quantize_pt2e`), calibrated on 32 seeded training images, and its top-1
    accuracy on the validation split, computed by the quantised graph in torch (what the int8
    program computes); `accuracy_float` is the float model's, for the drop."""
    from nas import runtimes
    from nas.loader import sample_batch

    start = time.perf_counter()
    float_model = copy.deepcopy(model).cpu().eval()  # int8 is a CPU program; `model` stays
    generator = torch.Generator().manual_seed(seed)
    images, _ = sample_batch(data, INT8_CALIBRATION_IMAGES, generator)
    images = resize(images, img_size)
    quantised = runtimes.quantize_pt2e(float_model, images[:2], [images], dynamic_batch=True)
    acc = evaluate(quantised, data, "val", img_size=img_size)
    return Int8Accuracy(
        acc, accuracy_float, f"{len(images)} training images", time.perf_counter() - start
    )


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Dataset | Batches,
    split: str = "val",
    img_size: int | None = None,
    batch_size: int = 256,
) -> float:
    """Top-1 accuracy in eval mode on a split of `data` (or on given `Batches`), inputs resized
    to `img_size` when given."""
    was_training = model.training
    model.eval()
    batches = (
        data
        if isinstance(data, Batches)
        else eval_batches(data, split, _device_of(model), batch_size)
    )
    correct = seen = 0
    for xb, yb in batches:
        logits = model(resize(xb, img_size))
        correct += (logits.argmax(dim=1) == yb).sum().item()
        seen += len(yb)
    model.train(was_training)
    if not seen:
        raise TrainingFailed("no readable image in the validation split")
    return correct / seen


@dataclass
class Evaluation:
    """A model measured on one split: what `lvit evaluate` reports."""

    split: str
    images: int
    accuracy: float
    loss: float  # mean cross-entropy (no label smoothing)
    per_class: list[float]  # accuracy of each class (nan: no image of it)
    confusion: list[list[int]]  # rows: true class, columns: predicted
    skipped: int = 0


@torch.no_grad()
def evaluate_split(
    model: nn.Module,
    data: Dataset,
    split: str | ImageSplit,
    name: str,
    img_size: int | None = None,
    batch_size: int = 256,
) -> Evaluation:
    """Accuracy, loss, per-class accuracy and the confusion matrix of `model` on a split."""
    model.eval()
    n = data.num_classes
    confusion = torch.zeros((n, n), dtype=torch.long)
    loss_sum = 0.0
    part = data.split(split) if isinstance(split, str) else split
    for xb, yb in eval_batches(data, part, _device_of(model), batch_size):
        logits = model(resize(xb, img_size)).float()
        loss_sum += F.cross_entropy(logits, yb, reduction="sum").item()
        pred = logits.argmax(dim=1)
        confusion += torch.bincount((yb * n + pred).cpu(), minlength=n * n).reshape(n, n)
    seen = int(confusion.sum())
    if not seen:
        raise TrainingFailed(f"no readable image in the {name} split")
    per_class = (confusion.diag().double() / confusion.sum(dim=1).double()).tolist()
    return Evaluation(
        split=name,
        images=seen,
        accuracy=float(confusion.diag().sum()) / seen,
        loss=loss_sum / seen,
        per_class=[round(v, 5) if v == v else float("nan") for v in per_class],
        confusion=confusion.tolist(),
        skipped=len(part.skipped) + len(part.unreadable),
    )


def _lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def _mixup(cfg: TrainConfig, num_classes: int) -> Any:
    """timm's Mixup/CutMix for the recipe (None when it mixes nothing)."""
    if not cfg.mixes:
        return None
    from timm.data import Mixup

    return Mixup(
        mixup_alpha=cfg.mixup,
        cutmix_alpha=cfg.cutmix,
        prob=cfg.mixup_prob,
        label_smoothing=cfg.label_smoothing,
        num_classes=num_classes,
    )


@dataclass
class _BatchLoss:
    """The loss of one training batch: cross-entropy on the labels (soft targets under mixup),
    plus the teacher's term, the exit heads' losses and the feature hint where they apply."""

    model: nn.Module
    criterion: nn.Module
    exit_weight: float
    img_size: int | None
    autocast: Any
    memory_format: torch.memory_format
    mixup: Any = None
    teacher: nn.Module | None = None
    distill: DistillConfig | None = None
    hint: Any = None  # FeatureHint
    exits: bool = False  # train the exit heads (and a low-resolution pass) jointly
    dist_head: bool = False  # a distillation head learns the teacher's term

    def __call__(
        self, xb: torch.Tensor, yb: torch.Tensor
    ) -> tuple[torch.Tensor, int, float] | None:
        """(loss, images, hint loss x images) of a batch; None for a batch mixup cannot use."""
        if self.memory_format is torch.channels_last:
            xb = xb.contiguous(memory_format=self.memory_format)
        target = yb
        if self.mixup is not None:
            if len(yb) % 2:  # mixup pairs images: a batch short of an unreadable one
                xb, yb = xb[:-1], yb[:-1]
            if not len(yb):
                return None
            xb, target = self.mixup(xb, yb)
        hint_sum = 0.0
        with self.autocast:
            if getattr(self.model, "sandwich", None) is not None:  # a supernet, several paths
                loss = self.model.sandwich_loss(resize(xb, self.img_size), target, self.criterion)
                return loss, len(yb), 0.0
            if self.exits:  # exit heads and a low-resolution pass learn beside the final head
                *early, final = self.model.forward_passes(resize(xb, self.img_size))
            else:
                early, final = [], self.model(resize(xb, self.img_size))
            final, student = final if self.dist_head else (final, final)
            loss = self.criterion(final, target)
            if self.teacher is not None:
                with torch.no_grad():
                    taught = self.teacher(xb)
                alpha = self.distill.alpha
                loss = (1 - alpha) * loss + alpha * distillation_loss(
                    student, taught, self.distill
                )
            loss = loss + self.exit_weight * sum(self.criterion(o, target) for o in early)
            if self.hint is not None:
                hint_loss = self.hint.loss()
                hint_sum = hint_loss.item() * len(yb)
                loss = loss + self.distill.hint_weight * hint_loss
        return loss, len(yb), hint_sum


def _train_epoch(
    batches: Batches,
    batch_loss: _BatchLoss,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    ema: Any,
    clip_grad: float,
    epoch: int,
    step: int,
    on_step: Callable[[int, int], None] | None,
) -> tuple[float, int, float, int]:
    """One pass over the training batches: (loss x images, images, hint loss x images, the
    optimizer steps taken so far)."""
    model = batch_loss.model
    loss_sum, seen, hint_sum = 0.0, 0, 0.0
    for i, (xb, yb) in enumerate(batches, 1):
        out = batch_loss(xb, yb)
        if out is None:
            continue
        loss, n, hint_part = out
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"loss became {loss.item()} in epoch {epoch}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad:
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        optimizer.step()
        scheduler.step()
        step += 1
        if ema is not None:
            ema.update(model, step=step)
        loss_sum += loss.item() * n
        seen += n
        hint_sum += hint_part
        if on_step is not None:
            on_step(i, len(batches))
    return loss_sum, seen, hint_sum, step


def _prepare_model(
    model: nn.Module, cfg: TrainConfig, device: torch.device, teacher: nn.Module | None
) -> tuple[torch.memory_format, bool, bool, float]:
    """Move the model (and teacher) to `device` and set its training-only switches; returns the
    memory format, whether exit heads and a distillation head train, and the drop-path rate."""
    model.to(device)
    memory_format = (
        torch.channels_last
        if device.type == "cuda" and _has_conv(model)
        else torch.contiguous_format
    )
    if memory_format is torch.channels_last:
        model.to(memory_format=memory_format)
    if teacher is not None:
        teacher.to(device).eval()
    arch = getattr(model, "arch", None)
    # exit heads and a dynamic-resolution first pass train jointly with the final head
    exits = bool(getattr(arch, "exits", ())) or bool(getattr(arch, "dynamic_resolution", 0))
    dist_head = getattr(model, "head_dist", None) is not None
    if dist_head and teacher is None:
        if getattr(getattr(model, "arch", None), "distill_head", False):
            raise ValueError("the model has a distillation head: train it with a teacher")
        dist_head = False  # a timm model's (LeViT's): both heads learn the labels, averaged
    if dist_head:
        model.set_distilled_training(True)
    drop_path = cfg.drop_path if hasattr(model, "set_drop_path_rate") else 0.0
    if drop_path:
        model.set_drop_path_rate(drop_path)
    return memory_format, exits, dist_head, drop_path


def _criterion(cfg: TrainConfig, mixup: Any) -> nn.Module:
    if mixup is not None:
        from timm.loss import SoftTargetCrossEntropy

        return SoftTargetCrossEntropy()
    return nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)


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
    on_step: Callable[[int, int], None] | None = None,
) -> TrainResult:
    """Train `model` in place for `cfg.epochs` epochs; `on_epoch(epoch, val_acc)` after each,
    `on_step(step, steps_per_epoch)` after each batch. The accuracy is `evaluate` on the
    validation split, or what `evaluate_fn(model)` says (a supernet scores one of its subnets);
    with `cfg.ema_decay`, that of the EMA weights, which the model holds at the end.

    `img_size` is the model's input resolution when it differs from the data's (the survey
    space searches the resolution): images are resized to it, for training and validation.
    With a `teacher` (in eval mode, fed the same augmented images at the data's resolution),
    the final head, or the model's distillation head when it has one, also learns the teacher's
    outputs (`distill`: soft or hard targets). `cfg.drop_path` is applied to models that can
    set it (LightViT's `set_drop_path_rate`; a timm model takes `drop_path_rate` when built).

    Trains on `cfg.device` (with bfloat16 autocast on a GPU when `cfg.amp`, channels_last when
    the model has convolutions) and leaves the model on the CPU. Raises `TrainingFailed`
    (`TrainingDiverged` on a non-finite loss, or out of memory) with the reason. `on_epoch` may
    raise to stop early.
    """
    device = resolve_device(cfg.device)
    if teacher is not None:
        distill = distill or DistillConfig(teacher="given")
    memory_format, exits, dist_head, drop_path = _prepare_model(model, cfg, device, teacher)
    autocast = torch.autocast(
        "cuda", dtype=torch.bfloat16, enabled=cfg.amp and device.type == "cuda"
    )
    torch.manual_seed(seed)
    random.seed(seed)  # timm's per-image augmentation draws from Python's and NumPy's generators
    np.random.seed(seed % 2**32)  # (DataLoader workers get seeds of their own)
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
    batches = train_batches(data, cfg, device, seed)
    val_batches = eval_batches(data, "val", device)
    steps_per_epoch = len(batches)  # each epoch's on_step counts to it
    total_steps = cfg.epochs * steps_per_epoch
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _lr_factor(step, warmup_steps, total_steps)
    )
    mixup = _mixup(cfg, data.num_classes)
    batch_loss = _BatchLoss(
        model,
        _criterion(cfg, mixup),
        cfg.exit_weight,
        img_size,
        autocast,
        memory_format,
        mixup=mixup,
        teacher=teacher,
        distill=distill,
        hint=hint,
        exits=exits,
        dist_head=dist_head,
    )
    ema = None
    if cfg.ema_decay:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=cfg.ema_decay, use_warmup=True)
    result = TrainResult(val_acc=0.0, loader=batches.path)
    start = time.perf_counter()
    step = 0
    try:
        model.train()
        for epoch in range(1, cfg.epochs + 1):
            epoch_start, waited = time.perf_counter(), batches.data_seconds
            loss_sum, seen, hint_sum, step = _train_epoch(
                batches, batch_loss, optimizer, scheduler, ema, cfg.clip_grad, epoch, step, on_step
            )
            train_seconds = time.perf_counter() - epoch_start
            scored = ema.module if ema is not None else model
            if evaluate_fn is not None:
                result.val_acc = evaluate_fn(scored)
            else:
                result.val_acc = evaluate(scored, val_batches, img_size=img_size)
            record = {
                "epoch": epoch,
                "train_loss": round(loss_sum / max(1, seen), 5),
                "val_acc": round(result.val_acc, 5),
                "seconds": round(time.perf_counter() - epoch_start, 3),
                "images_per_second": round(seen / train_seconds, 1),
                "data_seconds": round(batches.data_seconds - waited, 3),
            }
            if ema is not None and evaluate_fn is None:
                record["val_acc_raw"] = round(evaluate(model, val_batches, img_size=img_size), 5)
            if hint is not None:
                record["hint_loss"] = round(hint_sum / max(1, seen), 5)
            result.history.append(record)
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
        if drop_path:
            model.set_drop_path_rate(0.0)  # a training setting: none in what is kept
        if hint is not None:
            hint.remove()  # the teacher is shared across trials: leave no hook behind
        torch.set_num_threads(previous_threads)
        result.seconds = time.perf_counter() - start
        images = sum(len(data.train) for _ in result.history)
        result.images_per_second = images / result.seconds if result.seconds else 0.0
        result.data_seconds = round(batches.data_seconds, 3)
        result.skipped = len(data.unreadable())
        batches.close()
        val_batches.close()
    if ema is not None:
        model.load_state_dict(ema.module.state_dict())
    result.device = str(device)
    model.to("cpu", memory_format=torch.contiguous_format).eval()
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
            x = data.tensors("train", n=2)[0].to(device)
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
