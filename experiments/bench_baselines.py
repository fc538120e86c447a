"""Benchmark: what a search finds against hand-designed lightweight ViTs, real timm models and
random search, at several budgets, side by side in one run.

Protocol (one data set at a time; `--preset` sets the defaults of every option left unset:
`digits`, the earlier comparison on digits at 32x32, or `fashion`, the README's headline on
Fashion-MNIST with its official test split):

1. Reference models: the survey's hand-designed families (`search_spaces.baselines`) and every
   timm model of `TIMM_MODELS` that runs at the input size (with `resnet18` and
   `mobilenetv3_small_100` as convolutional references), randomly initialised. Models whose
   architectures are identical (vit_tiny and deit_tiny differ only in their pretrained weights)
   are trained once and reported under each name.
2. Budgets: the parameter count and 1-thread latency of reference models (digits: the
   PoolFormer-style family at width 8, the DeiT-style at width 48 and the smallest timm model
   that runs; fashion: the same two families and `mobilevit_xxs`), measured at the start of
   the run, their latency normalised to the work folder's reference model
   (`WORK/latency-reference.json`, the machine speed every search of the folder refers to, so
   a budget measured in one sitting means the same to a search made in a later one).
3. Per budget: a TPE search (multi-objective, accuracy against latency, or with `--tpe-mode
   single` accuracy alone; the survey space, the budget's params and latency as constraints,
   latency measured, the proxy recipe) until
   `--trained` candidates are trained, and a random search until `--random-multiple` times as
   many. The found architecture of each strategy is its best by the proxy's validation
   accuracy or, with `--retrain-top K` (fashion: 3), the best by validation accuracy of its K
   best retrained with the recipe below (first seed). Each family is scaled to the widest
   member within the budget (params and 1-thread latency); timm models fit when their params
   and latency do.
4. Every model is trained from scratch with the same recipe (`--recipe`, the `full` one by
   default, `--epochs`) for each of `--seeds` on the same split (a model that fits no budget:
   the first `--over-budget-seeds`). Every choice is made on the validation split; where the
   data set has an official test split (Fashion-MNIST, CIFAR, a folder's test/), each trained
   model is then measured on it once, and the tables report that test accuracy.
5. Every model is measured side by side at the end of the run: parameters (as trained, as the
   search counts them), FLOPs and CPU latency at batch 1 on 1 and 2 threads (eager, eval,
   no_grad) of the deployment form (re-parameterisable branches fused), in interleaved rounds,
   the median over rounds reported.

Writes `results.csv` (columns `name`, `latency_ms`, `accuracy` (validation) first, so that
`lvit report --baselines` reads it; `test_accuracy` beside), `results.md` and `pareto.png`
(one panel per budget) to `--out`. Searches and trained accuracies are kept in `--work` as they
finish, so an interrupted run resumes where it stopped.

    python experiments/bench_baselines.py --quick                   # 10.8 min on a 2-core CPU
    python experiments/bench_baselines.py                           # digits, full mode
    python experiments/bench_baselines.py --preset fashion --quick  # every step, small
    python experiments/bench_baselines.py --preset fashion          # the README's headline
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import math
import os
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import optuna
import torch
from torch import nn
from tqdm import tqdm

from nas.bench import run_until, set_mode_defaults, work_reference
from nas.config import (
    BudgetConfig,
    DataConfig,
    LatencyConfig,
    SearchConfig,
    StudyConfig,
    TrainConfig,
)
from nas.cost import Reference, count_flops, count_params, cpu_name, measure_latency
from nas.data import Dataset, has_test_split
from nas.errors import UserError
from nas.evaluation import evaluate_model, load_split
from nas.export import deployment_form
from nas.report import records
from nas.study import library_versions, prepare_inputs
from nas.train import TrainingFailed, train_model
from search_spaces.arch import ArchConfig
from search_spaces.baselines import BASELINES, PAPERS, WIDTHS, baseline
from search_spaces.model import LightViT

# timm models the issue names, with the arguments that make them take small inputs; `img_size`
# is added for those that accept it
TIMM_MODELS: dict[str, dict[str, Any]] = {
    "vit_tiny_patch16_224": {"patch_size": 4},
    "deit_tiny_patch16_224": {"patch_size": 4},
    "levit_128s": {},
    "mobilevit_xxs": {},
    "efficientformer_l1": {},
    "repvit_m0_9": {},
    "fastvit_t8": {},
    "efficientvit_m0": {},
    "tiny_vit_5m_224": {},
    # convolutional references
    "resnet18": {},
    "mobilenetv3_small_100": {},
}
CNN_REFERENCES = ("resnet18", "mobilenetv3_small_100")
STRATEGIES = ("tpe", "random", "random-2x")
TPE_OBJECTIVES = {"multi": "accuracy against latency", "single": "accuracy alone"}


@dataclass
class Model:
    """One model of the comparison: how to build it, what it is, and what it measured."""

    name: str
    kind: str  # found | random | family | timm
    key: str  # identical architectures share a key (and their training)
    build: Any  # () -> nn.Module
    img_size: int
    describe: str = ""
    paper: str = ""
    params: int = 0
    flops: int = 0
    latency: dict[int, list[float]] = field(default_factory=dict)  # threads -> round medians
    screen_ms: float = 0.0  # 1-thread latency when the budgets were set (scaling, fit)
    accs: list[float] = field(default_factory=list)  # validation, one per seed
    tests: list[float] = field(default_factory=list)  # test split, one per seed, when it has one
    failed: str = ""

    def lat(self, threads: int) -> float:
        return statistics.median(self.latency[threads]) if self.latency.get(threads) else math.nan

    @property
    def acc(self) -> float:
        return _mean(self.accs)

    @property
    def acc_sd(self) -> float:
        return _sd(self.accs)

    @property
    def scores(self) -> list[float]:
        """What the comparison is made on: test accuracies where the data set has a test
        split (measured once, after training), validation accuracies otherwise."""
        return self.tests or self.accs

    @property
    def score(self) -> float:
        return _mean(self.scores)

    @property
    def score_sd(self) -> float:
        return _sd(self.scores)


def _mean(values: list[float]) -> float:
    return statistics.mean(values) if values else math.nan


def _sd(values: list[float]) -> float:
    """The spread over seeds (population sd; 0 for one seed)."""
    return statistics.pstdev(values) if len(values) > 1 else 0.0


def measured_test(results: list[dict[str, Any]]) -> bool:
    """Whether the run measured test accuracies (its data set has a test split)."""
    return any(
        m.tests for r in results for m in r["timm"] + [x for b in r["budgets"] for x in b.models]
    )


@dataclass
class Budget:
    name: str  # the reference model it is taken from
    max_params: int
    max_latency_ms: float
    models: list[Model] = field(default_factory=list)
    fits: dict[str, bool] = field(default_factory=dict)
    search: dict[str, Any] = field(default_factory=dict)


def arch_key(arch: ArchConfig) -> str:
    return "lightvit:" + hashlib.sha1(arch.to_json().encode()).hexdigest()[:16]


def module_key(model: nn.Module) -> str:
    """Same text and parameter shapes: the same architecture (hence the same seeded init)."""
    shapes = [(n, tuple(p.shape)) for n, p in model.named_parameters()]
    return "timm:" + hashlib.sha1(f"{model}{shapes}".encode()).hexdigest()[:16]


def lightvit_model(name: str, kind: str, arch: ArchConfig, paper: str = "") -> Model:
    return Model(
        name=name,
        kind=kind,
        key=arch_key(arch),
        build=lambda: LightViT(arch),
        img_size=arch.img_size,
        describe=arch.describe(),
        paper=paper,
    )


def timm_model(name: str, data: Dataset, drop_path: float = 0.0) -> tuple[Model | None, str]:
    """The timm model at the data's size and classes (with the recipe's stochastic depth, which
    a timm model takes when it is built), or None and why it does not run."""
    import timm

    kwargs = dict(TIMM_MODELS.get(name, {}), num_classes=data.num_classes, in_chans=data.in_chans)
    size = data.img_size

    def build() -> nn.Module:
        for extra in ({"img_size": size}, {}):  # fully convolutional models take no img_size
            for depth in ({"drop_path_rate": drop_path} if drop_path else {}, {}):
                try:
                    return timm.create_model(name, **extra, **depth, **kwargs)
                except TypeError:
                    continue
        return timm.create_model(name, **kwargs)

    try:
        model = build().eval()
        with torch.no_grad():
            out = model(torch.zeros(1, data.in_chans, size, size))
        if tuple(out.shape) != (1, data.num_classes):
            raise RuntimeError(f"output shape {tuple(out.shape)}")
    except Exception as e:  # noqa: BLE001 - any failure means "does not run at this size"
        return None, f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
    args = ", ".join(f"{k}={v}" for k, v in TIMM_MODELS.get(name, {}).items())
    return (
        Model(
            name=name,
            kind="timm",
            key=module_key(model),
            build=build,
            img_size=size,
            describe=f"timm.create_model('{name}'{', ' + args if args else ''})",
        ),
        "",
    )


class Measurer:
    """Params, FLOPs and CPU latency at batch 1, cached per architecture."""

    def __init__(self, in_chans: int, quick: bool, reference: Reference | None = None) -> None:
        self.in_chans = in_chans
        self.cfg = LatencyConfig(runs=20 if quick else 50, max_seconds=1.0 if quick else 2.0)
        self.cache: dict[tuple[str, int], float] = {}
        self.reference = reference

    def latency(
        self,
        m: Model,
        threads: int,
        module: nn.Module | None = None,
        reference: Reference | None = None,
    ) -> float:
        module = module or deployment_form(m.build().eval())
        return measure_latency(
            module,
            (self.in_chans, m.img_size, m.img_size),
            threads=threads,
            warmup=self.cfg.warmup,
            runs=self.cfg.runs,
            max_seconds=self.cfg.max_seconds,
            reference=reference,
        ).median_ms

    def screen(self, m: Model) -> Model:
        """Params and a first 1-thread latency (the one budgets and scaling use), normalised
        to the work folder's reference as the searches' latencies are."""
        if (m.key, 1) not in self.cache:
            module = m.build().eval()
            self.cache[m.key, 0] = count_params(module)  # as trained, as the search counts
            module = deployment_form(module)
            self.cache[m.key, 1] = self.latency(m, 1, module, self.reference)
        m.params, m.screen_ms = int(self.cache[m.key, 0]), self.cache[m.key, 1]
        return m

    def side_by_side(self, models: list[Model], rounds: int, bar: Any) -> None:
        """FLOPs, then latency at 1 and 2 threads, every model once per round."""
        unique = {m.key: m for m in models}
        for m in unique.values():
            module = m.build().eval()
            m.params = count_params(module)
            module = deployment_form(module)
            m.flops = count_flops(module, (self.in_chans, m.img_size, m.img_size))
        times: dict[tuple[str, int], list[float]] = {}
        for _ in range(rounds):
            for m in unique.values():
                module = deployment_form(m.build().eval())
                for threads in (1, 2):
                    times.setdefault((m.key, threads), []).append(self.latency(m, threads, module))
                bar.update(1)
        for m in models:
            m.params, m.flops = unique[m.key].params, unique[m.key].flops
            m.latency = {t: times[m.key, t] for t in (1, 2)}


def scale_family(
    family: str, budget: Budget, data: Dataset, measurer: Measurer
) -> tuple[Model | None, str]:
    """The widest member of a family within the budget's params and 1-thread latency."""
    best, why = None, "even its narrowest member is over the parameter budget"
    for width in WIDTHS:
        try:
            arch = baseline(
                family,
                width,
                img_size=data.img_size,
                num_classes=data.num_classes,
                in_chans=data.in_chans,
            )
        except ValueError:  # a width the family's rules refuse
            continue
        m = measurer.screen(lightvit_model(f"{family}-style", "family", arch, PAPERS[family]))
        if m.params > budget.max_params:
            break
        if m.screen_ms > budget.max_latency_ms:
            why = why if best else f"even its narrowest member takes {m.screen_ms:.2f} ms"
            break
        best = m
    return best, ("" if best else why)


