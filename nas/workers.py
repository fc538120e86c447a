"""Several worker processes on one machine sharing one study: `lvit search CONFIG --workers N`.

The parent creates (or resumes) the study, then starts N processes (spawned, so each has its own
torch), each pinned to its share of the CPU cores with as many torch threads, and each running
`run_search` on the same study: the study-wide count holds across them (`nas.objective.claim`).
The storage must take parallel writers: Optuna's journal file (`journal:///runs/NAME.journal`)
on one machine, or an RDB server such as PostgreSQL; SQLite is refused.

When training runs on GPUs (`train.device: cuda`, or `auto` on a machine with GPUs), each
worker gets one GPU of its own through `CUDA_VISIBLE_DEVICES` (round robin when there are more
workers than GPUs; `--workers` defaults to the number of GPUs); the latency budget is still
measured on the configured latency device.

The parent watches its workers. Optuna's heartbeat covers RDB storages; the journal storage has
none, so when a worker process dies (killed, out of memory) the parent ends the trials it was
running as failed, enqueues a retry of each (Optuna's RetryHeartbeatStaleTrialCallback, as the
heartbeat would) and starts a replacement worker, so the study still reaches its count.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from nas.callbacks import dashboard_hooks
from nas.config import ConfigError, SearchConfig
from nas.errors import UserError
from nas.optuna_api import storage_of, trial_id
from nas.records import Status, TrialRecord, set_stored_status
from nas.storage import RetryStaleTrial
from nas.study import (
    FINISHED,
    create_or_resume_study,
    prepare_inputs,
    run_search,
    trained_count,
    trial_counts,
)

__all__ = [
    "WorkersRun",
    "core_shares",
    "default_workers",
    "gpu_assignment",
    "run_workers",
    "worker_main",
]


def core_shares(n_workers: int, cores: list[int] | None = None) -> list[list[int]]:
    """Split the cores this process may use into `n_workers` contiguous shares (one core each,
    round robin, when there are more workers than cores)."""
    cores = sorted(cores if cores is not None else os.sched_getaffinity(0))
    if n_workers >= len(cores):
        return [[cores[i % len(cores)]] for i in range(n_workers)]
    size, extra = divmod(len(cores), n_workers)
    shares, start = [], 0
    for i in range(n_workers):
        end = start + size + (i < extra)
        shares.append(cores[start:end])
        start = end
    return shares


def _visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them (or by index)."""
    import torch

    if not torch.cuda.is_available():
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed:
        names = [g.strip() for g in listed.split(",") if g.strip()]
        return names[: torch.cuda.device_count()]
    return [str(i) for i in range(torch.cuda.device_count())]


def gpu_assignment(n_workers: int, device: str) -> list[str | None]:
    """Each worker's CUDA_VISIBLE_DEVICES: one visible GPU each, round robin, when training
    runs on GPUs (`train.device` cuda, or auto with GPUs present); None (the CPU) otherwise."""
    gpus = [] if device == "cpu" else _visible_gpus()
    if not gpus:
        return [None] * n_workers
    return [gpus[i % len(gpus)] for i in range(n_workers)]


def default_workers(config: SearchConfig) -> int:
    """`lvit search --workers` when not given: one per GPU when training on GPUs, else 1."""
    return max(1, len([] if config.train.device == "cpu" else _visible_gpus()))


def worker_main(
    config_dict: dict[str, Any], cores: list[int], quiet: bool = True, gpu: str | None = None
) -> None:
    """One worker process: its own GPU (`gpu`, before anything starts CUDA), pinned to
    `cores`, training with that many threads, running the search."""
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    import torch

    os.sched_setaffinity(0, cores)
    torch.set_num_threads(len(cores))
    if quiet:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    config = SearchConfig.from_dict(config_dict)
    config = dataclasses.replace(
        config, train=dataclasses.replace(config.train, threads=len(cores))
    )
    try:
        run_search(config, poll_seconds=1.0, hooks=dashboard_hooks())
    except KeyboardInterrupt:  # the parent was interrupted too; Optuna ended our trial
        raise SystemExit(130) from None


@dataclass
class WorkersRun:
    study: optuna.Study
    workers: int
    seconds: float = 0.0
    restarted: int = 0
    recovered: list[int] = field(default_factory=list)  # trials of dead workers, failed+retried
    errors: list[int] = field(default_factory=list)  # exit codes of workers that raised


