"""The `lvit` command line: one table of commands, each with `add_arguments` and `take_action`.

    lvit search CONFIG            run or resume a search (progress bar, then the Pareto front);
                                  --workers N: N processes on this machine
    lvit worker --study NAME      join a study in a shared storage (PostgreSQL, journal)
    lvit export --trial N --out DIR   write a trained trial as a timm model folder
    lvit report                   Pareto-front plot and table of a study
    lvit status                   a study's trials by state, best feasible, front, time spent
    lvit dashboard                optuna-dashboard on 127.0.0.1 with a note per trial
    lvit space show|sample NAME   a search space's choices and size, or sampled architectures
    lvit latency measure|build-lut|validate|doctor   latency on a device, lookup tables,
                                  their accuracy, the machine's drift
    lvit teacher train CONFIG     a teacher for knowledge distillation, as a timm folder
    lvit train ARCH|EXPORT --config CONFIG   retrain a found architecture into a timm folder
                                  (the full recipe; --recipe proxy for the search's)
    lvit evaluate FOLDER --config CONFIG --split test|val   accuracy, per class, confusion
    lvit supernet train CONFIG    train a config's one-shot supernet (the nni extra)
    lvit supernet export CONFIG --arch JSON --out DIR   a subnet with inherited weights

`--storage` (an Optuna storage URL) is shared by the commands that read a study.
Errors in the input print one line, `lvit: error: ...`, and exit with code 2.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from nas.errors import ConfigError

__all__ = ["main", "COMMANDS"]

MAX_WORKERS = 64  # local worker processes (each holds torch and the data set)
# units `latency build-lut` measures on a runtime by default, where each is its own program
# (seconds to build); the rest are predicted from them (`nas.lut.UnitPredictor`)
RUNTIME_UNITS = 1_500


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.1f}s"


class Command(ABC):
    """One `lvit` command: its arguments, and the action that returns the exit code."""

    name: str = ""
    help: str = ""

    @abstractmethod
    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add the command's own arguments (`--storage` is shared)."""

    @abstractmethod
    def take_action(self, args: argparse.Namespace) -> int: ...


class Search(Command):
    name = "search"
    help = "run a search from a YAML config (re-running resumes the study)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("config", help="YAML search config, e.g. experiments/quickstart.yaml")
        parser.add_argument(
            "--n-trials",
            type=int,
            default=None,
            help="study-wide number of candidates (overrides study.n_trials)",
        )
        parser.add_argument(
            "--n-trained",
            type=int,
            default=None,
            help="end once that many candidates are trained, however many the budgets "
            "reject (overrides study.n_trained; study.n_trials caps all candidates)",
        )
        parser.add_argument("--study", default=None, help="study name (overrides study.name)")
        parser.add_argument(
            "--workers",
            type=int,
            default=None,
            help="worker processes on this machine, each pinned to its share of the cores and, "
            "when training on GPUs, given one GPU of its own (default: one per GPU when "
            "training on GPUs, else 1; more than 1 needs a journal:/// or postgresql:// storage)",
        )
        _grace_argument(parser)

    def take_action(self, args: argparse.Namespace) -> int:
        config = _load_config(args.config)
        for flag, value in (("--n-trials", args.n_trials), ("--n-trained", args.n_trained)):
            if value is not None and value < 1:
                raise ConfigError(f"{flag} must be >= 1, got {value}")
        if args.workers is None:
            from nas.workers import default_workers

            args.workers = default_workers(config)
        if not 1 <= args.workers <= MAX_WORKERS:
            raise ConfigError(f"--workers must be 1 to {MAX_WORKERS}, got {args.workers}")
        config = config.replace_study(
            n_trials=args.n_trials,
            n_trained=args.n_trained,
            storage=args.storage,
            name=args.study,
            grace_period=args.grace_period,
        )
        if args.workers > 1:
            from nas.config import machine_cores

            if args.workers > machine_cores():
                _warn(
                    f"--workers {args.workers} but this machine has {machine_cores()} cores: "
                    "workers share cores, which slows them and makes latency meaningless"
                )
            return _search_with_workers(config, args.workers)
        return _search_here(config, "lvit search")


class _EpochBar:
    """A second bar for the epochs of a large data set (at least `MIN_STEPS` batches), with
    an ETA; quiet when not on a terminal."""

    MIN_STEPS = 200

    def __init__(self) -> None:
        self.bar: Any = None

    def step(self, info: dict[str, Any]) -> None:
        if info["steps"] < self.MIN_STEPS:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(
                total=info["steps"],
                desc=f"trial {info['trial']} epoch {info['epoch']}",
                unit="batch",
                position=1,
                leave=False,
                disable=None,
                dynamic_ncols=True,
            )
        self.bar.n = info["step"]
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class Worker(Command):
    name = "worker"
    help = "join a study kept in a shared storage (PostgreSQL, journal) and run its trials"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--study", default=None, help="study name (default: the only one)")
        parser.add_argument(
            "--threads", type=int, default=0, help="torch threads for training (0: all cores)"
        )
        _grace_argument(parser)

    def take_action(self, args: argparse.Namespace) -> int:
        import dataclasses

        from nas.config import SearchConfig
        from nas.storage import load_study

        url = _storage(args)
        study = load_study(url, args.study)
        stored = study.user_attrs.get("config")
        if stored is None:
            raise ConfigError(
                f"study '{study.study_name}' has no stored config: start it with lvit search"
            )
        config = SearchConfig.from_stored(stored, f"study '{study.study_name}'")
        config = config.replace_study(storage=url, grace_period=args.grace_period)
        if args.threads < 0:
            raise ConfigError(f"--threads must be >= 0, got {args.threads}")
        if args.threads:
            _check_threads(args.threads)
            config = dataclasses.replace(
                config, train=dataclasses.replace(config.train, threads=args.threads)
            )
        return _search_here(config, "lvit worker")


def _load_config(path: str) -> Any:
    """A validated config; what it allows but probably does not mean is said on stderr."""
    from nas.config import load_config

    config = load_config(path)
    for line in config.warnings():
        _warn(line)
    return config


def _warn(line: str) -> None:
    print(f"lvit: warning: {line}", file=sys.stderr)


def _check_threads(threads: int, flag: str = "--threads") -> None:
    from nas.config import LIMITS, machine_cores

    if threads > LIMITS["train.threads"]:
        raise ConfigError(f"{flag} {threads} is above its limit of {LIMITS['train.threads']:,}")
    if threads > machine_cores():
        _warn(
            f"{flag} {threads} but this machine has {machine_cores()} cores: threads beyond "
            "the cores slow training and make latency measurements meaningless"
        )


def _check_seed(args: argparse.Namespace) -> None:
    from nas.config import MAX_SEED

    seed = getattr(args, "seed", None)
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"--seed must be 0 to {MAX_SEED:,}, got {seed}")


def _grace_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--grace-period",
        type=float,
        default=None,
        help="seconds without a heartbeat after which another process fails and retries a "
        "trial (RDB storages; overrides study.grace_period, default 120)",
    )


