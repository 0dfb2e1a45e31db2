"""The errors of the read API and `export`."""

from __future__ import annotations


class ArgumentError(ValueError):
    """A bad argument of the read API or `export`; the message names it (arguments.py checks them)."""

    def __init__(self, argument: str, message: str) -> None:
        super().__init__(message)
        self.argument = argument
