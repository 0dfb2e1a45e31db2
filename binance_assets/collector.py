"""Python's garbage collector in the processes that run this package.

Importing Dagster and opening an instance make about 250,000 objects that live as long as the process, and
the collector walks them again and again: while Dagster is imported (0.2-0.5 s of its 1.1-1.7 s), at every
full collection of a run, and when the process exits, where the interpreter's final collections take 0.7 s
for a process that loaded the code location and 0.8 s after a `materialize` (docs/performance.md,
"Start-up"). So:
- a process that ends when its work does (the console script, and Dagster's run workers and servers,
  which load the code location) freezes everything at its exit (`freeze_at_exit`);
- `importing` turns the collector off while a command imports its modules (Dagster's, and `materialize`
  opens its instance too); in the console script (`console_process`) it then collects once and freezes
  what is left (`gc.freeze`: later collections skip it).

A process that calls the CLI's `main` itself, a test for example, keeps its collector during its life:
freezing there would keep every cycle that is garbage later, for as long as that process lives.
"""

from __future__ import annotations

import atexit
import gc
from collections.abc import Iterator
from contextlib import contextmanager

_console = False
"""Whether this process is the console script, which ends when its command does."""
_freezing_at_exit = False


def freeze_at_exit() -> None:
    """Freeze every object when the process exits, before the interpreter's final collections (once)."""
    global _freezing_at_exit
    if not _freezing_at_exit:
        _freezing_at_exit = True
        atexit.register(gc.freeze)


def console_process() -> None:
    """Mark this process as the console script: frozen after its imports and at its exit."""
    global _console
    _console = True
    freeze_at_exit()


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