def _trial_line(r: Any, accuracy: float | None = None) -> str:
    """One line per finished candidate (a `nas.records.TrialRecord`), as `lvit search`
    prints them, in one process or with workers; `accuracy` for a trial not yet told."""
    from nas.records import Status

    n, status = r.number, r.status
    acc = accuracy if accuracy is not None else r.accuracy
    if status in (Status.TRAINED, Status.SCORED) and acc is not None:
        how = (
            f"inherited weights, {r.seconds:.1f}s"
            if status is Status.SCORED
            else "looked up"
            if r.attrs.get("table")
            else _duration(r.seconds)
        )
        int8 = r.attrs.get("int8")
        if int8:  # both accuracies: the float one and the int8 one, whichever is the objective
            acc_words = f"acc {int8['accuracy_float']:.4f} int8 {int8['accuracy']:.4f}"
        else:
            acc_words = f"acc {acc:.4f}"
        return (
            f"  #{n:<3} {status.value:<9} {acc_words}  "
            f"{r.latency_ms:6.3f} ms  {r.params / 1e3:7.1f}k params  {r.arch_line}  ({how})"
        )
    if status is Status.INFEASIBLE:
        return f"  #{n:<3} infeasible {r.reason}  {r.arch_line}"
    if status is Status.DUPLICATE:
        shown = f"acc {acc:.4f}  " if acc is not None else ""
        of = r.attrs.get("duplicate_of")
        return f"  #{n:<3} duplicate {shown}{r.arch_line}: trained as #{of}, result reused"
    if status is Status.STOPPED:
        return f"  #{n:<3} stopped   {r.reason}"
    if status is Status.SCREENED:
        proxy = r.attrs.get("prescreen", {}).get("proxy")
        value = r.attrs.get("proxies", {}).get(proxy)
        shown = f"{value:.4g}" if value is not None else "none"
        return f"  #{n:<3} screened  {proxy} {shown}: not in the best share"
    return f"  #{n:<3} failed    {r.reason or '?'} (recorded; the search goes on)"


def _search_here(config: Any, prog: str, hooks: Sequence[Any] = (), summary: bool = True) -> int:
    """Run the search in this process with a progress bar and a line per candidate; `hooks`
    run on every trial as it ends, after the dashboard's; without `summary`, return after
    the search (no retraining, confirmation or front)."""
    from tqdm import tqdm

    from nas.callbacks import dashboard_hooks
    from nas.oneshot_retrain import retrains
    from nas.study import (
        create_or_resume_study,
        finished_count,
        prepare_inputs,
        run_search,
        trained_count,
    )

    # the bar counts what ends the search: candidates, or trained ones with study.n_trained
    by_trained = config.study.n_trained is not None
    target = config.study.n_trained if by_trained else config.study.n_trials
    counted = (
        ("trained", "scored")
        if by_trained
        else ("trained", "scored", "infeasible", "stopped", "screened", "duplicate")
    )
    bar: Any = None
    epoch_bar = _EpochBar()

    def on_event(kind: str, info: dict[str, Any]) -> None:
        n = info.get("trial")
        if kind == "training":
            bar.set_postfix_str(f"trial {n}: training")
        elif kind == "int8":
            bar.set_postfix_str(f"trial {n}: int8 accuracy")
        elif kind == "step":
            epoch_bar.step(info)
        elif kind == "epoch":
            epoch_bar.close()
            bar.set_postfix_str(
                f"trial {n}: epoch {info['epoch']}/{info['epochs']} acc {info['val_acc']:.3f}"
            )
        elif kind == "reference":
            ref = info["reference"]
            bar.write(
                f"latency: drift-corrected to the reference model's {ref.ms:.4f} ms on "
                f"{ref.device}, {ref.threads} thread(s), calibrated {ref.measured_at}"
            )
        elif "record" in info:  # a trial ended: trained, scored, infeasible, stopped, ...
            bar.write(_trial_line(info["record"], info.get("val_acc")))
            if kind in counted:
                bar.update(1)

    inputs = prepare_inputs(config)  # bad data or tables fail before a study exists
    print(
        f"{prog}: study '{config.study.name}' in {_redact(config.study.storage_url)}, space "
        f"'{config.space}', {_inputs_line(inputs, config)}, "
        + (
            f"until {target} are trained (at most {config.study.n_trials} candidates)"
            if by_trained
            else f"{target} candidates"
        ),
        file=sys.stderr,
    )
    study = create_or_resume_study(config)
    done = trained_count(study) if by_trained else finished_count(study)
    if done:
        what = "trained" if by_trained else "finished"
        print(f"resuming: {done} of {target} candidates already {what}", file=sys.stderr)
    bar = tqdm(
        total=target,
        initial=min(done, target),
        unit="trial",
        desc="search",
        disable=None,
        dynamic_ncols=True,
    )
    try:
        run = run_search(
            config,
            on_event=on_event,
            study=study,
            inputs=inputs,
            hooks=[*dashboard_hooks(), *hooks],
        )
    except KeyboardInterrupt:
        bar.close()
        _interrupted(prog, study, config)
        return 130
    finally:
        bar.close()
    extra = "".join(
        f", {count} {label}"
        for count, label in (
            (run.stopped, "stopped early"),
            (run.screened, "screened out by the proxy"),
        )
        if count
    )
    done_what = (
        f"{run.scored} scored with inherited weights"
        if config.evaluation == "supernet"
        else f"{run.trained} trained"
    )
    bad = inputs.data.unreadable() if inputs.data is not None else []
    if bad:
        extra += f", {len(bad)} unreadable image(s) skipped (data.strict: true refuses them)"
    line = (
        f"This run: {done_what}, {run.infeasible} infeasible (over a budget){extra}, "
        f"{run.failed} failed, in {_duration(run.seconds)}."
    )
    if not summary:
        print(line, file=sys.stderr)
        return 0
    if retrains(config):
        return _retrain_best(config, run.study, inputs, line)
    if _confirm(config, run.study, inputs) == 130:
        return 130
    _summary(run.study, config, line)
    return 0


def _inputs_line(inputs: Any, config: Any) -> str:
    """The data set a search trains on, or the table it looks candidates up in."""
    if inputs.benchmark is not None:
        return f"table {inputs.benchmark.describe()}"
    return _data_line(inputs.data, config)


def _data_line(data: Any, config: Any) -> str:
    """The data a command works on, in a phrase: its splits and how they are held."""
    from nas.data import has_test_split

    held = "in memory" if data.cache == "memory" else f"streamed by {data.workers} workers"
    test = "; its test split is not read" if has_test_split(config.data) else ""
    bad = data.unreadable()
    skipped = f"; {len(bad)} unreadable image(s) skipped, e.g. {bad[0]}" if bad else ""
    return (
        f"data '{data.name}' at {data.img_size}px ({len(data.train)} train / {len(data.val)} "
        f"val images, {held}{test}{skipped})"
    )


def _retrain_best(config: Any, study: Any, inputs: Any, line: str) -> int:
    """After a supernet search: retrain its best candidates from scratch, with a bar, then a
    table of inherited against stand-alone accuracy."""
    from tqdm import tqdm

    from nas.callbacks import dashboard_hooks
    from nas.oneshot_retrain import best_scored, retrain_best, retrain_config

    k = len(best_scored(study, config.supernet.retrain_top_k))
    bar = tqdm(total=k, unit="trial", desc="retrain best", disable=None, dynamic_ncols=True)

    def on_event(kind: str, info: dict[str, Any]) -> None:
        if kind == "epoch":
            bar.set_postfix_str(
                f"epoch {info['epoch']}/{info['epochs']} acc {info['val_acc']:.3f}"
            )
        elif kind in ("trained", "failed", "infeasible"):
            bar.update(1)

    try:
        result = retrain_best(config, study, inputs, on_event=on_event, hooks=dashboard_hooks())
    except KeyboardInterrupt:
        bar.close()
        _interrupted("lvit search", study, retrain_config(config, k))
        return 130
    finally:
        bar.close()
    _summary(study, config, line)
    name = result.study.study_name
    print(f"\nRetrained from scratch ({config.train.epochs} epochs), study '{name}':")
    print("  candidate  inherited  stand-alone  retrained trial")
    for source, inherited, trial, alone in result.pairs:
        shown = f"{alone:.4f}" if alone is not None else "failed"
        where = f"#{trial}" if trial >= 0 else "-"
        print(f"  #{source:<8} {inherited:.4f}     {shown:<6}       {where}")
    seconds = result.run.seconds if result.run else 0.0
    url = _redact(config.study.storage_url)
    print(
        f"Retraining took {_duration(seconds)}. Export a retrained one:  lvit export --storage "
        f"{url} --study {name} --trial N --out exports/{name}-N"
    )
    return 0


