"""Opening Optuna storages and studies with one-line errors instead of tracebacks.

Three kinds, all Optuna's own storages:
  - `sqlite:///runs/NAME.db`: a SQLite file, the default for one process;
  - `journal:///runs/NAME.journal` (`journal:////abs/path` for an absolute path): Optuna's
    journal file storage, for several processes on one machine (Optuna advises against SQLite
    with parallel writers);
  - `postgresql://user:password@host:port/db` (any SQLAlchemy RDB URL): for workers on many
    machines.

A process that runs trials opens an RDB storage with Optuna's heartbeat (the study's
`grace_period`): a trial whose process died is marked failed once that grace period passes and
retried (`RetryStaleTrial`), so the study still reaches its count. The journal storage has no
heartbeat in Optuna; `lvit search --workers` watches its own worker processes instead (see
nas/workers.py).

Credentials never leave the URL the user typed: messages show `redact(url)` and studies store
`public_url(url)`, without user or password.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import warnings
from collections.abc import Iterator
from typing import Any

import optuna
from sqlalchemy.engine import make_url

from nas.errors import UserError

__all__ = [
    "open_storage",
    "load_study",
    "redact",
    "public_url",
    "scrub_credentials",
    "storage_file",
    "owned_paths",
    "check_writable",
    "journal_path",
    "removed_on_failure",
    "RetryStaleTrial",
    "MAX_RETRY",
]

MAX_RETRY = 2  # a failed trial is retried at most this often


def _userinfo(url: str) -> tuple[str, str | None, str]:
    """`scheme://`, the user information before the host (None without one), and the rest.
    A password may hold `@` (badly quoted), so the host starts after the last `@` before the
    query. File URLs (sqlite, journal) have no user information: their paths may hold `@`."""
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.\-]*://)(.*)$", url, re.S)
    if not m or url.startswith(("sqlite:", "journal:")):
        return "", None, url
    scheme, rest = m.groups()
    at = rest.split("?", 1)[0].rfind("@")
    if at < 0:
        return scheme, None, rest
    return scheme, rest[:at], rest[at + 1 :]


_QUERY_PASSWORD = re.compile(r"([?&](?:password|passwd|pwd)=)[^&#]*", re.I)
_SECRET_KEYS = ("password", "passwd", "pwd")


def redact(url: str) -> str:
    """The URL without its password, for messages: `postgresql://user:***@host/db`."""
    scheme, info, rest = _userinfo(url)
    if info is not None and ":" in info:
        url = f"{scheme}{info.split(':', 1)[0]}:***@{rest}"
    return _QUERY_PASSWORD.sub(r"\1***", url)


def public_url(url: str) -> str:
    """The URL without credentials (user, password), as studies store it: a study's
    attributes are served by the dashboard and copied into reports."""
    scheme, info, rest = _userinfo(url)
    if info is not None:
        url = f"{scheme}{rest}"
    if "?" not in url or not scheme:
        return url
    base, query = url.split("?", 1)
    kept = [p for p in query.split("&") if p and p.split("=")[0].lower() not in _SECRET_KEYS]
    return f"{base}?{'&'.join(kept)}" if kept else base


def scrub_credentials(study: optuna.Study) -> int:
    """Rewrite the study's user attributes that hold a URL with credentials (studies written by
    versions that stored the full storage URL); returns how many were rewritten."""

    def clean(value: Any) -> Any:
        if isinstance(value, str) and "://" in value and public_url(value) != value:
            return public_url(value)
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    changed = 0
    for key, value in study.user_attrs.items():
        cleaned = clean(value)
        if cleaned != value:
            study.set_user_attr(key, cleaned)
            changed += 1
    return changed


def storage_file(url: str) -> str | None:
    """The file a SQLite or journal URL keeps the study in (None for a server)."""
    return journal_path(url) or _sqlite_path(url)


def check_writable(folder: str, what: str) -> None:
    """Refuse a folder that cannot be created or written (read-only, or a file in the way),
    before any work whose result would go there."""
    existing = os.path.abspath(folder)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UserError(f"{what}: {existing} is a file, not a folder; choose another location")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{what}: {existing} is not writable; choose a writable location")


def owned_paths(config: Any) -> list[str]:
    """What a search config's study owns on disk (storage file, artifact store, supernet
    folder): output folders must never replace or sit inside these."""
    paths = [storage_file(config.study.storage_url), config.study.artifact_dir]
    if config.supernet is not None:
        paths.append(config.supernet.folder(config.study.name))
    return [p for p in paths if p]


@contextlib.contextmanager
def removed_on_failure(*paths: str | None) -> Iterator[None]:
    """Remove again what the block created of `paths` (files or folders, with any parent
    folders that did not exist) if it raises: a failed start leaves nothing behind."""
    created = []
    for path in paths:
        if not path:
            continue
        top = os.path.abspath(path)
        if os.path.lexists(top):
            continue
        while not os.path.lexists(os.path.dirname(top)):  # the first folder that is new
            top = os.path.dirname(top)
        created.append(top)
    try:
        yield
    except BaseException:
        for top in created:
            if os.path.isdir(top) and not os.path.islink(top):
                shutil.rmtree(top, ignore_errors=True)
            elif os.path.lexists(top):
                with contextlib.suppress(OSError):
                    os.remove(top)
        raise


class RetryStaleTrial:
    """Retry a trial that failed because its process died (heartbeat, or a dead local worker):
    a WAITING copy with its parameters, as Optuna's `RetryHeartbeatStaleTrialCallback` makes,
    but without the failed trial's records (its status, reasons, costs and constraint values
    belong to the failed run; Optuna keeps a constraint already set, so a copied one would
    hide the retry's own). The copy records `retry_of`; Optuna's `failed_trial` and
    `retry_history` system attributes are kept. At most `max_retry` retries per trial."""

    def __init__(self, max_retry: int = MAX_RETRY) -> None:
        self.max_retry = max_retry

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        history = [*trial.system_attrs.get("retry_history", []), trial.number]
        if len(history) > self.max_retry:
            return
        first = trial.system_attrs.get("failed_trial", trial.number)
        study.add_trial(
            optuna.trial.create_trial(
                state=optuna.trial.TrialState.WAITING,
                params=trial.params,
                distributions=trial.distributions,
                user_attrs={"retry_of": trial.number},
                system_attrs={"failed_trial": first, "retry_history": history},
            )
        )


def _sqlite_path(url: str) -> str | None:
    if not url.startswith("sqlite:"):
        return None
    try:
        database = make_url(url).database
    except Exception:  # noqa: BLE001 - any parse failure is a bad URL
        raise UserError(
            f"not a valid storage URL: {redact(url)} (try sqlite:///runs/NAME.db)"
        ) from None
    return database if database and database != ":memory:" else None


def journal_path(url: str) -> str | None:
    """The file of a `journal:///PATH` URL (None for other URLs)."""
    if not url.startswith("journal:"):
        return None
    if not url.startswith("journal:///") or len(url) == len("journal:///"):
        raise UserError(
            f"not a valid journal URL: {url} (use journal:///runs/NAME.journal, or "
            "journal:////absolute/path)"
        )
    return url[len("journal:///") :]


def open_storage(
    url: str, *, create: bool, grace_period: float | None = None
) -> optuna.storages.BaseStorage:
    """An Optuna storage for `url`. With `create=False` a missing SQLite or journal file is an
    error (Optuna would silently create an empty one). `grace_period` (seconds) turns on
    Optuna's heartbeat for RDB storages, for processes that run trials: a trial without a
    heartbeat for that long is failed and retried by the next process that checks."""
    journal = journal_path(url)
    if journal is not None:
        return _open_journal(url, journal, create)
    path = _sqlite_path(url)
    if path is not None:
        if create:
            _make_parent(path, f"the storage {redact(url)}")
        elif not os.path.isfile(path):
            raise UserError(f"no study database at {path} (from --storage {redact(url)})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            beats = (
                {
                    "heartbeat_interval": max(1, int(grace_period // 4)),
                    "grace_period": max(1, int(round(grace_period))),
                    "heartbeat_stale_trial_callback": RetryStaleTrial(),
                }
                if grace_period is not None
                else {}
            )
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=_engine_kwargs(url, path),
                **beats,
            )
    except Exception as e:  # noqa: BLE001 - sqlalchemy raises many kinds; all mean "can't use it"
        raise UserError(f"cannot open storage {redact(url)}: {_reason(e)}") from None


def _make_parent(path: str, what: str) -> None:
    """Create the folder of `path`, or say in one line why it cannot be."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise UserError(
            f"cannot create {folder} for {what}: {e.strerror}; choose a writable location"
        ) from None