class Trainer:
    """Trains models with one recipe; results kept on disk by (architecture, seed, recipe).

    With `test` (the data set's config, when it has an official test split) each trained model
    is also measured once on the test split, after its training: the figure is recorded and
    reported, and nothing selects on it (the searches, the retraining of the best candidates
    and every choice of this script use validation accuracy)."""

    def __init__(
        self,
        path: str,
        data: Dataset,
        recipe: TrainConfig,
        data_key: str,
        test: DataConfig | None = None,
    ) -> None:
        self.path, self.data, self.recipe, self.test = path, data, recipe, test
        self._test_part: Any = None
        self.recipe_key = f"{data_key}|{json.dumps(dataclasses.asdict(recipe), sort_keys=True)}"
        if test is not None:
            self.recipe_key += "|test"
        self.done: dict[tuple[str, int], dict[str, Any]] = {}
        if os.path.isfile(path):
            with open(path) as f:
                for line in f:
                    row = json.loads(line)
                    if row["recipe"] == self.recipe_key:
                        self.done[row["key"], row["seed"]] = row

    def train(self, m: Model, seed: int) -> dict[str, Any]:
        if (m.key, seed) in self.done:
            return self.done[m.key, seed]
        torch.manual_seed(seed)  # the initialisation, for timm models too
        module = m.build()
        row: dict[str, Any] = {"key": m.key, "seed": seed, "recipe": self.recipe_key}
        try:
            result = train_model(module, self.data, self.recipe, seed, img_size=m.img_size)
            row.update(acc=result.val_acc, seconds=round(result.seconds, 1))
            if self.test is not None:
                if self._test_part is None:  # read once, for every model
                    self._test_part = load_split(self.test, self.data, "test")
                test = evaluate_model(
                    module, self.test, self.data, "test", m.img_size, self._test_part
                )
                row.update(test_acc=round(test.accuracy, 5))
        except TrainingFailed as e:
            row.update(acc=None, failed=str(e))
        with open(self.path, "a") as f:  # one line per finished training: nothing is lost
            f.write(json.dumps(row) + "\n")
        self.done[m.key, seed] = row
        return row