def _search_with_workers(config: Any, n_workers: int) -> int:
    from tqdm import tqdm

    from nas.oneshot_retrain import retrains
    from nas.records import Status, TrialRecord
    from nas.study import (
        create_or_resume_study,
        finished_count,
        latency_reference,
        prepare_inputs,
        trained_count,
    )
    from nas.workers import check_parallel_storage, core_shares, gpu_assignment, run_workers

    check_parallel_storage(config.study.storage_url)
    inputs = prepare_inputs(config)  # bad data, tables or teachers fail here, not in N workers
    study = create_or_resume_study(config)
    latency_reference(study, config, inputs.table)  # calibrated once, before the workers start
    by_trained = config.study.n_trained is not None
    target = config.study.n_trained if by_trained else config.study.n_trials
    shares = core_shares(n_workers)
    gpus = gpu_assignment(n_workers, config.train.device)
    on_gpus = (
        ", GPUs " + " | ".join(str(g) for g in gpus) if any(g is not None for g in gpus) else ""
    )
    print(
        f"lvit search: study '{config.study.name}' in {_redact(config.study.storage_url)}, "
        f"{n_workers} worker processes on cores "
        + " | ".join(",".join(map(str, s)) for s in shares)
        + f"{on_gpus}, {_inputs_line(inputs, config)}, "
        + (f"until {target} are trained" if by_trained else f"{target} candidates"),
        file=sys.stderr,
    )
    done = trained_count(study) if by_trained else finished_count(study)
    bar = tqdm(total=target, initial=min(done, target), unit="trial", desc="search", disable=None)
    outcomes: dict[Any, int] = {}

    def on_finished(trial: Any) -> None:
        record = TrialRecord.of(trial)
        outcomes[record.status] = outcomes.get(record.status, 0) + 1
        bar.write(_trial_line(record))
        if not by_trained or record.status in (Status.TRAINED, Status.SCORED):
            bar.update(1)

    try:
        run = run_workers(config, n_workers, on_finished=on_finished, study=study, gpus=gpus)
    except KeyboardInterrupt:
        bar.close()
        _interrupted("lvit search", study, config)
        return 130
    finally:
        bar.close()
    counts = (
        ", ".join(f"{n} {s.words}" for s, n in sorted(outcomes.items(), key=lambda o: o[0].value))
        or "nothing new"
    )
    recovered = (
        f"; {len(run.recovered)} trials of dead workers failed and retried, "
        f"{run.restarted} workers restarted"
        if run.recovered or run.restarted
        else ""
    )
    line = f"This run: {counts} with {n_workers} workers in {_duration(run.seconds)}{recovered}."
    if retrains(config):
        return _retrain_best(config, run.study, prepare_inputs(config), line)
    if _confirm(config, run.study, prepare_inputs(config)) == 130:
        return 130
    _summary(run.study, config, line)
    return 0


def _redact(url: str) -> str:
    from nas.storage import redact

    return redact(url)


def _interrupted(prog: str, study: Any, config: Any) -> None:
    from nas.study import finished_count

    print(
        f"\n{prog}: interrupted; {finished_count(study)} of {config.study.n_trials} candidates "
        f"are finished in {_redact(config.study.storage_url)} and the running one was ended as "
        "failed. Run the same command to resume.",
        file=sys.stderr,
    )


def _confirm(config: Any, study: Any, inputs: Any) -> int:
    """After the search: the front's best retrained with more seeds (study.confirm_top_k),
    with a bar and a line each; 130 when interrupted (what is done is kept)."""
    from tqdm import tqdm

    from nas.confirm import confirm_front, pending

    todo = pending(config, study)
    if not todo:
        return 0
    bar = tqdm(total=len(todo), unit="training", desc="confirm", disable=None, dynamic_ncols=True)

    def on_event(kind: str, info: dict[str, Any]) -> None:
        number = info["trial"]
        search = study.trials[number].values[0]
        bar.write(
            f"  #{number:<3} confirmed acc {info['val_acc']:.4f} with seed {info['seed']} "
            f"(the search's training: {search:.4f})"
        )
        bar.update(1)

    try:
        confirm_front(config, study, inputs, on_event)
    except KeyboardInterrupt:
        bar.close()
        print(
            f"\nlvit search: confirmation interrupted; {len(todo) - len(pending(config, study))}"
            f" of {len(todo)} trainings done and kept; re-run the command to finish it",
            file=sys.stderr,
        )
        return 130
    finally:
        bar.close()
    return 0


def _summary(study: Any, config: Any, line: str) -> None:
    from nas.report import front_table
    from nas.study import finished_count

    url = _redact(config.study.storage_url)
    print()
    print(front_table(study))
    print()
    if config.evaluation == "table":  # looked up: no weights, nothing to export
        n = finished_count(study)
        print(f"{line} Study: {n} candidates in {url}, looked up in its table.")
        print(f"Report:  lvit report --storage {url} --study {config.study.name}")
        return
    print(
        f"{line} Study: {finished_count(study)} candidates in {url}, weights in "
        f"{study.user_attrs['artifact_dir']}"
    )
    best = _best_trained(study)
    if best is not None:
        print(
            f"Export:  lvit export --storage {url} --study {config.study.name} --trial {best} "
            f"--out exports/{config.study.name}-{best}"
        )
        print(f"Report:  lvit report --storage {url} --study {config.study.name}")


def _best_trained(study: Any) -> int | None:
    from nas.report import pareto_front

    front = pareto_front(study)
    return front[0].number if front else None


