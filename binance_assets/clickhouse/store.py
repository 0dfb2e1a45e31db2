"""The store: which ClickHouse and which tables (`Store`), opened in one place (`Store.open`: connect, for
chdb:// lock and create the tables, on a server check them) as an `OpenStore` that runs the slice
statements (count, delete, insert). On a server the tables are created and migrated by `binance-assets
init` alone (docs/production.md).

A run, a sensor tick or a CLI command opens the store once per step and passes the `OpenStore` to the
functions that query it (checks, ledger, kline check): opening an embedded store costs about 80 ms and,
for chdb://, holds its lock (`client.py`). No Dagster here: the CLI's store commands, the read API and
`export` use it too.
"""

from __future__ import annotations

import io
import re
import sys
import uuid
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import cached_property

import lz4.frame
import pyarrow as pa
from clickhouse_connect.driver.client import Client

from binance_assets.clickhouse.client import (
    LOCK_TIMEOUT,
    Transport,
    describe_url,
    open_client,
    validate_url,
    with_host,
)
from binance_assets.clickhouse.defaults import (
    COMPRESSIONS,
    DEFAULT_ARCHIVES_TABLE,
    DEFAULT_BARS_TABLE,
    DEFAULT_COMPRESSION,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_DATABASE,
    DEFAULT_LIQUIDITY_TABLE,
    DEFAULT_SEND_RECEIVE_TIMEOUT,
)
from binance_assets.clickhouse.errors import SchemaError, ServerVersionError, ShardRoutingError
from binance_assets.clickhouse.tables import (
    ARCHIVES_TABLE,
    BARS_TABLE,
    LIQUIDITY_TABLE,
    SHARDING_VALUE_SQL,
    SHARDS_SQL,
    Slice,
    TableSpec,
    columns_sql,
    count_slice_sql,
    delete_slice_sql,
    on_cluster,
    qualified,
    quote,
    stored_tables,
)

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd

MIN_SERVER_VERSION = (23, 3)
"""Lightweight `DELETE FROM` is enabled by default from ClickHouse 23.3."""
MIN_CLUSTER_SERVER_VERSION = (24, 4)
"""A cluster's DELETE waits for every replica through `lightweight_deletes_sync`, a setting of 24.4 on."""
INIT_COMMAND = "binance-assets init"

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
CLUSTER_INSERT_SETTINGS: Mapping[str, int | str] = {"insert_quorum": "auto", "insert_quorum_parallel": 1}
"""On a cluster an INSERT returns once a majority of the shard's replicas hold the block (`auto`), so losing
the replica that took it loses no acknowledged rows. Parallel quorum inserts: many run pods write to one
table at once; nothing of ours reads with select_sequential_consistency (`OpenStore.clear` never counts
on a cluster)."""
_ROWS_PER_BATCH = 1 << 17


def require_server_version(
    version: str,
    minimum: tuple[int, int] = MIN_SERVER_VERSION,
    reason: str = "lightweight DELETE FROM, enabled by default from 23.3",
) -> None:
    """Raise ServerVersionError unless version (e.g. '26.9.2.1') is at least `minimum`."""
    parts = re.match(r"^(\d+)\.(\d+)", version)
    if parts is None or (int(parts[1]), int(parts[2])) < minimum:
        raise ServerVersionError(
            f"ClickHouse server version {version!r} is not supported: need "
            f"{'.'.join(map(str, minimum))} or later ({reason})"
        )


def owning_shard(value: int, shards: Sequence[tuple[int, int]]) -> int:
    """The shard number a Distributed table sends a row to: its sharding key's value modulo the total
    weight, then the shards' weight ranges in their order; `shards` is (number, weight) in that order."""
    slot = value % sum(weight for _, weight in shards)
    for number, weight in shards:
        if slot < weight:
            return number
        slot -= weight
    raise AssertionError("unreachable: slot below the total weight")


def _about(description: str, **constraints: int) -> dict[str, object]:
    """A Store field's metadata: its description (the variable first) and bounds, for ClickHouseResource."""
    return {"description": description, **constraints}


