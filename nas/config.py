"""Search configs: typed, validated dataclasses read from YAML with a safe loader.

Unknown keys, wrong types and bad values fail loudly with one line that names the file and the
dotted key (`experiments/x.yaml: train.epochs must be an integer, got 'ten' (str)`).

A config has these sections (all optional but `study.name`):

    study:   name, storage, artifacts, n_trials, n_trained, seed, mode (multi|single),
             objectives, sampler, sampler_args, pruner, pruner_args, warm_start, repeats,
             confirm_top_k, confirm_seeds, grace_period, fidelity (rungs, eta: MO-ASHA)
    space:   a registered search space name, `supernet` (the supernet section's),
             `nni:autoformer` (NNI's AutoFormer space, the nni extra), or `nb201`
             (NAS-Bench-201's cells, with evaluation: table)
    data:    name, path, img_size, val_fraction, seed, max_train, cache, workers, strict,
             (synthetic only) num_classes, num_samples
    train:   recipe (proxy|full), epochs, batch_size, lr, weight_decay, warmup_epochs,
             label_smoothing, clip_grad, augment, crop_scale, auto_augment, re_prob, hflip,
             mixup, cutmix, mixup_prob, ema_decay, drop_path, threads, device, amp,
             exit_weight, exit_max_drop (what each candidate gets)
    retrain: the same keys, recipe full by default (what `lvit train` and a winner get)
    budget:  max_params, max_latency_ms, max_flops, latency_source (measured | {lut: PATH})
    latency: device, threads, batch_size, dtype, warmup, runs, max_seconds, target_spread,
             target_precision, measure, normalise
    distill: teacher, kind (soft|hard), alpha, temperature, head, hint_weight, hint_layer,
             hint_block
    early_stop: enabled, min_epoch, min_trials, dominated_by (multi mode)
    proxies: compute, batch_size, prescreen_proxy, prescreen_sample, prescreen_keep
    space_version: an earlier version of the space that the space keeps (default: its newest),
             to resume a study made on it, or to repeat a published search
    space_args: arguments of an NNI hub space (`space: nni:autoformer`: search_embed_dim,
             search_mlp_ratio, search_num_heads, search_depth, patch_size)
    evaluation: train (each candidate trained from scratch, the default) | supernet (scored
             with weights inherited from a one-shot supernet, the best retrained) | table
             (looked up in a tabular benchmark: space nb201, or a table lvit table build made)
    table:   the tabular benchmark: NAS-Bench-201's data set (space nb201: cifar10, cifar100,
             imagenet16-120) or the TABLE.csv that lvit table build made of the space
    supernet: path, patch_size, stems, pos_encs, stages (per stage: depths, dims, heads,
             mlp_ratios, mixers, downsample, kernel_sizes, sr_ratios, windows), epochs, seed,
             calib_batches, tune_steps, retrain_top_k, sampling (spos|sandwich),
             sandwich_paths
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nas.errors import ConfigError
from search_spaces.arch import MAX_CLASSES, MAX_IMG_SIZE
from search_spaces.spaces import CELL_SPACES, SPACES, SearchSpace, get_space
from search_spaces.spaces.shared import SharedSpace, StageChoices
from search_spaces.typed import TypeCheckError, from_dict, to_dict

__all__ = [
    "ConfigError",
    "SearchConfig",
    "StudyConfig",
    "DataConfig",
    "TrainConfig",
    "RetrainConfig",
    "RECIPE_PRESETS",
    "BudgetConfig",
    "LatencyConfig",
    "DistillConfig",
    "EarlyStopConfig",
    "ProxyConfig",
    "SupernetConfig",
    "FidelityConfig",
    "EVALUATIONS",
    "load_config",
]

# What a config may ask for. Past these a run would exhaust the machine's memory or time before
# it could say so; docs/limits.md lists them (a test keeps the two equal).
LIMITS: dict[str, float] = {
    "study.n_trials": 1_000_000,
    "study.n_trained": 1_000_000,
    "study.confirm_top_k": 1_000,
    "study.confirm_seeds": 100,
    "study.grace_period": 86_400,
    "data.img_size": MAX_IMG_SIZE,
    "data.num_classes": MAX_CLASSES,
    "data.num_samples": 200_000,
    "data.max_train": 100_000_000,
    "data.workers": 64,
    "train.epochs": 10_000,
    "train.batch_size": 4_096,
    "train.threads": 1_024,
    "latency.threads": 1_024,
    "latency.batch_size": 1_024,
    "latency.warmup": 10_000,
    "latency.runs": 100_000,
    "latency.max_seconds": 3_600,
    "proxies.batch_size": 4_096,
    "proxies.prescreen_sample": 10_000,
    "supernet.epochs": 10_000,
    "supernet.calib_batches": 10_000,
    "supernet.tune_steps": 100_000,
    "supernet.retrain_top_k": 1_000,
}
# A config file: at most this many bytes, and this many values once YAML's aliases are expanded
# (a few lines of aliases can otherwise expand to gigabytes).
MAX_CONFIG_BYTES = 1_000_000
MAX_CONFIG_VALUES = 100_000
DEFAULT_GRACE_PERIOD_S = 120.0
MAX_SEED = 2**31 - 1  # what numpy, torch and Optuna's samplers all take

EVALUATIONS = ("train", "supernet", "table")
# NAS-Bench-201's data sets (space: nb201, evaluation: table; nas.tables)
NB201_DATASETS = ("cifar10", "cifar100", "imagenet16-120")
# Spaces of NNI's hub the engine searches (nas.oneshot; the nni extra).
HUB_SPACES = ("nni:autoformer",)
DATASETS = ("digits", "fashion_mnist", "cifar10", "cifar100", "imagefolder", "synthetic")
FOLDER_DATASETS = ("imagefolder", "cifar10", "cifar100")  # need data.path
CACHES = ("auto", "memory", "none")
RECIPES = ("proxy", "full")
AUGMENTS = ("light", "timm", "none")
DISTILL_KINDS = ("soft", "hard")
PROXY_NAMES = ("synflow", "naswot", "grad_norm", "snip")
OBJECTIVE_DIRECTIONS = {
    "accuracy": "maximize",
    "accuracy_int8": "maximize",  # validation accuracy of the int8 (PT2E) model
    "latency_ms": "minimize",
    "params": "minimize",
    "flops": "minimize",
}


COST_OBJECTIVES = ("latency_ms", "params", "flops")


def _check_optuna_class(key: str, name: str, module: Any, base: type) -> None:
    cls = getattr(module, name, None)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        suffix = key.capitalize()
        names = sorted(
            n
            for n in dir(module)
            if n.endswith(suffix) and not n.startswith(("Base", "PartialFixed", "_"))
        )
        raise ValueError(
            f"study.{key} '{name}' is not an Optuna {key}; use one of: " + ", ".join(names)
        )


# where latency is measured, and in which precision (nas.cost maps the names to torch dtypes)
LATENCY_DEVICES = ("cpu", "cuda", "onnxruntime", "executorch")
LATENCY_DTYPES = ("float32", "bfloat16", "float16", "int8")
# the devices that run a program of their own making: int8 is quantised by that runtime
RUNTIME_DTYPES = {"onnxruntime": ("float32", "int8"), "executorch": ("float32", "int8")}


def dtype_problem(device: str, dtype: str) -> str | None:
    """Why `dtype` cannot be measured on `device` (with the fix), or None when it can."""
    if device in RUNTIME_DTYPES and dtype not in RUNTIME_DTYPES[device]:
        return (
            f"the {device} device measures {' or '.join(RUNTIME_DTYPES[device])} models, "
            f"not {dtype}: set latency.dtype to one of them"
        )
    if dtype == "int8" and device not in RUNTIME_DTYPES:
        return (
            "dtype int8 is a quantised program: measure it on executorch or onnxruntime "
            "(set latency.device)"
        )
    return None


def _positive(section: str, **values: float) -> None:
    for name, value in values.items():
        if value <= 0:
            raise ValueError(f"{section}.{name} must be > 0, got {value}")
        _within(section, **{name: value})


def _within(section: str, **values: float | None) -> None:
    """Refuse values past their `LIMITS`, naming the limit."""
    for name, value in values.items():
        limit = LIMITS.get(f"{section}.{name}")
        if value is not None and limit is not None and value > limit:
            raise ValueError(
                f"{section}.{name} is {value:,}, above its limit of {limit:,} (docs/limits.md)"
            )


def _seed(section: str, seed: int) -> None:
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"{section}.seed must be 0 to {MAX_SEED:,}, got {seed:,}")


def machine_cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class FidelityConfig:
    """Multi-fidelity in multi mode (`study.fidelity`): asynchronous successive halving by
    non-dominated rank, as MO-ASHA ("Multi-objective Asynchronous Successive Halving",
    Schmucker et al. 2021, arXiv 2106.12639). Every candidate trains to the first of `rungs`
    (epochs, increasing, below `train.epochs`); at each rung it goes on only if it ranks among
    the best 1/`eta` of the candidates that reached that rung so far (their accuracy at that
    epoch against their costs on the other objectives: non-dominated sorting, then crowding
    distance within a front), else it ends PRUNED with `status: stopped` and the rank in its
    reason. Among fewer than `eta` candidates, the best goes on (as Optuna's successive
    halving does); the ranking reads the study's storage, so workers promote asynchronously."""

    rungs: tuple[int, ...] = (1,)
    eta: int = 3

    def __post_init__(self) -> None:
        if (
            not self.rungs
            or any(r < 1 for r in self.rungs)
            or list(self.rungs) != sorted(set(self.rungs))
        ):
            raise ValueError(
                f"study.fidelity.rungs must be increasing epochs >= 1, got {list(self.rungs)}"
            )
        if self.eta < 2:
            raise ValueError(f"study.fidelity.eta must be >= 2, got {self.eta}")