class Export(Command):
    name = "export"
    help = "write a trained trial as a timm model folder (config.json + model.safetensors)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--study", default=None, help="study name (default: the only one)")
        parser.add_argument("--trial", type=int, required=True, help="trial number to export")
        parser.add_argument(
            "--out", default=None, help="output folder (default: exports/STUDY-TRIAL)"
        )
        parser.add_argument(
            "--artifacts", default=None, help="folder of the study's weights, if it has moved"
        )
        parser.add_argument("--force", action="store_true", help="replace an existing --out")
        parser.add_argument(
            "--no-fuse",
            action="store_true",
            help="keep re-parameterisable blocks unfused (default: fused for inference)",
        )
        parser.add_argument(
            "--onnx",
            action="store_true",
            help="also write model.onnx, checked against torch with ONNX Runtime, and time it",
        )
        parser.add_argument(
            "--executorch",
            action="store_true",
            help="also write model.pte (ExecuTorch, XNNPACK delegate), checked against torch "
            "and timed by ExecuTorch's runtime (the executorch extra)",
        )
        parser.add_argument(
            "--int8",
            action="store_true",
            help="with --executorch: quantise to int8 (PT2E, calibrated on training images) "
            "and report its top-1 agreement with torch on the validation split",
        )

    def take_action(self, args: argparse.Namespace) -> int:
        from nas.export import export_trial
        from nas.storage import load_study, storage_file

        if args.int8 and not args.executorch:
            raise ConfigError("--int8 quantises the ExecuTorch program: add --executorch")
        if args.executorch:
            from nas.runtimes import check_executorch

            try:
                check_executorch()
            except ValueError as e:
                raise ConfigError(f"--executorch: {e}") from None
        study = load_study(_storage(args), args.study)
        out = args.out or os.path.join("exports", f"{study.study_name}-{args.trial}")
        data = _study_data(study) if args.int8 else None
        if args.executorch:
            print(
                f"Lowering to ExecuTorch ({'int8' if args.int8 else 'float32'}): this takes "
                "a minute or more",
                file=sys.stderr,
            )
        result = export_trial(
            study,
            args.trial,
            out,
            artifact_dir=args.artifacts,
            force=args.force,
            reparameterize=not args.no_fuse,
            onnx=args.onnx,
            executorch=args.executorch,
            int8=args.int8,
            data=data,
            protect=[storage_file(args.storage)],
        )
        fused = (
            f"; fused: max abs logit change {result.fused:.1e}" if result.fused is not None else ""
        )
        print(
            f"Exported trial {result.trial} of '{study.study_name}' to {result.out_dir} "
            f"(config.json, model.safetensors, arch.json, README.md); reloaded through timm: "
            f"max abs logit diff {result.max_abs_diff:.1e}{fused}"
        )
        if result.onnx:
            o = result.onnx
            print(
                f"model.onnx: ONNX Runtime matches torch (max abs diff "
                f"{o['max_abs_diff_vs_torch']:.1e}); {o['latency_ms']:.4f} ms median on "
                f"{o['latency_conditions']['threads']} CPU thread(s), batch 1"
            )
        if result.executorch:
            e = result.executorch
            check = (
                f"matches torch (max abs diff {e['max_abs_diff_vs_torch']:.1e})"
                if e["dtype"] == "float32"
                else f"int8, top-1 agreement with torch {e['top1_agreement']:.2%} on "
                f"{e['val_images']:,} validation images (accuracy {e['accuracy_int8']:.2%}, "
                f"float {e['accuracy_float']:.2%})"
                + (" - below the 99% an int8 export should keep" if e["below_agreement"] else "")
            )
            print(
                f"model.pte: ExecuTorch {check}; {e['latency_ms']:.4f} ms median on "
                f"{e['latency_conditions']['threads']} CPU thread(s), batch 1; "
                f"{e['delegation']['fallback']} node(s) outside XNNPACK"
            )
        print(
            f"Load it:  import search_spaces, timm; "
            f"timm.create_model('local-dir:{result.out_dir}', pretrained=True)"
        )
        return 0


def _study_data(study: Any) -> Any:
    """The data set a study searched on, loaded as its stored config says."""
    from nas.config import SearchConfig
    from nas.data import load_dataset

    stored = study.user_attrs.get("config")
    if stored is None:
        raise ConfigError(
            f"study '{study.study_name}' has no stored config, so its data set is unknown: "
            "--int8 calibrates and checks on it"
        )
    return load_dataset(SearchConfig.from_stored(stored, f"study '{study.study_name}'").data)


class Report(Command):
    name = "report"
    help = "write a study's report: Pareto front, hypervolume, importances, an architecture"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--study", default=None, help="study name (default: the only one)")
        parser.add_argument("--out", default=None, help="output folder (default: reports/STUDY)")
        parser.add_argument(
            "--trial", type=int, default=None, help="architecture to draw (default: the best)"
        )
        parser.add_argument(
            "--baselines",
            default=None,
            help="CSV of reference models (name, latency_ms, accuracy) to label on the front",
        )

    def take_action(self, args: argparse.Namespace) -> int:
        from nas.plots import write_report
        from nas.report import front_table, load_baselines
        from nas.storage import load_study

        study = load_study(_storage(args), args.study)
        if args.trial is not None and not 0 <= args.trial < len(study.trials):
            raise ConfigError(
                f"--trial {args.trial}: study '{study.study_name}' has trials 0 to "
                f"{len(study.trials) - 1}"
            )
        out = args.out or os.path.join("reports", study.study_name)
        try:
            baselines = load_baselines(args.baselines) if args.baselines else None
            paths = write_report(study, out, args.trial, baselines)
        except FileNotFoundError:
            raise ConfigError(f"--baselines {args.baselines}: no such file") from None
        except ValueError as e:
            raise ConfigError(str(e)) from None
        print(front_table(study))
        names = ", ".join(os.path.basename(p) for p in paths.values())
        print(f"\nWrote {out}: {names}")
        return 0


class Status(Command):
    name = "status"
    help = "summarise a study: trials by state, best feasible, front size, time spent"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--study", default=None, help="study name (default: the only one)")

    def take_action(self, args: argparse.Namespace) -> int:
        from nas.report import study_summary
        from nas.storage import load_study

        print(study_summary(load_study(_storage(args), args.study)))
        return 0


class Dashboard(Command):
    name = "dashboard"
    help = "start optuna-dashboard on a study storage, with a note describing every trial"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--host", default="127.0.0.1", help="address to bind (default local)")
        parser.add_argument("--port", type=int, default=8080, help="port (default 8080)")

    def take_action(self, args: argparse.Namespace) -> int:
        from nas.dashboard import serve

        if not 1 <= args.port <= 65535:
            raise ConfigError(f"--port must be 1 to 65535, got {args.port}")
        url = _storage(args)
        print(
            f"lvit dashboard: {_redact(url)} at http://{args.host}:{args.port}/dashboard/ "
            "(Ctrl-C stops it)",
            file=sys.stderr,
        )
        try:
            serve(url, host=args.host, port=args.port)
        except OSError as e:
            raise ConfigError(f"cannot serve on {args.host}:{args.port}: {e.strerror}") from None
        except KeyboardInterrupt:
            return 0
        return 0


def _storage(args: argparse.Namespace) -> str:
    if not args.storage:
        raise ConfigError("--storage is required, e.g. --storage sqlite:///runs/quickstart.db")
    return args.storage


class Space(Command):
    name = "space"
    help = "show a search space's choices and size, or sample architectures from it"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        show = actions.add_parser("show", help="every choice, its options, and the space's size")
        show.add_argument("space", help="space name: " + ", ".join(_space_names()))
        show.add_argument("--img-size", type=int, default=32, help="data resolution (default 32)")
        sample = actions.add_parser("sample", help="print sampled ArchConfigs with params, FLOPs")
        sample.add_argument("space", help="space name: " + ", ".join(_space_names()))
        sample.add_argument("--n", type=int, default=5, help="how many (default 5)")
        sample.add_argument("--seed", type=int, default=0, help="sampler seed (default 0)")
        sample.add_argument("--img-size", type=int, default=32, help="data resolution")
        sample.add_argument("--num-classes", type=int, default=10, help="classes (default 10)")

    def take_action(self, args: argparse.Namespace) -> int:
        from search_spaces.arch import MAX_CLASSES
        from search_spaces.spaces import SPACES

        if args.space not in SPACES:
            raise ConfigError(f"unknown space '{args.space}'; use one of: {', '.join(SPACES)}")
        _check_img_size(args.img_size)
        space = SPACES[args.space]
        if args.action == "show":
            return self._show(space, args.img_size)
        if not 1 <= args.n <= 10_000 or not 1 <= args.num_classes <= MAX_CLASSES:
            raise ConfigError(f"--n must be 1 to 10,000 and --num-classes 1 to {MAX_CLASSES:,}")
        return self._sample(space, args)

    def _show(self, space: Any, img_size: int) -> int:
        choices = space.choices(img_size)
        print(f"space '{space.name}' (version {space.version}): {space.description}")
        width = max(len(label) for label in choices)
        for label, options in choices.items():
            print(f"  {label:<{width}}  {', '.join(str(o) for o in options)}")
        size = space.size(img_size)
        print(
            f"{len(choices)} choices; {size:,} parameter combinations ({size:.2e}) for "
            f"{img_size}px data"
        )
        return 0

    def _sample(self, space: Any, args: argparse.Namespace) -> int:
        from nas.cost import count_flops, count_params
        from search_spaces.model import LightViT

        archs = space.sample_many(
            args.n, seed=args.seed, num_classes=args.num_classes, img_size=args.img_size
        )
        for i, arch in enumerate(archs):
            model = LightViT(arch)
            size = (arch.in_chans, arch.img_size, arch.img_size)
            print(f"[{i + 1}] {arch.describe()}")
            print(f"    params {count_params(model):,}  FLOPs {count_flops(model, size):,}")
            print(f"    {arch.to_json()}")
        return 0


