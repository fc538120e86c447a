"""One trial of the search: propose a candidate, cost it, check the budgets, train or score
it, record everything (`Objective`, called by Optuna with each trial; steps 1-6 of
`nas.study`'s docstring).

A trial's record is written through `nas.records` only. When a trial's record is complete
(trained, scored, infeasible, stopped or screened) the objective runs the caller's hooks
(`TrialHook`: the live trial and its values), which is where the dashboard's notes and
pictures are made (`nas.callbacks`); progress goes to `on_event`.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.trial import TrialState
from safetensors.torch import save_file

from nas import cost, runtimes
from nas.config import SearchConfig
from nas.early_stop import dominated_reason, promotion_reason
from nas.exits import calibrate_exits, calibrate_resolution
from nas.inputs import Inputs
from nas.lifecycle import library_versions, trial_seed
from nas.records import Status, TrialRecord, record_failure, set_status, write
from nas.train import TrainingFailed, evaluate, int8_accuracy, train_model
from search_spaces.arch import ArchConfig
from search_spaces.model import LightViT

__all__ = [
    "Candidate",
    "Duplicate",
    "Objective",
    "Surplus",
    "TrialHook",
    "check_budgets",
    "claim",
    "objective_values",
]

# Called with a trial whose record is complete, and its objective values (None when it was not
# trained or scored), before the trial is told.
TrialHook = Callable[[optuna.Trial, "list[float] | None"], None]


@dataclass
class Candidate:
    """A proposed architecture within the budgets, built and costed, not yet trained."""

    arch: ArchConfig
    model: LightViT
    costs: dict[str, Any]
    seed: int
    proxies: dict[str, Any] | None = None


class Duplicate(Exception):
    """Raised by `propose` for an architecture a trained trial has already: the trial's
    record is complete (`status: duplicate`) and `values` are the earlier trial's."""

    def __init__(self, values: float | tuple[float, ...]) -> None:
        super().__init__("an architecture already trained")
        self.values = values


class Surplus(Exception):
    """Raised when another worker's trials already fill the study's count."""


def claim(trial: optuna.Trial, n_trials: int) -> None:
    """Keep `n_trials` study-wide when several workers ask at once: the trials finished or
    running, in the order they were created, hold the places; a trial created past the count is
    ended as failed (`status: surplus`) before it costs anything."""
    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    ahead = sum(
        t.number < trial.number for t in trial.study.get_trials(deepcopy=False, states=states)
    )
    if ahead >= n_trials:
        reason = f"the study's {n_trials} places were taken by other workers"
        set_status(trial, Status.SURPLUS, f"surplus: {reason}")
        raise Surplus(reason)


def check_budgets(trial: optuna.Trial, config: SearchConfig, costs: dict[str, Any]) -> list[str]:
    """Each budget's constraint value set on the trial (samplers read them: feasible when <= 0),
    and why the candidate is over budget (empty when it is within every one)."""
    reasons = []
    for name, budget, fmt in (
        ("params", config.budget.max_params, "{:,}"),
        ("flops", config.budget.max_flops, "{:,}"),
        ("latency_ms", config.budget.max_latency_ms, "{:.3g} ms"),
    ):
        if budget is None:
            continue
        value = costs[name]
        trial.set_constraint(name, float(value - budget))
        if value > budget:
            reasons.append(f"{name.split('_')[0]} {fmt.format(value)} > {fmt.format(budget)}")
    return reasons


def objective_values(
    config: SearchConfig, acc: float, costs: dict[str, Any], acc_int8: float | None = None
) -> float | tuple[float, ...]:
    """What Optuna is told: the accuracy (single mode), or the study's objectives in order
    (`acc_int8`: the int8 model's accuracy, for the accuracy_int8 objective)."""
    if config.study.mode == "single":
        return acc
    values = {"accuracy": acc, "accuracy_int8": acc_int8, **costs}
    return tuple(float(values[name]) for name in config.study.objective_names)


class _Stopped(Exception):
    """Raised from the per-epoch callback to stop a candidate early; the message says why."""


