"""Opening Optuna storages and studies with one-line errors instead of tracebacks.

A SQLite file is the default for one process. Heartbeats are on, so a trial whose process died
is marked failed once its grace period passes (Optuna's own mechanism).
"""

from __future__ import annotations

import os
import re
import warnings

import optuna
from sqlalchemy.engine import make_url

from nas.errors import UserError

__all__ = ["open_storage", "load_study", "redact"]

HEARTBEAT_INTERVAL_S = 30
GRACE_PERIOD_S = 120


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


def open_storage(url: str, *, create: bool) -> optuna.storages.BaseStorage:
    """An Optuna RDB storage for `url`. With `create=False` a missing SQLite file is an error
    (Optuna would silently create an empty one)."""
    path = _sqlite_path(url)
    if path is not None:
        if create:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        elif not os.path.isfile(path):
            raise UserError(f"no study database at {path} (from --storage {redact(url)})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url,
                heartbeat_interval=HEARTBEAT_INTERVAL_S,
                grace_period=GRACE_PERIOD_S,
                engine_kwargs={"connect_args": {"timeout": 30}} if path else None,
            )
    except Exception as e:  # noqa: BLE001 - sqlalchemy raises many kinds; all mean "can't use it"
        reason = str(e).splitlines()[0][:200]
        raise UserError(f"cannot open storage {redact(url)}: {reason}") from None


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