@dataclass(frozen=True)
class StudyConfig:
    """The Optuna study. `n_trials` is the study-wide number of candidates (trained or rejected
    by the budgets); re-running the command resumes the study until it has that many.
    `n_trained`: end the search once that many candidates are trained (or scored with a
    supernet's weights) instead, however many the budgets rejected on the way (rejections cost
    well under a second); `n_trials` then caps all candidates. With workers, each may finish
    the trial it has started, so the count can pass `n_trained` by up to one per worker.
    `warm_start`: `baselines` enqueues the hand-designed families scaled to the parameter
    budget (as the survey space's nearest points) before the sampler's own proposals;
    `study:NAME` the Pareto front of an earlier study of the same space in the same storage
    (nas.warm_start). `repeats`: false (the default) never trains one architecture twice: a
    candidate whose architecture a trained trial has already (the space maps several parameter
    sets to one architecture) reuses that trial's result, values, costs and weights (`status:
    duplicate`, `duplicate_of`), without training, and is not counted as a trained candidate;
    true trains it again (for seed-averaging). `confirm_top_k`: once the search has its count,
    retrain the front's K most accurate candidates with `confirm_seeds` more seeds each
    (nas.confirm); reports give their mean ± sd and the best by the mean.

    `mode`: `multi` (the default) optimises `objectives`, accuracy against latency and optionally
    params, for a Pareto front; `single` maximises accuracy alone under the budgets, and then
    `pruner` (a class in `optuna.pruners`, built with `pruner_args`) may stop a weak candidate
    on its per-epoch accuracy. `sampler` names a class in `optuna.samplers` (TPESampler,
    NSGAIISampler, NSGAIIISampler, GPSampler, RandomSampler, ...), built with `sampler_args` and
    `seed`: Optuna's own classes, not wrappers. `grace_period`: seconds without a heartbeat
    after which another process fails and retries a trial (RDB storages such as PostgreSQL);
    every worker of the search uses it."""

    name: str
    storage: str | None = None  # default: sqlite:///runs/<name>.db
    artifacts: str | None = None  # default: runs/<name>-artifacts
    n_trials: int = 20
    n_trained: int | None = None
    warm_start: str | None = None
    repeats: bool = False
    confirm_top_k: int = 0
    confirm_seeds: int = 2
    seed: int = 0
    mode: str = "multi"
    objectives: tuple[str, ...] | None = None  # multi mode; default [accuracy, latency_ms]
    sampler: str = "TPESampler"
    sampler_args: dict[str, Any] = field(default_factory=dict)
    pruner: str | None = None
    pruner_args: dict[str, Any] = field(default_factory=dict)
    grace_period: float = DEFAULT_GRACE_PERIOD_S
    fidelity: FidelityConfig | None = None

    def __post_init__(self) -> None:
        import optuna

        if self.fidelity is not None and self.mode != "multi":
            raise ValueError(
                "study.fidelity is MO-ASHA, for multi mode; in single mode use study.pruner: "
                "SuccessiveHalvingPruner"
            )

        if not self.name or "/" in self.name:
            raise ValueError(f"study.name must be a non-empty name without '/', got {self.name!r}")
        _positive("study", n_trials=self.n_trials, grace_period=self.grace_period)
        _positive("study", confirm_seeds=self.confirm_seeds)
        if self.confirm_top_k < 0:
            raise ValueError(f"study.confirm_top_k must be >= 0, got {self.confirm_top_k}")
        _within("study", confirm_top_k=self.confirm_top_k)
        if self.n_trained is not None:
            _positive("study", n_trained=self.n_trained)
            if self.n_trained > self.n_trials:
                raise ValueError(
                    f"study.n_trained {self.n_trained} needs study.n_trials >= it (the cap on "
                    f"all candidates, trained or rejected; now {self.n_trials}): raise n_trials"
                )
        _seed("study", self.seed)
        if self.pruner_args and self.pruner is None:
            raise ValueError("study.pruner_args need a study.pruner (single mode)")
        _check_optuna_class("sampler", self.sampler, optuna.samplers, optuna.samplers.BaseSampler)
        if self.mode not in ("multi", "single"):
            raise ValueError(f"study.mode must be multi or single, got {self.mode!r}")
        if self.mode == "single" and self.objectives not in (None, ("accuracy",)):
            raise ValueError(
                f"study.objectives {list(self.objectives)} is for multi mode; single mode "
                "maximises accuracy alone under the budgets: remove study.objectives or set "
                "study.mode: multi"
            )
        if self.mode == "multi" and self.objectives is not None:
            first, costs = self.objectives[:1], self.objectives[1:]
            if first not in (("accuracy",), ("accuracy_int8",)) or len(set(costs)) != len(costs):
                raise ValueError(
                    "study.objectives starts with accuracy (or accuracy_int8), then any of "
                    f"latency_ms, params, flops, each once; got {list(self.objectives)}"
                )
            unknown = set(costs) - set(COST_OBJECTIVES)
            if unknown or not costs:
                raise ValueError(
                    f"study.objectives {list(self.objectives)}: use {first[0]} plus one or "
                    f"more of {', '.join(COST_OBJECTIVES)}"
                )
        if self.pruner is not None:
            if self.mode != "single":
                raise ValueError(
                    "study.pruner works in single mode only (Optuna prunes single-objective "
                    "studies): set study.mode: single, or use early_stop for multi mode"
                )
            _check_optuna_class("pruner", self.pruner, optuna.pruners, optuna.pruners.BasePruner)

    @property
    def objective_names(self) -> tuple[str, ...]:
        """The study's objectives: accuracy alone in single mode."""
        if self.mode == "single":
            return ("accuracy",)
        return self.objectives or ("accuracy", "latency_ms")

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///runs/{self.name}.db"

    @property
    def artifact_dir(self) -> str:
        return self.artifacts or os.path.join("runs", f"{self.name}-artifacts")


