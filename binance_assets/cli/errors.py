"""The errors of the `binance-assets` command: each is reported as one line on stderr (main.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # runner.py imports the pipeline, which a usage error does not need
    from binance_assets.cli.runner import Totals


class CliError(Exception):
    """A failure reported as one line on stderr; ``code`` 2 for usage errors, 1 otherwise."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class RunFailed(CliError):
    """A run that did not write all its days: ``totals`` holds what it did (the days it wrote, the days
    that failed and why)."""

    def __init__(self, message: str, totals: Totals, code: int = 1) -> None:
        super().__init__(message, code)
        self.totals = totals