def _engine_kwargs(url: str, sqlite_path: str | None) -> dict | None:
    if sqlite_path:
        return {"connect_args": {"timeout": 30}}
    if url.startswith("postgresql"):  # fail fast on an unreachable server, and survive restarts
        return {"connect_args": {"connect_timeout": 10}, "pool_pre_ping": True}
    return None


def _reason(e: Exception) -> str:
    """The first informative line of a storage error, without any password in it."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    text = next((line for line in lines if not line.startswith("(Background")), repr(e))
    return redact(text)[:200]


def _open_journal(url: str, path: str, create: bool) -> optuna.storages.BaseStorage:
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if create:
        _make_parent(path, f"the storage {url}")
    elif not os.path.isfile(path):
        raise UserError(f"no study journal at {path} (from --storage {url})")
    try:
        return JournalStorage(JournalFileBackend(path))
    except Exception as e:  # noqa: BLE001 - a file that is not a journal, or unreadable
        raise UserError(f"cannot open storage {url}: {_reason(e)}") from None


def load_study(storage_url: str, study_name: str | None) -> optuna.Study:
    """Load an existing study; with no name, the storage's only study."""
    storage = open_storage(storage_url, create=False)
    names = [
        s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
    ]
    if study_name is None:
        if len(names) != 1:
            listing = ", ".join(names) or "none"
            raise UserError(
                f"{redact(storage_url)} holds {len(names)} studies ({listing}); "
                "name one with --study"
            )
        study_name = names[0]
    if study_name not in names:
        listing = ", ".join(names) or "none"
        raise UserError(
            f"no study '{study_name}' in {redact(storage_url)}; studies there: {listing}"
        )
    return optuna.load_study(study_name=study_name, storage=storage)