@dataclass(frozen=True)
class DataConfig:
    """The data set: `digits` (scikit-learn's bundled 8x8 digits, resized), `fashion_mnist`
    (its idx files at `path`, by default where Debian's package dataset-fashion-mnist puts
    them), `cifar10` or `cifar100` (the batches already on disk: the python or the binary
    version), `imagefolder` (a folder of class sub-folders, or with `train/` and `val/` inside)
    at `path`, or `synthetic` (generated class patterns, for tests; `num_classes` and
    `num_samples` apply to it only). The validation split is carved from the training images
    (`val_fraction`, stratified, `seed`) unless a folder has its own `val/`; a test split is
    never read by a search (`lvit evaluate --split test` reads it). `max_train` caps the
    training split (a seeded, class-balanced subset) for quick proxies.

    `cache`: `memory` decodes each split once into uint8 at `img_size`; `none` streams images
    from disk through DataLoader worker processes, memory bounded by the batches in flight;
    `auto` (the default) caches what takes at most 2 GiB and a quarter of the free memory.
    `workers`: DataLoader worker processes for decoding and per-image augmentation (null: the
    cores, at most 8). `strict`: refuse a folder with unreadable images (read through once
    first) instead of skipping and counting them."""

    name: str = "digits"
    img_size: int = 32
    val_fraction: float = 0.2
    seed: int = 0
    num_classes: int = 4
    num_samples: int = 400
    path: str | None = None
    max_train: int | None = None
    cache: str = "auto"
    workers: int | None = None
    strict: bool = False

    def __post_init__(self) -> None:
        if self.name not in DATASETS:
            raise ValueError(
                f"data.name '{self.name}' is unknown; use one of: {', '.join(DATASETS)}"
            )
        _positive("data", img_size=self.img_size, num_samples=self.num_samples)
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"data.val_fraction must be between 0 and 1, got {self.val_fraction}")
        if self.num_classes < 2:
            raise ValueError(f"data.num_classes must be >= 2, got {self.num_classes}")
        _within("data", num_classes=self.num_classes)
        if self.name in FOLDER_DATASETS and not self.path:
            raise ValueError(f"data.path is required for {self.name}: the folder on disk")
        if self.path and self.name not in (*FOLDER_DATASETS, "fashion_mnist"):
            raise ValueError(
                f"data.path is for imagefolder, fashion_mnist, cifar10 and cifar100; data "
                f"'{self.name}' is not read from a folder: remove data.path or set data.name"
            )
        _seed("data", self.seed)
        if self.max_train is not None:
            _positive("data", max_train=self.max_train)
        if self.cache not in CACHES:
            raise ValueError(f"data.cache must be one of {', '.join(CACHES)}, got {self.cache!r}")
        if self.workers is not None:
            if self.workers < 0:
                raise ValueError(f"data.workers must be >= 0 (or null), got {self.workers}")
            _within("data", workers=self.workers)