class Latency(Command):
    name = "latency"
    help = "measure latency, build or validate a lookup table, or check the machine (doctor)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        from nas.config import LATENCY_DEVICES as DEVICES
        from nas.config import LATENCY_DTYPES as DTYPES

        actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        measure = actions.add_parser("measure", help="latency of one architecture or export")
        measure.add_argument("target", help="an ArchConfig JSON file or an `lvit export` folder")
        build = actions.add_parser("build-lut", help="measure every unit a space can produce")
        build.add_argument(
            "--space", required=True, help="space name: " + ", ".join(_space_names())
        )
        build.add_argument("--out", required=True, help="output JSON, e.g. luts/cpu-1t.json")
        build.add_argument("--img-size", type=int, default=32, help="data resolution (32)")
        build.add_argument("--num-classes", type=int, default=10, help="classes (10)")
        build.add_argument(
            "--calibration",
            type=int,
            default=100,
            help="whole architectures measured to calibrate the sum (100)",
        )
        build.add_argument(
            "--units",
            type=int,
            default=None,
            help="measure a sample of this many units and predict the rest (default: every "
            f"unit on cpu and cuda, {RUNTIME_UNITS:,} on executorch and onnxruntime, where "
            "each unit is a program of its own)",
        )
        build.add_argument("--seed", type=int, default=0, help="seed of those architectures")
        validate = actions.add_parser("validate", help="predicted against measured latency")
        validate.add_argument("--lut", required=True, help="a table from build-lut")
        validate.add_argument("--n", type=int, default=100, help="architectures (100)")
        validate.add_argument("--seed", type=int, default=1, help="sampler seed (1)")
        validate.add_argument(
            "--plot", default=None, help="scatter PNG (default: next to the table)"
        )
        doctor = actions.add_parser(
            "doctor", help="how much latency drifts on this machine, and what to do about it"
        )
        doctor.add_argument(
            "--seconds", type=float, default=60.0, help="how long to watch (60, 5 to 3,600)"
        )
        for sub_parser in (measure, build, doctor):
            sub_parser.add_argument("--device", default="cpu", choices=DEVICES)
            sub_parser.add_argument("--threads", type=int, default=1, help="intra-op threads (1)")
            sub_parser.add_argument("--batch", type=int, default=1, help="batch size (1)")
        for sub_parser in (measure, build):
            sub_parser.add_argument(
                "--dtype",
                default="float32",
                choices=list(DTYPES),
                help="precision (float32; int8 on executorch and onnxruntime)",
            )
        measure.add_argument("--runs", type=int, default=50, help="timed runs per round (50)")
        measure.add_argument("--warmup", type=int, default=10, help="untimed runs (10)")
        measure.add_argument(
            "--max-seconds", type=float, default=5.0, help="time cap of the repetitions (5)"
        )
        measure.add_argument(
            "--no-normalise",
            action="store_true",
            help="the raw figure only (default: drift-corrected against a reference model "
            "calibrated first, for 1.5 x --max-seconds)",
        )
        measure.add_argument(
            "--lut", default=None, help="normalise to this latency table's reference instead"
        )

    # the bounds of the flags that size a measurement (docs/limits.md)
    BOUNDS = {
        "threads": 1_024,
        "batch": 1_024,
        "n": 10_000,
        "calibration": 10_000,
        "units": 10_000_000,
        "runs": 100_000,
        "num_classes": 100_000,
    }

    def take_action(self, args: argparse.Namespace) -> int:
        for name, top in self.BOUNDS.items():
            value = getattr(args, name, 1)
            if value is not None and not 1 <= value <= top:
                flag = "--" + name.replace("_", "-")
                raise ConfigError(f"{flag} must be 1 to {top:,}, got {value}")
        if getattr(args, "warmup", 0) < 0 or getattr(args, "warmup", 0) > 10_000:
            raise ConfigError(f"--warmup must be 0 to 10,000, got {args.warmup}")
        if not 0 < getattr(args, "max_seconds", 1) <= 3_600:
            raise ConfigError("--max-seconds must be above 0 and at most 3,600")
        if hasattr(args, "img_size"):
            _check_img_size(args.img_size)
        if hasattr(args, "threads"):
            _check_threads(args.threads)
        actions = {
            "measure": self._measure,
            "build-lut": self._build,
            "validate": self._validate,
            "doctor": self._doctor,
        }
        return actions[args.action](args)

    def _doctor(self, args: argparse.Namespace) -> int:
        from tqdm import tqdm

        from nas.cost import check_device, stability

        if not 5 <= args.seconds <= 3600:
            raise ConfigError(f"--seconds must be 5 to 3,600, got {args.seconds}")
        try:
            check_device(args.device)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        bar = tqdm(
            total=int(round(args.seconds)),
            unit="s",
            desc="watching",
            disable=None,
            dynamic_ncols=True,
        )
        try:
            report = stability(
                args.seconds,
                args.device,
                args.threads,
                progress=lambda done, total: bar.update(done - bar.n),
            )
        finally:
            bar.close()
        trusted, advice = report.verdict()
        ref = report.reference_ms
        print(
            f"lvit latency doctor: {args.device}, {args.threads} thread(s), "
            f"{report.seconds:g} s on {report.cores} core(s)"
        )
        print(
            f"  reference model: {min(ref):.4f}-{max(ref):.4f} ms per second (median "
            f"{statistics.median(ref):.4f}); the slow seconds {100 * report.drift:.1f}% "
            f"slower than the fast ones (90th/10th percentile); calls within a second vary by "
            f"{100 * report.spread:.1f}% (inter-quartile)"
        )
        print(
            f"  a larger model: {100 * report.raw_drift:.1f}% between slow and fast seconds "
            f"raw, {100 * report.corrected_drift:.1f}% drift-corrected"
        )
        os_facts = [
            f"governor {report.governor}" if report.governor else "governor not readable",
            f"clock {report.mhz[0]:.0f}-{report.mhz[1]:.0f} MHz" if report.mhz else None,
            f"load average {report.loadavg:.2f}" if report.loadavg is not None else None,
            f"steal {100 * report.steal:.1f}%" if report.steal is not None else None,
        ]
        print("  CPU: " + ", ".join(f for f in os_facts if f))
        if trusted:
            print(
                "Verdict: latency budgets can be trusted here (drift-corrected figures move by "
                f"{100 * report.corrected_drift:.1f}% at most between seconds)."
            )
        else:
            print("Verdict: latency budgets measured here cannot be trusted as they are.")
        for line in advice:
            print(f"  - {line}")
        return 0

    def _measure(self, args: argparse.Namespace) -> int:
        from nas.cost import calibrate_reference, check_device, measure_latency

        try:
            check_device(args.device, args.dtype)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        model, arch = _load_target(args.target)
        reference = None
        if args.lut:
            reference = _table_reference(args.lut)
        elif not args.no_normalise:
            reference = calibrate_reference(args.device, args.threads, 1.5 * args.max_seconds)
        try:
            result = measure_latency(
                model,
                (arch.in_chans, arch.img_size, arch.img_size),
                device=args.device,
                threads=args.threads,
                batch_size=args.batch,
                dtype=args.dtype,
                warmup=args.warmup,
                runs=args.runs,
                max_seconds=args.max_seconds,
                reference=reference,
            )
        except ValueError as e:  # a table's reference from another device or torch
            raise ConfigError(f"--lut {args.lut}: {e}") from None
        print(f"{arch.describe()}")
        print(
            f"latency {result.median_ms:.4f} ms median (quartiles {result.p25_ms:.4f}-"
            f"{result.p75_ms:.4f} ms, spread {100 * result.spread:.1f}%, {result.runs} runs)"
        )
        if reference is not None:
            print(
                f"  drift-corrected; raw {result.raw_ms:.4f} ms; the reference model ran at "
                f"{result.reference_ms:.4f} ms against its calibrated {reference.ms:.4f} ms "
                f"(drift {result.drift:.3f}x)"
            )
        for key, value in result.conditions.items():
            print(f"  {key}: {value}")
        return 0

    def _build(self, args: argparse.Namespace) -> int:
        from tqdm import tqdm

        from nas.config import dtype_problem
        from nas.cost import check_device
        from nas.lut import UNIT_DEVICES, UNIT_MEASUREMENT, LutError, build_lut
        from nas.storage import check_writable
        from search_spaces.spaces import SPACES

        if args.space not in SPACES:
            raise ConfigError(f"unknown space '{args.space}'; use one of: {', '.join(SPACES)}")
        problem = dtype_problem(args.device, args.dtype)
        if problem:
            flags = {"set latency.dtype": "pass --dtype", "set latency.device": "pass --device"}
            for key, flag in flags.items():
                problem = problem.replace(key, flag)
            raise ConfigError(problem)
        try:
            check_device(args.device, args.dtype)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        units = args.units
        if units is None and args.device not in UNIT_DEVICES:
            units = RUNTIME_UNITS
        check_writable(os.path.dirname(os.path.abspath(args.out)), f"--out {args.out}")
        bars: dict[str, Any] = {}

        def progress(phase: str, done: int, total: int) -> None:
            if phase not in bars:
                for bar in bars.values():
                    bar.close()
                label = {"units": "units", "calibration": "whole models"}[phase]
                bars[phase] = tqdm(
                    total=total, desc=label, unit="", disable=None, dynamic_ncols=True
                )
            bars[phase].update(done - bars[phase].n)

        print(
            f"lvit latency build-lut: space '{args.space}' on {args.device} ({args.dtype}), "
            f"{args.threads} thread(s), batch {args.batch}, {args.img_size}px data, "
            f"{args.num_classes} classes; enumerating units...",
            file=sys.stderr,
        )
        try:
            table = build_lut(
                SPACES[args.space],
                device=args.device,
                threads=args.threads,
                img_size=args.img_size,
                num_classes=args.num_classes,
                batch_size=args.batch,
                dtype=args.dtype,
                calibration_archs=args.calibration,
                max_units=units,
                seed=args.seed,
                progress=progress,
                measure_kwargs=UNIT_MEASUREMENT,
            )
        except LutError as e:
            raise ConfigError(str(e)) from None
        finally:
            for bar in bars.values():
                bar.close()
        table.save(args.out)
        cal = table.calibration
        scales = ", ".join(f"{g} {w:.2f}" for g, w in cal["scale"].items())
        meta = table.meta
        measured = f"{len(table.entries)} units measured"
        if meta["measured_units"] < meta["units"]:
            fit = meta["unit_predictor"]
            measured = (
                f"{meta['measured_units']:,} of {meta['units']:,} units measured, the rest "
                f"predicted from them ({100 * fit['cv_within_10']:.0f}% within +-10% in "
                "cross-validation)"
            )
        refused = (
            f"; {len(table.not_deployable)} units {args.device} cannot run (models with one are "
            "refused)"
            if table.not_deployable
            else ""
        )
        print(
            f"Wrote {args.out}: {measured} on {meta['hardware']} in "
            f"{_duration(meta['seconds'])}; calibrated on {cal['n']} whole models: "
            f"latency = sum of units x their group's scale + {cal['b']:.3f} ms; scales: "
            f"{scales}{refused}"
        )
        print(f"Check it:  lvit latency validate --lut {args.out} --n 100")
        return 0

    def _validate(self, args: argparse.Namespace) -> int:
        from tqdm import tqdm

        from nas.lut import LatencyTable, LutError, validate
        from search_spaces.spaces import SPACES

        try:
            table = LatencyTable.load(args.lut)
            space = SPACES[table.space]
            table.check(
                space=space.name,
                space_version=space.version,
                device=table.device,
                dtype=table.dtype,
                threads=table.threads,
                path=args.lut,
            )
        except LutError as e:
            raise ConfigError(str(e)) from None
        bar = tqdm(total=args.n, desc="architectures", disable=None, dynamic_ncols=True)
        try:
            result = validate(
                table,
                space,
                args.n,
                seed=args.seed,
                progress=lambda _, done, total: bar.update(done - bar.n),
            )
        finally:
            bar.close()
        plot = args.plot or os.path.splitext(args.lut)[0] + "-validation.png"
        result.plot(
            plot,
            f"{table.space} on {table.meta.get('hardware', table.device)}, "
            f"{table.threads} thread(s)",
        )
        print(result.summary())
        print(f"Wrote {plot}")
        return 0


