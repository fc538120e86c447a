"""Opening Optuna storages and studies with one-line errors instead of tracebacks.

Three kinds, all Optuna's own storages:
  - `sqlite:///runs/NAME.db`: a SQLite file, the default for one process;
  - `journal:///runs/NAME.journal` (`journal:////abs/path` for an absolute path): Optuna's
    journal file storage, for several processes on one machine (Optuna advises against SQLite
    with parallel writers);
  - `postgresql://user:password@host:port/db` (any SQLAlchemy RDB URL): for workers on many
    machines.

RDB storages keep Optuna's heartbeat: a trial whose process died is marked failed once its grace
period passes and retried (RetryHeartbeatStaleTrialCallback), so the study still reaches its
count. The journal storage has no heartbeat in Optuna; `lvit search --workers` watches its own
worker processes instead (see nas/workers.py).
"""

from __future__ import annotations

import os
import re
import warnings

import optuna
from sqlalchemy.engine import make_url

from nas.errors import UserError

__all__ = ["open_storage", "load_study", "redact", "journal_path", "MAX_RETRY"]

HEARTBEAT_INTERVAL_S = 30
GRACE_PERIOD_S = 120
MAX_RETRY = 2  # a failed trial is retried at most this often


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


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


def open_storage(url: str, *, create: bool, heartbeat: bool = True) -> optuna.storages.BaseStorage:
    """An Optuna storage for `url`. With `create=False` a missing SQLite or journal file is an
    error (Optuna would silently create an empty one). `heartbeat=False` opens an RDB storage
    without heartbeats (for readers such as the dashboard)."""
    journal = journal_path(url)
    if journal is not None:
        return _open_journal(url, journal, create)
    path = _sqlite_path(url)
    if path is not None:
        if create:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        elif not os.path.isfile(path):
            raise UserError(f"no study database at {path} (from --storage {redact(url)})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            beats = (
                {
                    "heartbeat_interval": HEARTBEAT_INTERVAL_S,
                    "grace_period": GRACE_PERIOD_S,
                    "heartbeat_stale_trial_callback": (
                        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)
                    ),
                }
                if heartbeat
                else {}
            )
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=_engine_kwargs(url, path),
                **beats,
            )
    except Exception as e:  # noqa: BLE001 - sqlalchemy raises many kinds; all mean "can't use it"
        raise UserError(f"cannot open storage {redact(url)}: {_reason(e)}") from None


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
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
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
