"""DDL, Arrow schemas and SQL builders of the tables: hl5s, daily_liquidity (docs/design.md "Tables")
and the archive ledger. Pure: text and Arrow only; `store.py` opens the store and runs the statements.

The column lists below are the one source of the DDL, the canonical Arrow insert schemas and the
`dagster/column_schema` descriptions. SQL builders return `(sql, parameters)` for clickhouse-connect's
server-side binding (`{name:Type}`); identifiers are validated and backtick-quoted.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import pyarrow as pa
from clickhouse_connect.driver.binding import format_query_value

from binance_assets.clickhouse.defaults import is_identifier

LOCAL_SUFFIX = "_local"
"""On a cluster (CLICKHOUSE_CLUSTER), `<table>_local` is the ReplicatedMergeTree table on each server and
`<table>` the Distributed table over them, which every read and INSERT uses."""
SHARDING_KEY = "cityHash64(market, ticker)"
"""How a Distributed table places rows: a ticker's rows live on one shard, so a slice's DELETE, count and
FINAL see all of them in one place, and one ticker's INSERT is one block on one shard."""

_PARAMETER = re.compile(r"\{(\w+):[^}]+\}")
_ARROW_TYPES: Mapping[str, pa.DataType] = {
    "LowCardinality(String)": pa.string(),
    "String": pa.string(),
    "Date": pa.date32(),
    "DateTime('UTC')": pa.timestamp("s", tz="UTC"),
    "DateTime64(6, 'UTC')": pa.timestamp("us", tz="UTC"),
    "Float64": pa.float64(),
    "UInt32": pa.uint32(),
    "UInt64": pa.uint64(),
    "Int64": pa.int64(),
}


class Column(NamedTuple):
    name: str
    type: str
    description: str
    default: str = ""
    """A DEFAULT expression: what rows written before the column existed read."""

    def definition(self) -> str:
        default = f" DEFAULT {self.default}" if self.default else ""
        return f"{quote(self.name)} {self.type}{default} COMMENT {format_query_value(self.description)}"


_KEY_COLUMNS = (
    Column("market", "LowCardinality(String)", "Market key: spot, um or cm"),
    Column("ticker", "LowCardinality(String)", "Symbol, e.g. BTCUSDT"),
    Column("day", "Date", "UTC day the row belongs to (the partition's date)"),
)

BARS_COLUMNS: tuple[Column, ...] = (
    *_KEY_COLUMNS,
    Column("ts", "DateTime('UTC')", "Bar close (right edge): the bar covers trades in [ts-5s, ts)"),
    Column("open", "Float64", "Price of the first trade, in (time, id) order"),
    Column("high", "Float64", "Highest trade price"),
    Column("low", "Float64", "Lowest trade price"),
    Column("close", "Float64", "Price of the last trade, in (time, id) order"),
    Column("volume", "Float64", "Base volume: sum of qty"),
    Column("quote_volume", "Float64", "Quote volume: sum of price * qty"),
    Column("taker_buy_volume", "Float64", "Base volume of trades whose buyer was the taker"),
    Column("trade_count", "UInt32", "Number of trades"),
)