def data_label(cfg: DataConfig) -> str:
    """`digits`, or the kind and folder name of a user's data set (`cifar10-cifar-10-batches`)."""
    if not cfg.path:
        return cfg.name
    return f"{cfg.name}-{os.path.basename(os.path.normpath(cfg.path))}"


def search_config(args: argparse.Namespace, data_cfg: DataConfig, b: Budget, sampler: str):
    cls = {"tpe": "TPESampler", "random": "RandomSampler"}[sampler]
    sampler_args = (
        {"n_startup_trials": 10, "multivariate": True, "group": True} if sampler == "tpe" else {}
    )
    return SearchConfig(
        study=StudyConfig(
            # a study per search seed (seed 0 keeps the name earlier runs resume from): another
            # --search-seed in the same --work folder searches again instead of reusing seed 0's
            # single-mode TPE has its own study too; random search draws the same either way
            name=f"{data_label(data_cfg)}-{b.name}-{sampler}"
            + ("-single" if sampler == "tpe" and args.tpe_mode == "single" else "")
            + (f"-seed{args.search_seed}" if args.search_seed else ""),
            storage=f"sqlite:///{args.work}/search.db",
            artifacts=os.path.join(args.work, "artifacts"),
            n_trials=1,
            # random search draws its own candidates, not TPE's random start-up ones
            seed=args.search_seed + (1000 if sampler == "random" else 0),
            mode=args.tpe_mode if sampler == "tpe" else "multi",
            sampler=cls,
            sampler_args=sampler_args,
        ),
        space="survey",
        space_version=args.space_version,
        data=data_cfg,
        train=TrainConfig(epochs=args.proxy_epochs, threads=args.threads, device="cpu"),
        budget=BudgetConfig(max_params=b.max_params, max_latency_ms=b.max_latency_ms),
        latency=LatencyConfig(threads=1),
    )


