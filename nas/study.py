"""The search: an Optuna study over a search space, under parameter, FLOPs and latency budgets.

Two modes (`study.mode`). `multi` (the default): accuracy (maximise) against latency on the
target device (minimise: measured, or predicted by a lookup table built there, as
`budget.latency_source` says) and optionally params or FLOPs, for a Pareto front. `single`:
accuracy alone, the budgets as hard limits. Either way an Optuna sampler (TPE, NSGA-II/III, GP,
random: the config names the class) sees each budget as an Optuna constraint
(`trial.set_constraint`, feasible when <= 0; Optuna 5's replacement for `constraints_func`), so
it learns where the budgets bind.

Per trial:
  1. sample an `ArchConfig` from the space and store it (user attribute `arch`) with the seed
     and the library versions;
  2. build the model and cost it: params, FLOPs, the predicted latency (with a table) and/or the
     measured latency with its conditions (`costs`; `costs.latency_ms` is the one that counts);
  3. check every budget; a candidate over budget is recorded as PRUNED with `status: infeasible`
     and its constraint values, and is never trained (the sampler still learns from it);
  4. compute the zero-cost proxies asked for (`proxies`); with a pre-screen, candidates are
     proposed in rounds and only the best by the proxy go on (the rest: `status: screened`);
  5. proxy-train with the accuracy after each epoch recorded (`curve`); in single mode Optuna's
     pruner may stop it (`trial.report`), in multi mode the dominance rule of `early_stop` may
     (`status: stopped`, PRUNED, with `stop_reason`);
  6. record the per-epoch history (`train`), keep the trained weights as a safetensors file in
     Optuna's artifact store (`weights_artifact_id`) so export never retrains, and complete the
     trial with its objective values.

`study.n_trials` counts finished candidates (trained, rejected, stopped or screened) across runs:
re-running the same command resumes the study until it has that many. Ctrl-C ends the running
trial as FAIL (Optuna's rule), so no trial is left RUNNING, and the command exits with 130.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import math
import os
import socket
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.trial import TrialState
from safetensors.torch import save_file

from nas import cost
from nas.config import OBJECTIVE_DIRECTIONS, BudgetConfig, ConfigError, SearchConfig
from nas.data import Dataset, load_dataset
from nas.errors import UserError
from nas.exits import calibrate_exits
from nas.optuna_api import heartbeat
from nas.storage import (
    check_writable,
    fail_reason,
    open_storage,
    public_url,
    redact,
    removed_on_failure,
    scrub_credentials,
    storage_file,
)
from nas.train import TrainingFailed, evaluate, resolve_device, train_model
from search_spaces.arch import ArchConfig
from search_spaces.model import LightViT

__all__ = [
    "Candidate",
    "Inputs",
    "SearchRun",
    "prepare_inputs",
    "create_or_resume_study",
    "run_search",
    "retrain_best",
    "retrain_config",
    "best_scored",
    "Retrained",
    "trial_seed",
    "check_config",
    "latency_reference",
    "record_failure",
    "SearchFailed",
    "finished_count",
    "trial_counts",
    "Surplus",
    "objectives",
    "curve_of",
    "dominated_reason",
    "library_versions",
]

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def objectives(config: SearchConfig) -> list[tuple[str, str]]:
    """The study's (metric name, direction) pairs: accuracy alone in single mode."""
    return [(name, OBJECTIVE_DIRECTIONS[name]) for name in config.study.objective_names]


def library_versions() -> dict[str, str]:
    import platform

    import timm

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "optuna": optuna.__version__,
    }


@dataclass
class Candidate:
    """A proposed architecture within the budgets, built and costed, not yet trained."""

    arch: ArchConfig
    model: LightViT
    costs: dict[str, Any]
    seed: int
    proxies: dict[str, Any] | None = None


def _note(trial: optuna.Trial, values: list[float] | None = None) -> None:
    """The optuna-dashboard note of a trial that is ending (nas.dashboard.trial_note)."""
    from optuna_dashboard import save_note

    from nas.dashboard import trial_note

    save_note(trial, trial_note(trial.number, trial.user_attrs, values))


class Surplus(Exception):
    """Raised when another worker's trials already fill the study's count."""


def _claim(trial: optuna.Trial, n_trials: int) -> None:
    """Keep `n_trials` study-wide when several workers ask at once: the trials finished or
    running, in the order they were created, hold the places; a trial created past the count is
    ended as failed (`status: surplus`) before it costs anything."""
    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    ahead = sum(
        t.number < trial.number for t in trial.study.get_trials(deepcopy=False, states=states)
    )
    if ahead >= n_trials:
        reason = f"the study's {n_trials} places were taken by other workers"
        trial.set_user_attr("status", "surplus")
        trial.set_user_attr("fail_reason", f"surplus: {reason}")
        raise Surplus(reason)