LIQUIDITY_COLUMNS: tuple[Column, ...] = (
    *_KEY_COLUMNS,
    Column("trade_count", "UInt64", "Number of trades on the day"),
    Column("volume", "Float64", "Base volume: sum of qty"),
    Column("quote_volume", "Float64", "Quote volume: sum of price * qty"),
    Column("taker_buy_volume", "Float64", "Base volume of trades whose buyer was the taker"),
    Column("bar_count", "UInt32", "Number of 5-second bars of the day"),
    Column("first_trade_id", "Int64", "Lowest trade id of the day"),
    Column("last_trade_id", "Int64", "Highest trade id of the day"),
    Column("missing_trade_ids", "UInt64", "Trade ids absent between first and last"),
    Column("source", "LowCardinality(String)", "Archive kind used: daily, monthly or none"),
    Column("archive_sha256", "String", "sha256 of the archive the day was read from"),
    Column("loaded_at", "DateTime('UTC')", "When the row was written (ReplacingMergeTree version)"),
    Column("duplicate_rows", "UInt64", "Rows repeating a trade id already read (dropped: counted once)"),
    Column("nonpositive_rows", "UInt64", "Trades with price or qty <= 0 (kept in the counts)"),
    Column(
        "dataset",
        "LowCardinality(String)",
        "The dataset the day was built from: trades or aggTrades",
        "'trades'",
    ),
    Column(
        "uncovered_trade_ids",
        "UInt64",
        "aggTrades days: ids of the day's range that no aggregate covers (Binance's klines may count "
        "them); 0 for trades days",
        "0",
    ),
    Column(
        "uncovered_id_ranges",
        "String",
        "Those ids as ascending ranges, e.g. 100-105,230 (the first 1,000 ranges, then +N more)",
        "''",
    ),
)

ARCHIVES_COLUMNS: tuple[Column, ...] = (
    Column("market", "LowCardinality(String)", "Market key: spot, um or cm"),
    Column("ticker", "LowCardinality(String)", "Symbol, e.g. BTCUSDT"),
    Column("key", "String", "Object key of the trades or aggTrades archive on Binance Vision"),
    Column("freq", "LowCardinality(String)", "daily or monthly"),
    Column("size", "UInt64", "Size in bytes, as listed when loaded"),
    Column("etag", "String", "ETag as listed when loaded (S3: MD5 of a single-part upload)"),
    Column("last_modified", "DateTime64(6, 'UTC')", "LastModified as listed when loaded"),
    Column("sha256", "String", "sha256 of the archive, verified against its .CHECKSUM"),
    Column("rows", "UInt64", "Rows read: trades, or aggregate trades (duplicate ids included)"),
    Column("first_trade_id", "Int64", "Lowest trade id in the archive"),
    Column("last_trade_id", "Int64", "Highest trade id in the archive"),
    Column("first_time", "DateTime64(6, 'UTC')", "Time of the earliest trade"),
    Column("last_time", "DateTime64(6, 'UTC')", "Time of the latest trade"),
    Column("loaded_at", "DateTime('UTC')", "When the archive was loaded (ReplacingMergeTree version)"),
    Column("dataset", "LowCardinality(String)", "The archive's dataset: trades or aggTrades", "'trades'"),
)


@dataclass(frozen=True)
class TableSpec:
    """A table's columns and engine; the name and database are chosen by configuration."""

    columns: tuple[Column, ...]
    engine: str
    order_by: tuple[str, ...]

    @property
    def schema(self) -> pa.Schema:
        """The canonical Arrow insert schema (non-nullable: no column of ours is Nullable)."""
        return pa.schema([pa.field(c.name, _ARROW_TYPES[c.type], nullable=False) for c in self.columns])

    def ddl(self, database: str, table: str, cluster: str = "") -> str:
        """CREATE TABLE of one server's table: this spec's engine, or on a cluster its Replicated* variant
        ON CLUSTER (its Keeper path and replica name from the servers' default_replica_path/_name)."""
        columns = ",\n".join(f"  {c.definition()}" for c in self.columns)
        engine = f"Replicated{self.engine}" if cluster else self.engine
        return (
            f"CREATE TABLE IF NOT EXISTS {qualified(database, table)}{on_cluster(cluster)} (\n{columns}\n) "
            f"ENGINE = {engine} ORDER BY ({', '.join(self.order_by)})"
        )

    def create_statements(self, database: str, table: str, cluster: str = "") -> tuple[str, ...]:
        """The DDL of the table `table` reads and writes use: on a single server that table itself; on a
        cluster the local table on every server, then the Distributed table named `table` over them."""
        if not cluster:
            return (self.ddl(database, table),)
        local = local_table(table)
        return (
            self.ddl(database, local, cluster),
            f"CREATE TABLE IF NOT EXISTS {qualified(database, table)}{on_cluster(cluster)} "
            f"AS {qualified(database, local)} "
            f"ENGINE = Distributed({quote(cluster)}, {quote(database)}, {quote(local)}, {SHARDING_KEY})",
        )

    def add_missing_columns(self, database: str, table: str, cluster: str = "") -> str:
        """ALTER adding the columns a table created by an older version lacks (a no-op if none is)."""
        clauses = ", ".join(f"ADD COLUMN IF NOT EXISTS {c.definition()}" for c in self.columns)
        return f"ALTER TABLE {qualified(database, table)}{on_cluster(cluster)} {clauses}"


