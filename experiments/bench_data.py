"""Benchmark: how fast data reaches training, and how much memory it takes, at real sizes.

One fixed candidate of about 200k parameters, trained with the `proxy` recipe, fed from:
digits (cached in memory), Fashion-MNIST (cached), a generated folder of 50,000 64x64 JPEGs
(streamed by 1 and by 2 DataLoader workers, and cached) and a generated folder of 5,000
256x256 JPEGs read at 224px (streamed by 2 workers). For each: training images per second
(after a warm-up), the share of the time spent waiting for batches, the loader alone (images
per second with no model), and the peak memory of the whole process tree (PSS: the main
process and its loader workers, shared pages counted once), sampled every 20 ms from before
the data is read to the end. The whole folder decoded as float32 is printed beside it.

    python experiments/bench_data.py            # about 25 minutes on the 2-core machine
    python experiments/bench_data.py --quick    # every case on smaller folders, ~3 minutes

Writes results.json and results.md to --out. Timings are noisy on a shared machine: the cases
run one after another in one process, each for a fixed number of batches.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from nas.config import DataConfig, TrainConfig
from nas.cost import count_params
from nas.data import load_dataset
from nas.loader import train_batches
from nas.report import write_results
from nas.train import resize
from search_spaces.arch import ArchConfig
from search_spaces.model import LightViT

# A survey-space architecture of about 200k parameters (a conv stem, a depthwise-conv stage
# and an attention stage on the halved grid), shared with bench_recipe.py.
CANDIDATE = ArchConfig.from_dict(
    json.loads((Path(__file__).parent / "archs" / "hybrid-200k.json").read_text())
)


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
    except (OSError, StopIteration):
        return 0


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            continue
    return pids


class PeakMemory:
    """The peak PSS of this process and its descendants, sampled in a thread."""

    def __init__(self, every: float = 0.02) -> None:
        self.every, self.peak, self.main_peak = every, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            sizes = {p: _pss_kib(p) for p in _tree(me)}
            self.peak = max(self.peak, sum(sizes.values()))
            self.main_peak = max(self.main_peak, sizes.get(me, 0))
            time.sleep(self.every)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def make_folder(root: Path, n: int, size: int, classes: int = 10) -> Path:
    """`n` JPEGs of `size` x `size` in `classes` class folders: a class colour under noise.
    Reused when it is already there."""
    from PIL import Image

    done = root / ".complete"
    if done.is_file() and int(done.read_text()) == n:
        return root
    rng = np.random.default_rng(0)
    colours = rng.integers(40, 216, size=(classes, 3))
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
    for i in tqdm(range(n), desc=f"generating {root.name}", unit="img", disable=None):
        c = i % classes
        noise = rng.normal(0, 40, size=(size, size, 3))
        pixels = np.clip(colours[c] + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.jpg", quality=90)
    done.write_text(str(n))
    return root


def tree_pss_mib() -> float:
    return sum(_pss_kib(p) for p in _tree(os.getpid())) / 1024


def run_case(
    name: str,
    cfg: DataConfig,
    steps: int,
    warmup: int,
    batch_size: int,
    threads: int,
    recipe: str = "proxy",
) -> dict[str, Any]:
    """Read the data as `cfg` says and pass over the training split once with the loader
    alone, then train the candidate for `warmup` + `steps` batches with `recipe`; the peak
    memory of each phase over the process's own before it (torch and the libraries)."""
    torch.set_num_threads(threads)
    train_cfg = TrainConfig(recipe=recipe, batch_size=batch_size, device="cpu", threads=threads)
    base = tree_pss_mib()
    with PeakMemory() as data_memory:
        start = time.perf_counter()
        data = load_dataset(cfg)
        load_seconds = time.perf_counter() - start
        batches = train_batches(data, train_cfg, torch.device("cpu"), seed=0)
        path = batches.path
        start, seen = time.perf_counter(), 0
        for _, yb in tqdm(batches, desc=f"{name}: loader alone", disable=None, leave=False):
            seen += len(yb)
        loader_rate = seen / (time.perf_counter() - start)
    arch = ArchConfig.from_dict(
        {**CANDIDATE.to_dict(), "img_size": cfg.img_size, "num_classes": data.num_classes}
    )
    model = LightViT(arch).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    done, images = 0, 0
    bar = tqdm(total=warmup + steps, desc=f"{name}: training", disable=None, leave=False)
    with PeakMemory() as train_memory:
        while done < warmup + steps:
            for xb, yb in batches:
                if done == warmup:
                    t0, w0 = time.perf_counter(), batches.data_seconds
                loss = criterion(model(resize(xb, arch.img_size)), yb)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                done += 1
                bar.update(1)
                if done > warmup:
                    images += len(yb)
                if done >= warmup + steps:
                    break
        timed = time.perf_counter() - t0
        waited = batches.data_seconds - w0
    bar.close()
    batches.close()
    c, s = data.in_chans, cfg.img_size
    n_images = len(data.train) + len(data.val)
    return {
        "case": name,
        "data": data.name,
        "img_size": s,
        "images": n_images,
        "cache": data.cache,
        "recipe": recipe,
        "loader": path,
        "batch_size": batch_size,
        "params": count_params(model),
        "load_seconds": round(load_seconds, 1),
        "loader_images_per_second": round(loader_rate, 1),
        "train_images_per_second": round(images / timed, 1),
        "waiting_share": round(waited / timed, 3),
        "process_before_mib": round(base, 1),
        "peak_data_mib": round(data_memory.peak / 1024, 1),
        "peak_training_mib": round(train_memory.peak / 1024, 1),
        "float32_decoded_mib": round(n_images * c * s * s * 4 / 2**20, 1),
        "uint8_cache_mib": round(n_images * data.train.channels * s * s / 2**20, 1),
    }