def record_failure(trial: optuna.Trial, error: BaseException) -> None:
    """Record why a trial that is about to end as FAIL failed (`status: failed`, `fail_reason`),
    unless the code that raised recorded it already."""
    if trial.user_attrs.get("fail_reason"):
        return
    if isinstance(error, KeyboardInterrupt):
        reason = "interrupted (Ctrl-C or SIGINT) while it ran; a re-run proposes anew"
    else:
        text = str(error).splitlines()[0][:300] if str(error) else ""
        reason = f"{type(error).__name__}: {text}" if text else type(error).__name__
    with contextlib.suppress(Exception):  # the storage itself may be what failed
        trial.set_user_attr("status", "failed")
        trial.set_user_attr("fail_reason", reason)


class SearchFailed(UserError):
    """Every trial of a run failed: the search cannot go on as configured."""


class _Stopped(Exception):
    """Raised from the per-epoch callback to stop a candidate early; the message says why."""


def curve_of(trial: optuna.trial.FrozenTrial) -> list[float]:
    """Validation accuracy after each epoch, for a trained or a stopped trial."""
    history = trial.user_attrs.get("train", {}).get("history")
    if history:
        return [h["val_acc"] for h in history]
    return list(trial.user_attrs.get("curve", []))


def dominated_reason(
    trial: optuna.Trial, config: SearchConfig, costs: dict[str, Any], epoch: int, acc: float
) -> str | None:
    """The multi-objective early-stopping rule (see `EarlyStopConfig`): why to stop `trial`
    after `epoch` at accuracy `acc`, or None to go on."""
    rule = config.early_stop
    if epoch < rule.min_epoch:
        return None
    trained = [
        t
        for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.user_attrs.get("status") == "trained"
    ]
    if len(trained) < rule.min_trials:
        return None
    keys = config.study.objective_names[1:]
    better = []
    for t in trained:
        curve, other = curve_of(t), t.user_attrs.get("costs", {})
        if len(curve) >= epoch and curve[epoch - 1] > acc:
            if all(other.get(k, float("inf")) <= costs[k] for k in keys):
                better.append(t.number)
    if len(better) < rule.dominated_by:
        return None
    shown = ", ".join(map(str, better[:5])) + (", ..." if len(better) > 5 else "")
    return (
        f"after epoch {epoch} ({acc:.4f}) {len(better)} trained candidates were more accurate "
        f"at that epoch at no more {' and '.join(keys)} (trials {shown})"
    )


def trial_seed(study_seed: int, trial_number: int) -> int:
    """The seed a trial trains with (recorded with the trial)."""
    return study_seed * 100_003 + trial_number


def finished_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def trial_counts(study: optuna.Study) -> dict[str, int]:
    """Trials finished (COMPLETE or PRUNED), running, waiting (enqueued retries) and failed."""
    counts = {"finished": 0, "running": 0, "waiting": 0, "failed": 0}
    key = {
        TrialState.COMPLETE: "finished",
        TrialState.PRUNED: "finished",
        TrialState.RUNNING: "running",
        TrialState.WAITING: "waiting",
        TrialState.FAIL: "failed",
    }
    for t in study.get_trials(deepcopy=False):
        counts[key[t.state]] += 1
    return counts


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
        except (TypeError, ValueError) as e:
            raise ConfigError(f"study.sampler_args do not fit {cls.__name__}: {e}") from None


def _make_pruner(config: SearchConfig) -> optuna.pruners.BasePruner:
    """Optuna's own pruner class with the config's arguments; none (NopPruner) unless the
    config names one (Optuna would otherwise default to MedianPruner)."""
    if config.study.pruner is None:
        return optuna.pruners.NopPruner()
    cls = getattr(optuna.pruners, config.study.pruner)
    try:
        return cls(**config.study.pruner_args)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"study.pruner_args do not fit {cls.__name__}: {e}") from None


def _comparable(config_dict: dict[str, Any]) -> dict[str, Any]:
    """The parts of a config that define a study's results: n_trials may grow on resume, the
    storage URL differs between machines, the grace period is each process's own, each
    worker sets its own training threads and loader processes and holds the data as its
    memory allows, and the retrain section is for after the search."""
    study = {
        k: v
        for k, v in config_dict["study"].items()
        if k not in ("n_trials", "storage", "grace_period")
    }
    train = {k: v for k, v in config_dict.get("train", {}).items() if k != "threads"}
    data = {k: v for k, v in config_dict.get("data", {}).items() if k not in ("workers", "cache")}
    rest = {k: v for k, v in config_dict.items() if k != "retrain"}
    return {**rest, "study": study, "train": train, "data": data}