def ranked(study: optuna.Study, first: int | None = None) -> list[Any]:
    """The trained candidates among the first `first`, most accurate (by the proxy's
    validation accuracy) first; ties: the faster."""
    trained = sorted((r for r in records(study) if r.status == "trained"), key=lambda r: r.number)[
        :first
    ]
    return sorted(trained, key=lambda r: (-r.accuracy, r.latency_ms))


def run_searches(
    args: argparse.Namespace,
    data_cfg: DataConfig,
    b: Budget,
    inputs: Any,
    trainer: Trainer,
    reference: Reference | None = None,
) -> list[Model]:
    """TPE until `--trained` trained candidates and random until `--random-multiple` times as
    many; per strategy the found architecture is the proxy's best, or with `--retrain-top K`
    the best by validation accuracy of its K best retrained with the recipe (first seed)."""
    found = []
    n_random = args.random_multiple * args.trained
    bar = tqdm(
        total=args.trained + n_random,
        desc=f"search {b.name}",
        unit="cand",
        leave=False,
        disable=None,
    )
    studies = {}
    for sampler, n in (("tpe", args.trained), ("random", n_random)):
        config = search_config(args, data_cfg, b, sampler)
        bar.set_postfix_str(sampler)
        studies[sampler] = run_until(
            config, inputs, n, bar, args.max_candidates, reference=reference
        )
    bar.close()
    strategies = [
        ("tpe", studies["tpe"], args.trained),
        ("random", studies["random"], args.trained),
    ]
    if args.random_multiple > 1:
        strategies.append(("random-2x", studies["random"], n_random))
    for strategy, study, first in strategies:
        candidates = ranked(study, first)
        numbers = sorted(r.number for r in candidates)
        info: dict[str, Any] = {
            "study": study.study_name,
            # candidates proposed until the last of the first `first` trained ones
            "candidates": numbers[-1] + 1 if len(numbers) == first else len(study.trials),
            "trained": len(numbers),
            "wanted": first,
            "best_trial": candidates[0].number if candidates else None,
            "proxy_acc": candidates[0].accuracy if candidates else None,
        }
        b.search[strategy] = info
        if not candidates:
            continue
        kind = "found" if strategy == "tpe" else "random"
        label = "found (TPE)" if strategy == "tpe" else f"random {first}"
        models = [
            lightvit_model(
                label, kind, ArchConfig.from_dict(study.trials[r.number].user_attrs["arch"])
            )
            for r in candidates[: max(args.retrain_top, 1)]
        ]
        if args.retrain_top:
            retrained = []
            for r, m in zip(candidates, models, strict=False):
                row = trainer.train(m, args.seeds[0])
                retrained.append(
                    {"trial": r.number, "proxy_acc": r.accuracy, "val_acc": row["acc"]}
                )
            pick = max(
                range(len(models)),
                key=lambda i: -1.0 if retrained[i]["val_acc"] is None else retrained[i]["val_acc"],
            )
            info.update(retrained=retrained, best_trial=retrained[pick]["trial"])
            models = [models[pick]]
        found.append(models[0])
    return found


