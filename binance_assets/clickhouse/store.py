"""The store: which ClickHouse and which tables (`Store`), opened in one place (`Store.open`: connect, for
chdb:// lock, create the tables) as an `OpenStore` that runs the slice statements (count, delete, insert).

A run, a sensor tick or a CLI command opens the store once per step and passes the `OpenStore` to the
functions that query it (checks, ledger, kline check): opening an embedded store costs about 80 ms and,
for chdb://, holds its lock (`client.py`). No Dagster here: the CLI's store commands, the read API and
`export` use it too.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import pyarrow as pa
from clickhouse_connect.driver.client import Client

from binance_assets.clickhouse.client import LOCK_TIMEOUT, open_client, validate_url
from binance_assets.clickhouse.tables import (
    ARCHIVES_TABLE,
    BARS_TABLE,
    LIQUIDITY_TABLE,
    Slice,
    TableSpec,
    count_slice_sql,
    delete_slice_sql,
    on_cluster,
    qualified,
    quote,
    stored_tables,
)
from binance_assets.settings import (
    DEFAULT_ARCHIVES_TABLE,
    DEFAULT_BARS_TABLE,
    DEFAULT_DATABASE,
    DEFAULT_LIQUIDITY_TABLE,
    Settings,
)

MIN_SERVER_VERSION = (23, 3)
"""Lightweight `DELETE FROM` is enabled by default from ClickHouse 23.3."""

_BIG = 1 << 62
INSERT_SETTINGS: Mapping[str, int] = {
    "async_insert": 0,
    "max_insert_threads": 1,
    "min_insert_block_size_rows": _BIG,
    "min_insert_block_size_bytes": _BIG,
    "max_insert_block_size": _BIG,
    "insert_distributed_sync": 1,
}
"""One INSERT is one block, so it commits all its rows or none: a failure while the server reads the
data leaves the table as before. The block is squashed in one stream (ClickHouse >= 26.8 otherwise
writes in parallel streams) and its parts, one per month partition, are written once the whole block
is in memory: the server holds the whole insert (about 90 bytes per bar row). Synchronous, so a
DELETE and the INSERT after it apply in order: chDB 4.4 (ClickHouse 26.9) defaults to async_insert = 1;
on a cluster too, where the INSERT goes through a Distributed table (`insert_distributed_sync`, called
`distributed_foreground_insert` by newer servers; other engines ignore it): it returns once every shard
holds its part, one block per shard."""
_ROWS_PER_BATCH = 1 << 17


class ServerVersionError(RuntimeError):
    """The ClickHouse server is too old for this project."""


def require_server_version(version: str) -> None:
    """Raise ServerVersionError unless version (e.g. '26.9.2.1') is at least MIN_SERVER_VERSION."""
    parts = re.match(r"^(\d+)\.(\d+)", version)
    if parts is None or (int(parts[1]), int(parts[2])) < MIN_SERVER_VERSION:
        minimum = ".".join(map(str, MIN_SERVER_VERSION))
        raise ServerVersionError(
            f"ClickHouse server version {version!r} is not supported: need {minimum} or later "
            "(lightweight DELETE FROM, enabled by default from 23.3)"
        )


@dataclass(frozen=True)
class Store:
    """Where the tables live: the connection (url, password), the database and table names, the cluster.

    Validated when built (the URL by `client.validate_url`, the names as identifiers). The defaults are
    those of the settings (CLICKHOUSE_DATABASE, CLICKHOUSE_*_TABLE, CLICKHOUSE_CLUSTER).
    """

    url: str = field(repr=False)  # may carry a password
    password: str = field(default="", repr=False)
    """Replaces the URL's password when not empty (a server password kept out of the URL)."""
    database: str = DEFAULT_DATABASE
    bars_table: str = DEFAULT_BARS_TABLE
    liquidity_table: str = DEFAULT_LIQUIDITY_TABLE
    archives_table: str = DEFAULT_ARCHIVES_TABLE
    cluster: str = ""
    """A cluster: Distributed tables over ReplicatedMergeTree ones; empty for one server or chDB."""

    def __post_init__(self) -> None:
        validate_url(self.url)
        for name in (self.database, self.bars_table, self.liquidity_table, self.archives_table):
            quote(name)
        if self.cluster:
            quote(self.cluster)

    @classmethod
    def from_settings(cls, settings: Settings) -> Store:
        return cls(
            url=settings.clickhouse_url,
            database=settings.clickhouse_database,
            bars_table=settings.bars_table,
            liquidity_table=settings.liquidity_table,
            archives_table=settings.archives_table,
            cluster=settings.clickhouse_cluster,
        )

    @property
    def tables(self) -> tuple[tuple[TableSpec, str], ...]:
        """Each table's spec and name."""
        return (
            (BARS_TABLE, self.bars_table),
            (LIQUIDITY_TABLE, self.liquidity_table),
            (ARCHIVES_TABLE, self.archives_table),
        )

    def name(self, spec: TableSpec) -> str:
        """The configured name of the table of `spec`."""
        for table, name in self.tables:
            if table is spec:
                return name
        raise ValueError(f"no table of the store has this spec (ordered by {spec.order_by})")

    def qualified(self, spec: TableSpec) -> str:
        """`database`.`table`, quoted, for SQL."""
        return qualified(self.database, self.name(spec))

    def label(self, spec: TableSpec) -> str:
        """database.table, for messages and metadata."""
        return f"{self.database}.{self.name(spec)}"

    @contextmanager
    def open(self, *, lock_timeout: float = LOCK_TIMEOUT, create_tables: bool = True) -> Iterator[OpenStore]:
        """The store, open until the block ends (for chdb:// its lock held, waiting up to lock_timeout
        seconds); with create_tables, the database and tables in place (once per process)."""
        with open_client(self.url, password=self.password or None, lock_timeout=lock_timeout) as client:
            store = OpenStore(self, client)
            if create_tables:
                store.ensure_tables()
            yield store