def check_config(config: SearchConfig) -> None:
    """Every check of a config that needs more than the config itself, run before anything is
    written: the sampler and pruner are built from their arguments and asked for a first
    trial of the space in memory, the training and latency devices exist here, and the
    storage and artifact folders can be created. Raises `ConfigError` with the fix."""
    try:
        resolve_device(config.train.device)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    try:
        cost.check_device(config.latency.device, config.latency.dtype)
    except ValueError as e:
        raise ConfigError(
            f"latency.device {config.latency.device} ({config.latency.dtype}): {e}"
        ) from None
    from nas.loader import check_recipe

    for section, recipe in (("train", config.train), ("retrain", config.retrain)):
        try:
            check_recipe(recipe, config.data.img_size)
        except ValueError as e:
            raise ConfigError(f"{section}: {e}") from None
    space = config.search_space()  # a hub space needing NNI, or bad space_args, fail here
    try:
        space.sample_many(2, seed=0, num_classes=10, img_size=config.data.img_size)
    except ValueError as e:
        raise ConfigError(
            f"space '{config.space}' cannot build an architecture for data.img_size "
            f"{config.data.img_size}: {e}"
        ) from None
    _probe_sampler(config, space)
    storage = storage_file(config.study.storage_url)
    if storage is not None:
        check_writable(os.path.dirname(os.path.abspath(storage)), "study.storage")
    check_writable(config.study.artifact_dir, "study.artifacts")


def _probe_sampler(config: SearchConfig, space: Any) -> None:
    """Build the sampler and pruner from their arguments and let them run two trials of the
    space in memory, as the search will: arguments of the wrong name, type or value fail here."""
    sampler = _make_sampler(config, n_existing=0)
    pruner = _make_pruner(config)
    n_values = len(objectives(config))
    budgets = [
        name
        for name, value in (
            ("params", config.budget.max_params),
            ("flops", config.budget.max_flops),
            ("latency_ms", config.budget.max_latency_ms),
        )
        if value is not None
    ]
    study_cfg = config.study
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        probe = optuna.create_study(
            sampler=sampler, pruner=pruner, directions=[d for _, d in objectives(config)]
        )
        for _ in range(2):  # the second ask sees a finished trial
            with _cannot_run(f"study.sampler {study_cfg.sampler} ({study_cfg.sampler_args})"):
                trial = probe.ask()
                space.sample(trial, num_classes=10, img_size=config.data.img_size)
                for name in budgets:
                    trial.set_constraint(name, -1.0)
            with _cannot_run(f"study.pruner {study_cfg.pruner} ({study_cfg.pruner_args})"):
                if study_cfg.pruner is not None:
                    trial.report(0.5, 1)
                    trial.should_prune()
            with _cannot_run(f"study.sampler {study_cfg.sampler} ({study_cfg.sampler_args})"):
                probe.tell(trial, [0.5] * n_values)


@contextlib.contextmanager
def _cannot_run(what: str) -> Iterator[None]:
    try:
        yield
    except Exception as e:  # noqa: BLE001 - whatever an Optuna class raises, it cannot search
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ConfigError(f"{what} cannot run a trial: {reason}") from None


def create_or_resume_study(config: SearchConfig) -> optuna.Study:
    """Create the study, or load it when it exists and was made with the same config.

    Run `check_config` (as `prepare_inputs` does) first: a study only ever stores a config
    that passed it. A start that fails leaves no file or folder behind it created. The stored
    config holds the storage URL without credentials; a study without a finished, running or
    waiting trial takes a changed config (it has no results the change could contradict)."""
    url = config.study.storage_url
    with removed_on_failure(storage_file(url), config.study.artifact_dir):
        storage = open_storage(url, create=True, grace_period=config.study.grace_period)
        study = optuna.create_study(
            study_name=config.study.name,
            storage=storage,
            sampler=optuna.samplers.RandomSampler(),  # replaced below, once trials are known
            pruner=_make_pruner(config),
            directions=[d for _, d in objectives(config)],
            load_if_exists=True,
        )
        stored = study.user_attrs.get("config")
        current = config.to_dict()
        current["study"]["storage"] = public_url(url) if config.study.storage else None
        if stored is not None:
            scrub_credentials(study)  # studies written when the full URL was stored
        if stored is None:
            try:
                _store_config(study, config, current)
            except BaseException:  # a server storage keeps no study that has no config
                if not study.get_trials(deepcopy=False):
                    with contextlib.suppress(Exception):
                        optuna.delete_study(study_name=study.study_name, storage=storage)
                raise
        elif _differs(stored, current):
            if _has_results(study):
                diffs = _differences(_comparable(_with_defaults(stored)), _comparable(current))
                raise ConfigError(
                    f"study '{config.study.name}' in {redact(url)} was made with a "
                    f"different config ({'; '.join(diffs[:3])}); rename study.name to start a "
                    "new study"
                )
            study.set_user_attr("replaced_config", _public(stored))
            _store_config(study, config, current)
    study.sampler = _make_sampler(config, n_existing=len(study.get_trials(deepcopy=False)))
    return study