# The two training recipes. `proxy` is what every search candidate gets: short, with the data
# set's light augmentation (random translations, flips where they make sense). `full` is what a
# winner gets when it is retrained (`lvit train`, the benchmarks): DeiT's recipe for training
# vision transformers from scratch ("Training data-efficient image transformers & distillation
# through attention", arXiv 2012.12877) from timm's pieces, cut down to what measurably helps
# models of a few hundred thousand parameters on small data (timm's random-resized crop and
# random erasing, drop path, label smoothing; RandAugment and Mixup/CutMix cost accuracy there
# and are off, one key away). experiments/bench_recipe.py made the measurements that
# docs/training.md gives for these values.
RECIPE_PRESETS: dict[str, dict[str, Any]] = {
    "proxy": {
        "epochs": 12,
        "batch_size": 32,
        "lr": 3e-3,
        "weight_decay": 0.05,
        "warmup_epochs": 1.0,
        "label_smoothing": 0.1,
        "clip_grad": 1.0,
        "augment": "light",
        "crop_scale": (0.35, 1.0),
        "auto_augment": "none",
        "re_prob": 0.0,
        "mixup": 0.0,
        "cutmix": 0.0,
        "mixup_prob": 1.0,
        "ema_decay": 0.0,
        "drop_path": 0.0,
    },
    "full": {  # docs/training.md: what experiments/bench_recipe.py measured for each key
        "epochs": 100,
        "batch_size": 32,
        "lr": 3e-3,
        "weight_decay": 0.05,
        "warmup_epochs": 1.0,
        "label_smoothing": 0.1,
        "clip_grad": 1.0,
        "augment": "timm",
        "crop_scale": (0.8, 1.0),
        "auto_augment": "none",
        "re_prob": 0.25,
        "mixup": 0.0,
        "cutmix": 0.0,
        "mixup_prob": 1.0,
        "ema_decay": 0.0,
        "drop_path": 0.1,
    },
}
# TrivialAugment ("TrivialAugment: Tuning-free Yet State-of-the-Art Data Augmentation", arXiv
# 2103.10158) in timm's RandAugment terms: one operation an image, at a uniform magnitude.
AUTO_AUGMENT_ALIASES = {"trivial": "rand-n1-m10-mstd101-p1"}
_AUTO_AUGMENT = re.compile(
    r"^(rand|augmix|original|originalr|v0|v0r|3a)(-[a-z]+[0-9.]*)*$"  # timm's policy strings
)


@dataclass(frozen=True)
class TrainConfig:
    """How a model is trained: AdamW, linear warm-up then cosine decay, label smoothing,
    gradient clipping, and the augmentation and regularisation of `recipe` (`proxy` or
    `full`, see `RECIPE_PRESETS`); every key left out (or null) takes the recipe's value.

    `augment`: `light` (the data set's random translations and flips, cut from whole batches),
    `timm` (timm.data.create_transform per image: random-resized crop of `crop_scale`, flips
    with probability `hflip` (null: the data set's choice), `auto_augment` (a timm RandAugment
    string such as rand-m9-mstd0.5-inc1, `trivial` for TrivialAugment, or `none`), random
    erasing with probability `re_prob`) or `none`. `mixup`/`cutmix`: the alphas of
    timm.data.Mixup (0: off), applied to a batch with probability `mixup_prob`, trained with
    soft-target cross-entropy. `ema_decay`: timm.utils.ModelEmaV3 with this decay (0: off);
    validation then scores the EMA weights, which are the ones kept. `drop_path`: stochastic
    depth, rising linearly to this rate in the last block.

    `device`: auto (a GPU when there is one), cpu or cuda; on a GPU, `amp` trains with bfloat16
    autocast, and models with convolutions run channels_last. Architectures with early exits
    train them jointly, each exit's loss weighted by `exit_weight` against the final head's 1;
    after training their thresholds are calibrated for at most `exit_max_drop` of accuracy
    lost."""

    recipe: str = "proxy"
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    warmup_epochs: float | None = None
    label_smoothing: float | None = None
    clip_grad: float | None = None
    augment: str | None = None
    crop_scale: tuple[float, ...] | None = None
    auto_augment: str | None = None
    re_prob: float | None = None
    hflip: float | None = None  # null: the data set's choice (no flips for digits)
    mixup: float | None = None
    cutmix: float | None = None
    mixup_prob: float | None = None
    ema_decay: float | None = None
    drop_path: float | None = None
    threads: int = 0  # 0: all cores
    device: str = "auto"
    amp: bool = True
    exit_weight: float = 0.5
    exit_max_drop: float = 0.01

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise ValueError(
                f"train.recipe must be one of {', '.join(RECIPES)}, got {self.recipe!r}"
            )
        for key, value in RECIPE_PRESETS[self.recipe].items():
            if getattr(self, key) is None:  # left out: the recipe's value, written out
                object.__setattr__(self, key, value)
        object.__setattr__(self, "crop_scale", tuple(float(v) for v in self.crop_scale))
        _positive("train", epochs=self.epochs, batch_size=self.batch_size, lr=self.lr)
        if self.weight_decay < 0 or self.warmup_epochs < 0 or self.clip_grad < 0:
            raise ValueError("train.weight_decay, warmup_epochs and clip_grad must be >= 0")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(
                f"train.label_smoothing must be in [0, 1), got {self.label_smoothing}"
            )
        if self.threads < 0:
            raise ValueError(f"train.threads must be >= 0, got {self.threads}")
        _within("train", threads=self.threads)
        if self.exit_weight < 0 or not 0 <= self.exit_max_drop < 1:
            raise ValueError("train.exit_weight must be >= 0 and exit_max_drop in [0, 1)")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"train.device must be auto, cpu or cuda, got {self.device!r}")
        if self.augment not in AUGMENTS:
            raise ValueError(
                f"train.augment must be one of {', '.join(AUGMENTS)}, got {self.augment!r}"
            )
        lo_hi = self.crop_scale
        if len(lo_hi) != 2 or not 0 < lo_hi[0] <= lo_hi[1] <= 1:
            raise ValueError(
                f"train.crop_scale is [min, max] with 0 < min <= max <= 1, got {list(lo_hi)}"
            )
        if self.auto_augment != "none" and not _AUTO_AUGMENT.match(
            AUTO_AUGMENT_ALIASES.get(self.auto_augment, self.auto_augment)
        ):
            raise ValueError(
                f"train.auto_augment {self.auto_augment!r} is not a timm augmentation string: "
                "use e.g. rand-m9-mstd0.5-inc1 (RandAugment), trivial (TrivialAugment) or none"
            )
        for key in ("re_prob", "mixup_prob", "hflip"):
            value = getattr(self, key)
            if value is not None and not 0 <= value <= 1:
                raise ValueError(f"train.{key} must be in [0, 1], got {value}")
        if self.mixup < 0 or self.cutmix < 0:
            raise ValueError("train.mixup and train.cutmix are alphas: >= 0 (0: off)")
        if not 0 <= self.ema_decay < 1 or not 0 <= self.drop_path < 1:
            raise ValueError("train.ema_decay and train.drop_path must be in [0, 1)")

    @property
    def mixes(self) -> bool:
        """Whether batches are mixed (mixup or cutmix): targets are then soft."""
        return (self.mixup > 0 or self.cutmix > 0) and self.mixup_prob > 0

    @property
    def timm_auto_augment(self) -> str | None:
        """`auto_augment` as timm's create_transform takes it."""
        if self.auto_augment == "none":
            return None
        return AUTO_AUGMENT_ALIASES.get(self.auto_augment, self.auto_augment)

    def describe(self) -> str:
        """The recipe in a line, for model cards and summaries."""
        parts = [
            f"{self.recipe} recipe: {self.epochs} epoch{'s' * (self.epochs != 1)}, batch "
            f"{self.batch_size}, AdamW lr "
            f"{self.lr:g} wd {self.weight_decay:g}, {self.warmup_epochs:g} warm-up epoch(s) "
            f"then cosine, label smoothing {self.label_smoothing:g}"
        ]
        if self.augment == "timm":
            aa = f", {self.auto_augment}" if self.auto_augment != "none" else ""
            parts.append(
                f"timm augmentation (random-resized crop {list(self.crop_scale)}{aa}, random "
                f"erasing {self.re_prob:g})"
            )
        else:
            parts.append(f"{self.augment} augmentation")
        if self.mixes:
            parts.append(f"mixup {self.mixup:g} / cutmix {self.cutmix:g}")
        if self.ema_decay:
            parts.append(f"EMA {self.ema_decay:g}")
        if self.drop_path:
            parts.append(f"drop path {self.drop_path:g}")
        return "; ".join(parts)


