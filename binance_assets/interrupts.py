"""Make SIGINT (and so SIGTERM) work in processes started with SIGINT ignored.

A shell starts background jobs (`cmd &` in a script, CI runners) with SIGINT ignored, and Dagster maps
SIGTERM to whatever SIGINT does (`dagster._utils.interrupts.setup_interrupt_handlers`): SIGTERM is then
ignored too, and so is it in every child, which inherits ignored signals. Dagster stops its compute-log
`tail` processes with SIGTERM and waits 30 s for each that does not stop, so every run would hang a
minute. Restoring Python's own SIGINT handler first avoids that.
"""

import signal


def restore_interrupts() -> None:
    """Python's SIGINT handler where SIGINT is ignored, and SIGTERM as SIGINT where SIGTERM is ignored."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:
        signal.signal(signal.SIGTERM, signal.default_int_handler)