def cases(args: argparse.Namespace, work: Path) -> list[tuple[str, DataConfig, dict]]:
    n64, n224 = (5_000, 600) if args.quick else (50_000, 5_000)
    folder64 = make_folder(work / f"jpeg64-{n64}", n64, 64)
    folder224 = make_folder(work / f"jpeg256-{n224}", n224, 256)
    fashion = {"name": "fashion_mnist", "img_size": 32, "val_fraction": 0.1}

    def folder(path: Path, size: int, cache: str, workers: int) -> DataConfig:
        return DataConfig(
            name="imagefolder", path=str(path), img_size=size, cache=cache, workers=workers
        )

    return [
        ("digits 32px, in memory", DataConfig(name="digits", img_size=32), {}),
        ("Fashion-MNIST 32px, in memory", DataConfig(**fashion, cache="memory"), {}),
        (
            "Fashion-MNIST 32px, in memory, full recipe (timm per image, 2 workers)",
            DataConfig(**fashion, cache="memory", workers=2),
            {"recipe": "full"},
        ),
        (
            "Fashion-MNIST 32px, in memory, full recipe (timm per image, 1 worker)",
            DataConfig(**fashion, cache="memory", workers=1),
            {"recipe": "full"},
        ),
        ("64px JPEG folder, streamed, 2 workers", folder(folder64, 64, "none", 2), {}),
        ("64px JPEG folder, streamed, 1 worker", folder(folder64, 64, "none", 1), {}),
        ("64px JPEG folder, in memory", folder(folder64, 64, "memory", 2), {}),
        (
            "256px JPEGs at 224px, streamed, 2 workers (batch 16)",
            folder(folder224, 224, "none", 2),
            {"batch_size": 16},
        ),
    ]


def results_md(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"Data throughput and memory ({meta['date']}, {meta['machine']}; `{meta['command']}`)",
        "",
        f"Candidate: {meta['candidate']}, trained with {meta['threads']} threads, batch "
        f"{meta['batch_size']} unless the case says otherwise. Memory: PSS of the process and "
        "its loader workers (shared pages counted once), above the process before the data "
        f"was read ({meta['process_before_mib']:,.0f} MiB: torch and its libraries).",
        "",
        "| case | images | train img/s | waiting for data | loader alone img/s | memory: "
        "data | memory: training | whole set as float32 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        before = r["process_before_mib"]
        lines.append(
            f"| {r['case']} | {r['images']:,} | {r['train_images_per_second']:,.0f} | "
            f"{r['waiting_share']:.0%} | {r['loader_images_per_second']:,.0f} | "
            f"+{r['peak_data_mib'] - before:,.0f} MiB | +{r['peak_training_mib'] - before:,.0f} "
            f"MiB (peak {r['peak_training_mib']:,.0f}) | {r['float32_decoded_mib']:,.0f} MiB |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller folders, fewer batches")
    parser.add_argument("--work", default="runs/bench-data", help="the generated folders")
    parser.add_argument("--out", default="experiments/results/data")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    steps, warmup = (20, 3) if args.quick else (150, 10)
    start = time.perf_counter()
    rows = []
    for name, cfg, extra in cases(args, work):
        n = steps // 3 if cfg.img_size >= 224 else steps  # a 224px batch takes much longer
        batch = extra.get("batch_size", args.batch_size)
        recipe = extra.get("recipe", "proxy")
        rows.append(run_case(name, cfg, n, warmup, batch, args.threads, recipe))
        print(json.dumps(rows[-1]), file=sys.stderr)
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "command": "python experiments/bench_data.py" + (" --quick" if args.quick else ""),
        "candidate": f"{CANDIDATE.describe()} ({count_params(LightViT(CANDIDATE)):,} params "
        "at 32px, 10 classes)",
        "batch_size": args.batch_size,
        "threads": args.threads,
        "seconds": round(time.perf_counter() - start, 1),
        "torch": torch.__version__,
        "median_train_rate": statistics.median(r["train_images_per_second"] for r in rows),
        "process_before_mib": min(r["process_before_mib"] for r in rows),
    }
    write_results(args.out, {"meta": meta, "rows": rows}, results_md(rows, meta))
    print(f"bench_data: {len(rows)} cases in {meta['seconds'] / 60:.1f} min; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