BARS_TABLE = TableSpec(BARS_COLUMNS, "MergeTree PARTITION BY toYYYYMM(day)", ("market", "ticker", "ts"))
LIQUIDITY_TABLE = TableSpec(LIQUIDITY_COLUMNS, "ReplacingMergeTree(loaded_at)", ("market", "ticker", "day"))
ARCHIVES_TABLE = TableSpec(ARCHIVES_COLUMNS, "ReplacingMergeTree(loaded_at)", ("market", "ticker", "key"))


@dataclass(frozen=True)
class Slice:
    """The rows of one market and ticker on a set of UTC days."""

    market: str
    ticker: str
    days: frozenset[dt.date]

    def __post_init__(self) -> None:
        if not self.days:
            raise ValueError(f"empty slice for {self.market} {self.ticker}: no days")


def quote(identifier: str) -> str:
    """Backtick-quote a validated identifier (letters, digits, underscore; not a digit first)."""
    if not is_identifier(identifier):
        raise ValueError(f"invalid ClickHouse identifier {identifier!r}: use letters, digits and underscore")
    return f"`{identifier}`"


def qualified(database: str, table: str) -> str:
    return f"{quote(database)}.{quote(table)}"


def on_cluster(cluster: str) -> str:
    """The ` ON CLUSTER` clause of a statement on cluster `cluster`; nothing on a single server."""
    return f" ON CLUSTER {quote(cluster)}" if cluster else ""


def local_table(table: str) -> str:
    return f"{table}{LOCAL_SUFFIX}"


def stored_tables(table: str, cluster: str = "") -> tuple[str, ...]:
    """The tables that hold `table`'s columns: itself; on a cluster its local and Distributed tables."""
    return (local_table(table), table) if cluster else (table,)


def _slice_where(s: Slice) -> tuple[str, dict[str, Any]]:
    """Consecutive days as a half-open range, others as a set."""
    first, last = min(s.days), max(s.days)
    where = "market = {market:String} AND ticker = {ticker:String}"
    params: dict[str, Any] = {"market": s.market, "ticker": s.ticker}
    if (last - first).days + 1 == len(s.days):
        params.update(first=first, stop=last + dt.timedelta(days=1))
        return f"{where} AND day >= {{first:Date}} AND day < {{stop:Date}}", params
    params["days"] = sorted(s.days)
    return f"{where} AND day IN {{days:Array(Date)}}", params


DELETE_SYNC = 2
"""`lightweight_deletes_sync`: the DELETE returns once every replica of the table has applied it (ClickHouse
24.4 and later; also its default there)."""


def delete_slice_sql(database: str, table: str, s: Slice, cluster: str = "") -> tuple[str, dict[str, Any]]:
    """Lightweight DELETE (marks rows deleted at once; not the rewriting ALTER TABLE ... DELETE).

    On a cluster it deletes from the local (replicated) table of the server it is sent to, without ON
    CLUSTER: one mutation for the shard, which replication carries to the shard's other replicas, waited
    for on all of them (DELETE_SYNC). A Distributed table takes no DELETE, so the statement must reach a
    replica of the shard that owns the slice (`store.OpenStore.delete` checks it; docs/production.md).
    """
    where, params = _slice_where(s)
    if not cluster:
        return f"DELETE FROM {qualified(database, table)} WHERE {where}", params
    sql = (
        f"DELETE FROM {qualified(database, local_table(table))} WHERE {where} "
        f"SETTINGS lightweight_deletes_sync = {DELETE_SYNC}"
    )
    return sql, params