def _has_results(study: optuna.Study) -> bool:
    states = (*FINISHED, TrialState.RUNNING, TrialState.WAITING)
    return bool(study.get_trials(deepcopy=False, states=states))


def _differs(stored: dict[str, Any], current: dict[str, Any]) -> bool:
    return _comparable(_with_defaults(stored)) != _comparable(current)


def _public(stored: dict[str, Any]) -> dict[str, Any]:
    study = dict(stored.get("study", {}))
    if study.get("storage"):
        study["storage"] = public_url(study["storage"])
    return {**stored, "study": study}


def _store_config(study: optuna.Study, config: SearchConfig, current: dict[str, Any]) -> None:
    """Write what a study keeps about its making: the config, the space, the artifact folder."""
    space = config.search_space()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([name for name, _ in objectives(config)])
    spec = space.spec() if hasattr(space, "spec") else None  # a supernet's own options
    study.set_user_attr(
        "space",
        {"name": space.name, "version": space.version, **({"spec": spec} if spec else {})},
    )
    artifact_dir = os.path.abspath(config.study.artifact_dir)
    try:
        os.makedirs(artifact_dir, exist_ok=True)
    except OSError as e:
        raise ConfigError(
            f"study.artifacts: cannot create {artifact_dir}: {e.strerror}; choose a writable "
            "location"
        ) from None
    study.set_user_attr("artifact_dir", artifact_dir)
    study.set_user_attr("config", current)  # last: a study with a config is complete


