"""A study's life: creating or resuming it, comparing its config, its sampler and pruner.

`check_config` runs every check that needs more than the config itself (the sampler and pruner
built and asked for a trial in memory, devices, writable folders), before anything is written.
`create_or_resume_study` creates the study or resumes it when its stored config is the same
(`_comparable` says which parts may differ between runs and machines); the sampler is
re-seeded by the number of trials the study has, so a resumed study draws a new,
reproducible stream. `latency_reference` fixes the machine speed all of a study's latency
figures refer to.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from nas import cost
from nas.config import OBJECTIVE_DIRECTIONS, ConfigError, SearchConfig
from nas.records import FINISHED
from nas.storage import (
    check_writable,
    open_storage,
    public_url,
    redact,
    removed_on_failure,
    scrub_credentials,
    storage_file,
)
from nas.train import resolve_device

__all__ = [
    "check_config",
    "create_or_resume_study",
    "latency_reference",
    "library_versions",
    "load_finished",
    "objectives",
    "trial_seed",
]


def objectives(config: SearchConfig) -> list[tuple[str, str]]:
    """The study's (metric name, direction) pairs: accuracy alone in single mode."""
    return [(name, OBJECTIVE_DIRECTIONS[name]) for name in config.study.objective_names]


def library_versions() -> dict[str, str]:
    import platform

    import timm

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "optuna": optuna.__version__,
    }


def trial_seed(study_seed: int, trial_number: int) -> int:
    """The seed a trial trains with (recorded with the trial)."""
    return study_seed * 100_003 + trial_number


def _make_sampler(config: SearchConfig, n_existing: int) -> optuna.samplers.BaseSampler:
    """Optuna's own sampler class, with the config's arguments and seed.

    The seed is offset by the number of trials the study already has, so a resumed study draws a
    new, reproducible stream instead of replaying the first run's candidates.
    """
    cls = getattr(optuna.samplers, config.study.sampler)
    kwargs = dict(config.study.sampler_args)
    params = inspect.signature(cls).parameters
    if "seed" in params:
        kwargs.setdefault("seed", config.study.seed + n_existing)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"study.sampler_args do not fit {cls.__name__}: {e}") from None


def _make_pruner(config: SearchConfig) -> optuna.pruners.BasePruner:
    """Optuna's own pruner class with the config's arguments; none (NopPruner) unless the
    config names one (Optuna would otherwise default to MedianPruner)."""
    if config.study.pruner is None:
        return optuna.pruners.NopPruner()
    cls = getattr(optuna.pruners, config.study.pruner)
    try:
        return cls(**config.study.pruner_args)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"study.pruner_args do not fit {cls.__name__}: {e}") from None


def _comparable(config_dict: dict[str, Any]) -> dict[str, Any]:
    """The parts of a config that define a study's results: n_trials and n_trained may grow on
    resume, the confirmation (confirm_*) is for after the search, the
    storage URL differs between machines, the grace period is each process's own, each
    worker sets its own training threads and loader processes and holds the data as its
    memory allows, and the retrain section is for after the search."""
    study = {
        k: v
        for k, v in config_dict["study"].items()
        if k not in ("n_trials", "n_trained", "storage", "grace_period")
        and not k.startswith("confirm_")
    }
    train = {k: v for k, v in config_dict.get("train", {}).items() if k != "threads"}
    data = {k: v for k, v in config_dict.get("data", {}).items() if k not in ("workers", "cache")}
    # the space's version is checked on its own (`_space_moved`), against the study's record
    rest = {k: v for k, v in config_dict.items() if k not in ("retrain", "space_version")}
    return {**rest, "study": study, "train": train, "data": data}


def check_config(config: SearchConfig) -> None:
    """Every check of a config that needs more than the config itself, run before anything is
    written: the sampler and pruner are built from their arguments and asked for a first
    trial of the space in memory, the training and latency devices exist here, and the
    storage and artifact folders can be created. Raises `ConfigError` with the fix."""
    try:
        resolve_device(config.train.device)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    try:
        cost.check_device(config.latency.device, config.latency.dtype)
    except ValueError as e:
        raise ConfigError(
            f"latency.device {config.latency.device} ({config.latency.dtype}): {e}"
        ) from None
    from nas.loader import check_recipe

    for section, recipe in (("train", config.train), ("retrain", config.retrain)):
        try:
            check_recipe(recipe, config.data.img_size)
        except ValueError as e:
            raise ConfigError(f"{section}: {e}") from None
    space = config.search_space()  # a hub space needing NNI, or bad space_args, fail here
    try:
        if config.evaluation != "table":  # a table's cells are the table's: they all build
            space.sample_many(2, seed=0, num_classes=10, img_size=config.data.img_size)
    except ValueError as e:
        raise ConfigError(
            f"space '{config.space}' cannot build an architecture for data.img_size "
            f"{config.data.img_size}: {e}"
        ) from None
    _probe_sampler(config, space)
    storage = storage_file(config.study.storage_url)
    if storage is not None:
        check_writable(os.path.dirname(os.path.abspath(storage)), "study.storage")
    check_writable(config.study.artifact_dir, "study.artifacts")