def _table_reference(path: str) -> Any:
    """The reference a latency table was built at, to measure at the table's machine speed."""
    from nas.cost import Reference
    from nas.lut import LatencyTable, LutError

    try:
        table = LatencyTable.load(path)
    except LutError as e:
        raise ConfigError(str(e)) from None
    if table.reference is None:
        raise ConfigError(f"--lut {path} was built before drift correction: build it again")
    return Reference.from_dict(table.reference)


def _load_target(target: str) -> tuple[Any, Any]:
    """A model and its ArchConfig from an ArchConfig JSON file or an exported folder (read as
    every command reads one: `nas.export.load_export`)."""
    from nas.export import load_export, read_arch
    from search_spaces.model import LightViT

    if os.path.isdir(target):
        model = load_export(target)
        if not hasattr(model, "arch"):
            raise ConfigError(f"{target} is not a LightViT export; pass an `lvit export` folder")
        return model, model.arch
    arch = read_arch(target)
    return LightViT(arch), arch


def _check_img_size(img_size: int) -> None:
    from search_spaces.arch import MAX_IMG_SIZE

    if not 2 <= img_size <= MAX_IMG_SIZE:
        raise ConfigError(f"--img-size must be 2 to {MAX_IMG_SIZE}, got {img_size}")


def _space_names() -> list[str]:
    from search_spaces.spaces import SPACES

    return list(SPACES)