def _with_defaults(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored config with the defaults of keys added since it was written filled in (a study
    from an older version resumes when nothing it set has changed)."""
    try:
        return SearchConfig.from_stored(stored).to_dict()
    except (ConfigError, ValueError):
        return stored


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
    scored: int = 0
    rejected: int = 0
    stopped: int = 0
    screened: int = 0
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
        reference: cost.Reference | None = None,
    ) -> None:
        self.config = config
        self.data = inputs.data
        self.space = config.search_space()
        self.artifact_store = artifact_store
        self.on_event = on_event
        self.table = inputs.table
        self.teacher = inputs.teacher
        self.supernet = inputs.supernet
        self.reference = reference
        self.table_reference = (
            cost.Reference.from_dict(self.table.reference)
            if self.table is not None and self.table.reference
            else None
        )

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        try:
            candidate = self.propose(trial)
            if self.supernet is not None:
                return self.score(trial, candidate)
            return self.train(trial, candidate)
        except optuna.TrialPruned:
            raise
        except BaseException as e:  # Ctrl-C, a lost storage, a bug: the trial says why it failed
            record_failure(trial, e)
            raise

    def propose(self, trial: optuna.Trial) -> Candidate:
        """Sample, cost and budget-check a candidate (and compute its zero-cost proxies);
        raises `optuna.TrialPruned` when it is over a budget."""
        cfg, data = self.config, self.data
        _claim(trial, cfg.study.n_trials)
        worker = {"host": socket.gethostname(), "pid": os.getpid()}
        if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
            worker["cuda_visible_devices"] = os.environ["CUDA_VISIBLE_DEVICES"]
        trial.set_user_attr("worker", worker)
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
        trial.set_user_attr("versions", library_versions())

        torch.manual_seed(seed)
        check_start = time.perf_counter()
        model = LightViT(arch)
        costs = self._costs(arch, model)
        trial.set_user_attr("costs", costs)

        reasons = []
        for name, value, budget, fmt in (
            ("params", costs["params"], cfg.budget.max_params, "{:,}"),
            ("flops", costs["flops"], cfg.budget.max_flops, "{:,}"),
            ("latency_ms", costs["latency_ms"], cfg.budget.max_latency_ms, "{:.3g} ms"),
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
            _note(trial)
            raise optuna.TrialPruned(f"over budget: {'; '.join(reasons)}")
        proxies = None
        if cfg.proxies.names:
            from nas.loader import sample_batch
            from nas.proxies import compute_proxies
            from nas.train import resize

            generator = torch.Generator().manual_seed(seed)
            x, y = sample_batch(data, cfg.proxies.batch_size, generator)
            proxies = compute_proxies(model, resize(x, arch.img_size), y, cfg.proxies.names, seed)
            trial.set_user_attr("proxies", proxies)
        return Candidate(arch, model, costs, seed, proxies)

    def _costs(self, arch: ArchConfig, model: LightViT) -> dict[str, Any]:
        cfg = self.config
        input_size = (arch.in_chans, arch.img_size, arch.img_size)
        costs: dict[str, Any] = {
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
            if self.reference is None and self.table.reference is not None:
                # raw figures: the table's figure at the machine's speed right now
                scale = cost.reference_now(self.table_reference) / self.table_reference.ms
                costs["latency_predicted_ms"] = round(costs["latency_predicted_ms"] * scale, 4)
                costs["latency_lut"]["scaled_by_reference"] = round(scale, 4)
        if cfg.latency.measure:
            measured = self._measure(model, input_size)
            costs["latency_measured_ms"] = measured.median_ms
            costs["latency"] = measured.to_dict()
            budget = cfg.budget.max_latency_ms
            if self.table is None and budget is not None:
                band = measured.band_ms
                if abs(measured.median_ms - budget) <= band:  # noise must not decide
                    again = self._measure(model, input_size, repeat=2)
                    costs["latency_measured_ms"] = again.median_ms
                    costs["latency"] = again.to_dict()
                    costs["latency_boundary"] = {
                        "budget_ms": budget,
                        "first_ms": measured.median_ms,
                        "band_ms": round(band, 6),
                        "second_ms": again.median_ms,
                        "decision": "admitted" if again.median_ms <= budget else "rejected",
                    }
        source = "lut" if self.table is not None else "measured"
        costs["latency_source"] = source
        costs["latency_ms"] = costs[f"latency_{'predicted' if source == 'lut' else 'measured'}_ms"]
        return costs

    def _measure(self, model: LightViT, input_size: tuple[int, ...], repeat: int = 1) -> Any:
        """The candidate's latency as the config says (drift-corrected against the study's
        reference when it normalises); `repeat` multiplies the runs and the time allowed."""
        lat = self.config.latency
        return cost.measure_latency(
            model,
            input_size,
            device=lat.device,
            threads=lat.threads,
            batch_size=lat.batch_size,
            dtype=lat.dtype,
            warmup=lat.warmup,
            runs=lat.runs * repeat,
            max_seconds=lat.max_seconds * repeat,
            target_spread=lat.target_spread,
            target_precision=lat.target_precision,
            reference=self.reference,
        )

    def score(self, trial: optuna.Trial, candidate: Candidate) -> float | tuple[float, ...]:
        """Score a proposed candidate with the weights it inherits from the supernet (batch
        norms recalibrated on training batches); store those weights so that it exports."""
        cfg, arch, model = self.config, candidate.arch, candidate.model
        start = time.perf_counter()
        sn = cfg.supernet
        bn = self.supernet.prepare(
            model,
            self.data,
            calib_batches=sn.calib_batches,
            tune_steps=sn.tune_steps,
            tune_lr=cfg.train.lr / 10,
            seed=candidate.seed,
        )
        acc = evaluate(model, self.data, "val", img_size=arch.img_size)
        seconds = time.perf_counter() - start
        trial.set_user_attr(
            "inherited",
            {
                "accuracy": round(acc, 5),
                "seconds": round(seconds, 3),
                "supernet": os.path.abspath(cfg.supernet.folder(cfg.study.name)),
                "batch_norms_recalibrated": bn,
                "calib_batches": sn.calib_batches if bn else 0,
                "tune_steps": sn.tune_steps,
            },
        )
        self._store_weights(trial, model, arch)
        trial.set_user_attr("status", "scored")
        self.on_event(
            "scored",
            {
                "trial": trial.number,
                "arch": arch,
                "costs": candidate.costs,
                "val_acc": acc,
                "seconds": seconds,
            },
        )
        _note(trial, [acc])
        return self._values(acc, candidate.costs)

    def _values(self, acc: float, costs: dict[str, Any]) -> float | tuple[float, ...]:
        if self.config.study.mode == "single":
            return acc
        values = {"accuracy": acc, **costs}
        return tuple(float(values[name]) for name in self.config.study.objective_names)

    def _store_weights(self, trial: optuna.Trial, model: LightViT, arch: ArchConfig) -> None:
        """The weights as a safetensors artifact of the trial, with its architecture picture
        (the dashboard shows it beside the trial)."""
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
            from nas.plots import arch_plot

            picture = arch_plot(arch, os.path.join(tmp, "architecture.png"), arch.describe())
            upload_artifact(
                artifact_store=self.artifact_store, file_path=picture, study_or_trial=trial
            )
        trial.set_user_attr("weights_artifact_id", artifact_id)

    def train(self, trial: optuna.Trial, candidate: Candidate) -> float | tuple[float, ...]:
        """Proxy-train a proposed candidate, stopping it early when the pruner (single mode)
        or the early-stopping rule (multi mode) says so; store its weights; its objective
        values."""
        cfg, data = self.config, self.data
        arch, model = candidate.arch, candidate.model
        curve: list[float] = []

        def on_epoch(epoch: int, acc: float) -> None:
            curve.append(round(acc, 5))
            trial.set_user_attr("curve", curve)
            self.on_event(
                "epoch",
                {
                    "trial": trial.number,
                    "epoch": epoch,
                    "epochs": cfg.train.epochs,
                    "val_acc": acc,
                },
            )
            if cfg.study.mode == "single":
                trial.report(acc, epoch)  # every epoch, the last too: pruners compare steps
            if epoch == cfg.train.epochs:
                return
            reason = None
            if cfg.study.mode == "single":
                if trial.should_prune():
                    reason = f"the {cfg.study.pruner} stopped it after epoch {epoch} ({acc:.4f})"
            elif cfg.early_stop.enabled:
                reason = dominated_reason(trial, cfg, candidate.costs, epoch, acc)
            if reason:
                raise _Stopped(reason)

        shown = [0.0]

        def on_step(step: int, steps: int) -> None:
            now = time.perf_counter()
            if now - shown[0] >= 0.5 or step == steps:  # at most two events a second
                shown[0] = now
                self.on_event(
                    "step",
                    {
                        "trial": trial.number,
                        "epoch": len(curve) + 1,
                        "step": step,
                        "steps": steps,
                    },
                )

        self.on_event("training", {"trial": trial.number, "arch": arch})
        try:
            result = train_model(
                model,
                data,
                cfg.train,
                candidate.seed,
                on_epoch=on_epoch,
                on_step=on_step,
                img_size=arch.img_size,
                teacher=self.teacher.model if self.teacher else None,
                distill=cfg.distill,
            )
        except _Stopped as e:
            trial.set_user_attr("status", "stopped")
            trial.set_user_attr("stop_reason", str(e))
            self.on_event("stopped", {"trial": trial.number, "reason": str(e), "curve": curve})
            _note(trial)
            raise optuna.TrialPruned(str(e)) from None
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
                "recipe": cfg.train.describe(),
                "loader": result.loader,
                "data_seconds": result.data_seconds,
                "unreadable_images": result.skipped,
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
                data,
                max_drop=cfg.train.exit_max_drop,
                img_size=arch.img_size,
                threads=cfg.latency.threads,
                reference=self.reference if cfg.latency.device == "cpu" else None,
            )
            trial.set_user_attr("exits", report.to_dict())
        self._store_weights(trial, model, arch)
        trial.set_user_attr("status", "trained")
        self.on_event(
            "trained",
            {
                "trial": trial.number,
                "arch": arch,
                "costs": candidate.costs,
                "val_acc": result.val_acc,
                "seconds": result.seconds,
            },
        )
        _note(trial, [result.val_acc])
        return self._values(result.val_acc, candidate.costs)


def latency_reference(
    study: optuna.Study, config: SearchConfig, table: Any = None
) -> cost.Reference | None:
    """The machine speed the study's latency figures refer to (None when `latency.normalise`
    is off): the study's stored `latency_reference`, or else its latency table's reference, or
    else the reference model calibrated now on the latency device (for 1.5 x
    `latency.max_seconds`); stored on the study, so that every worker and every resumed run
    normalises to the same speed."""
    lat = config.latency
    if not lat.normalise:
        return None
    stored = study.user_attrs.get("latency_reference")
    if stored is not None:
        reference = cost.Reference.from_dict(stored)
    elif table is not None:
        reference = cost.Reference.from_dict(table.reference)
    else:  # as long as one and a half measurements: 3 s by default
        reference = cost.calibrate_reference(lat.device, lat.threads, 1.5 * lat.max_seconds)
    if lat.measure and not reference.fits(lat.device, lat.threads):
        raise ConfigError(
            f"study '{study.study_name}' normalises latency to a reference calibrated on "
            f"{reference.device} with {reference.threads} thread(s) and torch "
            f"{reference.torch}; this process measures on {lat.device} with {lat.threads} and "
            f"torch {torch.__version__}: run it where the study (or its table) was calibrated"
        )
    if stored is None:
        study.set_user_attr("latency_reference", reference.to_dict())
    return reference


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
    """What a search reads from disk: the data set and the latency table (if any)."""

    data: Dataset
    table: Any = None
    teacher: Any = None  # nas.distill.Teacher
    supernet: Any = None  # nas.supernet.SharedWeights (evaluation: supernet)


def prepare_inputs(config: SearchConfig) -> Inputs:
    """Check the config (`check_config`) and load the data, the latency table, the teacher
    and the supernet; anything wrong fails here, before any study is created or changed."""
    check_config(config)
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


def run_search(
    config: SearchConfig,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
    study: optuna.Study | None = None,
    inputs: Inputs | None = None,
    poll_seconds: float = 2.0,
) -> SearchRun:
    """Run (or resume) the search until the study has `config.study.n_trials` finished trials,
    counted study-wide: several processes may run this on one study (workers), and together
    they finish exactly that many. When the last places are held by other workers' running
    trials, this one waits (`poll_seconds`) in case one of them dies and is retried.

    `on_event(kind, info)` is called with kind in reference (the latency reference the run
    normalises to), training, step (progress within an epoch, at most twice a second), epoch,
    trained, scored (evaluation: supernet), rejected,
    stopped, screened, failed.
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
        if kind in ("trained", "scored", "rejected", "stopped", "screened", "failed"):
            setattr(run, kind, getattr(run, kind) + 1)
        if on_event is not None:
            on_event(kind, info)

    reference = latency_reference(study, config, inputs.table)
    if reference is not None:
        record("reference", {"reference": reference})
    objective = _Objective(config, inputs, store, record, reference)
    start = time.perf_counter()
    n_trials = config.study.n_trials
    try:
        while True:
            counts = trial_counts(study)
            if counts["finished"] >= n_trials:
                break
            if run.failed > n_trials:
                raise SearchFailed(_failed_message(study, run))
            if not counts["waiting"] and counts["finished"] + counts["running"] >= n_trials:
                # other workers hold the last places; one of them may die and be retried
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    optuna.storages.fail_stale_trials(study)
                time.sleep(poll_seconds)
                continue
            if config.proxies.prescreen_sample:
                _prescreen_round(study, objective, config, record)
            else:
                # one trial per optimize() call so that failed trials are retried, not counted
                study.optimize(objective, n_trials=1, catch=(TrainingFailed, Surplus))
    finally:
        run.seconds = time.perf_counter() - start
    return run