def _probe_sampler(config: SearchConfig, space: Any) -> None:
    """Build the sampler and pruner from their arguments and let them run two trials of the
    space in memory, as the search will: arguments of the wrong name, type or value fail here."""
    sampler = _make_sampler(config, n_existing=0)
    pruner = _make_pruner(config)
    n_values = len(objectives(config))
    budgets = [
        name
        for name, value in (
            ("params", config.budget.max_params),
            ("flops", config.budget.max_flops),
            ("latency_ms", config.budget.max_latency_ms),
        )
        if value is not None
    ]
    study_cfg = config.study
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        probe = optuna.create_study(
            sampler=sampler, pruner=pruner, directions=[d for _, d in objectives(config)]
        )
        for _ in range(2):  # the second ask sees a finished trial
            with _cannot_run(f"study.sampler {study_cfg.sampler} ({study_cfg.sampler_args})"):
                trial = probe.ask()
                space.sample(trial, num_classes=10, img_size=config.data.img_size)
                for name in budgets:
                    trial.set_constraint(name, -1.0)
            with _cannot_run(f"study.pruner {study_cfg.pruner} ({study_cfg.pruner_args})"):
                if study_cfg.pruner is not None:
                    trial.report(0.5, 1)
                    trial.should_prune()
            with _cannot_run(f"study.sampler {study_cfg.sampler} ({study_cfg.sampler_args})"):
                probe.tell(trial, [0.5] * n_values)


@contextlib.contextmanager
def _cannot_run(what: str) -> Iterator[None]:
    try:
        yield
    except Exception as e:  # noqa: BLE001 - whatever an Optuna class raises, it cannot search
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ConfigError(f"{what} cannot run a trial: {reason}") from None


def create_or_resume_study(config: SearchConfig) -> optuna.Study:
    """Create the study, or load it when it exists and was made with the same config.

    Run `check_config` (as `prepare_inputs` does) first: a study only ever stores a config
    that passed it. A start that fails leaves no file or folder behind it created. The stored
    config holds the storage URL without credentials; a study without a finished, running or
    waiting trial takes a changed config (it has no results the change could contradict)."""
    url = config.study.storage_url
    with removed_on_failure(storage_file(url), config.study.artifact_dir):
        storage = open_storage(url, create=True, grace_period=config.study.grace_period)
        study = optuna.create_study(
            study_name=config.study.name,
            storage=storage,
            sampler=optuna.samplers.RandomSampler(),  # replaced below, once trials are known
            pruner=_make_pruner(config),
            directions=[d for _, d in objectives(config)],
            load_if_exists=True,
        )
        stored = study.user_attrs.get("config")
        current = config.to_dict()
        current["study"]["storage"] = public_url(url) if config.study.storage else None
        if stored is not None:
            scrub_credentials(study)  # studies written when the full URL was stored
        if stored is None:
            try:
                _store_config(study, config, current)
            except BaseException:  # a server storage keeps no study that has no config
                if not study.get_trials(deepcopy=False):
                    with contextlib.suppress(Exception):
                        optuna.delete_study(study_name=study.study_name, storage=storage)
                raise
        elif _has_results(study) and (moved := _space_moved(study, config)):
            raise ConfigError(
                f"study '{config.study.name}' in {redact(url)} was made with space {moved}; "
                "its trials are not points of this one: set space_version to the study's to "
                "resume it there, or rename study.name to start a new study"
            )
        elif _differs(stored, current):
            if _has_results(study):
                diffs = _differences(_comparable(_with_defaults(stored)), _comparable(current))
                raise ConfigError(
                    f"study '{config.study.name}' in {redact(url)} was made with a "
                    f"different config ({'; '.join(diffs[:3])}); rename study.name to start a "
                    "new study"
                )
            study.set_user_attr("replaced_config", _public(stored))
            _store_config(study, config, current)
    study.sampler = _make_sampler(config, n_existing=len(study.get_trials(deepcopy=False)))
    return study


def _space_moved(study: optuna.Study, config: SearchConfig) -> str:
    """'NAME vN, this one is NAME vM' when the study's space is the config's in another
    version (another space is a different config; a study stored before spaces were
    recorded: neither); else ''."""
    stored = study.user_attrs.get("space")
    if not stored:
        return ""
    space = config.search_space()
    if stored.get("name") != space.name or stored.get("version") == space.version:
        return ""
    return (
        f"{stored.get('name')} v{stored.get('version')}, this one is {space.name} v{space.version}"
    )