def check_parallel_storage(url: str) -> None:
    if url.startswith("sqlite:"):
        raise ConfigError(
            f"--workers needs a storage that takes parallel writers, not SQLite ({url}): set "
            "study.storage (or --storage) to journal:///runs/NAME.journal on one machine, or a "
            "postgresql:// URL"
        )


def run_workers(
    config: SearchConfig,
    n_workers: int,
    on_finished: Callable[[FrozenTrial], None] | None = None,
    poll_seconds: float = 1.0,
    study: optuna.Study | None = None,
    gpus: list[str | None] | None = None,
) -> WorkersRun:
    """Run the search with `n_workers` local processes until the study has its count.
    `study` is what `create_or_resume_study(config)` returns, when the caller has checked the
    storage and the inputs and made it already. `gpus`: each worker's CUDA_VISIBLE_DEVICES
    (default `gpu_assignment`)."""
    if study is None:
        check_parallel_storage(config.study.storage_url)
        prepare_inputs(config)  # bad data, tables or teachers fail here, once, not in N workers
        study = create_or_resume_study(config)
    shares = core_shares(n_workers)
    gpus = gpus if gpus is not None else gpu_assignment(n_workers, config.train.device)
    context = multiprocessing.get_context("spawn")
    config_dict = config.to_dict()

    def start(slot: tuple[list[int], str | None]) -> Any:
        share, gpu = slot
        process = context.Process(
            target=worker_main, args=(config_dict, share, True, gpu), daemon=False
        )
        process.start()
        return process

    processes = [(start(slot), slot) for slot in zip(shares, gpus, strict=True)]
    run = WorkersRun(study=study, workers=n_workers)
    reported = {t.number for t in study.get_trials(deepcopy=False, states=FINISHED)}
    begin = time.perf_counter()
    try:
        while True:
            _report(study, reported, on_finished)
            alive = []
            for process, slot in processes:
                if process.exitcode is None:
                    alive.append((process, slot))
                elif process.exitcode != 0:
                    run.recovered += recover_dead_worker(study, process.pid)
                    if process.exitcode > 0:  # it raised: restarting would raise again
                        run.errors.append(process.exitcode)
                    elif not _reached(study, config):
                        run.restarted += 1  # killed by a signal (SIGKILL, out of memory)
                        alive.append((start(slot), slot))
            processes = alive
            if not processes:
                if not _reached(study, config):
                    raise UserError(
                        f"{len(run.errors)} of the worker processes stopped with an error "
                        "(printed above) before the study reached its count"
                    )
                break
            time.sleep(poll_seconds)
    except KeyboardInterrupt:
        for process, _ in processes:  # they got the SIGINT too; give them time to end trials
            process.join(timeout=30)
        for process, _ in processes:
            if process.exitcode is None:
                process.kill()
                process.join()
            recover_dead_worker(study, process.pid, retry=False)
        raise
    finally:
        run.seconds = time.perf_counter() - begin
    _report(study, reported, on_finished)
    return run


def _report(
    study: optuna.Study, reported: set[int], on_finished: Callable[[FrozenTrial], None] | None
) -> None:
    for t in study.get_trials(deepcopy=False, states=FINISHED):
        if t.number not in reported:
            reported.add(t.number)
            if on_finished is not None:
                on_finished(t)


def _reached(study: optuna.Study, config: SearchConfig) -> bool:
    """Whether the study has its count: `n_trials` finished, or `n_trained` trained."""
    n_trained = config.study.n_trained
    if n_trained is not None and trained_count(study) >= n_trained:
        return True
    return trial_counts(study)["finished"] >= config.study.n_trials


def recover_dead_worker(study: optuna.Study, pid: int | None, retry: bool = True) -> list[int]:
    """End the RUNNING trials of a dead worker process on this host as FAIL and (with `retry`)
    enqueue a retry of each (`RetryStaleTrial`), as Optuna's heartbeat does on RDB storages."""
    host = socket.gethostname()
    recovered = []
    callback = RetryStaleTrial()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = TrialRecord.of(t).attrs.get("worker", {})
        if worker.get("pid") != pid or worker.get("host") != host:
            continue
        try:  # its attributes first: a finished trial takes no more writes
            storage, tid = storage_of(study), trial_id(t)
            reason = f"worker process {pid} died during this trial"
            set_stored_status(storage, tid, Status.FAILED, reason)
            storage.set_trial_state_values(tid, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # it finished after all
        if retry:
            callback(study, storage_of(study).get_trial(trial_id(t)))
        recovered.append(t.number)
    return recovered