def _failed_message(study: optuna.Study, run: SearchRun) -> str:
    """Why a run stopped after more failures than its candidate count, with the fix."""
    failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    last = fail_reason(failed[-1]) if failed else "?"
    done = run.trained + run.scored
    if "loss became" in last:
        fix = "lower train.lr (or raise train.warmup_epochs, or set train.clip_grad)"
    elif "out of memory" in last.lower():
        fix = "lower train.batch_size or the space's widths"
    else:
        fix = "fix the cause above; each trial's fail_reason is in `lvit status`"
    return (
        f"{run.failed} trials failed in this run and {done} finished training, so the search "
        f"stopped (the last failure: {last}): {fix}"
    )


def retrain_config(config: SearchConfig, n_trials: int) -> SearchConfig:
    """The from-scratch study (`<name>-retrained`, same storage, space, data and `train`
    recipe) in which the best candidates of a supernet search are retrained. It has no budget
    limits: its candidates passed them in the search (costs are still measured and recorded; a
    noisy second latency measurement must not undo the search's decision)."""
    study = dataclasses.replace(
        config.study, name=f"{config.study.name}-retrained", n_trials=max(1, n_trials)
    )
    budget = BudgetConfig(latency_source=config.budget.latency_source)
    return dataclasses.replace(config, study=study, evaluation="train", budget=budget)


