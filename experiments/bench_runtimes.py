"""Benchmark: how much the runtime changes latency, and its ranking. Samples held-out
architectures of a space and measures each one, one after the other, in torch eager (float32)
and on the runtimes it would ship with: ExecuTorch with the XNNPACK delegate in float32 and in
int8 (PT2E), and optionally ONNX Runtime (float32, int8); 1 thread, batch 1, drift-corrected
against the reference model on each runtime. Reports the rank correlation (Kendall tau)
between every pair of runtimes, the int8 / float32 ratio, the nodes left outside XNNPACK, the
architectures a runtime could not take (and why), and all of it by token mixer.

    python experiments/bench_runtimes.py                  # 120 survey architectures, ~4 h here
    python experiments/bench_runtimes.py --quick          # 4 architectures
    python experiments/bench_runtimes.py --runtimes eager executorch executorch-int8 onnxruntime

Resumes: each architecture's row is appended to --work/rows.jsonl when it is measured.
Writes results.json and results.md to --out.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from nas import cost, runtimes
from nas.bench import command_line, set_mode_defaults
from nas.export import deployment_form
from nas.report import write_results
from search_spaces.model import LightViT
from search_spaces.spaces import get_space

RUNTIMES = {  # name: (device, dtype)
    "eager": ("cpu", "float32"),
    "executorch": ("executorch", "float32"),
    "executorch-int8": ("executorch", "int8"),
    "onnxruntime": ("onnxruntime", "float32"),
    "onnxruntime-int8": ("onnxruntime", "int8"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short check (4 architectures)")
    parser.add_argument("--n", type=int, help="architectures (120; quick: 4)")
    parser.add_argument("--space", default="survey", help="search space (survey)")
    parser.add_argument("--img-size", type=int, default=32, help="input side (32)")
    parser.add_argument("--seed", type=int, default=7, help="sampler seed (7: held out)")
    parser.add_argument(
        "--runtimes",
        nargs="+",
        default=["eager", "executorch", "executorch-int8"],
        choices=list(RUNTIMES),
        help="where to measure (eager executorch executorch-int8)",
    )
    parser.add_argument("--max-seconds", type=float, help="time cap of each measurement")
    parser.add_argument("--work", help="where measured rows are kept (resumes)")
    parser.add_argument("--out", help="where results.json and results.md go")
    args = parser.parse_args(argv)
    set_mode_defaults(args, "runtimes", {"n": (4, 120), "max_seconds": (0.5, 2.0)})
    for name in args.runtimes:
        try:
            cost.check_device(*RUNTIMES[name])
        except ValueError as e:
            parser.error(f"--runtimes {name}: {e}")
    os.makedirs(args.work, exist_ok=True)
    rows_path = Path(args.work) / "rows.jsonl"
    rows = _read_rows(rows_path, args)
    space = get_space(args.space)
    archs = space.sample_many(args.n, seed=args.seed, num_classes=10, img_size=args.img_size)
    start = time.perf_counter()
    by_device = {
        device: cost.calibrate_reference(device, 1)
        for device in dict.fromkeys(RUNTIMES[name][0] for name in args.runtimes)
    }
    references = {name: by_device[RUNTIMES[name][0]] for name in args.runtimes}
    settings = {"space": args.space, "img_size": args.img_size, "seed": args.seed}
    bar = tqdm(total=len(archs), initial=len(rows), desc="architectures", disable=None)
    for index, arch in enumerate(archs):
        if index < len(rows):
            continue
        row = measure_row(index, arch, args.runtimes, references, args.max_seconds)
        row.update(settings=settings, runtimes=args.runtimes)
        with open(rows_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        rows.append(row)
        bar.update()
    bar.close()
    summary = summarise(rows, args.runtimes)
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "command": command_line("bench_runtimes.py", argv),
        "machine": f"{cost.cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"executorch {runtimes.executorch_version()}",
        "space": f"{args.space} v{space.version}, {args.img_size}px, seed {args.seed}",
        "n": len(rows),
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_results(
        args.out,
        {"meta": meta, "summary": summary, "rows": rows},
        results_md(summary, meta, args.runtimes),
    )
    print(
        f"bench_runtimes: {len(rows)} architecture(s) on {', '.join(args.runtimes)} in "
        f"{meta['seconds'] / 60:.1f} min; wrote {args.out}/results.md"
    )
    return 0


def _read_rows(path: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The rows measured so far, if they were measured with these settings."""
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    settings = {"space": args.space, "img_size": args.img_size, "seed": args.seed}
    if rows and (rows[0].get("settings") != settings or rows[0].get("runtimes") != args.runtimes):
        sys.exit(
            f"bench_runtimes: {path} holds rows of other settings ({rows[0].get('settings')}, "
            f"{rows[0].get('runtimes')}): pass another --work, or delete it"
        )
    return rows


def measure_row(
    index: int,
    arch: Any,
    names: list[str],
    references: dict[str, cost.Reference],
    max_seconds: float,
) -> dict[str, Any]:
    """One architecture measured on every runtime of `names`, one after the other."""
    torch.manual_seed(index)
    model = deployment_form(LightViT(arch).eval())
    row: dict[str, Any] = {
        "index": index,
        "arch": arch.describe(),
        "mixers": sorted({s.mixer for s in arch.stages}),
        "params": cost.count_params(model),
        "latency_ms": {},
        "seconds": {},
        "not_deployable": {},
        "delegation": {},
    }
    for name in names:
        device, dtype = RUNTIMES[name]
        started = time.perf_counter()
        try:
            result = cost.measure_latency(
                model,
                (arch.in_chans, arch.img_size, arch.img_size),
                device=device,
                dtype=dtype,
                threads=1,
                max_seconds=max_seconds,
                reference=references.get(name),
            )
        except runtimes.NotDeployable as e:
            row["not_deployable"][name] = e.reason
        else:
            row["latency_ms"][name] = result.median_ms
            if "delegation" in result.conditions:
                row["delegation"][name] = result.conditions["delegation"]
        row["seconds"][name] = round(time.perf_counter() - started, 2)
    return row