def run_data_set(args: argparse.Namespace, data_cfg: DataConfig, bar_pos: int) -> dict[str, Any]:
    start = time.perf_counter()
    probe = search_config(args, data_cfg, Budget("probe", 1, 1.0), "random")
    inputs = prepare_inputs(probe)
    data = inputs.data
    size = data.img_size
    # budgets, family scaling and every search refer their latencies to one machine speed
    reference = work_reference(args.work, 1.5 * LatencyConfig().max_seconds)
    measurer = Measurer(data.in_chans, args.quick, reference)
    tag = f"{data_label(data_cfg)}{size}"
    screens_path = os.path.join(args.work, f"{tag}-screens.json")
    if os.path.isfile(screens_path):  # a resumed run keeps its budgets
        with open(screens_path) as f:
            measurer.cache = {(k, int(t)): v for k, t, v in json.load(f)}

    recipe = TrainConfig(
        recipe=args.recipe, epochs=args.epochs, threads=args.threads, device="cpu"
    )
    # 1. reference models
    timm_models, not_run = [], {}
    for name in args.timm:
        m, why = timm_model(name, data, recipe.drop_path)
        if m is None:
            not_run[name] = why
        else:
            timm_models.append(measurer.screen(m))
    if not timm_models and args.timm:
        raise UserError("no timm model runs at this input size; pass --timm NAMES")

    # 2. budgets
    budgets = []
    for ref in args.budgets:
        if ref == "smallest-timm":
            m = min(timm_models, key=lambda m: m.params)
        elif ref in TIMM_MODELS or ref.startswith("timm:"):
            m = next(t for t in timm_models if t.name == ref.removeprefix("timm:"))
        else:
            family, _, width = ref.partition(":")
            arch = baseline(
                family,
                int(width),
                img_size=size,
                num_classes=data.num_classes,
                in_chans=data.in_chans,
            )
            m = measurer.screen(lightvit_model(f"{family}-style", "family", arch))
            ref = f"{family}-style w{width}"
        budgets.append(Budget(ref.replace("smallest-timm", m.name), m.params, m.screen_ms))
    with open(screens_path, "w") as f:
        json.dump([[k, t, v] for (k, t), v in measurer.cache.items()], f)

    # 3. searches, scaled families, fitting timm models
    trainer = Trainer(
        os.path.join(args.work, "trained.jsonl"),
        data,
        recipe,
        json.dumps(data.info()),
        test=data_cfg if has_test_split(data_cfg) else None,
    )
    for b in budgets:
        b.models += run_searches(args, data_cfg, b, inputs, trainer, reference)
        for family in args.families:
            m, why = scale_family(family, b, data, measurer)
            if m is None:
                b.search.setdefault("families_left_out", {})[family] = why
            else:
                b.models.append(m)
        for m in b.models:  # found within the budget, or scaled to it
            b.fits[m.name] = True
        for t in timm_models:
            b.fits[t.name] = t.params <= b.max_params and t.screen_ms <= b.max_latency_ms
    with open(screens_path, "w") as f:
        json.dump([[k, t, v] for (k, t), v in measurer.cache.items()], f)

    # 4. training, budgets' models first, then the timm models; a model over every budget
    # gets the first `--over-budget-seeds` seeds only
    everything = [m for b in budgets for m in b.models] + timm_models
    fitting = {m.name for b in budgets for m in b.models} | {
        name for b in budgets for name, fits in b.fits.items() if fits
    }
    seeds_of = {
        m.name: args.seeds if m.name in fitting else args.seeds[: args.over_budget_seeds]
        for m in everything
    }
    jobs, seen = [], set()
    for m in everything:
        for seed in seeds_of[m.name]:
            if (m.key, seed) not in seen:
                seen.add((m.key, seed))
                jobs.append((m, seed))
    bar = tqdm(total=len(jobs), desc=f"train {tag}", unit="model", position=bar_pos, disable=None)
    for m, seed in jobs:
        bar.set_postfix_str(f"{m.name} seed {seed}")
        trainer.train(m, seed)
        bar.update(1)
    bar.close()
    for m in everything:
        rows = [trainer.done[m.key, s] for s in seeds_of[m.name]]
        m.accs = [r["acc"] for r in rows if r["acc"] is not None]
        m.tests = [r["test_acc"] for r in rows if r.get("test_acc") is not None]
        m.failed = "; ".join(r["failed"] for r in rows if r.get("failed"))

    # 5. side by side
    unique = {m.key for m in everything}
    bar = tqdm(
        total=len(unique) * args.rounds, desc="latency 1+2 threads", unit="model", disable=None
    )
    measurer.side_by_side(everything, args.rounds, bar)
    bar.close()
    return {
        "tag": tag,
        "data": data.info(),
        "budgets": budgets,
        "timm": timm_models,
        "timm_not_run": not_run,
        "seconds": time.perf_counter() - start,
    }


# ----------------------------------------------------------------------------- outputs


