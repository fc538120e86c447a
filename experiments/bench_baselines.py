"""Benchmark: what a search finds against hand-designed lightweight ViTs, real timm models and
random search, at several budgets, side by side in one run.

Protocol (one data set at a time; digits at 32x32 by default, plus any `--data
imagefolder:PATH` or `--data cifar10:PATH`):

1. Reference models: the survey's hand-designed families (`search_spaces.baselines`) and every
   timm model of `TIMM_MODELS` that runs at the input size, randomly initialised. Models whose
   architectures are identical (vit_tiny and deit_tiny differ only in their pretrained weights)
   are trained once and reported under each name.
2. Budgets: the parameter count and 1-thread latency of reference models (default: the
   PoolFormer-style family at width 8, the DeiT-style at width 48, and the smallest timm model
   that runs), measured at the start of the run.
3. Per budget: a TPE search (multi-objective, accuracy against latency, the survey space, the
   budget's params and latency as constraints, latency measured) until `--trained` candidates
   are trained, and a random search until twice as many; the most accurate trained candidate
   of TPE, of random's first `--trained` and of all its `2 x --trained` are the found
   architectures. Each family is scaled to the widest member within the budget (params and
   1-thread latency); timm models fit when their params and latency do.
4. Every model is trained from scratch with the same recipe (`--epochs`, AdamW, warm-up, cosine,
   label smoothing) for each of `--seeds`, on the same split.
5. Every model is measured side by side at the end of the run: parameters (as trained, as the
   search counts them), FLOPs and CPU latency at batch 1 on 1 and 2 threads (eager, eval,
   no_grad) of the deployment form (re-parameterisable branches fused), in interleaved rounds,
   the median over rounds reported.

Writes `results.csv` (columns `name`, `latency_ms`, `accuracy` first, so that `lvit report
--baselines` reads it), `results.md` and `pareto.png` (one panel per budget) to `--out`.
Trained accuracies are kept in `--work` as they finish, so an interrupted run resumes.

    python experiments/bench_baselines.py --quick     # 10.8 min on a 2-core CPU
    python experiments/bench_baselines.py             # full mode
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_search import run_until, set_mode_defaults  # noqa: E402

from nas.config import (  # noqa: E402
    BudgetConfig,
    DataConfig,
    LatencyConfig,
    SearchConfig,
    StudyConfig,
    TrainConfig,
)
from nas.cost import count_flops, count_params, cpu_name, measure_latency  # noqa: E402
from nas.data import Dataset  # noqa: E402
from nas.errors import UserError  # noqa: E402
from nas.report import records  # noqa: E402
from nas.study import library_versions, prepare_inputs  # noqa: E402
from nas.train import TrainingFailed, train_model  # noqa: E402
from search_spaces.arch import ArchConfig  # noqa: E402
from search_spaces.baselines import BASELINES, PAPERS, WIDTHS, baseline  # noqa: E402
from search_spaces.model import LightViT  # noqa: E402

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
}
STRATEGIES = ("tpe", "random", "random-2x")


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
    accs: list[float] = field(default_factory=list)
    failed: str = ""

    def lat(self, threads: int) -> float:
        return statistics.median(self.latency[threads]) if self.latency.get(threads) else math.nan

    @property
    def acc(self) -> float:
        return statistics.mean(self.accs) if self.accs else math.nan

    @property
    def acc_sd(self) -> float:
        return statistics.pstdev(self.accs) if len(self.accs) > 1 else 0.0


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


def fused(model: nn.Module) -> nn.Module:
    """The deployment form, as exported: re-parameterisable branches fused (our stems by our
    own `reparameterize`, timm's MobileOne/RepViT/FastViT blocks by timm's)."""
    if isinstance(model, LightViT):
        if model.has_reparameterizable:
            model.reparameterize()
        return model
    from timm.utils.model import reparameterize_model

    return reparameterize_model(model, inplace=True)


class Measurer:
    """Params, FLOPs and CPU latency at batch 1, cached per architecture."""

    def __init__(self, in_chans: int, quick: bool) -> None:
        self.in_chans = in_chans
        self.cfg = LatencyConfig(runs=20 if quick else 50, max_seconds=1.0 if quick else 2.0)
        self.cache: dict[tuple[str, int], float] = {}

    def latency(self, m: Model, threads: int, module: nn.Module | None = None) -> float:
        module = module or fused(m.build().eval())
        return measure_latency(
            module,
            (self.in_chans, m.img_size, m.img_size),
            threads=threads,
            warmup=self.cfg.warmup,
            runs=self.cfg.runs,
            max_seconds=self.cfg.max_seconds,
        ).median_ms

    def screen(self, m: Model) -> Model:
        """Params and a first 1-thread latency (the one budgets and scaling use)."""
        if (m.key, 1) not in self.cache:
            module = m.build().eval()
            self.cache[m.key, 0] = count_params(module)  # as trained, as the search counts
            module = fused(module)
            self.cache[m.key, 1] = self.latency(m, 1, module)
        m.params, m.screen_ms = int(self.cache[m.key, 0]), self.cache[m.key, 1]
        return m

    def side_by_side(self, models: list[Model], rounds: int, bar: Any) -> None:
        """FLOPs, then latency at 1 and 2 threads, every model once per round."""
        unique = {m.key: m for m in models}
        for m in unique.values():
            module = m.build().eval()
            m.params = count_params(module)
            module = fused(module)
            m.flops = count_flops(module, (self.in_chans, m.img_size, m.img_size))
        times: dict[tuple[str, int], list[float]] = {}
        for _ in range(rounds):
            for m in unique.values():
                module = fused(m.build().eval())
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
    """Trains models with one recipe; results kept on disk by (architecture, seed, recipe)."""

    def __init__(self, path: str, data: Dataset, recipe: TrainConfig, data_key: str) -> None:
        self.path, self.data, self.recipe = path, data, recipe
        self.recipe_key = f"{data_key}|{json.dumps(dataclasses.asdict(recipe), sort_keys=True)}"
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
            name=f"{data_label(data_cfg)}-{b.name}-{sampler}",
            storage=f"sqlite:///{args.work}/search.db",
            artifacts=os.path.join(args.work, "artifacts"),
            n_trials=1,
            # random search draws its own candidates, not TPE's random start-up ones
            seed=args.search_seed + (1000 if sampler == "random" else 0),
            sampler=cls,
            sampler_args=sampler_args,
        ),
        space="survey",
        data=data_cfg,
        train=TrainConfig(epochs=args.proxy_epochs, threads=args.threads, device="cpu"),
        budget=BudgetConfig(max_params=b.max_params, max_latency_ms=b.max_latency_ms),
        latency=LatencyConfig(threads=1),
    )


def best_found(study: optuna.Study, first: int | None = None) -> tuple[ArchConfig, Any] | None:
    """The most accurate trained candidate (ties: the faster) among the first `first`."""
    trained = sorted((r for r in records(study) if r.status == "trained"), key=lambda r: r.number)[
        :first
    ]
    if not trained:
        return None
    best = max(trained, key=lambda r: (r.accuracy, -r.latency_ms))
    arch = ArchConfig.from_dict(study.trials[best.number].user_attrs["arch"])
    return arch, best


def run_searches(
    args: argparse.Namespace, data_cfg: DataConfig, b: Budget, inputs: Any
) -> list[Model]:
    found = []
    bar = tqdm(
        total=3 * args.trained, desc=f"search {b.name}", unit="cand", leave=False, disable=None
    )
    studies = {}
    for sampler, n in (("tpe", args.trained), ("random", 2 * args.trained)):
        config = search_config(args, data_cfg, b, sampler)
        bar.set_postfix_str(sampler)
        studies[sampler] = run_until(config, inputs, n, bar, args.max_candidates)
    bar.close()
    for strategy, study, first in (
        ("tpe", studies["tpe"], args.trained),
        ("random", studies["random"], args.trained),
        ("random-2x", studies["random"], 2 * args.trained),
    ):
        best = best_found(study, first)
        numbers = sorted(r.number for r in records(study) if r.status == "trained")[:first]
        b.search[strategy] = {
            "study": study.study_name,
            # candidates proposed until the last of the first `first` trained ones
            "candidates": numbers[-1] + 1 if len(numbers) == first else len(study.trials),
            "trained": len(numbers),
            "wanted": first,
            "best_trial": best[1].number if best else None,
            "proxy_acc": best[1].accuracy if best else None,
        }
        if best is None:
            continue
        kind = "found" if strategy == "tpe" else "random"
        label = {"tpe": "found (TPE)", "random": f"random {first}", "random-2x": f"random {first}"}
        found.append(lightvit_model(label[strategy], kind, best[0]))
    return found


def run_data_set(args: argparse.Namespace, data_cfg: DataConfig, bar_pos: int) -> dict[str, Any]:
    start = time.perf_counter()
    probe = search_config(args, data_cfg, Budget("probe", 1, 1.0), "random")
    inputs = prepare_inputs(probe)
    data = inputs.data
    size = data.img_size
    measurer = Measurer(data.in_chans, args.quick)
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
    for b in budgets:
        b.models += run_searches(args, data_cfg, b, inputs)
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

    # 4. training, budgets' models first, then the timm models
    trainer = Trainer(
        os.path.join(args.work, "trained.jsonl"), data, recipe, json.dumps(data.info())
    )
    everything = [m for b in budgets for m in b.models] + timm_models
    jobs, seen = [], set()
    for m in everything:
        for seed in args.seeds:
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
        rows = [trainer.done[m.key, s] for s in args.seeds]
        m.accs = [r["acc"] for r in rows if r["acc"] is not None]
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
                    "architecture": m.describe,
                    "paper": m.paper,
                    "failed": m.failed,
                }
            )
    return rows


def verdicts(b: Budget, timm_models: list[Model]) -> list[str]:
    found = next((m for m in b.models if m.kind == "found"), None)
    if found is None or not found.accs:
        return ["no architecture was found within this budget"]
    out = []
    others = [m for m in b.models if m is not found] + [
        t for t in timm_models if b.fits.get(t.name)
    ]
    for m in others:
        if not m.accs:
            continue
        d = 100 * (found.acc - m.acc)
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


def markdown(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"Recipe, from scratch: the {recipe_line(args)}; seeds {' '.join(map(str, args.seeds))}. "
        "Search: survey "
        f"space, TPE until {args.trained} trained candidates ({args.proxy_epochs}-epoch proxy), "
        f"random until {2 * args.trained}. Latency: CPU ({cpu_name()}), batch 1, median of "
        f"{args.rounds} interleaved rounds, measured in this run; re-parameterisable stems "
        f"fused. Accuracy: validation, mean ± sd over seeds.",
        "",
    ]
    for r in results:
        for b in r["budgets"]:
            lines += [
                f"### {r['tag']}: budget of {b.name} — {b.max_params:,} params, "
                f"{b.max_latency_ms:.2f} ms (1 thread)",
                "",
                "| model | kind | params | FLOPs | latency 1 thread | latency 2 threads | "
                "accuracy | architecture |",
                "| --- | --- | --- | --- | --- | --- | --- | --- |",
            ]
            shown = b.models + [t for t in r["timm"] if b.fits.get(t.name)]
            for m in sorted(shown, key=lambda m: -(m.acc if m.accs else -1)):
                acc = f"{m.acc:.4f} ± {m.acc_sd:.4f}" if m.accs else f"failed: {m.failed}"
                name = f"**{m.name}**" if m.kind == "found" else m.name
                lines.append(
                    f"| {name} | {m.kind} | {m.params / 1e3:.1f}k | {m.flops / 1e6:.1f}M | "
                    f"{m.lat(1):.3f} ms | {m.lat(2):.3f} ms | {acc} | {m.describe} |"
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
                    lines.append(
                        f"- search {strategy}: {info['trained']} trained of "
                        f"{info['candidates']} candidates proposed{capped}; best by its "
                        f"{args.proxy_epochs}-epoch proxy: trial {info['best_trial']}"
                    )
            left = b.search.get("families_left_out", {})
            lines += [f"- {f}-style: none fits ({why})" for f, why in left.items()]
            lines.append("")
        lines += [
            f"### {r['tag']}: the timm models (random initialisation, the same recipe)",
            "",
            "| model | params | FLOPs | latency 1 thread | latency 2 threads | accuracy | "
            "created as |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for m in r["timm"]:
            acc = f"{m.acc:.4f} ± {m.acc_sd:.4f}" if m.accs else f"failed: {m.failed}"
            lines.append(
                f"| {m.name} | {m.params / 1e6:.2f}M | {m.flops / 1e6:.1f}M | {m.lat(1):.3f} ms "
                f"| {m.lat(2):.3f} ms | {acc} | `{m.describe}` |"
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
    for ax, (r, b) in zip(axes[0], panels, strict=True):
        shown = b.models + [t for t in r["timm"] if t not in b.models]
        for m in shown:
            if not m.accs:
                continue
            fits = b.fits.get(m.name, False)
            kw = dict(style[m.kind])
            if not fits:
                kw.update(c="none", edgecolors="grey", s=40)
            ax.scatter([m.lat(1)], [m.acc], **kw)
            ax.errorbar([m.lat(1)], [m.acc], yerr=[m.acc_sd], color="grey", lw=0.8, zorder=2)
            ax.annotate(
                m.name,
                (m.lat(1), m.acc),
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
        ax.set_ylabel("validation accuracy (mean over seeds)")
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


def parse_data(spec: str, img_size: int, max_train: int | None) -> DataConfig:
    name, _, path = spec.partition(":")
    if name not in ("digits", "imagefolder", "cifar10", "synthetic"):
        raise UserError(f"--data {spec}: use digits, imagefolder:PATH or cifar10:PATH")
    if name in ("imagefolder", "cifar10") and not path:
        raise UserError(f"--data {spec}: {name} needs a folder, as {name}:PATH")
    return DataConfig(name=name, path=path or None, img_size=img_size, max_train=max_train)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (about 10 minutes)")
    parser.add_argument(
        "--data", nargs="+", default=["digits"], help="digits, imagefolder:PATH, cifar10:PATH"
    )
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--max-train", type=int, default=None, help="cap on training images")
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
    parser.add_argument("--proxy-epochs", type=int, help="epochs per candidate in the search")
    parser.add_argument(
        "--max-candidates",
        type=int,
        help="proposals per search before it stops short of --trained (300 full, 100 quick)",
    )
    parser.add_argument("--search-seed", type=int, default=0)
    parser.add_argument(
        "--budgets",
        nargs="+",
        default=["poolformer:8", "deit:48", "smallest-timm"],
        help="reference models setting the budgets: FAMILY:WIDTH, a timm name, smallest-timm",
    )
    parser.add_argument("--families", nargs="+", default=list(BASELINES), choices=list(BASELINES))
    parser.add_argument("--timm", nargs="*", default=list(TIMM_MODELS))
    parser.add_argument("--rounds", type=int, help="interleaved latency rounds")
    parser.add_argument("--threads", type=int, default=2, help="training threads")
    parser.add_argument("--work", help="searches and trained results (resumable)")
    parser.add_argument("--out", help="where the CSV, Markdown and plot go")
    args = parser.parse_args(argv)
    set_mode_defaults(
        args,
        "baselines",
        {
            "seeds": ([0], [0, 1, 2]),
            "epochs": (2, 10),
            "trained": (4, 8),
            "proxy_epochs": (1, 4),
            "rounds": (1, 3),
            "max_candidates": (100, 300),
        },
    )
    try:
        data_cfgs = [parse_data(s, args.img_size, args.max_train) for s in args.data]
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