def _tau(a: list[float], b: list[float]) -> float:
    from scipy.stats import kendalltau

    return round(float(kendalltau(a, b).statistic), 4)


def summarise(rows: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    everywhere = [r for r in rows if all(n in r["latency_ms"] for n in names)]
    pairs = {}
    for a, b in itertools.combinations(names, 2):
        if len(everywhere) >= 3:
            pairs[f"{a} vs {b}"] = _tau(
                [r["latency_ms"][a] for r in everywhere], [r["latency_ms"][b] for r in everywhere]
            )
    per_runtime = {}
    for n in names:
        measured = [r for r in rows if n in r["latency_ms"]]
        reasons = collections.Counter(
            r["not_deployable"][n] for r in rows if n in r["not_deployable"]
        )
        entry: dict[str, Any] = {
            "measured": len(measured),
            "not_deployable": sum(reasons.values()),
            "reasons": dict(reasons.most_common(5)),
            "median_ms": round(statistics.median(r["latency_ms"][n] for r in measured), 4)
            if measured
            else None,
            "median_seconds": round(statistics.median(r["seconds"][n] for r in rows), 2),
        }
        delegated = [r["delegation"][n] for r in measured if n in r["delegation"]]
        if delegated:
            entry["fallback_share"] = round(
                statistics.median(
                    d["fallback"] / (d["fallback"] + d["delegated"]) for d in delegated
                ),
                4,
            )
            ops = collections.Counter()
            for d in delegated:
                ops.update(d["fallback_ops"])
            entry["fallback_ops"] = dict(ops.most_common(6))
        per_runtime[n] = entry
    by_mixer: dict[str, dict[str, Any]] = {}
    base = names[0]
    for mixer in sorted({m for r in rows for m in r["mixers"]}):
        with_mixer = [r for r in everywhere if mixer in r["mixers"]]
        if not with_mixer:
            continue
        by_mixer[mixer] = {
            "n": len(with_mixer),
            **{
                f"{n} / {base}": round(
                    statistics.median(
                        r["latency_ms"][n] / r["latency_ms"][base] for r in with_mixer
                    ),
                    3,
                )
                for n in names[1:]
            },
        }
    ratio = None
    if "executorch" in names and "executorch-int8" in names and everywhere:
        ratio = round(
            statistics.median(
                r["latency_ms"]["executorch-int8"] / r["latency_ms"]["executorch"]
                for r in everywhere
            ),
            3,
        )
    return {
        "on_every_runtime": len(everywhere),
        "kendall_tau": pairs,
        "runtimes": per_runtime,
        "by_mixer": by_mixer,
        "int8_over_float32_executorch": ratio,
    }


def results_md(s: dict[str, Any], meta: dict[str, Any], names: list[str]) -> str:
    lines = [
        f"Runtimes ({meta['date']}; `{meta['command']}`; {meta['machine']}): {meta['n']} "
        f"architectures of {meta['space']}, 1 thread, batch 1, drift-corrected on each "
        f"runtime; {s['on_every_runtime']} ran on every runtime.",
        "",
        "| runtime | measured | not deployable | median latency | median fallback share "
        "| median time to lower and measure |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for n in names:
        r = s["runtimes"][n]
        median = f"{r['median_ms']:.3f} ms" if r["median_ms"] is not None else "-"
        share = f"{r['fallback_share']:.1%}" if "fallback_share" in r else "-"
        lines.append(
            f"| {n} | {r['measured']} | {r['not_deployable']} | {median} | {share} | "
            f"{r['median_seconds']:.1f} s |"
        )
    lines += ["", "Rank correlation of latency (Kendall tau, architectures on every runtime):", ""]
    lines += [f"- {pair}: {tau:.3f}" for pair, tau in s["kendall_tau"].items()]
    if s["by_mixer"]:
        ratios = [f"{n} / {names[0]}" for n in names[1:]]
        lines += [
            "",
            f"Median latency ratio to {names[0]}, by token mixer (architectures using it):",
            "",
            "| mixer | n | " + " | ".join(ratios) + " |",
            "| --- | ---: | " + " | ".join("---:" for _ in ratios) + " |",
        ]
        for mixer, m in s["by_mixer"].items():
            lines.append(
                f"| {mixer} | {m['n']} | " + " | ".join(f"{m[k]:.2f}" for k in ratios) + " |"
            )
    if s["int8_over_float32_executorch"] is not None:
        lines += [
            "",
            f"ExecuTorch int8 / float32 latency, median: {s['int8_over_float32_executorch']:.2f}.",
        ]
    for n in names:
        reasons = s["runtimes"][n]["reasons"]
        if reasons:
            lines += ["", f"Not deployable on {n}:"] + [f"- {k} ({v})" for k, v in reasons.items()]
        ops = s["runtimes"][n].get("fallback_ops")
        if ops:
            lines += [
                "",
                f"Nodes left outside XNNPACK on {n} (all architectures): "
                + ", ".join(f"{k} {v}" for k, v in ops.items()),
            ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