@dataclass(frozen=True)
class Store:
    """Where the tables live: the connection (url, password), the database and table names, the cluster.

    Validated when built (the URL by `client.validate_url`, the names as identifiers). Each field is
    declared here once: `Settings.store` builds the Store of the variables, and `ClickHouseResource` takes
    its fields (defaults, descriptions) from these.
    """

    url: str = field(
        repr=False,  # may carry a password
        metadata=_about(
            "CLICKHOUSE_URL: chdb:///abs/path (embedded chDB store) or http(s)://user:password@host:port"
        ),
    )
    password: str = field(
        default="",
        repr=False,
        metadata=_about(
            "CLICKHOUSE_PASSWORD, for a server URL built from run.py's CLICKHOUSE_HOST... settings "
            "(kept out of url so it can be an EnvVar); empty: the url's own"
        ),
    )
    """Replaces the URL's password when not empty (a server password kept out of the URL)."""
    database: str = field(
        default=DEFAULT_DATABASE, metadata=_about("CLICKHOUSE_DATABASE: database of the tables")
    )
    bars_table: str = field(
        default=DEFAULT_BARS_TABLE, metadata=_about("CLICKHOUSE_BARS_TABLE: the 5-second bars")
    )
    liquidity_table: str = field(
        default=DEFAULT_LIQUIDITY_TABLE, metadata=_about("CLICKHOUSE_LIQUIDITY_TABLE: the per-day stats")
    )
    archives_table: str = field(
        default=DEFAULT_ARCHIVES_TABLE, metadata=_about("CLICKHOUSE_ARCHIVES_TABLE: the archive ledger")
    )
    cluster: str = field(
        default="",
        metadata=_about(
            "CLICKHOUSE_CLUSTER: a cluster of servers (Distributed over ReplicatedMergeTree tables); "
            "empty: one server or the embedded store"
        ),
    )
    compression: str = field(
        default=DEFAULT_COMPRESSION,
        metadata=_about("CLICKHOUSE_COMPRESSION: how INSERTs to a server are compressed: lz4, zstd or none"),
    )
    """chdb:// is never compressed."""
    ca_cert: str = field(
        default="",
        metadata=_about(
            "CLICKHOUSE_CA_CERT: CA certificates (PEM) of an https server; empty: the system CAs"
        ),
    )
    connect_timeout: int = field(
        default=DEFAULT_CONNECT_TIMEOUT,
        metadata=_about("CLICKHOUSE_CONNECT_TIMEOUT: seconds to connect", ge=1),
    )
    send_receive_timeout: int = field(
        default=DEFAULT_SEND_RECEIVE_TIMEOUT,
        metadata=_about("CLICKHOUSE_SEND_RECEIVE_TIMEOUT: seconds to wait for a server's answer", ge=1),
    )

    def __post_init__(self) -> None:
        validate_url(self.url)
        for name in (self.database, self.bars_table, self.liquidity_table, self.archives_table):
            quote(name)
        if self.cluster:
            quote(self.cluster)
        if self.compression not in COMPRESSIONS:
            raise ValueError(f"compression {self.compression!r}: expected one of {', '.join(COMPRESSIONS)}")

    @property
    def embedded(self) -> bool:
        """A chdb:// store (created on first use, locked while open)."""
        return self.url.startswith("chdb://")

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
        seconds). With create_tables the tables are in place, once per process: chdb:// creates them; a
        server sends no DDL and checks them (`OpenStore.check_tables`: SchemaError, run init)."""
        with ExitStack() as shards, self.connect(self.url, lock_timeout) as client:
            store = OpenStore(self, client, shards)
            if create_tables:
                store.prepare_tables()
            yield store

    def connect(self, url: str, lock_timeout: float = LOCK_TIMEOUT) -> AbstractContextManager[Client]:
        """A client of `url` (the store's, or one of its cluster's replicas) with the store's password and
        transport settings."""
        transport = Transport(self.connect_timeout, self.send_receive_timeout, self.ca_cert)
        return open_client(
            url, password=self.password or None, lock_timeout=lock_timeout, transport=transport
        )


_ensured: set[tuple[str, ...]] = set()
_checked: set[tuple[str, ...]] = set()


@dataclass(frozen=True)
class OpenStore:
    """An open store: its `Store` and the clickhouse-connect client; runs the statements on slices.

    On a cluster with several shards, a slice's DELETE goes through a client of a replica of the slice's
    shard, opened on first use and closed with the store (`shards`)."""

    store: Store
    client: Client
    shards: ExitStack = field(default_factory=ExitStack, repr=False)
    _shard_clients: dict[int, Client] = field(default_factory=dict, repr=False)

    def qualified(self, spec: TableSpec) -> str:
        return self.store.qualified(spec)

    def check_server_version(self) -> None:
        require_server_version(self.client.server_version)
        if self.store.cluster:
            require_server_version(
                self.client.server_version,
                MIN_CLUSTER_SERVER_VERSION,
                "a cluster's DELETE waits for every replica with lightweight_deletes_sync, from 24.4",
            )

    def prepare_tables(self) -> None:
        """chdb://: create the tables; a server: check them (its DDL is `binance-assets init`'s alone)."""
        if self.store.embedded:
            self.ensure_tables()
        else:
            self.check_tables()

    def _key(self) -> tuple[str, ...]:
        store = self.store
        return (self.client.uri, store.database, *(name for _, name in store.tables), store.cluster)

    def ensure_tables(self) -> None:
        """Create the database and the three tables if missing (and add the columns newer versions added to
        daily_liquidity and the ledger); once per process per (server, database, tables, cluster). With a
        cluster every statement runs ON CLUSTER (TableSpec.create_statements)."""
        store, key = self.store, self._key()
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

    def check_tables(self) -> None:
        """Raise SchemaError (one line: run `binance-assets init`) unless every table, on a cluster every
        local and Distributed table, exists with every column of this version; one query on
        system.columns, once per process. Sends no DDL."""
        key = self._key()
        if key in _checked:
            return
        self.check_server_version()
        store = self.store
        expected = {
            table: [c.name for c in spec.columns]
            for spec, name in store.tables
            for table in stored_tables(name, store.cluster)
        }
        found: dict[str, set[str]] = defaultdict(set)
        for table, column in self.client.query(*columns_sql(store.database, list(expected))).result_rows:
            found[table].add(column)
        problems = [
            f"{store.database}.{table} " + ("missing" if not found[table] else f"lacks {', '.join(missing)}")
            for table, columns in expected.items()
            if (missing := [c for c in columns if c not in found[table]])
        ]
        if problems:
            raise SchemaError(
                f"ClickHouse at {describe_url(store.url)}: {'; '.join(problems)}: "
                f"run `{INIT_COMMAND}` (with these settings) to create or migrate the tables"
            )
        _checked.add(key)

    def count(self, spec: TableSpec, s: Slice) -> int:
        """Rows of the slice (cheap: primary key prefix and the day partition/min-max index)."""
        return int(self.client.command(*count_slice_sql(self.store.database, self.store.name(spec), s)))

    def delete(self, spec: TableSpec, s: Slice) -> None:
        """Lightweight DELETE of the slice. On a cluster from the local table of a replica of the shard
        owning the slice (`shard_client`), no ON CLUSTER, once for the shard and synchronous on its
        replicas (tables.delete_slice_sql)."""
        client = self.shard_client(s) if self.store.cluster else self.client
        sql, params = delete_slice_sql(self.store.database, self.store.name(spec), s, self.store.cluster)
        client.command(sql, parameters=params)

    def clear(self, spec: TableSpec, s: Slice) -> None:
        """Delete the slice's rows. On chdb:// and one server, where a count is exact, no DELETE when it
        finds none (a new slice: no mutation); on a cluster always the DELETE, since a lagging replica
        would count 0 and the rows would then be doubled by the INSERT."""
        if self.store.cluster or self.count(spec, s):
            self.delete(spec, s)

    def insert(self, spec: TableSpec, rows: pa.Table, *, token: str | None = None) -> None:
        """One INSERT of rows in the spec's schema as one block (INSERT_SETTINGS); nothing for zero rows.

        `token` is the write's identity (`insert_deduplication_token`): a retry of the same write with the
        same token is dropped by Replicated tables (and by MergeTree tables with
        non_replicated_deduplication_window), any other write is kept even if its rows are byte-identical
        to an earlier one's (a re-run after its DELETE). None: a fresh uuid4, unique to this call. On a
        cluster with CLUSTER_INSERT_SETTINGS (quorum). To a server compressed (Store.compression).
        Sent as an ArrowStream, batch by batch: `client.insert_arrow` first builds the whole Arrow file in
        one growing buffer, which doubles peak memory and, for a year of bars, the time.
        """
        if token == "":
            raise ValueError("an empty insert token turns deduplication by token off: pass None or a token")
        if not rows.num_rows:
            return
        settings: dict[str, int | str] = {
            **INSERT_SETTINGS,
            "insert_deduplicate": 1,
            "insert_deduplication_token": uuid.uuid4().hex if token is None else token,
        }
        if self.store.cluster:
            settings.update(CLUSTER_INSERT_SETTINGS)
        method = None if self.store.embedded or self.store.compression == "none" else self.store.compression
        insert_arrow_stream(self.client, self.qualified(spec), rows, settings, method)

    @cached_property
    def _shards(self) -> list[tuple[int, int, bool, str]]:
        result = self.client.query(SHARDS_SQL, parameters={"cluster": self.store.cluster}).result_rows
        return [(int(number), int(weight), bool(here), str(host)) for number, weight, here, host in result]

    def shard_client(self, s: Slice) -> Client:
        """A client of a replica of the shard that owns the slice's (market, ticker) under the Distributed
        tables' sharding key (tables.SHARDING_KEY): the store's own when it is one, else one of the
        shard's replicas from system.clusters, at the store URL's scheme and port (ShardRoutingError when
        the cluster is unknown)."""
        shards = self._shards
        here = {number for number, _, local, _ in shards if local}
        if len(shards) == 1 and here:
            return self.client
        if not shards:
            raise ShardRoutingError(f"cluster {self.store.cluster!r} is not in the server's system.clusters")
        value = int(
            self.client.command(SHARDING_VALUE_SQL, parameters={"market": s.market, "ticker": s.ticker})
        )
        owner = owning_shard(value, [(number, weight) for number, weight, _, _ in shards])
        if owner in here:
            return self.client
        if owner not in self._shard_clients:
            host = next(host for number, _, _, host in shards if number == owner)
            url = with_host(self.store.url, host)
            self._shard_clients[owner] = self.shards.enter_context(self.store.connect(url))
        return self._shard_clients[owner]


