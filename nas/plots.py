"""The report's pictures, with matplotlib (Agg, no display): hypervolume history, parameter
importances, and a drawing of one architecture. `nas.report.pareto_plot` draws the front."""

from __future__ import annotations

import os
import warnings
from typing import Any

import optuna

from nas.records import TrialRecord
from nas.report import hypervolume, nondominated, records
from search_spaces.arch import ATTENTION_MIXERS, MIXER_SPECS, ArchConfig, mixer_label

__all__ = [
    "hypervolume_history",
    "hypervolume_plot",
    "importance_plot",
    "arch_plot",
    "confusion_plot",
    "write_report",
]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path


def hypervolume_history(study: optuna.Study, max_latency_ms: float) -> list[tuple[int, float]]:
    """(trial number, hypervolume of the front of the trained trials so far) for every finished
    trial, in trial order."""
    recs = sorted(records(study), key=lambda r: r.number)
    out, trained = [], []
    for r in recs:
        if r.accuracy is not None:
            trained.append(r)
        front = nondominated(trained)
        out.append(
            (r.number, hypervolume([(f.accuracy, f.latency_ms) for f in front], max_latency_ms))
        )
    return out


def reference_latency(study: optuna.Study) -> float:
    """The latency bound of the hypervolume: the budget, else 1.1 x the slowest trial."""
    budget = study.user_attrs.get("config", {}).get("budget", {}).get("max_latency_ms")
    if budget is not None:
        return float(budget)
    lat = [r.latency_ms for r in records(study)]
    return 1.1 * max(lat) if lat else 1.0


def hypervolume_plot(study: optuna.Study, path: str) -> str:
    """Hypervolume of the feasible front (accuracy x ms under the latency budget) after each
    finished trial; rejected, stopped and screened trials leave it flat."""
    plt = _pyplot()
    ref = reference_latency(study)
    history = hypervolume_history(study, ref)
    fig, ax = plt.subplots(figsize=(7, 4))
    if history:
        ax.step([n for n, _ in history], [h for _, h in history], where="post", lw=2)
    ax.set_xlabel("trial number")
    ax.set_ylabel(f"hypervolume (accuracy x ms up to {ref:.3g} ms)")
    ax.set_title(f"{study.study_name}: hypervolume of the feasible front")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def importance_plot(study: optuna.Study, path: str) -> tuple[str, dict[str, float]]:
    """Optuna's parameter importances (fANOVA) for validation accuracy, over the trained trials
    and the parameters they all share. Returns the path and the importances."""
    plt = _pyplot()
    trained = [
        t
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if t.values
    ]
    importances: dict[str, float] = {}
    if len(trained) >= 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                importances = optuna.importance.get_param_importances(
                    study, target=lambda t: t.values[0]
                )
            except (RuntimeError, ValueError):  # no shared parameters, or constant accuracy
                importances = {}
    fig, ax = plt.subplots(figsize=(7, 0.45 * max(3, len(importances)) + 1.2))
    if importances:
        names = list(importances)[::-1]
        ax.barh(names, [importances[n] for n in names], color="tab:blue")
        ax.set_xlabel("importance for validation accuracy (fANOVA, sums to 1)")
    else:
        ax.text(0.5, 0.5, "not enough trained trials", ha="center", va="center")
        ax.set_axis_off()
    ax.set_title(f"{study.study_name}: parameter importances ({len(trained)} trained trials)")
    fig.tight_layout()
    return _save(fig, path), importances


