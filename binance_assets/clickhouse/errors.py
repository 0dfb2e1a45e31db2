"""The errors of the store: a busy embedded store (`client.py`), a server's tables, shards or version
(`store.py`)."""

from __future__ import annotations

from pathlib import Path


class StoreBusyError(TimeoutError):
    """The embedded store stayed locked by another process (or thread) for the whole wait."""

    def __init__(self, lock_file: Path, timeout: float) -> None:
        super().__init__(
            f"embedded ClickHouse store is busy: could not lock {lock_file} within {timeout:g} s "
            "(another run, sensor or CLI command is using it; retry later or raise lock_timeout)"
        )
        self.lock_file = lock_file


class SchemaError(RuntimeError):
    """A server's tables are missing or lack columns of this version: `binance-assets init` makes them."""


class ShardRoutingError(RuntimeError):
    """A cluster DELETE cannot find the slice's shard: the cluster is not in the server's system.clusters."""


class ServerVersionError(RuntimeError):
    """The ClickHouse server is too old for this project."""