@dataclass(frozen=True)
class RetrainConfig(TrainConfig):
    """The `retrain` section: how `lvit train` (and a benchmark's winner) trains a found
    architecture; the same keys as `train`, with the `full` recipe by default."""

    recipe: str = "full"


@dataclass(frozen=True)
class BudgetConfig:
    """Budgets checked before any training; a candidate over one is recorded, never trained.
    Null means no budget. `latency_source` says where the latency figure comes from:
    `measured` (each candidate measured on this machine, as `latency` says) or `{lut: PATH}` (a
    lookup table from `lvit latency build-lut`, built on the target device).

    `max_int8_drop` is checked after training instead: the most validation accuracy (a
    fraction, 0.01 = one point) the int8 model (PT2E, as `lvit export --executorch --int8`
    quantises it) may lose against the float one; a candidate that loses more is recorded as
    trained with a violated constraint, so it stays off the feasible front."""

    max_params: int | None = None
    max_latency_ms: float | None = None
    max_flops: int | None = None
    latency_source: str | dict[str, str] = "measured"
    max_int8_drop: float | None = None

    def __post_init__(self) -> None:
        if self.max_params is not None:
            _positive("budget", max_params=self.max_params)
        if self.max_flops is not None:
            _positive("budget", max_flops=self.max_flops)
        if self.max_latency_ms is not None:
            _positive("budget", max_latency_ms=self.max_latency_ms)
        if self.max_int8_drop is not None and not 0 <= self.max_int8_drop < 1:
            raise ValueError(
                f"budget.max_int8_drop is a fraction of accuracy in [0, 1) (0.01 = one point), "
                f"got {self.max_int8_drop}"
            )
        source = self.latency_source
        if isinstance(source, str) and source != "measured":
            raise ValueError(
                f"budget.latency_source must be measured or {{lut: PATH}}, got {source!r}"
            )
        if isinstance(source, dict) and (set(source) != {"lut"} or not source["lut"]):
            raise ValueError(
                "budget.latency_source takes one key, lut, naming a table file: "
                "{lut: luts/cpu-1t.json}"
            )

    @property
    def lut_path(self) -> str | None:
        return self.latency_source["lut"] if isinstance(self.latency_source, dict) else None


@dataclass(frozen=True)
class LatencyConfig:
    """How latency is measured: on `device` (cpu: torch eager; cuda; onnxruntime: ONNX Runtime
    on the CPU; executorch: ExecuTorch's runtime with the XNNPACK delegate) at `dtype` (int8:
    quantised by the runtime's own flow, on onnxruntime and executorch only) in eval mode
    under no_grad, `warmup` untimed runs, then rounds of `runs` timed runs until the spread is
    at most `target_spread`, or the median's standard error at most `target_precision` of it,
    or `max_seconds` pass; the median is the figure. `measure: false` skips the measurement
    when a lookup table gives the latency. The device and threads also say which lookup tables
    fit.

    `normalise` (default): drift-corrected figures. A small fixed reference model is timed
    interleaved with each candidate, and the figure is the candidate's latency at the machine
    speed the study calibrated at its start (or its lookup table at its build), so that a
    budget does not flip with the neighbours' load; the raw figure and the drift are recorded
    beside it. A candidate whose figure falls within its noise band of the latency budget is
    measured again, with twice the runs, before it is admitted or rejected."""

    device: str = "cpu"
    threads: int = 1
    batch_size: int = 1
    dtype: str = "float32"
    warmup: int = 10
    runs: int = 50
    max_seconds: float = 2.0
    target_spread: float = 0.05
    target_precision: float = 0.01
    measure: bool = True
    normalise: bool = True

    def __post_init__(self) -> None:
        if self.device not in LATENCY_DEVICES:
            raise ValueError(
                f"latency.device '{self.device}' is unknown; use one of: "
                + ", ".join(LATENCY_DEVICES)
            )
        if self.dtype not in LATENCY_DTYPES:
            raise ValueError(
                f"latency.dtype '{self.dtype}' is unknown; use one of: "
                + ", ".join(LATENCY_DTYPES)
            )
        problem = dtype_problem(self.device, self.dtype)
        if problem:
            raise ValueError(f"latency: {problem}")
        _positive(
            "latency",
            threads=self.threads,
            batch_size=self.batch_size,
            runs=self.runs,
            max_seconds=self.max_seconds,
            target_spread=self.target_spread,
            target_precision=self.target_precision,
        )
        if self.warmup < 0:
            raise ValueError(f"latency.warmup must be >= 0, got {self.warmup}")
        _within("latency", warmup=self.warmup)


