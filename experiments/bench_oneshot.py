"""Benchmark (issue 10): one-shot search with a weight-sharing supernet against search from
scratch, and our survey space against NNI's AutoFormer space.

    python experiments/bench_oneshot.py            # full mode: 21.9 min on a 2-core CPU
    python experiments/bench_oneshot.py --quick    # 4.1 min: smaller numbers throughout

Everything comes from one config (`--config`, default experiments/oneshot.yaml: its supernet
space, data, budgets and recipe) and runs in one process on this machine:
  1. the supernet is trained with SPOS (`lvit supernet train`), with copies of its weights kept
     after a quarter, half and all of its epochs; with `--sandwich`, a second one with BigNAS's
     sandwich rule and in-place distillation (`supernet.sampling: sandwich`, arXiv
     2003.11142: four paths a batch, so about four times the time);
  2. ranking: `--subnets` architectures drawn uniformly from the supernet's space within the
     budgets are scored with inherited weights (each kept copy; 20 and 2 batches of batch-norm
     recalibration; and after `--tune-steps` steps of each subnet alone) and trained from
     scratch with the recipe. Kendall's tau and Spearman's rho
     between inherited and stand-alone accuracy, with the parameter count as a zero-cost
     reference ranking;
  3. speed: subnets scored per minute (inherit, recalibrate, evaluate), and candidates per
     minute of the whole one-shot search (with latency measured and the budgets checked);
  4. time to result: the one-shot search (`--candidates`, best `retrain_top_k` retrained) against
     a search from scratch of the same space at the same budget (`--trained` candidates trained
     for `--proxy-epochs`, the best `retrain_top_k` retrained with the recipe): the best
     stand-alone accuracy each reaches and the wall time it took, supernet training included;
  5. spaces: the survey space against NNI's AutoFormer space (`space: nni:autoformer`), searched
     from scratch by the same engine, sampler, budget, number of trained candidates and recipe.
Writes results.json, results.md and oneshot.png to `--out`; what was trained is kept in
`--work`, so a second run resumes (and retrains nothing).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from typing import Any

import optuna
import torch
from scipy.stats import kendalltau, spearmanr
from tqdm import tqdm

from nas.bench import run_until, set_mode_defaults, trained_count, wall_seconds
from nas.callbacks import dashboard_hooks
from nas.config import SearchConfig, load_config
from nas.cost import count_params, cpu_name, measure_latency
from nas.data import Dataset
from nas.oneshot_retrain import retrain_best
from nas.study import create_or_resume_study, prepare_inputs, run_search
from nas.supernet import SUPERNET_META, SharedWeights
from nas.train import train_model
from search_spaces.arch import ArchConfig
from search_spaces.model import LightViT


class Standalone:
    """From-scratch training with the recipe, cached by architecture and epochs (JSON lines)."""

    def __init__(self, path: str, data: Dataset, config: SearchConfig) -> None:
        self.path, self.data, self.config = path, data, config
        self.done: dict[str, dict[str, Any]] = {}
        if os.path.exists(path):
            with open(path) as f:
                for line in f:
                    row = json.loads(line)
                    self.done[row["key"]] = row

    def accuracy(self, arch: ArchConfig, epochs: int) -> dict[str, Any]:
        key = f"{arch.to_json()}|{epochs}|{self.config.study.seed}"
        if key not in self.done:
            recipe = dataclasses.replace(self.config.train, epochs=epochs)
            model = LightViT(arch)
            result = train_model(model, self.data, recipe, self.config.study.seed)
            row = {"key": key, "accuracy": result.val_acc, "seconds": result.seconds}
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")
            self.done[key] = row
        return self.done[key]


def derived(config: SearchConfig, work: str, name: str, **changes: Any) -> SearchConfig:
    """`config` as a study `name` in the benchmark's own storage, with `changes`."""
    study = dataclasses.replace(
        config.study,
        name=name,
        storage=f"sqlite:///{work}/bench.db",
        artifacts=os.path.join(work, "artifacts"),
        **changes.pop("study", {}),
    )
    return dataclasses.replace(config, study=study, **changes)


