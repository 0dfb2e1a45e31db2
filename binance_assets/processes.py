"""How this package's processes start and end: SIGINT, Python's garbage collector, OpenBLAS's threads.

**SIGINT and SIGTERM** (`restore_interrupts`). A shell starts background jobs (`cmd &` in a script, CI
runners) with SIGINT ignored, and Dagster maps SIGTERM to whatever SIGINT does
(`dagster._utils.interrupts.setup_interrupt_handlers`): SIGTERM is then ignored too, and so is it in every
child, which inherits ignored signals. Dagster stops its compute-log `tail` processes with SIGTERM and
waits 30 s for each that does not stop, so every run would hang a minute. Restoring Python's own SIGINT
handler first avoids that.

**The garbage collector.** Importing Dagster and opening an instance make about 250,000 objects that live
as long as the process, and the collector walks them again and again: while Dagster is imported (0.2-0.5 s
of its 1.1-1.7 s), at every full collection of a run, and when the process exits, where the interpreter's
final collections take 0.7 s for a process that loaded the code location and 0.8 s after a `materialize`
(docs/performance.md, "Start-up"). So:
- a process that ends when its work does (the console script, and Dagster's run workers and servers,
  which load the code location) freezes everything at its exit (`freeze_at_exit`);
- `importing` turns the collector off while a command imports its modules (Dagster's, and `materialize`
  opens its instance too); in the console script (`console_process`) it then collects once and freezes
  what is left (`gc.freeze`: later collections skip it).

A process that calls the CLI's `main` itself, a test for example, keeps its collector during its life:
freezing there would keep every cycle that is garbage later, for as long as that process lives.

**OpenBLAS's threads** (`one_blas_thread`). Importing NumPy starts OpenBLAS's worker threads, one per
core, and they spin before they sleep: 0.15 s of CPU per process on this 2-core machine, taken from the
core that a `materialize`'s downloads and start-up share, and paid again by every Dagster run worker. This
package does no linear algebra (bars are reductions), so its processes ask OpenBLAS for one thread before
NumPy is first imported: the console script (`console_process`) and the processes that load the code
location (orchestration/__init__.py). A value the user set is kept.
"""

from __future__ import annotations

import atexit
import gc
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager


def restore_interrupts() -> None:
    """Python's SIGINT handler where SIGINT is ignored, and SIGTERM as SIGINT where SIGTERM is ignored."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:
        signal.signal(signal.SIGTERM, signal.default_int_handler)


def one_blas_thread() -> None:
    """Ask OpenBLAS for one thread, unless the user chose; in effect only before NumPy's first import."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


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
    """Mark this process as the console script: frozen after its imports and at its exit, with one
    OpenBLAS thread."""
    global _console
    _console = True
    freeze_at_exit()
    one_blas_thread()


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