@dataclass(frozen=True)
class DistillConfig:
    """Knowledge distillation from a teacher, a timm folder (`lvit teacher train` writes one).
    No teacher: no distillation.

    Response distillation (`kind`): the student's loss is (1 - alpha) x cross-entropy on the
    labels + alpha x a teacher term. `soft`: T^2 x KL(teacher || student) on temperature-T
    softmaxes (Hinton et al., "Distilling the Knowledge in a Neural Network", arXiv 1503.02531).
    `hard`: cross-entropy against the teacher's predicted class (DeiT, "Training data-efficient
    image transformers & distillation through attention", arXiv 2012.12877, which found it the
    stronger of the two for ViT students, with alpha = 0.5).

    `head: true` gives every candidate DeiT's distillation token in the form LeViT gives it to
    models without a class token: a second classifier on the pooled features carries the
    teacher term while the class head learns the labels, and inference averages the two. The
    head is part of the architecture (`distill_head`), so it is counted in the params, timed in
    the latency and exported.

    Feature distillation: with `hint_weight` > 0, a hint is added (FitNets, "FitNets: Hints for
    Thin Deep Nets", arXiv 1412.6550): the student's tokens after block `hint_block` (1-based),
    laid out on their grid and projected by a 1x1 conv, are pulled towards the teacher's
    feature map at module `hint_layer` (e.g. `layer3`) by MSE."""

    teacher: str | None = None
    kind: str = "soft"
    alpha: float = 0.5
    temperature: float = 4.0
    head: bool = False
    hint_weight: float = 0.0
    hint_layer: str | None = None
    hint_block: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in DISTILL_KINDS:
            raise ValueError(
                f"distill.kind '{self.kind}' is unknown; use one of: {', '.join(DISTILL_KINDS)}"
            )
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"distill.alpha must be in [0, 1], got {self.alpha}")
        _positive("distill", temperature=self.temperature)
        if self.head and not self.teacher:
            raise ValueError("distill.head needs a teacher: set distill.teacher to a timm folder")
        if self.hint_weight < 0:
            raise ValueError(f"distill.hint_weight must be >= 0, got {self.hint_weight}")
        if self.hint_weight and (not self.hint_layer or not self.hint_block):
            raise ValueError(
                "distill.hint_weight needs hint_layer (a teacher module, e.g. "
                "layer3) and hint_block (a student block number, from 1)"
            )


@dataclass(frozen=True)
class EarlyStopConfig:
    """Early stopping for multi-objective studies, where Optuna has no pruning: after epoch k
    (k >= `min_epoch`), a candidate stops when at least `dominated_by` trained candidates were
    already more accurate after their own epoch k at no more latency (and, with params as an
    objective, no more params). It acts once `min_trials` candidates have finished training.
    A stopped candidate ends PRUNED (`status: stopped`) with its curve and the trials that
    dominated it; samplers count it among the bad."""

    enabled: bool = False
    min_epoch: int = 1
    min_trials: int = 5
    dominated_by: int = 3

    def __post_init__(self) -> None:
        _positive(
            "early_stop",
            min_epoch=self.min_epoch,
            min_trials=self.min_trials,
            dominated_by=self.dominated_by,
        )
        if self.dominated_by > self.min_trials:
            raise ValueError(
                f"early_stop.dominated_by ({self.dominated_by}) cannot exceed min_trials "
                f"({self.min_trials})"
            )


@dataclass(frozen=True)
class ProxyConfig:
    """Zero-cost proxies computed on one training batch of `batch_size` images for every
    candidate within the budgets (`compute`: any of synflow, naswot, grad_norm, snip; recorded
    in the trial's `proxies`). With `prescreen_sample` K > 0, candidates are proposed K at a
    time, ranked by `prescreen_proxy`, and only the best `prescreen_keep` fraction is trained;
    the rest end PRUNED with `status: screened`."""

    compute: tuple[str, ...] = ()
    batch_size: int = 64
    prescreen_proxy: str | None = None
    prescreen_sample: int = 0
    prescreen_keep: float = 0.25

    def __post_init__(self) -> None:
        _positive("proxies", batch_size=self.batch_size)
        for name in (*self.compute, *([self.prescreen_proxy] if self.prescreen_proxy else [])):
            if name not in PROXY_NAMES:
                raise ValueError(
                    f"proxy '{name}' is unknown; use one of: {', '.join(PROXY_NAMES)}"
                )
        if self.prescreen_sample < 0 or not 0 < self.prescreen_keep <= 1:
            raise ValueError("proxies.prescreen_sample must be >= 0 and prescreen_keep in (0, 1]")
        _within("proxies", prescreen_sample=self.prescreen_sample)
        if self.prescreen_sample and not self.prescreen_proxy:
            raise ValueError(
                "proxies.prescreen_sample needs prescreen_proxy (synflow, naswot, grad_norm, snip)"
            )

    @property
    def names(self) -> tuple[str, ...]:
        """Every proxy to compute: those asked for and the pre-screen's."""
        extra = (self.prescreen_proxy,) if self.prescreen_proxy else ()
        return tuple(dict.fromkeys((*self.compute, *extra)))


