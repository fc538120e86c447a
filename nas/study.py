"""The search: an Optuna study over a search space, under a parameter and a latency budget.

Two objectives, validation accuracy (maximise) and latency on the target device (minimise:
measured, or predicted by a lookup table built there, as `budget.latency_source` says), searched by
an Optuna sampler (TPE by default) that sees the budgets as Optuna constraints
(`trial.set_constraint`, one per budget: feasible when <= 0), so it learns where they bind.

Per trial:
  1. sample an `ArchConfig` from the space and store it (user attribute `arch`);
  2. build the model and cost it: params, FLOPs, the predicted latency (with a table) and/or the
     measured latency with its conditions (`costs`; `costs.latency_ms` is the one that counts);
  3. check every budget; a candidate over budget is recorded as PRUNED with `status: infeasible`
     and its constraint values, and is never trained (the sampler still learns from it);
  4. proxy-train, record the per-epoch curve (`train`), and keep the trained weights as a
     safetensors file in Optuna's artifact store (`weights_artifact_id`) so export never
     retrains; the trial completes with (accuracy, latency_ms).

`study.n_trials` counts finished candidates (trained or rejected) across runs: re-running the
same command resumes the study until it has that many. Ctrl-C marks the running trial failed.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.trial import TrialState
from safetensors.torch import save_file

from nas import cost
from nas.config import ConfigError, SearchConfig
from nas.data import Dataset, load_dataset
from nas.exits import calibrate_exits
from nas.storage import open_storage, redact
from nas.train import TrainingFailed, resolve_device, train_model
from search_spaces.model import LightViT
from search_spaces.spaces import get_space

__all__ = [
    "OBJECTIVES",
    "Inputs",
    "SearchRun",
    "prepare_inputs",
    "create_or_resume_study",
    "run_search",
    "trial_seed",
    "finished_count",
]

OBJECTIVES = (("accuracy", "maximize"), ("latency_ms", "minimize"))
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def trial_seed(study_seed: int, trial_number: int) -> int:
    """The seed a trial trains with (recorded with the trial)."""
    return study_seed * 100_003 + trial_number


def finished_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def _make_sampler(config: SearchConfig, n_existing: int) -> optuna.samplers.BaseSampler:
    """Optuna's own sampler class, with the config's arguments and seed.

    The seed is offset by the number of trials the study already has, so a resumed study draws a
    new, reproducible stream instead of replaying the first run's candidates.
    """
    cls = getattr(optuna.samplers, config.study.sampler)
    kwargs = dict(config.study.sampler_args)
    params = inspect.signature(cls).parameters
    if "seed" in params:
        kwargs.setdefault("seed", config.study.seed + n_existing)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            return cls(**kwargs)
        except TypeError as e:
            raise ConfigError(f"study.sampler_args do not fit {cls.__name__}: {e}") from None


def _comparable(config_dict: dict[str, Any]) -> dict[str, Any]:
    """The parts of a config that define a study's results (n_trials may grow on resume)."""
    study = {k: v for k, v in config_dict["study"].items() if k not in ("n_trials", "storage")}
    return {**config_dict, "study": study}


def create_or_resume_study(config: SearchConfig) -> optuna.Study:
    """Create the study, or load it when it exists and was made with the same config."""
    storage = open_storage(config.study.storage_url, create=True)
    study = optuna.create_study(
        study_name=config.study.name,
        storage=storage,
        sampler=optuna.samplers.RandomSampler(),  # replaced below, once the trial count is known
        directions=[d for _, d in OBJECTIVES],
        load_if_exists=True,
    )
    stored = study.user_attrs.get("config")
    current = config.to_dict()
    if stored is None:
        space = get_space(config.space)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([name for name, _ in OBJECTIVES])
        study.set_user_attr("config", current)
        study.set_user_attr("space", {"name": space.name, "version": space.version})
        study.set_user_attr("artifact_dir", os.path.abspath(config.study.artifact_dir))
    elif _comparable(stored) != _comparable(current):
        diffs = _differences(_comparable(stored), _comparable(current))
        raise ConfigError(
            f"study '{config.study.name}' in {redact(config.study.storage_url)} was made with a "
            f"different config ({'; '.join(diffs[:3])}); rename study.name to start a new study"
        )
    study.sampler = _make_sampler(config, n_existing=len(study.get_trials(deepcopy=False)))
    return study