def best_scored(study: optuna.Study, k: int) -> list[optuna.trial.FrozenTrial]:
    """The `k` distinct architectures with the best inherited-weight accuracy (ties: the
    faster, then the earlier); a sampler that proposes one architecture again (other values
    of labels it does not use) gets it retrained once."""
    scored = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.user_attrs.get("status") == "scored"
    ]
    scored.sort(key=lambda t: (-t.values[0], t.user_attrs["costs"]["latency_ms"], t.number))
    best, seen = [], set()
    for t in scored:
        key = json.dumps(t.user_attrs["arch"], sort_keys=True)
        if key not in seen:
            seen.add(key)
            best.append(t)
    return best[:k]


@dataclass
class Retrained:
    """A supernet search's best candidates and their stand-alone (from scratch) results."""

    study: optuna.Study
    pairs: list[tuple[int, float, int, float | None]]  # scored trial, inherited, trial, alone
    run: SearchRun | None = None


def retrain_best(
    config: SearchConfig,
    study: optuna.Study,
    inputs: Inputs,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
) -> Retrained:
    """Train from scratch the `supernet.retrain_top_k` best candidates of a supernet search,
    as trials of the study `retrain_config` names (each with `from_trial` and its
    `inherited_accuracy`), so that their stand-alone accuracy sits beside the inherited one and
    they export like any trained trial. Resumes: a candidate already retrained is not again."""
    best = best_scored(study, config.supernet.retrain_top_k)
    wanted = [t.number for t in best]
    probe = retrain_config(config, len(wanted))
    storage = open_storage(probe.study.storage_url, create=True)
    try:
        existing = optuna.load_study(study_name=probe.study.name, storage=storage)
        have = {t.user_attrs.get("from_trial") for t in existing.get_trials(deepcopy=False)}
    except KeyError:
        have = set()
    total = len(have | set(wanted))
    rconfig = retrain_config(config, total)
    rstudy = create_or_resume_study(rconfig)
    for t in best:
        if t.number not in have:
            rstudy.enqueue_trial(
                t.params,
                user_attrs={"from_trial": t.number, "inherited_accuracy": t.values[0]},
            )
    run = None
    if "latency_reference" in study.user_attrs:  # the same machine speed as the search's
        rstudy.set_user_attr("latency_reference", study.user_attrs["latency_reference"])
    if total:
        plain = Inputs(inputs.data, inputs.table, None, None)
        run = run_search(rconfig, on_event=on_event, study=rstudy, inputs=plain)
    by_source = {
        t.user_attrs.get("from_trial"): t
        for t in rstudy.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    }
    pairs = []
    for t in best:
        r = by_source.get(t.number)
        pairs.append((t.number, t.values[0], r.number if r else -1, r.values[0] if r else None))
    return Retrained(rstudy, pairs, run)


