"""Reading a finished study: the table of its Pareto front and the Pareto-front plot."""

from __future__ import annotations

import json
import os
from typing import Any

import optuna
from optuna.trial import TrialState

from nas.records import Status, TrialRecord, confirmed_accuracy, fail_reason, nondominated

__all__ = [
    "drift_line",
    "load_baselines",
    "TrialRecord",
    "records",
    "pareto_front",
    "nondominated",
    "hypervolume",
    "front_table",
    "pareto_plot",
]


def write_results(out: str, payload: dict[str, Any], markdown: str) -> None:
    """A benchmark's results under `out`: results.json (everything it measured) and
    results.md (its table), each written whole or not at all; the table is printed."""
    os.makedirs(out, exist_ok=True)
    for name, text in (("results.json", json.dumps(payload, indent=1)), ("results.md", markdown)):
        path = os.path.join(out, name)
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
    print(markdown)


def records(study: optuna.Study) -> list[TrialRecord]:
    """Every finished trial that got as far as a cost measurement."""
    states = (TrialState.COMPLETE, TrialState.PRUNED)
    recs = map(TrialRecord.of, study.get_trials(deepcopy=False, states=states))
    return [r for r in recs if r.costs]


def pareto_front(study: optuna.Study) -> list[TrialRecord]:
    """The trained trials within the budgets (those checked before training, and the int8
    drop budget checked after) that no other such trial beats on both accuracy and latency,
    best accuracy first; the same in single and multi mode."""
    trained = (Status.TRAINED, Status.SCORED)  # a duplicate's architecture is listed once
    return nondominated(
        [
            r
            for r in records(study)
            if r.accuracy is not None
            and r.status in trained
            and (r.attrs.get("int8") or {}).get("within_budget", True)
        ]
    )


def hypervolume(points: list[tuple[float, float]], max_latency_ms: float) -> float:
    """Area dominated by (accuracy, latency) points, bounded by accuracy 0 and the latency
    budget (the reference point): in accuracy x ms, higher is better."""
    area, best = 0.0, 0.0
    inside = sorted((lat, acc) for acc, lat in points if lat < max_latency_ms)
    edges = [lat for lat, _ in inside] + [max_latency_ms]
    for (lat, acc), right in zip(inside, edges[1:], strict=True):
        best = max(best, acc)
        area += best * (right - lat)
    return area


def load_baselines(path: str) -> list[dict[str, Any]]:
    """Reference models to draw beside a study's front: a CSV with columns name, latency_ms,
    accuracy (measured the way the study measures). Raises ValueError naming the problem."""
    import csv

    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for i, row in enumerate(rows, 2):
        try:
            out.append(
                {
                    "name": row["name"],
                    "latency_ms": float(row["latency_ms"]),
                    "accuracy": float(row["accuracy"]),
                }
            )
        except (KeyError, TypeError, ValueError):
            raise ValueError(
                f"{path} line {i}: needs columns name, latency_ms, accuracy with numbers"
            ) from None
    return out


def _si(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.1f}{unit}"
    return f"{n:.0f}"


def flops(r: TrialRecord) -> str:
    """A trial's FLOPs for a table, `-` where none were counted (a tabular benchmark's)."""
    return _si(r.flops) if "flops" in r.costs else "-"


def front_table(study: optuna.Study) -> str:
    """The Pareto front as a fixed-width table, one architecture per line."""
    recs = records(study)
    front = pareto_front(study)
    trained = sum(r.status in (Status.TRAINED, Status.SCORED) for r in recs)
    kinds = (Status.STOPPED, Status.SCREENED, Status.DUPLICATE)
    counts = {s: sum(r.status is s for r in recs) for s in kinds}
    others = "".join(f", {n} {s.words}" for s, n in counts.items() if n)
    infeasible = sum(r.status is Status.INFEASIBLE for r in recs)
    confirmed = {r.number: confirmed_accuracy(study, r) for r in front}
    shown = any(confirmed.values())
    objectives = (study.user_attrs.get("config") or {}).get("study", {}).get("objectives")
    int8 = bool(objectives) and objectives[0] == "accuracy_int8"
    lines = [
        f"Pareto front of study '{study.study_name}' ({'int8 ' if int8 else ''}accuracy up, "
        f"latency down): {len(front)} of {trained} trained trials; {infeasible} "
        f"{Status.INFEASIBLE.words}{others}",
        f"{'trial':>5}  {'int8 acc' if int8 else 'val acc':>7}  "
        + (f"{'confirmed, mean ± sd (n)':>24}  " if shown else "")
        + f"{'latency':>10}  {'params':>7}  {'FLOPs':>7}  architecture",
    ]
    for r in front:
        c = confirmed[r.number]
        mean = f"{c[0]:.4f} ± {c[1]:.4f} ({c[2]})" if c else "-"
        lines.append(
            f"{r.number:>5}  {r.accuracy:>7.4f}  "
            + (f"{mean:>24}  " if shown else "")
            + f"{r.latency_ms:>7.3f} ms  {_si(r.params):>7}  {flops(r):>7}  {r.arch_line}"
        )
    if not front:
        lines.append("  (no trained trial yet: loosen the budgets or run more trials)")
    return "\n".join(lines)