def insert_arrow_stream(
    client: Client, table: str, rows: pa.Table, settings: Mapping[str, int | str], compression: str | None
) -> None:
    """INSERT rows into table as an ArrowStream body, compressed by `compression` (its Content-Encoding)."""
    client.raw_insert(
        table,
        rows.column_names,
        compressed(arrow_stream(rows), compression),
        settings=dict(settings),
        fmt="ArrowStream",
        compression=compression,
    )


def arrow_stream(rows: pa.Table) -> Iterator[bytes]:
    """rows as an Arrow IPC stream, one chunk per record batch (_ROWS_PER_BATCH rows)."""
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, rows.schema) as writer:
        for batch in rows.to_batches(max_chunksize=_ROWS_PER_BATCH):
            writer.write_batch(batch)
            yield _drain(sink)
    yield _drain(sink)  # end-of-stream marker


def compressed(chunks: Iterator[bytes], method: str | None) -> Iterator[bytes]:
    """chunks as one lz4 frame or zstd frame, streamed (the HTTP Content-Encoding of the same name); None:
    as they are."""
    if method is None:
        yield from chunks
        return
    if method == "lz4":
        lz4_compressor = lz4.frame.LZ4FrameCompressor()
        yield lz4_compressor.begin()
        for chunk in chunks:
            yield lz4_compressor.compress(chunk)
        yield lz4_compressor.flush()
    elif method == "zstd":
        zstd_compressor = zstd.ZstdCompressor()
        for chunk in chunks:
            yield zstd_compressor.compress(chunk)
        yield zstd_compressor.flush()
    else:
        raise ValueError(f"compression {method!r}: expected lz4 or zstd")


def _drain(sink: io.BytesIO) -> bytes:
    data = sink.getvalue()
    sink.seek(0)
    sink.truncate()
    return data
