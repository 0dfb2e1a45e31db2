"""An inter-process lock on a file (``flock``), waited for by polling up to a deadline.

Used for the embedded ClickHouse store (clickhouse/client.py) and for creating the Dagster instance
(cli/common.py): both are shared by processes that start at the same time.
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

POLL_SECONDS = 0.05


@contextmanager
def file_lock(lock_file: Path, timeout: float, busy: Callable[[], Exception]) -> Iterator[None]:
    """Hold an exclusive flock on ``lock_file`` (created if missing) for the block; raise ``busy()`` if
    another process holds it for ``timeout`` seconds. The kernel releases it if the holder dies."""
    deadline = time.monotonic() + timeout
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("a") as handle:
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise busy() from None
                time.sleep(POLL_SECONDS)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