def latency_label(study: optuna.Study) -> str:
    """What the latency axis shows: the device, threads and batch, measured or predicted."""
    config = study.user_attrs.get("config", {})
    lat, budget = config.get("latency", {}), config.get("budget", {})
    if config.get("evaluation") == "table":
        return f"latency as NAS-Bench-201 records it (ms, its GPU; table {config.get('table')})"
    source = budget.get("latency_source", "measured")
    how = "predicted by a lookup table" if isinstance(source, dict) else "measured, median"
    return (
        f"latency on {lat.get('device', 'cpu')}, {lat.get('threads', 1)} thread(s), batch "
        f"{lat.get('batch_size', 1)} (ms, {how})"
    )


def _budgets(study: optuna.Study) -> dict[str, Any]:
    return study.user_attrs.get("config", {}).get("budget", {})


def pareto_plot(
    study: optuna.Study, path: str, baselines: list[dict[str, Any]] | None = None
) -> str:
    """Accuracy against latency for trained trials (params as colour, the front joined, the
    budgets drawn, exported trials starred with their folder's name, `baselines` (dicts with
    name, latency_ms, accuracy) as labelled diamonds); infeasible candidates shown apart in a
    strip below, at their latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    recs = records(study)
    trained = [r for r in recs if r.accuracy is not None]
    rejected = [r for r in recs if r.status is Status.INFEASIBLE]
    front = sorted(pareto_front(study), key=lambda r: r.latency_ms)
    budget = _budgets(study)
    params = [r.params for r in recs] or [1]
    if budget.get("max_params") is not None:
        params.append(budget["max_params"])  # keep the budget line inside the colour bar
    norm = LogNorm(vmin=min(params), vmax=max(max(params), min(params) + 1))

    fig, (ax, ax_rej) = plt.subplots(
        2, 1, figsize=(8, 6), sharex=True, gridspec_kw={"height_ratios": [5, 1], "hspace": 0.08}
    )
    points = ax.scatter(
        [r.latency_ms for r in trained],
        [r.accuracy for r in trained],
        c=[r.params for r in trained],
        cmap="viridis",
        norm=norm,
        s=40,
        edgecolors="black",
        linewidths=0.5,
        label="trained (feasible)",
        zorder=3,
    )
    if front:
        ax.step(
            [r.latency_ms for r in front],
            [r.accuracy for r in front],
            where="post",
            color="tab:orange",
            lw=1.5,
            label="Pareto front",
            zorder=2,
        )
        _label(ax, [(r.latency_ms, r.accuracy, f"#{r.number}") for r in front], (4, 4))
    ax_rej.scatter(
        [r.latency_ms for r in rejected],
        [0.0] * len(rejected),
        c=[r.params for r in rejected],
        cmap="viridis",
        norm=norm,
        marker="x",
        s=40,
        label="infeasible: over a budget (not trained)",
    )
    ax_rej.set_yticks([])
    ax_rej.set_ylabel("infeasible", rotation=0, ha="right", va="center")
    for axis in (ax, ax_rej):
        if budget.get("max_latency_ms") is not None:
            axis.axvline(
                budget["max_latency_ms"],
                color="tab:red",
                ls="--",
                lw=1.2,
                label="latency budget" if axis is ax else None,
            )
    ax.set_ylabel("validation accuracy")
    ax_rej.set_xlabel(latency_label(study))
    ax.set_title(f"{study.study_name}: {len(trained)} trained, {len(rejected)} infeasible")
    exported = {int(k): v for k, v in study.user_attrs.get("exports", {}).items()}
    marked = [r for r in trained if r.number in exported]
    if marked:
        ax.scatter(
            [r.latency_ms for r in marked],
            [r.accuracy for r in marked],
            marker="*",
            s=260,
            facecolors="none",
            edgecolors="tab:red",
            linewidths=1.5,
            label="exported",
            zorder=4,
        )
        _label(
            ax,
            [
                (r.latency_ms, r.accuracy, os.path.basename(os.path.normpath(exported[r.number])))
                for r in marked
            ],
            (6, -12),
            color="tab:red",
        )
    if baselines:
        ax.scatter(
            [b["latency_ms"] for b in baselines],
            [b["accuracy"] for b in baselines],
            marker="D",
            s=50,
            color="black",
            label="baselines",
            zorder=4,
        )
        _label(ax, [(b["latency_ms"], b["accuracy"], b["name"]) for b in baselines], (5, 3))
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    h2, l2 = ax_rej.get_legend_handles_labels()
    ax.legend(handles + h2, labels + l2, loc="lower right", fontsize=8)
    bar = fig.colorbar(points, ax=[ax, ax_rej], label="parameters")
    if budget.get("max_params") is not None:
        bar.ax.axhline(budget["max_params"], color="tab:red", ls="--", lw=2)
        bar.ax.text(
            1.05,
            budget["max_params"],
            " budget",
            transform=bar.ax.get_yaxis_transform(),
            color="tab:red",
            va="center",
            fontsize=7,
            clip_on=False,
        )
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _label(
    ax: Any, points: list[tuple[float, float, str]], offset: tuple[int, int], **style: Any
) -> None:
    """Small text labels beside plotted points."""
    for x, y, text in points:
        ax.annotate(text, (x, y), textcoords="offset points", xytext=offset, fontsize=7, **style)


def drift_line(study: optuna.Study) -> str | None:
    """The machine's drift over the search, from the reference model timed beside every
    candidate (`latency.normalise`), and how many candidates near the latency budget were
    measured again; None for studies measured without a reference."""
    import statistics

    reference = study.user_attrs.get("latency_reference")
    costs = [TrialRecord.of(t).costs for t in study.get_trials(deepcopy=False)]
    drifts = [c["latency"]["drift"] for c in costs if c.get("latency", {}).get("drift")]
    if reference is None or not drifts:
        return None
    again = [c["latency_boundary"] for c in costs if "latency_boundary" in c]
    line = (
        f"latency drift: the reference model ran at {min(drifts):.2f}-{max(drifts):.2f}x "
        f"(median {statistics.median(drifts):.2f}x) its calibrated {reference['ms']:.4f} ms "
        f"over {len(drifts)} measurements; figures are drift-corrected"
    )
    if again:
        rejected = sum(b["decision"] == "rejected" for b in again)
        line += (
            f"; {len(again)} near the budget measured again ({len(again) - rejected} "
            f"admitted, {rejected} rejected)"
        )
    return line


def _saved_line(recs: list[TrialRecord], config: dict[str, Any]) -> str:
    """What de-duplication and stopping saved: trainings not repeated, epochs not trained."""
    duplicates = sum(r.status is Status.DUPLICATE for r in recs)
    stopped = [r for r in recs if r.status is Status.STOPPED]
    if not duplicates and not stopped:
        return ""
    longest = max((len(r.curve) for r in recs if r.status is Status.TRAINED), default=0)
    looked_up = config.get("evaluation") == "table"  # the table's epochs, not the recipe's
    epochs = longest if looked_up else config.get("train", {}).get("epochs") or longest
    parts = []
    if duplicates:
        parts.append(
            f"{duplicates} training{'s' * (duplicates != 1)} by reusing an architecture "
            "trained before"
        )
    if stopped and epochs:
        paid = sum(len(r.curve) for r in stopped)
        full = epochs * sum(r.status in (Status.TRAINED, Status.STOPPED) for r in recs)
        parts.append(
            f"{len(stopped) * epochs - paid} epochs by stopping {len(stopped)} "
            f"candidate{'s' * (len(stopped) != 1)} early "
            f"({(len(stopped) * epochs - paid) / full:.0%} of {full} had all trained in full)"
        )
    return "saved: " + "; ".join(parts)


def study_summary(study: optuna.Study) -> str:
    """`lvit status`: trials by state and by outcome, the best feasible trial, the front and
    its hypervolume, and the time spent."""
    config = study.user_attrs.get("config", {})
    study_cfg = config.get("study", {})
    trials = study.get_trials(deepcopy=False)
    by_state = {s.name: 0 for s in TrialState}
    for t in trials:
        by_state[t.state.name] += 1
    recs = records(study)
    outcomes: dict[str, int] = {}
    for r in recs:
        outcomes[r.status] = outcomes.get(r.status, 0) + 1
    mode = study_cfg.get("mode", "multi")
    objectives = (
        ["accuracy"]
        if mode == "single"
        else (study_cfg.get("objectives") or ["accuracy", "latency_ms"])
    )
    lines = [
        f"study '{study.study_name}': space {study.user_attrs.get('space', {}).get('name', '?')}, "
        f"mode {mode} ({', '.join(objectives)}), sampler {study_cfg.get('sampler', '?')}"
        + (f", pruner {study_cfg['pruner']}" if study_cfg.get("pruner") else ""),
        "trials: "
        + ", ".join(f"{n} {s.lower()}" for s, n in by_state.items() if n)
        + f" of {study_cfg.get('n_trials', '?')} candidates asked for",
        "outcomes: " + (", ".join(f"{n} {s}" for s, n in sorted(outcomes.items())) or "none yet"),
    ]
    saved = _saved_line(recs, config)
    if saved:
        lines.append(saved)
    front = pareto_front(study)
    if front:
        best = front[0]
        lines.append(
            f"best feasible: trial {best.number}, validation accuracy {best.accuracy:.4f}, "
            f"{best.latency_ms:.3f} ms, {best.params:,} params, {best.arch_line}"
        )
        confirmed = {r.number: c for r in front if (c := confirmed_accuracy(study, r)) is not None}
        if confirmed:  # the best by the confirmed mean, and the search's optimism about it
            number = max(confirmed, key=lambda n: confirmed[n][0])
            mean, sd, n = confirmed[number]
            chosen = next(r for r in front if r.number == number)
            line = (
                f"best by confirmed mean: trial {number}, {mean:.4f} ± {sd:.4f} over {n} "
                f"trainings ({chosen.latency_ms:.3f} ms)"
            )
            if best.number in confirmed:  # the winner's curse
                line += (
                    f"; the search's best scored {best.accuracy:.4f} once, "
                    f"{confirmed[best.number][0]:.4f} on average"
                )
            lines.append(line)
        budget = _budgets(study).get("max_latency_ms")
        ref = budget if budget is not None else max(r.latency_ms for r in recs) * 1.1
        area = hypervolume([(r.accuracy, r.latency_ms) for r in front], ref)
        lines.append(
            f"Pareto front: {len(front)} trials; hypervolume {area:.4g} (accuracy x ms, up to "
            f"{ref:.3g} ms)"
        )
    else:
        lines.append("best feasible: none yet")
    drift = drift_line(study)
    if drift:
        lines.append(drift)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    for t in failed[-3:]:
        lines.append(f"failed: trial {t.number}: {fail_reason(t)}")
    if len(failed) > 3:
        lines.append(f"  ({len(failed) - 3} earlier failed trials not shown)")
    spans = [
        (t.datetime_start, t.datetime_complete)
        for t in trials
        if t.datetime_start is not None and t.datetime_complete is not None
    ]
    if spans:
        busy = sum((end - start).total_seconds() for start, end in spans)
        first, last = min(s for s, _ in spans), max(e for _, e in spans)
        training = sum(TrialRecord.of(t).train.get("seconds", 0.0) for t in trials)
        # a looked-up candidate's training seconds are its table's, spent when it was built
        looked_up = config.get("evaluation") == "table"
        what = "training, as the table records it" if looked_up else "training"
        lines.append(
            f"time: {busy / 60:.1f} min in trials ({training / 60:.1f} min {what}), "
            f"from {first:%Y-%m-%d %H:%M} to {last:%H:%M}"
        )
    return "\n".join(lines)