def load_finished(
    config: SearchConfig, done: Callable[[optuna.Study], bool]
) -> optuna.Study | None:
    """The stored study `config` names when `done(study)` says it needs no more trials, loaded
    to be read, never resumed: its config must still be this one (as on resume), but not its
    space's version, since no trial will be drawn from the space (a benchmark's finished
    searches stay readable after the space gains choices). None when there is no such study,
    or it is not done."""
    url = config.study.storage_url
    path = storage_file(url)
    if path is not None and not os.path.isfile(path):
        return None
    try:
        study = optuna.load_study(
            study_name=config.study.name, storage=open_storage(url, create=False)
        )
    except KeyError:
        return None
    stored = study.user_attrs.get("config")
    if stored is None or not done(study):
        return None
    current = config.to_dict()
    current["study"]["storage"] = public_url(url) if config.study.storage else None
    if _differs(stored, current):
        diffs = _differences(_comparable(_with_defaults(stored)), _comparable(current))
        raise ConfigError(
            f"study '{config.study.name}' in {redact(url)} was made with a different config "
            f"({'; '.join(diffs[:3])}); rename study.name to start a new study"
        )
    return study


def _has_results(study: optuna.Study) -> bool:
    states = (*FINISHED, TrialState.RUNNING, TrialState.WAITING)
    return bool(study.get_trials(deepcopy=False, states=states))


def _differs(stored: dict[str, Any], current: dict[str, Any]) -> bool:
    return _comparable(_with_defaults(stored)) != _comparable(current)


def _public(stored: dict[str, Any]) -> dict[str, Any]:
    study = dict(stored.get("study", {}))
    if study.get("storage"):
        study["storage"] = public_url(study["storage"])
    return {**stored, "study": study}


def _store_config(study: optuna.Study, config: SearchConfig, current: dict[str, Any]) -> None:
    """Write what a study keeps about its making: the config, the space, the artifact folder."""
    space = config.search_space()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([name for name, _ in objectives(config)])
    spec = space.spec() if hasattr(space, "spec") else None  # a supernet's own options
    study.set_user_attr(
        "space",
        {"name": space.name, "version": space.version, **({"spec": spec} if spec else {})},
    )
    artifact_dir = os.path.abspath(config.study.artifact_dir)
    try:
        os.makedirs(artifact_dir, exist_ok=True)
    except OSError as e:
        raise ConfigError(
            f"study.artifacts: cannot create {artifact_dir}: {e.strerror}; choose a writable "
            "location"
        ) from None
    study.set_user_attr("artifact_dir", artifact_dir)
    study.set_user_attr("config", current)  # last: a study with a config is complete


def _with_defaults(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored config with the defaults of keys added since it was written filled in (a study
    from an older version resumes when nothing it set has changed)."""
    try:
        return SearchConfig.from_stored(stored).to_dict()
    except (ConfigError, ValueError):
        return stored


def _differences(old: Any, new: Any, path: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _differences(old.get(key), new.get(key), f"{path}.{key}" if path else key)
        return out
    return [] if old == new else [f"{path}: {old!r} -> {new!r}"]


def latency_reference(
    study: optuna.Study, config: SearchConfig, table: Any = None
) -> cost.Reference | None:
    """The machine speed the study's latency figures refer to (None when `latency.normalise`
    is off): the study's stored `latency_reference`, or else its latency table's reference, or
    else the reference model calibrated now on the latency device (for 1.5 x
    `latency.max_seconds`); stored on the study, so that every worker and every resumed run
    normalises to the same speed."""
    lat = config.latency
    if not lat.normalise:
        return None
    stored = study.user_attrs.get("latency_reference")
    if stored is not None:
        reference = cost.Reference.from_dict(stored)
    elif table is not None:
        reference = cost.Reference.from_dict(table.reference)
    else:  # as long as one and a half measurements: 3 s by default
        reference = cost.calibrate_reference(lat.device, lat.threads, 1.5 * lat.max_seconds)
    if lat.measure and not reference.fits(lat.device, lat.threads):
        raise ConfigError(
            f"study '{study.study_name}' normalises latency to a reference calibrated on "
            f"{reference.device} with {reference.threads} thread(s) and torch "
            f"{reference.torch}; this process measures on {lat.device} with {lat.threads} and "
            f"torch {torch.__version__}: run it where the study (or its table) was calibrated"
        )
    if stored is None:
        study.set_user_attr("latency_reference", reference.to_dict())
    return reference