def _differences(old: Any, new: Any, path: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _differences(old.get(key), new.get(key), f"{path}.{key}" if path else key)
        return out
    return [] if old == new else [f"{path}: {old!r} -> {new!r}"]


@dataclass
class SearchRun:
    """What a run of `run_search` did."""

    study: optuna.Study
    trained: int = 0
    rejected: int = 0
    failed: int = 0
    seconds: float = 0.0
    events: list[str] = field(default_factory=list)


class _Objective:
    """Optuna objective for one study; holds the data set so it is loaded once per process."""

    def __init__(
        self,
        config: SearchConfig,
        inputs: Inputs,
        artifact_store: FileSystemArtifactStore,
        on_event: Callable[[str, dict[str, Any]], None],
    ) -> None:
        self.config = config
        self.data = inputs.data
        self.space = get_space(config.space)
        self.artifact_store = artifact_store
        self.on_event = on_event
        self.table = inputs.table
        self.teacher = inputs.teacher

    def __call__(self, trial: optuna.Trial) -> tuple[float, float]:
        cfg, data = self.config, self.data
        seed = trial_seed(cfg.study.seed, trial.number)
        arch = self.space.sample(
            trial, num_classes=data.num_classes, in_chans=data.in_chans, img_size=data.img_size
        )
        if cfg.distill.head:  # every candidate carries the distillation head it will train
            arch = dataclasses.replace(arch, distill_head=True)
        trial.set_user_attr("arch", arch.to_dict())
        trial.set_user_attr("arch_line", arch.describe())
        trial.set_user_attr("seed", seed)
        trial.set_user_attr("data", data.info())
        trial.set_user_attr("versions", {"torch": torch.__version__, "optuna": optuna.__version__})

        torch.manual_seed(seed)
        check_start = time.perf_counter()
        model = LightViT(arch)
        input_size = (arch.in_chans, arch.img_size, arch.img_size)
        costs = {
            "params": cost.count_params(model),
            "flops": cost.count_flops(model, input_size),
            "flops_counting": "2 x multiply-adds of matmuls, convs and attention (torch)",
        }
        if self.table is not None:
            costs["latency_predicted_ms"] = round(self.table.predict(arch), 4)
            costs["latency_lut"] = {
                "path": cfg.budget.lut_path,
                "device": self.table.device,
                "threads": self.table.threads,
                "hardware": self.table.meta.get("hardware"),
            }
        if cfg.latency.measure:
            lat = cfg.latency
            measured = cost.measure_latency(
                model,
                input_size,
                device=lat.device,
                threads=lat.threads,
                batch_size=lat.batch_size,
                dtype=lat.dtype,
                warmup=lat.warmup,
                runs=lat.runs,
                max_seconds=lat.max_seconds,
                target_spread=lat.target_spread,
            )
            costs["latency_measured_ms"] = measured.median_ms
            costs["latency"] = measured.to_dict()
        source = "lut" if self.table is not None else "measured"
        costs["latency_source"] = source
        costs["latency_ms"] = costs[f"latency_{'predicted' if source == 'lut' else 'measured'}_ms"]
        latency_ms = costs["latency_ms"]
        trial.set_user_attr("costs", costs)

        reasons = []
        for name, value, budget, fmt in (
            ("params", costs["params"], cfg.budget.max_params, "{:,}"),
            ("latency_ms", latency_ms, cfg.budget.max_latency_ms, "{:.3g} ms"),
        ):
            if budget is None:
                continue
            trial.set_constraint(name, float(value - budget))  # samplers read these
            if value > budget:
                reasons.append(f"{name.split('_')[0]} {fmt.format(value)} > {fmt.format(budget)}")
        trial.set_user_attr("budget_check_seconds", round(time.perf_counter() - check_start, 3))
        if reasons:
            trial.set_user_attr("status", "infeasible")
            trial.set_user_attr("reject_reason", "; ".join(reasons))
            self.on_event(
                "rejected",
                {
                    "trial": trial.number,
                    "arch": arch,
                    "costs": costs,
                    "reason": "; ".join(reasons),
                },
            )
            raise optuna.TrialPruned(f"over budget: {'; '.join(reasons)}")

        self.on_event("training", {"trial": trial.number, "arch": arch})
        try:
            result = train_model(
                model,
                data,
                cfg.train,
                seed,
                on_epoch=lambda epoch, acc: self.on_event(
                    "epoch",
                    {
                        "trial": trial.number,
                        "epoch": epoch,
                        "epochs": cfg.train.epochs,
                        "val_acc": acc,
                    },
                ),
                img_size=arch.img_size,
                teacher=self.teacher.model if self.teacher else None,
                distill=cfg.distill,
            )
        except TrainingFailed as e:
            trial.set_user_attr("status", "failed")
            trial.set_user_attr("fail_reason", str(e))
            self.on_event("failed", {"trial": trial.number, "reason": str(e)})
            raise
        trial.set_user_attr(
            "train",
            {
                "epochs": cfg.train.epochs,
                "history": result.history,
                "seconds": round(result.seconds, 2),
                "images_per_second": round(result.images_per_second, 1),
                "device": result.device,
                "amp": cfg.train.amp and result.device.startswith("cuda"),
            },
        )
        if self.teacher is not None:
            trial.set_user_attr(
                "distill",
                {**self.teacher.info, **dataclasses.asdict(cfg.distill)},
            )
        if arch.exits:
            report = calibrate_exits(
                model,
                data.val_x,
                data.val_y,
                max_drop=cfg.train.exit_max_drop,
                img_size=arch.img_size,
                threads=cfg.latency.threads,
            )
            trial.set_user_attr("exits", report.to_dict())
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.safetensors")
            save_file(
                {k: v.contiguous() for k, v in model.state_dict().items()},
                path,
                metadata={"arch": arch.to_json()},
            )
            artifact_id = upload_artifact(
                artifact_store=self.artifact_store, file_path=path, study_or_trial=trial
            )
        trial.set_user_attr("weights_artifact_id", artifact_id)
        trial.set_user_attr("status", "trained")
        self.on_event(
            "trained",
            {
                "trial": trial.number,
                "arch": arch,
                "costs": costs,
                "val_acc": result.val_acc,
                "seconds": result.seconds,
            },
        )
        return result.val_acc, latency_ms


def _load_table(config: SearchConfig, data: Dataset, space: Any) -> Any:
    """The search's latency table, refused (with the command that builds the right one) when it
    was made for another space version, device, thread count, data size or class count."""
    from nas.lut import LatencyTable, LutError

    path = config.budget.lut_path
    try:
        table = LatencyTable.load(path)
        table.check(
            space=space.name,
            space_version=space.version,
            device=config.latency.device,
            threads=config.latency.threads,
            img_size=data.img_size,
            num_classes=data.num_classes,
            path=path,
        )
    except LutError as e:
        raise ConfigError(str(e)) from None
    return table


@dataclass
class Inputs:
    """What a search reads from disk: the data set and the latency table (if any)."""

    data: Dataset
    table: Any = None
    teacher: Any = None  # nas.distill.Teacher


def prepare_inputs(config: SearchConfig) -> Inputs:
    """Load the data and the latency table; a bad path or table fails here, before any study
    is created or changed."""
    try:
        resolve_device(config.train.device)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    data = load_dataset(config.data)
    table = _load_table(config, data, get_space(config.space)) if config.budget.lut_path else None
    teacher = None
    if config.distill.teacher:
        from nas.distill import load_teacher

        teacher = load_teacher(config.distill.teacher, data)
    return Inputs(data, table, teacher)


def run_search(
    config: SearchConfig,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
    study: optuna.Study | None = None,
    inputs: Inputs | None = None,
) -> SearchRun:
    """Run (or resume) the search until the study has `config.study.n_trials` finished trials.

    `on_event(kind, info)` is called with kind in training/epoch/trained/rejected/failed.
    `inputs` and `study` are what `prepare_inputs(config)` and `create_or_resume_study(config)`
    return, when the caller has them already.
    """
    inputs = inputs or prepare_inputs(config)
    if study is None:
        study = create_or_resume_study(config)
    artifact_dir = study.user_attrs["artifact_dir"]
    os.makedirs(artifact_dir, exist_ok=True)
    store = FileSystemArtifactStore(artifact_dir)
    run = SearchRun(study=study)

    def record(kind: str, info: dict[str, Any]) -> None:
        if kind == "trained":
            run.trained += 1
        elif kind == "rejected":
            run.rejected += 1
        elif kind == "failed":
            run.failed += 1
        if on_event is not None:
            on_event(kind, info)

    objective = _Objective(config, inputs, store, record)
    start = time.perf_counter()
    try:
        # one trial per optimize() call so that failed trials are retried, not counted
        while finished_count(study) < config.study.n_trials:
            if run.failed > config.study.n_trials:
                raise RuntimeError(
                    f"{run.failed} trials failed in this run; see their fail_reason"
                )
            study.optimize(objective, n_trials=1, catch=(TrainingFailed,))
    finally:
        run.seconds = time.perf_counter() - start
    return run