def within_budget(config: SearchConfig, data: Dataset, n: int, seed: int) -> list[dict]:
    """`n` architectures drawn uniformly from the supernet's space within the budgets."""
    space, budget, out = config.search_space(), config.budget, []
    archs = space.sample_many(
        40 * n,
        seed=seed,
        num_classes=data.num_classes,
        in_chans=data.in_chans,
        img_size=data.img_size,
    )
    seen = set()
    for arch in archs:
        if arch in seen:
            continue
        seen.add(arch)
        model = LightViT(arch).eval()
        params = count_params(model)
        if budget.max_params and params > budget.max_params:
            continue
        ms = measure_latency(
            model,
            (arch.in_chans, arch.img_size, arch.img_size),
            threads=1,
            runs=20,
            max_seconds=0.5,
        ).median_ms
        if budget.max_latency_ms and ms > budget.max_latency_ms:
            continue
        out.append({"arch": arch, "params": params, "latency_ms": ms})
        if len(out) == n:
            break
    return out


def taus(inherited: list[float], alone: list[float]) -> dict[str, float]:
    tau = kendalltau(inherited, alone)
    rho = spearmanr(inherited, alone)
    return {
        "kendall_tau": float(tau.statistic),
        "tau_p": float(tau.pvalue),
        "spearman_rho": float(rho.statistic),
    }