@dataclass(frozen=True)
class SupernetConfig:
    """A one-shot supernet (`lvit supernet train CONFIG` trains it; `space: supernet` searches
    its space; `evaluation: supernet` scores candidates with its weights). Its space: the
    `stems` and `pos_encs` to choose from, a fixed `patch_size`, and per stage the options of
    `stages` (`StageChoices`: depths, dims, heads, mlp_ratios, mixers, downsample,
    kernel_sizes, sr_ratios, windows). It trains for `epochs` with the `train` section's
    recipe, one uniformly sampled path per batch (`sampling: spos`, SPOS) or, with `sampling:
    sandwich`, BigNAS's sandwich rule with in-place distillation (the largest path on the
    labels, the smallest and `sandwich_paths` uniformly drawn ones on the largest's
    predictions, every batch), from `seed`, and is written to `path`
    (default `runs/<study.name>-supernet`). Scoring recalibrates batch norms on
    `calib_batches` training batches; after the search the `retrain_top_k` most accurate
    candidates are trained from scratch. `tune_steps` > 0 adapts each candidate's inherited
    weights alone for that many batches (AdamW at a tenth of `train.lr`) before it is scored:
    slower scoring, scores closer to training from scratch."""

    path: str | None = None
    patch_size: int = 4
    stems: tuple[str, ...] = ("patch",)
    pos_encs: tuple[str, ...] = ("learned",)
    stages: tuple[StageChoices, ...] = (StageChoices(),)
    epochs: int = 30
    seed: int = 0
    calib_batches: int = 20
    tune_steps: int = 0
    retrain_top_k: int = 3
    sampling: str = "spos"
    sandwich_paths: int = 2

    def __post_init__(self) -> None:
        from search_spaces.blocks import POS_ENCODINGS

        _positive("supernet", patch_size=self.patch_size, epochs=self.epochs)
        _seed("supernet", self.seed)
        if self.sampling not in ("spos", "sandwich"):
            raise ValueError(f"supernet.sampling must be spos or sandwich, got {self.sampling!r}")
        _positive("supernet", sandwich_paths=self.sandwich_paths)
        if min(self.calib_batches, self.retrain_top_k, self.tune_steps) < 0:
            raise ValueError("supernet.calib_batches, tune_steps and retrain_top_k must be >= 0")
        _within(
            "supernet",
            calib_batches=self.calib_batches,
            tune_steps=self.tune_steps,
            retrain_top_k=self.retrain_top_k,
        )
        unknown = [p for p in self.pos_encs if p not in POS_ENCODINGS]
        if unknown:
            raise ValueError(
                f"supernet.pos_encs: '{unknown[0]}' is unknown; use any of "
                + ", ".join(POS_ENCODINGS)
            )
        try:
            self.space()
        except ValueError as e:
            raise ValueError(f"supernet: {e}") from None

    def space(self) -> SharedSpace:
        return SharedSpace(self.stages, self.stems, self.pos_encs, self.patch_size)

    def folder(self, study_name: str) -> str:
        return self.path or os.path.join("runs", f"{study_name}-supernet")


@dataclass(frozen=True)
class SearchConfig:
    study: StudyConfig
    space: str = "tiny"
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)
    proxies: ProxyConfig = field(default_factory=ProxyConfig)
    evaluation: str = "train"
    supernet: SupernetConfig | None = None
    space_args: dict[str, Any] = field(default_factory=dict)
    table: str | None = None
    space_version: int | None = None

    @property
    def needs_int8(self) -> bool:
        """Whether each trained candidate is also quantised to int8 and evaluated."""
        return (
            self.study.objective_names[0] == "accuracy_int8"
            or self.budget.max_int8_drop is not None
        )

    def __post_init__(self) -> None:
        fidelity = self.study.fidelity
        if fidelity is not None:
            if self.early_stop.enabled:
                raise ValueError(
                    "study.fidelity and early_stop both stop candidates: keep one of them"
                )
            if self.evaluation == "train" and fidelity.rungs[-1] >= self.train.epochs:
                raise ValueError(
                    f"study.fidelity.rungs {list(fidelity.rungs)} must be below train.epochs "
                    f"({self.train.epochs}): the last rung is the full training"
                )
            if self.evaluation == "supernet" or self.space in CELL_SPACES:
                raise ValueError(
                    "study.fidelity promotes candidates between epochs of their training: it "
                    "needs evaluation: train, or a table lvit table build made (NAS-Bench-201's "
                    "holds final accuracies only)"
                )
        if self.early_stop.enabled and self.study.mode != "multi":
            raise ValueError(
                "early_stop is for multi mode; in single mode use study.pruner (e.g. MedianPruner)"
            )
        if self.space not in SPACES and self.space not in ("supernet", *HUB_SPACES, *CELL_SPACES):
            raise ValueError(
                f"space '{self.space}' is unknown; use one of: {', '.join(SPACES)}, supernet, "
                + ", ".join((*HUB_SPACES, *CELL_SPACES))
            )
        if self.space_version is not None:
            self.search_space()  # a version the space keeps
        if self.space_args and self.space not in HUB_SPACES:
            raise ValueError("space_args are for NNI's hub spaces (space: nni:autoformer)")
        if self.evaluation not in EVALUATIONS:
            raise ValueError(
                f"evaluation must be {' or '.join(EVALUATIONS)}, got {self.evaluation!r}"
            )
        if self.needs_int8 and self.evaluation != "train":
            raise ValueError(
                "int8 accuracy (study.objectives accuracy_int8, budget.max_int8_drop) is "
                "measured on a trained model: it needs evaluation: train"
            )
        if (self.space == "supernet" or self.evaluation == "supernet") and self.supernet is None:
            raise ValueError(
                "space: supernet and evaluation: supernet need a supernet section (its stems, "
                "pos_encs and stages); see experiments/oneshot.yaml"
            )
        if self.evaluation == "supernet" and self.space != "supernet":
            raise ValueError(
                "evaluation: supernet scores candidates of the supernet's own space: set "
                "space: supernet"
            )
        if self.evaluation == "supernet" and (self.distill.teacher or self.proxies.names):
            raise ValueError(
                "evaluation: supernet does not train candidates: remove distill and proxies"
            )
        self._check_table()
        measured = self.budget.lut_path is None
        if self.evaluation != "table" and measured and not self.latency.measure:
            raise ValueError(
                "latency.measure is false but budget.latency_source is measured: "
                "give a table with latency_source: {lut: PATH}, or measure"
            )

    def _check_table(self) -> None:
        """`evaluation: table` goes with a table and nothing that trains or measures: a cell
        space with NAS-Bench-201's table, or an architecture space with a table `lvit table
        build` made of it (a .csv path)."""
        tabular = self.evaluation == "table"
        if self.space in CELL_SPACES and not tabular:
            raise ValueError(
                "space: nb201 is searched through its table: set evaluation: table and table: "
                "cifar10 (or cifar100, imagenet16-120)"
            )
        if self.table is not None and not tabular:
            raise ValueError("table: is for evaluation: table")
        if not tabular:
            return
        built = self.space not in CELL_SPACES
        if built and self.space not in SPACES:
            raise ValueError(
                "evaluation: table looks candidates up in a tabular benchmark: set space: nb201 "
                "(NAS-Bench-201's cells) or an architecture space with a table lvit table build "
                f"made of it, not {self.space}"
            )
        if built and not str(self.table or "").endswith(".csv"):
            raise ValueError(
                f"table: the TABLE.csv lvit table build made of space {self.space} (got "
                f"{self.table!r}); NAS-Bench-201's data sets go with space: nb201"
            )
        if not built and self.table not in NB201_DATASETS:
            raise ValueError(
                f"table must name NAS-Bench-201's data set: {', '.join(NB201_DATASETS)}, "
                f"got {self.table!r}"
            )
        if not built and (
            self.budget.max_flops is not None or "flops" in self.study.objective_names
        ):
            raise ValueError(
                "NAS-Bench-201's table has no FLOPs: remove budget.max_flops and the flops "
                "objective (params and latency_ms it has)"
            )
        if self.budget.lut_path is not None:
            raise ValueError(
                "evaluation: table takes latency from the table: remove budget.latency_source"
            )
        for name, used in (
            ("distill.teacher", bool(self.distill.teacher)),
            ("proxies", bool(self.proxies.names)),
            ("early_stop", self.early_stop.enabled),
            ("study.warm_start: baselines", self.study.warm_start == "baselines"),
            ("study.confirm_top_k", bool(self.study.confirm_top_k)),
        ):
            if used:
                raise ValueError(
                    f"evaluation: table looks candidates up, it trains nothing: remove {name}"
                )

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def warnings(self) -> list[str]:
        """What is allowed but probably not meant: more threads than this machine has cores."""
        cores = machine_cores()
        return [
            f"{key} is {value} but this machine has {cores} cores: threads beyond the cores "
            "slow training and make latency measurements meaningless"
            for key, value in (
                ("train.threads", self.train.threads),
                ("latency.threads", self.latency.threads),
            )
            if value > cores
        ]

    def search_space(self) -> SearchSpace:
        """The space the study searches: a registered one, or the supernet section's."""
        if self.space == "supernet":
            return self.supernet.space()
        if self.space in HUB_SPACES:
            try:
                return get_space(self.space, self.space_args)
            except ImportError as e:
                raise ConfigError(str(e)) from None
            except (ValueError, TypeError) as e:
                raise ConfigError(f"space {self.space}: {e}") from None
        space = get_space(self.space)
        if self.space_version is None:
            return space
        try:
            return space.at_version(self.space_version)
        except ValueError as e:
            raise ConfigError(f"space_version: {e}") from None

    @classmethod
    def from_dict(cls, data: Any, source: str = "config") -> SearchConfig:
        try:
            return from_dict(cls, data, "")
        except TypeCheckError as e:
            raise ConfigError(f"{source}: {e}") from None

    @classmethod
    def from_stored(cls, data: dict[str, Any], source: str = "stored config") -> SearchConfig:
        """A config as a study stored it, written by this or an older version."""
        return cls.from_dict(upgrade_stored(data), source)

    def replace_study(self, **changes: Any) -> SearchConfig:
        """A copy with study fields changed (command-line overrides), validated again."""
        changes = {k: v for k, v in changes.items() if v is not None}
        try:
            return dataclasses.replace(self, study=dataclasses.replace(self.study, **changes))
        except ValueError as e:
            raise ConfigError(str(e)) from None