def _prescreen_round(
    study: optuna.Study,
    objective: _Objective,
    config: SearchConfig,
    record: Callable[[str, dict[str, Any]], None],
) -> None:
    """Propose up to `prescreen_sample` candidates, rank those within the budgets by the
    pre-screen proxy, train the best `prescreen_keep` fraction and end the rest as screened.
    Every asked trial is told, whatever happens: none is left RUNNING."""
    proxies = config.proxies
    counts = trial_counts(study)
    room = config.study.n_trials - counts["finished"] - counts["running"]
    running: list[optuna.Trial] = []
    proposed: list[tuple[optuna.Trial, Candidate]] = []
    beats = contextlib.ExitStack()  # Optuna's heartbeat, as optimize() keeps it, per trial
    try:
        for _ in range(min(proxies.prescreen_sample, room)):
            with warnings.catch_warnings():  # "heartbeat ... with Study.optimize": kept below
                warnings.simplefilter("ignore", UserWarning)
                trial = study.ask()
            beats.enter_context(heartbeat(study, trial))
            running.append(trial)
            try:
                proposed.append((trial, objective.propose(trial)))
            except optuna.TrialPruned:
                study.tell(trial, state=TrialState.PRUNED)
                running.remove(trial)
            except Surplus:
                study.tell(trial, state=TrialState.FAIL)
                running.remove(trial)
        score = proxies.prescreen_proxy

        def rank_key(item: tuple[optuna.Trial, Candidate]) -> float:
            value = (item[1].proxies or {}).get(score)
            return -value if value is not None else float("inf")

        ranked = sorted(proposed, key=rank_key)
        keep = max(1, math.ceil(proxies.prescreen_keep * len(ranked))) if ranked else 0
        for rank, (trial, _) in enumerate(ranked, 1):
            trial.set_user_attr("prescreen", {"proxy": score, "rank": rank, "of": len(ranked)})
        for trial, candidate in ranked[keep:]:
            trial.set_user_attr("status", "screened")
            _note(trial)
            value = (candidate.proxies or {}).get(score)
            record("screened", {"trial": trial.number, "proxy": score, "value": value})
            study.tell(trial, state=TrialState.PRUNED)
            running.remove(trial)
        for trial, candidate in ranked[:keep]:
            try:
                values = objective.train(trial, candidate)
            except optuna.TrialPruned:
                study.tell(trial, state=TrialState.PRUNED)
            except TrainingFailed:
                study.tell(trial, state=TrialState.FAIL)
            else:
                study.tell(trial, values)
            running.remove(trial)
    except BaseException as e:  # Ctrl-C or a bug: end every trial this round still holds
        for trial in running:
            record_failure(trial, e)
            study.tell(trial, state=TrialState.FAIL)
        raise
    finally:
        beats.close()
