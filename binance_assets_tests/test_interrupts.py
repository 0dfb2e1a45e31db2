"""A process started with SIGINT ignored (a background job) still stops its children with SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys

CHILD = """
import signal, subprocess, sys
from dagster._utils.interrupts import setup_interrupt_handlers
{restore}
setup_interrupt_handlers()  # what every Dagster run does: SIGTERM behaves as SIGINT
child = subprocess.Popen(["sleep", "30"])
child.terminate()
try:
    child.wait(timeout=5)
    print("stopped")
except subprocess.TimeoutExpired:
    child.kill()
    print("ignored SIGTERM")
"""


def run_in_background_like_shell(restore: str) -> str:
    """Start the child with SIGINT ignored, as a shell starts `cmd &`."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD.format(restore=restore)],
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


def test_without_the_fix_children_ignore_sigterm() -> None:
    assert run_in_background_like_shell("") == "ignored SIGTERM"


def test_restore_interrupts_lets_children_stop() -> None:
    fix = "from binance_assets.processes import restore_interrupts; restore_interrupts()"
    assert run_in_background_like_shell(fix) == "stopped"