class Teacher(Command):
    name = "teacher"
    help = "train a teacher for knowledge distillation on a search config's data"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        train = actions.add_parser("train", help="train a timm model or an ArchConfig as teacher")
        train.add_argument("config", help="search config whose data and recipe to use")
        which = train.add_mutually_exclusive_group(required=True)
        which.add_argument("--model", help="a timm model name, e.g. resnet18")
        which.add_argument("--arch", help="an ArchConfig JSON file")
        train.add_argument("--out", required=True, help="output folder (a timm folder)")
        train.add_argument("--epochs", type=int, default=None, help="override the epochs")
        _recipe_argument(train)

    def take_action(self, args: argparse.Namespace) -> int:
        from nas.data import load_dataset
        from nas.distill import train_teacher

        config = _load_config(args.config)
        recipe = _recipe(config, args)
        data = load_dataset(config.data)
        print(f"lvit teacher train: {_data_line(data, config)}", file=sys.stderr)
        bar = _TrainingBar(recipe.epochs, f"teacher {args.model or args.arch}")
        try:
            result, info = train_teacher(
                config,
                data,
                args.out,
                model_name=args.model,
                arch_path=args.arch,
                recipe=recipe,
                on_epoch=bar.epoch,
                on_step=bar.step,
            )
        finally:
            bar.close()
        print(
            f"Wrote teacher {info['model']} ({info['params']:,} params) to {args.out}: "
            f"{data.name} validation accuracy {result.val_acc:.4f} after {recipe.epochs} epoch"
            f"{'s' * (recipe.epochs != 1)} of the {recipe.recipe} recipe "
            f"({_duration(result.seconds)}). Use it with  "
            f"distill: {{teacher: {args.out}}}"
        )
        return 0


def _recipe_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--recipe",
        choices=("full", "proxy"),
        default="full",
        help="full: the config's retrain section (the full recipe unless it says otherwise; "
        "the default); proxy: its train section, what search candidates get",
    )


def _recipe(config: Any, args: argparse.Namespace) -> Any:
    """The recipe a command trains with: the config's retrain or train section, `--epochs`
    applied."""
    import dataclasses

    if args.epochs is not None and args.epochs < 1:
        raise ConfigError(f"--epochs must be >= 1, got {args.epochs}")
    recipe = config.retrain if args.recipe == "full" else config.train
    if args.epochs is not None:
        recipe = dataclasses.replace(recipe, epochs=args.epochs)
    return recipe


class _TrainingBar:
    """Progress of one training: a bar over every batch of every epoch, with an ETA, the epoch
    and the last validation accuracy beside it; quiet when not on a terminal."""

    def __init__(self, epochs: int, desc: str) -> None:
        from tqdm import tqdm

        self.epochs, self.done = epochs, 0
        self.bar = tqdm(total=None, desc=desc, unit="batch", disable=None, dynamic_ncols=True)
        self.acc = ""

    def step(self, step: int, steps: int) -> None:
        if self.bar.total is None:
            self.bar.total = steps * self.epochs
        self.bar.n = self.done * steps + step
        self.bar.set_postfix_str(f"epoch {self.done + 1}/{self.epochs}{self.acc}", refresh=False)
        self.bar.refresh()

    def epoch(self, epoch: int, acc: float) -> None:
        self.done = epoch
        self.acc = f", val acc {acc:.3f}"

    def close(self) -> None:
        self.bar.close()


class Train(Command):
    name = "train"
    help = "retrain a found architecture fully (optionally with a teacher) into a timm folder"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("target", help="an ArchConfig JSON file or an `lvit export` folder")
        parser.add_argument(
            "--config",
            required=True,
            help="search config whose data, recipe and distill settings to use",
        )
        parser.add_argument("--epochs", type=int, default=None, help="override the epochs")
        parser.add_argument("--teacher", default=None, help="a teacher folder to distil from")
        parser.add_argument("--seed", type=int, default=None, help="override study.seed")
        parser.add_argument("--out", required=True, help="output folder")
        parser.add_argument("--force", action="store_true", help="replace an existing --out")
        parser.add_argument(
            "--max-train",
            type=int,
            default=None,
            help="training images (overrides data.max_train; 0: the whole training split, "
            "the validation split staying the search's)",
        )
        _recipe_argument(parser)

    def take_action(self, args: argparse.Namespace) -> int:
        import dataclasses

        from nas.data import load_dataset
        from nas.export import check_out_dir, read_arch
        from nas.retrain import retrain
        from nas.storage import owned_paths

        config = _load_config(args.config)
        recipe = _recipe(config, args)
        if args.max_train is not None:
            if args.max_train < 0:
                raise ConfigError(f"--max-train must be >= 0, got {args.max_train}")
            data_cfg = dataclasses.replace(config.data, max_train=args.max_train or None)
            config = dataclasses.replace(config, data=data_cfg)
        arch = read_arch(args.target)
        check_out_dir(args.out, args.force, protect=owned_paths(config))  # before any work
        data = load_dataset(config.data)
        teacher = None
        teacher_dir = args.teacher or config.distill.teacher
        if teacher_dir:
            from nas.distill import load_teacher

            teacher = load_teacher(teacher_dir, data)
        print(
            f"lvit train: {arch.describe()} with the {recipe.describe()}; "
            f"{_data_line(data, config)}",
            file=sys.stderr,
        )
        bar = _TrainingBar(recipe.epochs, "train")
        from nas.train import TrainingFailed

        try:
            result, record = retrain(
                arch,
                config,
                data,
                args.out,
                recipe=recipe,
                teacher=teacher,
                seed=args.seed,
                force=args.force,
                on_epoch=bar.epoch,
                on_step=bar.step,
            )
        except TrainingFailed as e:
            raise ConfigError(f"training failed: {e}") from None
        finally:
            bar.close()
        taught = f", distilled from {teacher.info['path']}" if teacher else ""
        print(
            f"Trained {arch.describe()} for {recipe.epochs} epoch"
            f"{'s' * (recipe.epochs != 1)} of the {recipe.recipe} recipe{taught}: {data.name} "
            f"validation accuracy {result.val_acc:.4f} "
            f"({_duration(result.seconds)}, {result.images_per_second:.0f} images/s); wrote "
            f"{args.out}."
            + (
                f" Test it:  lvit evaluate {args.out} --config {args.config} --split test"
                if data.has_test
                else ""
            )
        )
        return 0


