"""The one exception type the CLI turns into `lvit: error: ...` and exit code 2."""

from __future__ import annotations

from nas.config import ConfigError

__all__ = ["UserError", "ConfigError"]


class UserError(ConfigError):
    """Bad input from the user (a storage URL, a study name, a trial number, a path)."""