def retrain_top(
    study: optuna.Study, k: int, standalone: Standalone, epochs: int
) -> list[dict[str, Any]]:
    """The `k` most accurate trained candidates of a from-scratch study, retrained."""
    trained = [t for t in study.trials if t.user_attrs.get("status") == "trained"]
    trained.sort(key=lambda t: -t.values[0])
    out = []
    for t in trained[:k]:
        arch = ArchConfig.from_dict(t.user_attrs["arch"])
        row = standalone.accuracy(arch, epochs)
        out.append(
            {
                "trial": t.number,
                "proxy_accuracy": t.values[0],
                "arch": arch.describe(),
                "accuracy": row["accuracy"],
                "seconds": row["seconds"],
                "latency_ms": t.user_attrs["costs"]["latency_ms"],
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="experiments/oneshot.yaml")
    parser.add_argument("--quick", action="store_true", help="a short run (about 10 minutes)")
    parser.add_argument("--supernet-epochs", type=int, help="the config's full, 8 quick")
    parser.add_argument("--subnets", type=int, help="ranked subnets: 30 full, 12 quick")
    parser.add_argument("--epochs", type=int, help="stand-alone recipe epochs: the config's / 3")
    parser.add_argument("--candidates", type=int, help="one-shot candidates: 300 full, 60 quick")
    parser.add_argument("--trained", type=int, help="from-scratch trained: 24 full, 6 quick")
    parser.add_argument("--proxy-epochs", type=int, help="from-scratch proxy: 4 full, 1 quick")
    parser.add_argument(
        "--tune-steps", type=int, default=45, help="steps of a subnet alone before scoring"
    )
    parser.add_argument("--work", help="kept results (resumable)")
    parser.add_argument("--out", help="where results.json/.md and the plot go")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--sandwich",
        action="store_true",
        help="also train a supernet with the sandwich rule and in-place distillation, and rank",
    )
    args = parser.parse_args(argv)
    quick = args.quick
    set_mode_defaults(
        args,
        "oneshot",
        {"subnets": (12, 30), "candidates": (60, 300), "trained": (6, 24), "proxy_epochs": (1, 4)},
    )
    try:
        base = load_config(args.config)
        if base.supernet is None:
            raise ValueError(f"{args.config} has no supernet section")
    except ValueError as e:
        print(f"bench_oneshot: error: {e}", file=sys.stderr)
        return 2
    if args.epochs is None:
        args.epochs = 3 if quick else base.train.epochs
    if args.supernet_epochs is None:
        args.supernet_epochs = 8 if quick else base.supernet.epochs
    torch.set_num_threads(args.threads)
    os.makedirs(args.work, exist_ok=True)
    os.makedirs(args.out, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    start = time.perf_counter()
    train = dataclasses.replace(base.train, epochs=args.epochs, threads=args.threads)
    supernet = dataclasses.replace(
        base.supernet, path=os.path.join(args.work, "supernet"), epochs=args.supernet_epochs
    )
    config = derived(base, args.work, "oneshot", train=train, supernet=supernet)
    inputs = prepare_inputs(dataclasses.replace(config, evaluation="train"))
    data = inputs.data
    standalone = Standalone(os.path.join(args.work, "standalone.jsonl"), data, config)
    k = supernet.retrain_top_k

    # 1. the supernet
    kept = sorted({max(1, supernet.epochs // 4), max(1, supernet.epochs // 2), supernet.epochs})
    if not os.path.exists(os.path.join(supernet.path, SUPERNET_META)):
        from nas.oneshot import train_supernet

        steps = supernet.epochs * -(-len(data.train_y) // train.batch_size)
        with tqdm(total=steps, desc="supernet (SPOS)", unit="path", disable=None) as bar:
            train_supernet(config, data, on_step=lambda: bar.update(1), keep_epochs=tuple(kept))
    with open(os.path.join(supernet.path, SUPERNET_META)) as f:
        meta = json.load(f)

    # 2. ranking: inherited against stand-alone
    subnets = within_budget(config, data, args.subnets, seed=1)
    ranking: dict[str, Any] = {"subnets": [], "by_epoch": {}}
    scores: dict[tuple[int, int, int], list[float]] = {}
    seconds: dict[tuple[int, int, int], list[float]] = {}
    calib, final_epoch = supernet.calib_batches, supernet.epochs
    settings = [(e, calib, 0) for e in kept] + [(final_epoch, 2, 0)]
    settings.append((final_epoch, calib, args.tune_steps))
    with tqdm(
        total=len(subnets) * len(settings), desc="inherited", unit="subnet", disable=None
    ) as bar:
        for epoch, batches_, tune in settings:
            folder = (
                supernet.path
                if epoch == final_epoch
                else os.path.join(supernet.path, f"epoch-{epoch}")
            )
            shared, _ = SharedWeights.load(folder)
            for s in subnets:
                t0 = time.perf_counter()
                acc = shared.score(
                    s["arch"],
                    data,
                    calib_batches=batches_,
                    tune_steps=tune,
                    tune_lr=train.lr / 10,
                )
                seconds.setdefault((epoch, batches_, tune), []).append(time.perf_counter() - t0)
                scores.setdefault((epoch, batches_, tune), []).append(acc)
                bar.update(1)
    if args.sandwich:  # the same epochs, the sandwich rule: its ranking of the same subnets
        from nas.oneshot import train_supernet

        bignas = dataclasses.replace(
            supernet, path=os.path.join(args.work, "supernet-sandwich"), sampling="sandwich"
        )
        sandwich_config = dataclasses.replace(config, supernet=bignas)
        if not os.path.exists(os.path.join(bignas.path, SUPERNET_META)):
            steps = bignas.epochs * -(-len(data.train_y) // train.batch_size)
            with tqdm(
                total=steps * bignas.sandwich_paths,
                desc="supernet (sandwich)",
                unit="path",
                disable=None,
            ) as bar:
                train_supernet(sandwich_config, data, on_step=lambda: bar.update(1))
        shared, _ = SharedWeights.load(bignas.path)
        for s in tqdm(subnets, desc="inherited (sandwich)", unit="subnet", disable=None):
            scores.setdefault(("sandwich",), []).append(
                shared.score(s["arch"], data, calib_batches=calib)
            )
    alone = []
    for s in tqdm(
        subnets, desc=f"from scratch ({args.epochs} epochs)", unit="subnet", disable=None
    ):
        alone.append(standalone.accuracy(s["arch"], args.epochs))
    stand = [a["accuracy"] for a in alone]
    for epoch in kept:
        ranking["by_epoch"][epoch] = taus(scores[epoch, calib, 0], stand)
    ranking["calib_2"] = taus(scores[final_epoch, 2, 0], stand)
    ranking["tuned"] = taus(scores[final_epoch, calib, args.tune_steps], stand)
    ranking["tuned_per_minute"] = 60 / statistics.median(
        seconds[final_epoch, calib, args.tune_steps]
    )
    ranking["params"] = taus([s["params"] for s in subnets], stand)
    if args.sandwich:
        ranking["sandwich"] = taus(scores["sandwich",], stand)
    final = scores[final_epoch, calib, 0]
    for s, inh, a in zip(subnets, final, alone, strict=True):
        ranking["subnets"].append(
            {
                "arch": s["arch"].describe(),
                "params": s["params"],
                "latency_ms": s["latency_ms"],
                "inherited": inh,
                "standalone": a["accuracy"],
                "train_seconds": a["seconds"],
            }
        )
    per_minute = 60 / statistics.median(seconds[final_epoch, calib, 0])
    train_minutes = statistics.median(a["seconds"] for a in alone) / 60

    # 3-4. one-shot search against search from scratch, same space and budget
    one = derived(
        config, args.work, "oneshot", evaluation="supernet", study={"n_trials": args.candidates}
    )
    one_inputs = prepare_inputs(one)
    study = create_or_resume_study(one)
    with tqdm(total=args.candidates, desc="one-shot search", unit="cand", disable=None) as bar:
        bar.update(len(study.trials))
        run_search(
            one,
            study=study,
            inputs=one_inputs,
            on_event=lambda kind, _: bar.update(kind in ("scored", "infeasible")),
            hooks=dashboard_hooks(),
        )
    with tqdm(total=k, desc="retrain best (one-shot)", unit="trial", disable=None) as bar:
        retrained = retrain_best(
            one,
            study,
            one_inputs,
            on_event=lambda kind, _: bar.update(kind == "trained"),
            hooks=dashboard_hooks(),
        )
    one_search_s = wall_seconds(study)
    one_retrain_s = wall_seconds(retrained.study)
    oneshot = {
        "candidates": len(study.trials),
        "scored": sum(t.user_attrs.get("status") == "scored" for t in study.trials),
        "candidates_per_minute": 60 * len(study.trials) / one_search_s,
        "best": [{"trial": s, "inherited": i, "standalone": a} for s, i, _, a in retrained.pairs],
        "supernet_seconds": meta["seconds"],
        "search_seconds": one_search_s,
        "retrain_seconds": one_retrain_s,
    }
    oneshot["best_standalone"] = max(a for *_, a in retrained.pairs if a is not None)
    oneshot["total_seconds"] = meta["seconds"] + one_search_s + one_retrain_s

    sampler_args = {"n_startup_trials": max(3, args.trained // 3), "multivariate": True}
    proxy = dataclasses.replace(train, epochs=args.proxy_epochs)

    def from_scratch(name: str, space: str, **extra: Any) -> dict[str, Any]:
        cfg = derived(
            config,
            args.work,
            name,
            space=space,
            train=proxy,
            evaluation="train",
            study={"sampler": "TPESampler", "sampler_args": sampler_args},
            **extra,
        )
        cfg_inputs = prepare_inputs(cfg)
        with tqdm(
            total=args.trained, desc=f"from scratch: {space}", unit="trained", disable=None
        ) as bar:
            s = run_until(cfg, cfg_inputs, args.trained, bar, max_candidates=20 * args.trained)
        best = retrain_top(s, k, standalone, args.epochs)
        search_s = wall_seconds(s)
        retrain_s = sum(b["seconds"] for b in best)
        return {
            "space": space,
            "candidates": len(s.trials),
            "trained": trained_count(s),
            "best": best,
            "best_standalone": max(b["accuracy"] for b in best),
            "search_seconds": search_s,
            "retrain_seconds": retrain_s,
            "total_seconds": search_s + retrain_s,
        }

    scratch = from_scratch("scratch-supernet-space", "supernet")
    # 5. spaces
    spaces = [
        from_scratch("scratch-survey", "survey"),
        from_scratch("scratch-autoformer", "nni:autoformer", supernet=None),
    ]

    summary = {
        "config": args.config,
        "args": vars(args),
        "cpu": cpu_name(),
        "threads": args.threads,
        "data": data.info(),
        "budget": dataclasses.asdict(config.budget),
        "supernet": {
            "epochs": supernet.epochs,
            "seconds": meta["seconds"],
            "paths": meta["paths_trained"],
            "kept": kept,
            "largest_accuracy": meta["largest_accuracy"],
        },
        "ranking": ranking,
        "scored_per_minute": per_minute,
        "standalone_minutes_median": train_minutes,
        "oneshot": oneshot,
        "scratch": scratch,
        "spaces": spaces,
        "seconds": time.perf_counter() - start,
    }
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(summary, f, indent=2, default=str)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(markdown(summary))
    plot(summary, os.path.join(args.out, "oneshot.png"))
    print(markdown(summary))
    print(
        f"Benchmarked one-shot search in {summary['seconds'] / 60:.1f} min; wrote "
        f"{args.out}/results.json, results.md, oneshot.png (kept in {args.work})"
    )
    return 0


def markdown(s: dict[str, Any]) -> str:
    r, o, sc = s["ranking"], s["oneshot"], s["scratch"]
    sn, a = s["supernet"], s["args"]
    lines = [
        f"One-shot benchmark on {s['data']['name']} {s['data']['input_size']}, budget "
        f"{s['budget']['max_params']:,} params / {s['budget']['max_latency_ms']} ms; CPU "
        f"{s['cpu']}, {s['threads']} threads; {s['seconds'] / 60:.1f} min.",
        "",
        f"Supernet: {sn['epochs']} epochs of SPOS ({sn['paths']} paths) in "
        f"{sn['seconds'] / 60:.1f} min; largest subnet {sn['largest_accuracy']:.4f} inherited.",
        "",
        f"Ranking of {len(r['subnets'])} subnets within the budget, inherited vs from scratch "
        f"({a['epochs']} epochs):",
        "",
        "| inherited weights after | BN recalibration | Kendall tau | p | Spearman rho |",
        "| --- | --- | --- | --- | --- |",
    ]
    for epoch, t in r["by_epoch"].items():
        lines.append(
            f"| {epoch} epochs | 20 batches | {t['kendall_tau']:.3f} | "
            f"{t['tau_p']:.3g} | {t['spearman_rho']:.3f} |"
        )
    t = r["calib_2"]
    lines.append(
        f"| {sn['epochs']} epochs | 2 batches | {t['kendall_tau']:.3f} | "
        f"{t['tau_p']:.3g} | {t['spearman_rho']:.3f} |"
    )
    t = r["tuned"]
    lines.append(
        f"| {sn['epochs']} epochs, then {a['tune_steps']} steps on each subnet alone | 20 "
        f"batches | {t['kendall_tau']:.3f} | {t['tau_p']:.3g} | {t['spearman_rho']:.3f} |"
    )
    if "sandwich" in r:
        t = r["sandwich"]
        lines.append(
            f"| {sn['epochs']} epochs of the sandwich rule with in-place distillation | 20 "
            f"batches | {t['kendall_tau']:.3f} | {t['tau_p']:.3g} | {t['spearman_rho']:.3f} |"
        )
    t = r["params"]
    lines.append(
        f"| (parameter count) | - | {t['kendall_tau']:.3f} | {t['tau_p']:.3g} | "
        f"{t['spearman_rho']:.3f} |"
    )
    lines += [
        "",
        f"Speed: {s['scored_per_minute']:.0f} subnets scored per minute (inherit, recalibrate, "
        f"evaluate; {r['tuned_per_minute']:.0f} with the tuning steps); the one-shot search "
        f"ran {o['candidates_per_minute']:.0f} candidates per "
        f"minute with latency measured; training one from scratch takes "
        f"{s['standalone_minutes_median']:.2f} min (median).",
        "",
        "| search (same space, same budget) | candidates | best stand-alone accuracy | "
        "wall time |",
        "| --- | --- | --- | --- |",
        f"| one-shot: supernet + {o['candidates']} scored + best {len(o['best'])} retrained | "
        f"{o['candidates']} | {o['best_standalone']:.4f} | {o['total_seconds'] / 60:.1f} min "
        f"({o['supernet_seconds'] / 60:.1f} + {o['search_seconds'] / 60:.1f} + "
        f"{o['retrain_seconds'] / 60:.1f}) |",
        f"| from scratch: {sc['trained']} trained ({a['proxy_epochs']}-epoch proxy) + best "
        f"{len(sc['best'])} retrained | {sc['candidates']} | {sc['best_standalone']:.4f} | "
        f"{sc['total_seconds'] / 60:.1f} min ({sc['search_seconds'] / 60:.1f} + "
        f"{sc['retrain_seconds'] / 60:.1f}) |",
        "",
        "| space (from scratch, same engine and budget) | candidates | trained | best "
        "retrained accuracy | its latency |",
        "| --- | --- | --- | --- | --- |",
    ]
    for sp in s["spaces"]:
        top = max(sp["best"], key=lambda b: b["accuracy"])
        lines.append(
            f"| {sp['space']} | {sp['candidates']} | {sp['trained']} | "
            f"{top['accuracy']:.4f} ({top['arch']}) | {top['latency_ms']:.2f} ms |"
        )
    return "\n".join(lines) + "\n"


def plot(s: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = s["ranking"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    inh = [x["inherited"] for x in r["subnets"]]
    alone = [x["standalone"] for x in r["subnets"]]
    ax1.scatter(inh, alone, s=18)
    final = r["by_epoch"][s["supernet"]["epochs"]]
    ax1.set_title(f"{len(inh)} subnets: Kendall tau {final['kendall_tau']:.2f}")
    ax1.set_xlabel("accuracy with inherited weights")
    ax1.set_ylabel("accuracy trained from scratch")
    epochs = [int(e) for e in r["by_epoch"]]
    ax2.plot(epochs, [r["by_epoch"][e]["kendall_tau"] for e in r["by_epoch"]], marker="o")
    ax2.axhline(r["params"]["kendall_tau"], color="grey", ls="--", label="parameter count")
    ax2.set_xlabel("supernet epochs")
    ax2.set_ylabel("Kendall tau")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
