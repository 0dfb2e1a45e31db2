"""Python's garbage collector in a `binance-assets` process.

Importing Dagster and opening an instance make about 250,000 objects that live as long as the process, and
the collector walks them again and again: while Dagster is imported (0.2-0.5 s of its 1.1-1.7 s), at every
full collection of a run, and when the process exits, where the interpreter's final collections took
0.8 s after a `materialize` (docs/performance.md, "Start-up"). So:
- `importing` turns the collector off while a command imports its modules (Dagster's, and `materialize`
  opens its instance too);
- in the console script (`console_process`), it then collects once and freezes what is left
  (`gc.freeze`: later collections skip it), and the exit freezes everything.

A process that calls `main` itself, a test for example, keeps its collector as it was: freezing there
would keep every cycle that is garbage later, for as long as that process lives.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

_console = False
"""Whether this process is the console script, which ends when its command does."""


@contextmanager
def console_process() -> Iterator[None]:
    """The console script's command: frozen at its end, so that the exit skips collecting."""
    global _console
    _console = True
    try:
        yield
    finally:
        gc.freeze()


@contextmanager
def importing() -> Iterator[None]:
    """The block's imports without collecting; in the console script, then collect once and freeze the
    survivors."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if _console:
            gc.collect()
            gc.freeze()
        if enabled:
            gc.enable()