_ensured: set[tuple[str, ...]] = set()


@dataclass(frozen=True)
class OpenStore:
    """An open store: its `Store` and the clickhouse-connect client; runs the statements on slices."""

    store: Store
    client: Client

    def qualified(self, spec: TableSpec) -> str:
        return self.store.qualified(spec)

    def check_server_version(self) -> None:
        require_server_version(self.client.server_version)

    def ensure_tables(self) -> None:
        """Create the database and the three tables if missing (and add the columns newer versions added to
        daily_liquidity and the ledger); once per process per (server, database, tables, cluster). With a
        cluster every statement runs ON CLUSTER (TableSpec.create_statements)."""
        store = self.store
        key = (self.client.uri, store.database, *(name for _, name in store.tables), store.cluster)
        if key in _ensured:
            return
        self.check_server_version()
        database, cluster = store.database, store.cluster
        self.client.command(f"CREATE DATABASE IF NOT EXISTS {quote(database)}{on_cluster(cluster)}")
        for spec, table in store.tables:
            for statement in spec.create_statements(database, table, cluster):
                self.client.command(statement)
        for spec in (LIQUIDITY_TABLE, ARCHIVES_TABLE):
            for table in stored_tables(store.name(spec), cluster):
                self.client.command(spec.add_missing_columns(database, table, cluster))
        _ensured.add(key)

    def count(self, spec: TableSpec, s: Slice) -> int:
        """Rows of the slice (cheap: primary key prefix and the day partition/min-max index)."""
        return int(self.client.command(*count_slice_sql(self.store.database, self.store.name(spec), s)))

    def delete(self, spec: TableSpec, s: Slice) -> None:
        """Lightweight DELETE of the slice; on a cluster ON CLUSTER from the local tables."""
        sql, params = delete_slice_sql(self.store.database, self.store.name(spec), s, self.store.cluster)
        self.client.command(sql, parameters=params)

    def clear(self, spec: TableSpec, s: Slice) -> None:
        """Delete the slice's rows, sending no DELETE when a count finds none (a new slice)."""
        if self.count(spec, s):
            self.delete(spec, s)

    def insert(self, spec: TableSpec, rows: pa.Table) -> None:
        """One INSERT of rows in the spec's schema as one block (INSERT_SETTINGS); nothing for zero rows.

        Sent as an ArrowStream, batch by batch: `client.insert_arrow` first builds the whole Arrow file in
        one growing buffer, which doubles peak memory and, for a year of bars, the time.
        """
        if rows.num_rows:
            self.client.raw_insert(
                self.qualified(spec),
                rows.column_names,
                _arrow_stream(rows),
                settings=dict(INSERT_SETTINGS),
                fmt="ArrowStream",
            )


def _arrow_stream(rows: pa.Table) -> Iterator[bytes]:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, rows.schema) as writer:
        for batch in rows.to_batches(max_chunksize=_ROWS_PER_BATCH):
            writer.write_batch(batch)
            yield _drain(sink)
    yield _drain(sink)  # end-of-stream marker


def _drain(sink: io.BytesIO) -> bytes:
    data = sink.getvalue()
    sink.seek(0)
    sink.truncate()
    return data
