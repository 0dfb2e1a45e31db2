"""The errors of the top-level modules, and the base of the errors that say whether a run's retry heals them.

Each package keeps its errors in its own `errors.py` (`vision/`, `clickhouse/`, `read/`, `cli/`); these are
the top level's. `LoadError` is what orchestration/failures.py asks: a load's errors (vision/errors.py,
`UnfinishedLoad`) say themselves whether trying again can help, so the classifier knows no class of theirs.
"""

from __future__ import annotations


class LoadError(Exception):
    """An error of a run's load (Vision, an archive's bytes, the load itself) that says whether waiting
    and trying again can heal it (`permanent_reason`)."""

    def permanent_reason(self) -> str | None:
        """One line saying why trying again cannot heal this error, or None when it may. By default it
        cannot: the message says why."""
        return str(self)


class SettingsError(ValueError):
    """A configuration variable holds a value we cannot use; the message names the variable (settings.py)."""


class UnfinishedLoad(LoadError, RuntimeError):
    """A run's results were read before its bars stream was drained (pipeline.RunLoad): a retry would read
    them early again."""