class Objective:
    """Optuna objective for one study; holds the data set so it is loaded once per process."""

    def __init__(
        self,
        config: SearchConfig,
        inputs: Inputs,
        artifact_store: FileSystemArtifactStore,
        on_event: Callable[[str, dict[str, Any]], None],
        reference: cost.Reference | None = None,
        hooks: Sequence[TrialHook] = (),
    ) -> None:
        self.config = config
        self.hooks = tuple(hooks)
        self.data = inputs.data
        self.space = config.search_space()
        self.artifact_store = artifact_store
        self.on_event = on_event
        self.table = inputs.table
        self.teacher = inputs.teacher
        self.supernet = inputs.supernet
        self.benchmark = inputs.benchmark  # evaluation: table (nas.tabular)
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
        except Duplicate as d:  # the earlier trial's result, reused
            return d.values
        except optuna.TrialPruned:
            raise
        except BaseException as e:  # Ctrl-C, a lost storage, a bug: the trial says why it failed
            record_failure(trial, e)
            raise

    def propose(self, trial: optuna.Trial) -> Candidate:
        """Sample, cost and budget-check a candidate (and compute its zero-cost proxies);
        raises `optuna.TrialPruned` when it is over a budget, `Duplicate` when its
        architecture was trained already (and `study.repeats` is off)."""
        cfg, data = self.config, self.data
        claim(trial, cfg.study.n_trials)
        worker = {"host": socket.gethostname(), "pid": os.getpid()}
        if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
            worker["cuda_visible_devices"] = os.environ["CUDA_VISIBLE_DEVICES"]
        write(trial, worker=worker)
        seed = trial_seed(cfg.study.seed, trial.number)
        arch = self.space.sample(
            trial, num_classes=data.num_classes, in_chans=data.in_chans, img_size=data.img_size
        )
        if cfg.distill.head:  # every candidate carries the distillation head it will train
            arch = dataclasses.replace(arch, distill_head=True)
        write(
            trial,
            arch=arch.to_dict(),
            arch_line=arch.describe(),
            seed=seed,
            data=data.info(),
            versions=library_versions(),
        )
        if not cfg.study.repeats:
            wanted = arch.to_dict()
            self._reuse(trial, lambda r: r.arch == wanted)

        torch.manual_seed(seed)
        check_start = time.perf_counter()
        model = LightViT(arch)
        try:
            costs = self._costs(arch, model)
        except runtimes.NotDeployable as e:  # the target runtime cannot take it: rejected
            costs = {"not_deployable": {"runtime": e.runtime, "reason": e.reason}}
            write(trial, costs=costs)
            self.reject(trial, arch, costs, [str(e)])
        write(trial, costs=costs)

        reasons = check_budgets(trial, cfg, costs)
        write(trial, budget_check_seconds=round(time.perf_counter() - check_start, 3))
        if reasons:
            self.reject(trial, arch, costs, reasons)
        proxies = None
        if cfg.proxies.names:
            from nas.loader import sample_batch
            from nas.proxies import compute_proxies
            from nas.train import resize

            generator = torch.Generator().manual_seed(seed)
            x, y = sample_batch(data, cfg.proxies.batch_size, generator)
            proxies = compute_proxies(model, resize(x, arch.img_size), y, cfg.proxies.names, seed)
            write(trial, proxies=proxies)
        return Candidate(arch, model, costs, seed, proxies)

    def reject(
        self, trial: optuna.Trial, arch: Any, costs: dict[str, Any], reasons: list[str]
    ) -> None:
        """End a candidate over a budget (or one the target runtime cannot run): its status,
        the event, the hooks; raises `optuna.TrialPruned`."""
        set_status(trial, Status.INFEASIBLE, "; ".join(reasons))
        self.on_event(
            "infeasible",
            {
                "trial": trial.number,
                "record": TrialRecord.of(trial),
                "arch": arch,
                "costs": costs,
                "reason": "; ".join(reasons),
            },
        )
        self.ended(trial)
        raise optuna.TrialPruned(f"infeasible: {'; '.join(reasons)}")

    def _reuse(self, trial: optuna.Trial, same: Callable[[TrialRecord], bool]) -> None:
        """Raise `Duplicate` with the result of the earliest trained (or scored) trial whose
        record is `same` architecture, recorded as this trial's: its costs, constraint values
        and weights, `duplicate_of`; the sampler sees the same values for these parameters."""
        done = (Status.TRAINED, Status.SCORED)
        for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            r = TrialRecord.of(t)
            if r.status in done and same(r):
                break
        else:
            return
        for name, value in t.constraints.items():
            trial.set_constraint(name, value)
        write(
            trial,
            costs=dict(r.costs),
            duplicate_of=r.number,
            **({"weights_artifact_id": r.weights_artifact_id} if r.weights_artifact_id else {}),
        )
        set_status(trial, Status.DUPLICATE)
        self.on_event(
            "duplicate",
            {"trial": trial.number, "record": TrialRecord.of(trial), "of": r.number},
        )
        self.ended(trial, list(r.values or ()))
        values = tuple(r.values or ())
        raise Duplicate(values[0] if self.config.study.mode == "single" else values)

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
                "dtype": self.table.dtype,
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
        write(
            trial,
            inherited={
                "accuracy": round(acc, 5),
                "seconds": round(seconds, 3),
                "supernet": os.path.abspath(cfg.supernet.folder(cfg.study.name)),
                "batch_norms_recalibrated": bn,
                "calib_batches": sn.calib_batches if bn else 0,
                "tune_steps": sn.tune_steps,
            },
        )
        return self._finish(trial, Status.SCORED, candidate, acc, seconds)

    def _finish(
        self,
        trial: optuna.Trial,
        status: Status,
        candidate: Candidate,
        acc: float,
        seconds: float,
        acc_int8: float | None = None,
    ) -> float | tuple[float, ...]:
        """A trained or scored candidate: its weights stored, its status, the event, the hooks;
        its objective values."""
        self._store_weights(trial, candidate.model, candidate.arch)
        set_status(trial, status)
        self.on_event(
            status.value,
            {
                "trial": trial.number,
                "record": TrialRecord.of(trial),
                "arch": candidate.arch,
                "costs": candidate.costs,
                "val_acc": acc,
                "seconds": seconds,
            },
        )
        self.ended(trial, [acc])
        return self._values(acc, candidate.costs, acc_int8)

    def _values(
        self, acc: float, costs: dict[str, Any], acc_int8: float | None = None
    ) -> float | tuple[float, ...]:
        return objective_values(self.config, acc, costs, acc_int8)

    def _store_weights(self, trial: optuna.Trial, model: LightViT, arch: ArchConfig) -> None:
        """The weights as a safetensors artifact of the trial (export reads them)."""
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
        write(trial, weights_artifact_id=artifact_id)

    def ended(self, trial: optuna.Trial, values: list[float] | None = None) -> None:
        """Run the caller's hooks on a trial whose record is complete (before it is told)."""
        for hook in self.hooks:
            hook(trial, values)

    def train(self, trial: optuna.Trial, candidate: Candidate) -> float | tuple[float, ...]:
        """Proxy-train a proposed candidate, stopping it early when the pruner (single mode)
        or the early-stopping rule (multi mode) says so; store its weights; its objective
        values."""
        cfg, data = self.config, self.data
        arch, model = candidate.arch, candidate.model
        curve: list[float] = []

        def on_epoch(epoch: int, acc: float) -> None:
            curve.append(round(acc, 5))
            write(trial, curve=curve)
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
            elif cfg.study.fidelity is not None:
                reason = promotion_reason(trial, cfg, candidate.costs, epoch, acc)
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
            set_status(trial, Status.STOPPED, str(e))
            self.on_event(
                "stopped",
                {
                    "trial": trial.number,
                    "record": TrialRecord.of(trial),
                    "reason": str(e),
                    "curve": curve,
                },
            )
            self.ended(trial)
            raise optuna.TrialPruned(str(e)) from None
        except TrainingFailed as e:
            set_status(trial, Status.FAILED, str(e))
            self.on_event(
                "failed",
                {"trial": trial.number, "record": TrialRecord.of(trial), "reason": str(e)},
            )
            raise
        write(
            trial,
            train={
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
            write(trial, distill={**self.teacher.info, **dataclasses.asdict(cfg.distill)})
        for key, wanted, calibrate in (
            ("exits", bool(arch.exits), calibrate_exits),
            ("resolution", bool(arch.dynamic_resolution), calibrate_resolution),
        ):
            if wanted:  # thresholds for the accuracy drop, and the latency they buy
                report = calibrate(
                    model,
                    data,
                    max_drop=cfg.train.exit_max_drop,
                    img_size=arch.img_size,
                    threads=cfg.latency.threads,
                    reference=self.reference if cfg.latency.device == "cpu" else None,
                )
                write(trial, **{key: report.to_dict()})
        acc_int8 = None
        if cfg.needs_int8:
            self.on_event("int8", {"trial": trial.number})
            int8 = int8_accuracy(model, data, arch.img_size, candidate.seed, result.val_acc)
            record = int8.to_dict()
            if cfg.budget.max_int8_drop is not None:
                trial.set_constraint("int8_drop", int8.drop - cfg.budget.max_int8_drop)
                record["within_budget"] = int8.drop <= cfg.budget.max_int8_drop
            write(trial, int8=record)
            acc_int8 = int8.accuracy
        return self._finish(
            trial, Status.TRAINED, candidate, result.val_acc, result.seconds, acc_int8
        )
