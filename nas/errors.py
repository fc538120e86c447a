"""The exceptions the CLI turns into `lvit: error: ...` and exit code 2. The bottom of the
import graph: it imports nothing of ours."""

from __future__ import annotations

__all__ = ["UserError", "ConfigError"]


class ConfigError(ValueError):
    """A config (or a command-line value) is wrong; the message says what and how to fix it."""


class UserError(ConfigError):
    """Bad input from the user (a storage URL, a study name, a trial number, a path)."""