def arch_plot(arch: ArchConfig, path: str, title: str = "") -> str:
    """A drawing of `arch`: input, stem, position encoding, each stage as a box as tall as its
    width is wide and as long as it is deep (mixer, depth, width, heads, MLP ratio, token
    reduction, downsampling), the exits under the blocks they follow, and the head."""
    plt = _pyplot()
    from matplotlib.patches import FancyBboxPatch

    fig, ax = plt.subplots(figsize=(max(7, 2.2 * (len(arch.stages) + 3)), 3.6))
    widest = max(s.dim for s in arch.stages)
    x = 0.0

    def box(width: float, height: float, colour: str, text: str) -> None:
        nonlocal x
        ax.add_patch(
            FancyBboxPatch(
                (x, -height / 2),
                width,
                height,
                boxstyle="round,pad=0.02",
                fc=colour,
                ec="black",
                lw=0.8,
            )
        )
        ax.text(x + width / 2, 0, text, ha="center", va="center", fontsize=8)
        x += width + 0.35

    box(1.0, 1.0, "#eeeeee", f"input\n{arch.in_chans}x{arch.img_size}x{arch.img_size}")
    box(1.2, 1.2, "#cccccc", f"stem\n{arch.stem}/{arch.patch_size}")
    box(1.2, 0.8, "#f2e6a6", f"pos enc\n{arch.pos_enc}")
    block = 0
    grid = arch.img_size // arch.patch_size
    for i, s in enumerate(arch.stages, 1):
        if s.downsample:
            grid = (grid + 1) // 2
        lines = [f"stage {i}: {mixer_label(s)}"]
        lines.append(
            f"{s.depth} x {s.dim}" + (f", {s.heads} heads" if s.mixer in ATTENTION_MIXERS else "")
        )
        lines.append(f"MLP x{s.mlp_ratio:g}, grid {grid}x{grid}" + (" ↓" if s.downsample else ""))
        if s.merge_r:
            lines.append(f"ToMe r={s.merge_r}")
        if s.keep_rate < 1:
            lines.append(f"EViT keep {s.keep_rate:g}")
        width = 1.3 + 0.35 * s.depth
        height = 0.9 + 1.3 * s.dim / widest
        start = x
        box(
            width,
            height,
            (MIXER_SPECS[s.mixer].colour if s.mixer in MIXER_SPECS else "#999999"),
            "\n".join(lines),
        )
        for e in arch.exits:
            if block < e <= block + s.depth:
                at = start + width * (e - block) / s.depth
                ax.annotate(
                    f"exit@{e}",
                    (at, -height / 2),
                    (at, -1.6),
                    ha="center",
                    fontsize=7,
                    arrowprops={"arrowstyle": "<-", "lw": 0.8},
                )
        block += s.depth
    head = "head" + ("\n+ distill head" if arch.distill_head else "")
    box(1.2, 0.8, "#eeeeee", f"{head}\n{arch.num_classes} classes")
    ax.set_xlim(-0.3, x)
    ax.set_ylim(-2.0, 1.6)
    ax.set_axis_off()
    ax.set_title(title or arch.describe(), fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def write_report(
    study: optuna.Study,
    out: str,
    trial: int | None = None,
    baselines: list[dict[str, Any]] | None = None,
) -> dict[str, str]:
    """Every picture of the report and `report.md` tying them together with the front's table;
    the architecture drawn is `trial`'s (default: the most accurate on the front); `baselines`
    are drawn on the Pareto plot."""
    from nas.report import front_table, pareto_front, pareto_plot, study_summary

    os.makedirs(out, exist_ok=True)
    paths = {
        "pareto": pareto_plot(study, os.path.join(out, "pareto.png"), baselines),
        "hypervolume": hypervolume_plot(study, os.path.join(out, "hypervolume.png")),
    }
    paths["importances"], importances = importance_plot(
        study, os.path.join(out, "importances.png")
    )
    front = pareto_front(study)
    chosen = trial if trial is not None else (front[0].number if front else None)
    arch_line = ""
    if chosen is not None:
        record = TrialRecord.of(study.trials[chosen])
        if record.arch is None and not record.attrs.get("table"):
            raise ValueError(f"trial {chosen} has no architecture recorded")
    if chosen is not None and record.arch is None:  # a tabular benchmark's cell: its string
        arch_line = f"\n## Architecture of trial {chosen}\n\n`{record.arch_line}`\n"
    elif chosen is not None:
        arch = ArchConfig.from_dict(dict(record.arch))
        paths["arch"] = arch_plot(
            arch, os.path.join(out, f"arch-{chosen}.png"), f"trial {chosen}: {arch.describe()}"
        )
        arch_line = f"\n## Architecture of trial {chosen}\n\n`{arch.describe()}`\n\n" + (
            f"![architecture](arch-{chosen}.png)\n"
        )
    top = ", ".join(f"{k} {v:.2f}" for k, v in list(importances.items())[:5]) or "not enough data"
    text = f"""# Search report: `{study.study_name}`

```
{study_summary(study)}
```

## Pareto front

![Pareto front](pareto.png)

```
{front_table(study)}
```

## Hypervolume over the search

![hypervolume](hypervolume.png)

## What mattered for accuracy

Parameter importances (fANOVA over the trained trials): {top}.

![importances](importances.png)
{arch_line}"""
    paths["report"] = os.path.join(out, "report.md")
    with open(paths["report"], "w") as f:
        f.write(text)
    return paths


def confusion_plot(
    confusion: list[list[int]], classes: list[str], path: str, title: str = ""
) -> str:
    """The confusion matrix as a picture: rows the true class, columns the predicted one,
    each cell the share of its row (the count written in it when there is room)."""
    import numpy as np

    plt = _pyplot()
    counts = np.asarray(confusion, dtype=float)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    n = len(counts)
    side = min(14.0, 3.0 + 0.45 * n)
    fig, ax = plt.subplots(figsize=(side, side * 0.9))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    labels = classes if len(classes) == n else [str(i) for i in range(n)]
    if n <= 30:
        ax.set_xticks(range(n), labels, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(n), labels, fontsize=8)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    colour = "white" if shares[i, j] > 0.5 else "black"
                    ax.text(
                        j,
                        i,
                        f"{int(counts[i, j])}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color=colour,
                    )
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