def columns_sql(database: str, tables: Sequence[str]) -> tuple[str, dict[str, Any]]:
    """Every column of `tables` in `database`, as (table, name) rows: one query checks the schema."""
    sql = (
        "SELECT table, name FROM system.columns "
        "WHERE database = {database:String} AND table IN {tables:Array(String)}"
    )
    return sql, {"database": database, "tables": list(tables)}


SHARDS_SQL = (
    "SELECT shard_num, any(shard_weight) AS weight, max(is_local) AS here, min(host_name) AS host "
    "FROM system.clusters WHERE cluster = {cluster:String} GROUP BY shard_num ORDER BY shard_num"
)
"""The shards of a cluster in the Distributed engine's order, their weights, whether the server that
answers is one of the shard's replicas, and the host name of one of its replicas."""
SHARDING_VALUE_SQL = "SELECT cityHash64({market:String}, {ticker:String})"
"""SHARDING_KEY's value for one (market, ticker)."""


def count_slice_sql(database: str, table: str, s: Slice) -> tuple[str, dict[str, Any]]:
    """Rows of the slice; cheap: primary key prefix (market, ticker) and the day partition/min-max index."""
    where, params = _slice_where(s)
    return f"SELECT count() FROM {qualified(database, table)} WHERE {where}", params


def days_of_slice_sql(database: str, table: str, s: Slice) -> tuple[str, dict[str, Any]]:
    """The slice's days that have rows."""
    where, params = _slice_where(s)
    return f"SELECT DISTINCT day FROM {qualified(database, table)} WHERE {where}", params


def select_slice_sql(
    database: str, table: str, s: Slice, order_by: Sequence[str] = ()
) -> tuple[str, dict[str, Any]]:
    where, params = _slice_where(s)
    order = f" ORDER BY {', '.join(quote(c) for c in order_by)}" if order_by else ""
    return f"SELECT * FROM {qualified(database, table)} WHERE {where}{order}", params


def render_sql(sql: str, params: Mapping[str, Any]) -> str:
    """The statement with its parameters as literals: for display, and for ON CLUSTER statements."""
    return _PARAMETER.sub(lambda m: format_query_value(params[m[1]]), sql)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Cast table to schema (same column names, any order); raise ValueError naming the bad column.

    Integer time columns are read as ClickHouse sends them in Arrow: DateTime as UInt32 seconds,
    Date (older servers) as UInt16 days since 1970-01-01.
    """
    names = set(table.column_names)
    missing, extra = set(schema.names) - names, names - set(schema.names)
    if missing or extra or len(names) != table.num_columns:
        raise ValueError(
            f"columns {table.column_names} do not match {schema.names}: "
            f"missing {sorted(missing)}, unexpected {sorted(extra)}"
        )
    return pa.Table.from_arrays([_cast(table[f.name], f) for f in schema], schema=schema)


def _cast(column: pa.ChunkedArray, field: pa.Field) -> pa.ChunkedArray:
    if column.null_count:
        raise ValueError(f"column {field.name!r} has {column.null_count} nulls")
    if pa.types.is_integer(column.type) and pa.types.is_timestamp(field.type):
        column = column.cast(pa.int64())
    elif pa.types.is_integer(column.type) and pa.types.is_date32(field.type):
        column = column.cast(pa.int32())
    try:
        return column.cast(field.type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
        raise ValueError(
            f"column {field.name!r}: cannot cast {column.type} to {field.type}: {error}"
        ) from error