def upgrade_stored(data: dict[str, Any]) -> dict[str, Any]:
    """A stored config in today's terms: older versions wrote the multi-mode default objectives
    into single-mode studies, where they meant nothing, and measured latency without drift
    correction."""
    study = data.get("study")
    if isinstance(study, dict) and study.get("mode") == "single" and "objectives" in study:
        data = {**data, "study": {k: v for k, v in study.items() if k != "objectives"}}
    latency = data.get("latency")
    if isinstance(latency, dict) and "normalise" not in latency:  # measured raw, before drift
        data = {**data, "latency": {**latency, "normalise": False}}  # correction existed
    return data


def load_config(path: str | os.PathLike[str]) -> SearchConfig:
    """Read and validate a YAML search config; raises `ConfigError` with a one-line message.

    The file is read with YAML's safe loader, and bounded: at most `MAX_CONFIG_BYTES` bytes
    and `MAX_CONFIG_VALUES` values once aliases are expanded."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} (see experiments/ for examples)")
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(
                f"{path} is {size:,} bytes; a search config is at most {MAX_CONFIG_BYTES:,} "
                "(docs/limits.md): is it the right file?"
            )
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text; a search config is a YAML file") from None
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a search config") from None
    if data is None:
        raise ConfigError(f"{path}: the file is empty; it needs at least study.name")
    _check_expanded_size(data, str(path))
    return SearchConfig.from_dict(data, str(path))


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (YAML would keep the
    last silently, so one of two `study:` sections would be ignored)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key '{key}' is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _check_expanded_size(data: Any, source: str) -> None:
    """Refuse YAML whose aliases expand past `MAX_CONFIG_VALUES` values, or refer to
    themselves: a loaded document shares aliased values, so counting them as expanded (each
    shared value counted once per use, memoised) costs little however large the expansion."""
    sizes: dict[int, int] = {}
    open_now: set[int] = set()

    def size(value: Any) -> int:
        if not isinstance(value, (dict, list)):
            return 1
        key = id(value)
        if key in sizes:
            return sizes[key]
        if key in open_now:
            raise ConfigError(f"{source}: an alias refers to the value that contains it")
        open_now.add(key)
        items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
        total = 1
        for item in items:
            total += size(item)
            if total > MAX_CONFIG_VALUES:
                raise ConfigError(
                    f"{source}: its aliases expand to more than {MAX_CONFIG_VALUES:,} values "
                    "(docs/limits.md); write the values out instead of aliasing them"
                )
        open_now.discard(key)
        sizes[key] = total
        return total

    try:
        size(data)
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply to be a search config") from None