def rows_of(result: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for b in result["budgets"]:
        for m in b.models + [t for t in result["timm"] if t not in b.models]:
            rows.append(
                {
                    "name": m.name,
                    "latency_ms": round(m.lat(1), 4),
                    "accuracy": round(m.acc, 4) if m.accs else "",
                    "data": result["tag"],
                    "budget": b.name,
                    "max_params": b.max_params,
                    "max_latency_ms": round(b.max_latency_ms, 4),
                    "kind": m.kind,
                    "fits": b.fits.get(m.name, False),
                    "params": m.params,
                    "flops": m.flops,
                    "latency_2t_ms": round(m.lat(2), 4),
                    "accuracy_sd": round(m.acc_sd, 4) if m.accs else "",
                    "accuracies": " ".join(f"{a:.4f}" for a in m.accs),
                    "test_accuracy": round(_mean(m.tests), 4) if m.tests else "",
                    "test_accuracy_sd": round(m.score_sd, 4) if m.tests else "",
                    "test_accuracies": " ".join(f"{a:.4f}" for a in m.tests),
                    "architecture": m.describe,
                    "paper": m.paper,
                    "failed": m.failed,
                }
            )
    return rows


def verdicts(b: Budget, timm_models: list[Model]) -> list[str]:
    found = next((m for m in b.models if m.kind == "found"), None)
    if found is None or not found.scores:
        return ["no architecture was found within this budget"]
    out = []
    others = [m for m in b.models if m is not found] + [
        t for t in timm_models if b.fits.get(t.name)
    ]
    for m in others:
        if not m.scores:
            continue
        d = round(100 * (found.score - m.score), 6)  # equal means are equal
        ratio = found.lat(1) / m.lat(1)
        if d >= 0 and ratio <= 1:
            what = "**at least as accurate and no slower**"
        elif d >= 0:
            what = f"at least as accurate, but {ratio:.2f}x its latency (within the budget)"
        else:
            what = "**less accurate**"
        out.append(f"{m.name}: {d:+.2f} points, latency {ratio:.2f}x — {what}")
    return out


def recipe_line(args: argparse.Namespace) -> str:
    recipe = TrainConfig(recipe=args.recipe, epochs=args.epochs, device="cpu")
    return recipe.describe()


def accuracy_cells(m: Model, test: bool) -> str:
    """`test | val` accuracy cells (mean ± sd over seeds), or the validation cell alone."""
    if not m.accs:
        return f"failed: {m.failed} |" + (" |" if test else "")
    val = f"{m.acc:.4f} ± {m.acc_sd:.4f}"
    if not test:
        return f"{val} |"
    return f"{m.score:.4f} ± {m.score_sd:.4f} ({len(m.tests)}) | {val} |"


def markdown(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    test = measured_test(results)
    retrain = (
        f"; the best {args.retrain_top} of each search by the proxy retrained with the recipe "
        "(first seed), the best of them by validation accuracy is the one reported"
        if args.retrain_top
        else ""
    )
    accuracy = (
        "test split (the data set's official one, measured once per trained model after its "
        "training; every choice above is made on the validation split), mean ± sd over seeds "
        "(the count in brackets; models over every budget get "
        f"{args.over_budget_seeds} seed(s)), validation beside it"
        if test
        else "validation, mean ± sd over seeds"
    )
    lines = [
        f"Recipe, from scratch: the {recipe_line(args)}; seeds {' '.join(map(str, args.seeds))}. "
        "Search: survey "
        f"space, TPE ({TPE_OBJECTIVES[args.tpe_mode]}) until {args.trained} trained candidates "
        f"({args.proxy_epochs}-epoch proxy), "
        f"random until {args.random_multiple * args.trained}{retrain}. Latency: CPU "
        f"({cpu_name()}), batch 1, median of {args.rounds} interleaved rounds, measured in this "
        f"run; re-parameterisable stems fused. Accuracy: {accuracy}.",
        "",
    ]
    columns = "test accuracy | val accuracy" if test else "accuracy"
    rule = "--- | ---" if test else "---"
    for r in results:
        for b in r["budgets"]:
            lines += [
                f"### {r['tag']}: budget of {b.name} — {b.max_params:,} params, "
                f"{b.max_latency_ms:.2f} ms (1 thread)",
                "",
                "| model | kind | params | FLOPs | latency 1 thread | latency 2 threads | "
                f"{columns} | architecture |",
                f"| --- | --- | --- | --- | --- | --- | {rule} | --- |",
            ]
            shown = b.models + [t for t in r["timm"] if b.fits.get(t.name)]
            for m in sorted(shown, key=lambda m: -(m.score if m.scores else -1)):
                name = f"**{m.name}**" if m.kind == "found" else m.name
                lines.append(
                    f"| {name} | {m.kind} | {m.params / 1e3:.1f}k | {m.flops / 1e6:.1f}M | "
                    f"{m.lat(1):.3f} ms | {m.lat(2):.3f} ms | {accuracy_cells(m, test)} "
                    f"{m.describe} |"
                )
            found_lines = verdicts(b, r["timm"])
            wins = sum("**at least as accurate and no slower**" in v for v in found_lines)
            lines += [
                "",
                f"Found (TPE) against each model that fits ({wins} of "
                f"{len(found_lines)} at least as accurate and no slower):",
                "",
            ]
            lines += [f"- {v}" for v in found_lines]
            for strategy in STRATEGIES:
                info = b.search.get(strategy)
                if info:
                    capped = (
                        f" — stopped at the cap of {args.max_candidates} candidates"
                        if info["trained"] < info["wanted"]
                        else ""
                    )
                    if info.get("retrained"):
                        picked = ", ".join(
                            f"trial {x['trial']} {x['proxy_acc']:.4f} → "
                            + ("failed" if x["val_acc"] is None else f"{x['val_acc']:.4f}")
                            for x in info["retrained"]
                        )
                        best = (
                            f"its best {len(info['retrained'])} by the {args.proxy_epochs}-epoch "
                            f"proxy retrained ({picked}): trial {info['best_trial']}"
                        )
                    else:
                        best = (
                            f"best by its {args.proxy_epochs}-epoch proxy: "
                            f"trial {info['best_trial']}"
                        )
                    lines.append(
                        f"- search {strategy}: {info['trained']} trained of "
                        f"{info['candidates']} candidates proposed{capped}; {best}"
                    )
            left = b.search.get("families_left_out", {})
            lines += [f"- {f}-style: none fits ({why})" for f, why in left.items()]
            lines.append("")
        lines += [
            f"### {r['tag']}: the timm models (random initialisation, the same recipe)",
            "",
            f"| model | params | FLOPs | latency 1 thread | latency 2 threads | {columns} | "
            "created as |",
            f"| --- | --- | --- | --- | --- | {rule} | --- |",
        ]
        for m in r["timm"]:
            cnn = " (CNN)" if m.name in CNN_REFERENCES else ""
            lines.append(
                f"| {m.name}{cnn} | {m.params / 1e6:.2f}M | {m.flops / 1e6:.1f}M | "
                f"{m.lat(1):.3f} ms | {m.lat(2):.3f} ms | {accuracy_cells(m, test)} "
                f"`{m.describe}` |"
            )
        lines += [
            f"- {n} does not run at this size: {why}" for n, why in r["timm_not_run"].items()
        ]
        lines.append("")
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    panels = [(r, b) for r in results for b in r["budgets"]]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 5), squeeze=False)
    style = {
        "found": dict(marker="*", s=260, c="tab:red", zorder=5),
        "random": dict(marker="^", s=90, c="tab:orange", zorder=4),
        "family": dict(marker="D", s=60, c="tab:blue", zorder=3),
        "timm": dict(marker="s", s=60, c="black", zorder=3),
    }
    split = "test" if measured_test(results) else "validation"
    for ax, (r, b) in zip(axes[0], panels, strict=True):
        shown = b.models + [t for t in r["timm"] if t not in b.models]
        for m in shown:
            if not m.scores:
                continue
            fits = b.fits.get(m.name, False)
            kw = dict(style[m.kind])
            if not fits:
                kw.update(c="none", edgecolors="grey", s=40)
            ax.scatter([m.lat(1)], [m.score], **kw)
            ax.errorbar([m.lat(1)], [m.score], yerr=[m.score_sd], color="grey", lw=0.8, zorder=2)
            ax.annotate(
                m.name,
                (m.lat(1), m.score),
                textcoords="offset points",
                xytext=(5, 3),
                fontsize=7,
                color="black" if fits else "grey",
            )
        ax.axvline(b.max_latency_ms, color="tab:red", ls="--", lw=1, label="latency budget")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.tick_params(axis="x", which="minor", labelsize=7)
        ax.set_xlabel("CPU latency, batch 1, 1 thread (ms, log)")
        ax.set_ylabel(f"{split} accuracy (mean over seeds)")
        ax.set_title(
            f"{r['tag']}: budget {b.max_params / 1e3:.0f}k params, {b.max_latency_ms:.2f} ms\n"
            f"({b.name})",
            fontsize=9,
        )
        ax.grid(alpha=0.3, which="both")
    handles = [
        plt.scatter([], [], label=label, **style[k])
        for k, label in (
            ("found", "found by TPE"),
            ("random", "random search"),
            ("family", "hand-designed family, scaled"),
            ("timm", "timm model"),
        )
    ]
    handles.append(
        plt.scatter([], [], marker="o", c="none", edgecolors="grey", label="over the budget")
    )
    axes[0][0].legend(handles=handles, fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


DATA_HELP = "digits, fashion_mnist[:PATH], imagefolder:PATH, cifar10:PATH or cifar100:PATH"


def parse_data(
    spec: str, img_size: int, max_train: int | None, val_fraction: float = 0.2
) -> DataConfig:
    name, _, path = spec.partition(":")
    if name not in ("digits", "fashion_mnist", "imagefolder", "cifar10", "cifar100", "synthetic"):
        raise UserError(f"--data {spec}: use {DATA_HELP}")
    if name in ("imagefolder", "cifar10", "cifar100") and not path:
        raise UserError(f"--data {spec}: {name} needs a folder, as {name}:PATH")
    return DataConfig(
        name=name,
        path=path or None,
        img_size=img_size,
        max_train=max_train,
        val_fraction=val_fraction,
    )


# (quick, full) defaults of each preset; the fashion preset is the protocol of the README's
# Fashion-MNIST comparison, sized to fit 4 hours on a 2-core CPU
PRESETS: dict[str, dict[str, tuple]] = {
    "digits": {
        "data": (["digits"], ["digits"]),
        "budgets": (["poolformer:8", "deit:48", "smallest-timm"],) * 2,
        "seeds": ([0], [0, 1, 2]),
        "epochs": (2, 10),
        "trained": (4, 8),
        "proxy_epochs": (1, 4),
        "rounds": (1, 3),
        "max_candidates": (100, 300),
        "retrain_top": (0, 0),
        "random_multiple": (2, 2),
        "over_budget_seeds": (1, 3),
        "val_fraction": (0.2, 0.2),
        "timm": (list(TIMM_MODELS),) * 2,
    },
    "fashion": {
        "data": (["fashion_mnist"], ["fashion_mnist"]),
        "budgets": (["poolformer:8", "deit:48", "mobilevit_xxs"],) * 2,
        "max_train": (600, 4000),
        "val_fraction": (0.02, 0.05),
        "seeds": ([0], [0, 1, 2]),
        "epochs": (1, 5),
        "trained": (3, 24),
        "proxy_epochs": (1, 2),
        "rounds": (1, 3),
        # random search at the tightest budget rejects about 29 of 30 candidates (it drew
        # 494 to train 17)
        "max_candidates": (25, 1000),
        # the quick check covers each path (fits a budget, over every budget, a CNN, one
        # that does not run at 32x32) with a few of the timm models
        "timm": (
            ["mobilevit_xxs", "levit_128s", "resnet18", "efficientformer_l1"],
            list(TIMM_MODELS),
        ),
        "retrain_top": (2, 3),
        "random_multiple": (1, 1),
        "over_budget_seeds": (1, 1),
        # the published run's searches were drawn from version 1 of the survey space (before
        # lisa, mobileformer, shift, posmlp, unitary and dynamic resolution): a rerun repeats it
        "space_version": (None, 1),
    },
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (about 10 minutes)")
    parser.add_argument(
        "--preset",
        choices=list(PRESETS),
        default="digits",
        help="the defaults of every option left unset: digits (the earlier comparison) or "
        "fashion (Fashion-MNIST, test split, the best 3 of each search retrained)",
    )
    parser.add_argument("--data", nargs="+", help=DATA_HELP)
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--max-train", type=int, default=None, help="cap on training images")
    parser.add_argument("--val-fraction", type=float, help="validation share of the training set")
    parser.add_argument("--seeds", type=int, nargs="+", help="training seeds (3 full, 1 quick)")
    parser.add_argument("--epochs", type=int, help="training epochs of the recipe")
    parser.add_argument(
        "--recipe",
        choices=("full", "proxy"),
        default="full",
        help="how every model is trained (the full recipe by default; the published digits "
        "results used proxy)",
    )
    parser.add_argument("--trained", type=int, help="trained candidates per TPE search")
    parser.add_argument(
        "--random-multiple",
        type=int,
        choices=(1, 2),
        help="random search trains this many times --trained (2: also reports its first half)",
    )
    parser.add_argument(
        "--retrain-top",
        type=int,
        help="retrain the best K of each search by the proxy with the recipe and report the "
        "best of them by validation accuracy (0: the proxy's best)",
    )
    parser.add_argument(
        "--over-budget-seeds", type=int, help="seeds for models that fit no budget"
    )
    parser.add_argument("--proxy-epochs", type=int, help="epochs per candidate in the search")
    parser.add_argument(
        "--max-candidates",
        type=int,
        help="proposals per search before it stops short of --trained (300 full, 100 quick)",
    )
    parser.add_argument("--search-seed", type=int, default=0)
    parser.add_argument(
        "--tpe-mode",
        choices=("multi", "single"),
        default="multi",
        help="TPE's objectives: multi (accuracy against latency, the published runs) or single "
        "(accuracy alone under the budgets); random search is the same either way",
    )
    parser.add_argument(
        "--space-version",
        type=int,
        help="version of the survey space to search (fashion: 1, the published run's; "
        "default: the newest)",
    )
    parser.add_argument(
        "--budgets",
        nargs="+",
        help="reference models setting the budgets: FAMILY:WIDTH, a timm name, smallest-timm",
    )
    parser.add_argument("--families", nargs="+", default=list(BASELINES), choices=list(BASELINES))
    parser.add_argument("--timm", nargs="*", help="timm models (default: all of TIMM_MODELS)")
    parser.add_argument("--rounds", type=int, help="interleaved latency rounds")
    parser.add_argument("--threads", type=int, default=2, help="training threads")
    parser.add_argument("--work", help="searches and trained results (resumable)")
    parser.add_argument("--out", help="where the CSV, Markdown and plot go")
    args = parser.parse_args(argv)
    name = "baselines" if args.preset == "digits" else f"baselines-{args.preset}"
    set_mode_defaults(args, name, PRESETS[args.preset])
    try:
        data_cfgs = [
            parse_data(s, args.img_size, args.max_train, args.val_fraction) for s in args.data
        ]
        for ref in args.budgets:
            family, _, width = ref.partition(":")
            if (
                ref != "smallest-timm"
                and ref.removeprefix("timm:") not in args.timm
                and not (family in BASELINES and width.isdigit())
            ):
                raise UserError(
                    f"--budgets {ref}: use FAMILY:WIDTH ({', '.join(BASELINES)}), "
                    "smallest-timm, or a name given to --timm"
                )
    except UserError as e:
        print(f"bench_baselines: {e}", file=sys.stderr)
        return 2
    os.makedirs(args.work, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning)
    start = time.perf_counter()
    try:
        results = [run_data_set(args, cfg, 0) for cfg in data_cfgs]
    except UserError as e:
        print(f"bench_baselines: {e}", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    rows = [row for r in results for row in rows_of(r)]
    tmp = os.path.join(args.out, "results.csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, os.path.join(args.out, "results.csv"))
    table = markdown(results, args)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(table)
    plot(results, os.path.join(args.out, "pareto.png"))
    meta = {
        "args": {k: v for k, v in vars(args).items()},
        "cpu": cpu_name(),
        "versions": library_versions(),
        "seconds": round(time.perf_counter() - start, 1),
        "search": {f"{r['tag']}/{b.name}": b.search for r in results for b in r["budgets"]},
    }
    with open(os.path.join(args.out, "run.json"), "w") as f:
        json.dump(meta, f, indent=2)
    print(table)
    minutes = meta["seconds"] / 60
    print(
        f"Compared {len(rows)} (budget, model) pairs over {len(results)} data set(s) in "
        f"{minutes:.1f} min; wrote {args.out}/results.csv, results.md, pareto.png, run.json "
        f"(searches and trained results kept in {args.work})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