class Evaluate(Command):
    name = "evaluate"
    help = (
        "measure a model folder on its data's test (or validation) split: the only reader of a "
        "test split"
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("folder", help="a timm folder from lvit export, train or teacher")
        parser.add_argument(
            "--config", required=True, help="the config whose data set the model was trained on"
        )
        parser.add_argument(
            "--split", choices=("test", "val"), default="test", help="which split (default test)"
        )
        parser.add_argument(
            "--out", default=None, help="report folder (default: reports/FOLDER_NAME)"
        )

    def take_action(self, args: argparse.Namespace) -> int:
        from nas.evaluation import evaluate_export

        config = _load_config(args.config)
        report = evaluate_export(args.folder, config, args.split, args.out)
        e = report.evaluation
        print(
            f"{args.folder} on {config.data.name} {args.split} ({e.images} images"
            + (f", {e.skipped} unreadable skipped" if e.skipped else "")
            + f"): accuracy {e.accuracy:.4f}, loss {e.loss:.4f}"
        )
        width = max([len(c) for c in report.classes] + [5])
        worst = sorted(range(len(e.per_class)), key=lambda i: e.per_class[i])
        shown = worst if len(worst) <= 12 else worst[:10]
        label = "per class" if len(worst) <= 12 else "the 10 least accurate classes"
        print(f"  {label}:")
        for i in sorted(shown):
            name = report.classes[i] if i < len(report.classes) else str(i)
            total = sum(e.confusion[i])
            print(f"    {name:<{width}}  {e.per_class[i]:.4f}  ({total} images)")
        print(f"Wrote {report.json_path} and {report.png_path} in {_duration(report.seconds)}.")
        return 0


class Supernet(Command):
    name = "supernet"
    help = "train a one-shot supernet over a config's supernet space (the nni extra)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        train = actions.add_parser(
            "train", help="train the supernet of a config's supernet section (SPOS)"
        )
        train.add_argument("config", help="YAML config with a supernet section")
        train.add_argument("--epochs", type=int, default=None, help="override supernet.epochs")
        train.add_argument("--force", action="store_true", help="replace a trained supernet")
        export = actions.add_parser(
            "export", help="a subnet as a timm folder with the weights it inherits"
        )
        export.add_argument("config", help="the config the supernet was trained from")
        export.add_argument("--arch", required=True, help="an ArchConfig JSON file")
        export.add_argument("--out", required=True, help="output folder")
        export.add_argument("--force", action="store_true", help="replace an existing --out")

    def take_action(self, args: argparse.Namespace) -> int:
        import dataclasses

        config = _load_config(args.config)
        if config.supernet is None:
            raise ConfigError(
                f"{args.config} has no supernet section (stems, pos_encs, stages); see "
                "experiments/oneshot.yaml"
            )
        if getattr(args, "epochs", None) is not None:
            if args.epochs < 1:
                raise ConfigError(f"--epochs must be >= 1, got {args.epochs}")
            config = dataclasses.replace(
                config, supernet=dataclasses.replace(config.supernet, epochs=args.epochs)
            )
        if args.action == "train":
            return self._train(config, args)
        return self._export(config, args)

    def _train(self, config: Any, args: argparse.Namespace) -> int:
        from tqdm import tqdm

        from nas.data import load_dataset
        from nas.supernet import SUPERNET_META

        try:
            from nas.oneshot import train_supernet
        except ImportError as e:
            raise ConfigError(str(e)) from None
        folder = config.supernet.folder(config.study.name)
        if os.path.isfile(os.path.join(folder, SUPERNET_META)) and not args.force:
            raise ConfigError(
                f"{folder} already holds a trained supernet; use --force to train it again "
                "(or set supernet.path)"
            )
        data = load_dataset(config.data)
        sn = config.supernet
        steps = sn.epochs * -(-len(data.train_y) // config.train.batch_size)
        space = sn.space()
        print(
            f"lvit supernet train: {space.description}; {len(space.choices(data.img_size))} "
            f"choices, {space.size(data.img_size):,} architectures; data '{data.name}' "
            f"({len(data.train_y)} train / {len(data.val_y)} val); {sn.epochs} epochs",
            file=sys.stderr,
        )
        bar = tqdm(total=steps, unit="path", desc="supernet", disable=None, dynamic_ncols=True)
        try:
            run = train_supernet(
                config,
                data,
                on_epoch=lambda epoch, acc: bar.set_postfix_str(
                    f"epoch {epoch}/{sn.epochs}: largest subnet acc {acc:.3f}"
                ),
                on_step=lambda: bar.update(1),
            )
        except KeyboardInterrupt:
            bar.close()
            print(
                f"\nlvit supernet train: interrupted; nothing was written to {folder} (a "
                "supernet is saved when its training ends). Run the same command to start again.",
                file=sys.stderr,
            )
            return 130
        finally:
            bar.close()
        print(
            f"Trained the supernet for {sn.epochs} epochs ({run.paths} paths, one per batch) in "
            f"{_duration(run.seconds)}: the largest subnet scores "
            f"{run.meta['largest_accuracy']:.4f} with inherited weights. Wrote {folder}. "
            f"Search it:  lvit search {args.config}  (evaluation: supernet)"
        )
        return 0

    def _export(self, config: Any, args: argparse.Namespace) -> int:
        from nas.data import load_dataset
        from nas.export import export_subnet, read_arch
        from nas.storage import owned_paths
        from nas.supernet import SharedWeights, SupernetError

        arch = read_arch(args.arch)
        folder = config.supernet.folder(config.study.name)
        try:
            shared, _ = SharedWeights.load(folder)
            data = load_dataset(config.data)
            acc, _ = export_subnet(
                shared,
                arch,
                data,
                args.out,
                folder=folder,
                calib_batches=config.supernet.calib_batches,
                force=args.force,
                protect=owned_paths(config),
            )
        except SupernetError as e:
            raise ConfigError(str(e)) from None
        print(
            f"Exported {arch.describe()} with the weights it inherits from {folder} "
            f"(validation accuracy {acc:.4f}) to {args.out}; load it with "
            f"timm.create_model('local-dir:{args.out}', pretrained=True) after importing "
            "search_spaces"
        )
        return 0


class Table(Command):
    name = "table"
    help = "build a tabular benchmark of a space: N architectures drawn at random, each trained"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        build = actions.add_parser(
            "build",
            help="train N architectures drawn uniformly from the config's space (resumable)",
        )
        build.add_argument("config", help="search config: space, data, recipe, budgets, latency")
        build.add_argument("--n", type=int, required=True, help="architectures in the table")
        build.add_argument("--out", required=True, help="the table: TABLE.csv (and TABLE.json)")
        build.add_argument(
            "--seeds", type=int, default=1, help="trainings of each architecture (default 1)"
        )

    def take_action(self, args: argparse.Namespace) -> int:
        from nas.storage import load_study
        from nas.study import prepare_inputs
        from nas.table_build import build_config, enqueue_seeds, table_paths, write_table

        config = build_config(_load_config(args.config), args.out, args.n, args.seeds)
        csv_path, meta_path, db, artifacts = table_paths(args.out)
        inputs = prepare_inputs(config)

        def rewrite(trial: Any, values: Any) -> None:  # after each trial: the table so far
            if trial.user_attrs.get("status") == "trained":
                write_table(trial.study, config, csv_path, inputs.data)

        first = config.replace_study(n_trained=args.n)
        code = _search_here(first, "lvit table build", hooks=[rewrite], summary=False)
        if code:
            return code
        study = load_study(config.study.storage_url, config.study.name)
        if args.seeds > 1:
            enqueue_seeds(study, args.n, args.seeds)
            code = _search_here(config, "lvit table build", hooks=[rewrite], summary=False)
            if code:
                return code
            study = load_study(config.study.storage_url, config.study.name)
        lines = write_table(study, config, csv_path, inputs.data)
        print(
            f"Table: {lines} trainings of {args.n} architectures of space '{config.space}' in "
            f"{csv_path} (and {os.path.basename(meta_path)}); study '{config.study.name}' in "
            f"{db}, weights in {artifacts}."
        )
        print(
            f"Replay a search over it: evaluation: table and table: {csv_path} in a config of "
            f"space {config.space}"
        )
        return 0


COMMANDS: list[Command] = [
    Search(),
    Worker(),
    Export(),
    Report(),
    Status(),
    Dashboard(),
    Space(),
    Latency(),
    Teacher(),
    Train(),
    Evaluate(),
    Supernet(),
    Table(),
]


def build_parser() -> argparse.ArgumentParser:
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument(
        "--storage", default=None, help="Optuna storage URL, e.g. sqlite:///runs/quickstart.db"
    )
    parser = argparse.ArgumentParser(
        prog="lvit", description="Neural architecture search for lightweight vision transformers."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        p = sub.add_parser(
            command.name, help=command.help, description=command.help, parents=[shared]
        )
        command.add_arguments(p)
        p.set_defaults(handler=command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the CLI prints its own trial lines
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    start = time.perf_counter()
    try:
        _check_seed(args)
        return args.handler.take_action(args)
    except ConfigError as e:
        print(f"lvit: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`lvit ... | head`): stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 128 + 13  # the shell's status for a writer killed by SIGPIPE
    except OSError as e:  # the file system refused: a read-only place, a full disk, ...
        where = f" {e.filename}" if e.filename else ""
        print(
            f"lvit: error: cannot use{where}: {e.strerror or e}; choose a location this user "
            "can write, with free space",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(
            f"\nlvit: interrupted after {_duration(time.perf_counter() - start)}; the running "
            "trial was marked failed and finished trials are kept. Re-run the same command to "
            "resume.",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
