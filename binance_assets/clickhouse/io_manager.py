"""ClickHouseIOManager: each output replaces its run's partition slices; inputs read them back.

Shape of dagster's `DbIOManager` (context -> slices, then one connection, ensure tables, delete the
slice, a type handler writes, metadata), with our storage rules (docs/design.md "Writes, failures and
recovery"):
- asset keys `[..., <market>, "hl5s_bars" | "daily_liquidity"]`, multi-partitioned by a daily `date`
  dimension and a `ticker` dimension, declared with `partition_expr` {"date": "day", "ticker": "ticker"};
- a run's partition keys become one slice (market, ticker, days) per ticker;
- every table is cast to the canonical Arrow schema and checked against the run's slices before any
  DELETE is sent; DELETE is the lightweight `DELETE FROM`, skipped when a `count()` finds nothing;
- each INSERT is one block (`INSERT_SETTINGS`): all its rows or none.
Handlers: `pyarrow.Table` and `pandas.DataFrame` (per ticker: delete the slice, one insert), and an
iterable of `pyarrow.Table` (streamed: per table, delete the (ticker, days) it holds, insert it; at the
end, delete the run's days no table held; if the iterable raises, days not yet written keep their rows).
The asset yields bars before daily_liquidity: a liquidity row marks its ticker-day complete.
"""

from __future__ import annotations

import datetime as dt
import io
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from typing import Any, Protocol

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from clickhouse_connect.driver.client import Client
from dagster import (
    ConfigurableIOManager,
    EnvVar,
    InputContext,
    MultiPartitionsDefinition,
    OutputContext,
    TableColumn,
    TableSchema,
    TimeWindowPartitionsDefinition,
)
from pydantic import Field, field_validator

from binance_assets.clickhouse.client import validate_url
from binance_assets.clickhouse.tables import (
    BARS,
    INSERT_SETTINGS,
    LIQUIDITY,
    Slice,
    TableSpec,
    conform,
    count_slice_sql,
    delete_slice_sql,
    open_store,
    qualified,
    quote,
    render_sql,
    select_slice_sql,
)
from binance_assets.partition_range import days_of_range

_ROWS_PER_BATCH = 1 << 17
STREAM_FLUSH_ROWS = 600_000
"""Streamed rows buffered before a write: a month of 5 s bars (535,680) fits; about 60 MB."""
Connect = Callable[[], AbstractContextManager[Client]]
"""Opens the store (and, for chdb://, locks it) for the span of a `with` block."""
PARTITION_COLUMNS = ("day", "ticker")
"""The columns `partition_expr` must map the (daily) date and ticker dimensions to."""


@dataclass(frozen=True)
class Target:
    """Where an output goes: a table and the run's slices of it, one per ticker."""

    database: str
    table: str
    spec: TableSpec
    market: str
    slices: tuple[Slice, ...]
    cluster: str = ""
    """CLICKHOUSE_CLUSTER: `table` is Distributed and deletes go ON CLUSTER to its local tables."""

    @property
    def name(self) -> str:
        return f"{self.database}.{self.table}"

    def query(self) -> str:
        """A SELECT of the slices, with literal values (display only)."""
        return "\nUNION ALL\n".join(
            render_sql(*select_slice_sql(self.database, self.table, s, self.spec.order_by))
            for s in self.slices
        )

    def conform(self, table: pa.Table) -> tuple[pa.Table, dict[str, frozenset[dt.date]]]:
        """Cast to the canonical schema; return it with its days per ticker; raise on rows outside."""
        rows = conform(table, self.spec.schema)
        markets = set(pc.unique(rows["market"]).to_pylist()) - {self.market}
        if markets:
            raise ValueError(f"{self.name}: rows of market {sorted(markets)} in an output of {self.market!r}")
        present = days_by_ticker(rows)
        allowed = {s.ticker: s.days for s in self.slices}
        for ticker, days in present.items():
            outside = days - allowed.get(ticker, frozenset())
            if outside:
                raise ValueError(
                    f"{self.name}: {len(outside)} day(s) of {ticker!r} outside this run's partitions, "
                    f"first {min(outside)}; the run covers {_describe_slices(self.slices)}"
                )
        return rows, present


def days_by_ticker(rows: pa.Table) -> dict[str, frozenset[dt.date]]:
    pairs = rows.group_by(["ticker", "day"], use_threads=False).aggregate([])
    days: dict[str, set[dt.date]] = defaultdict(set)
    for ticker, day in zip(pairs["ticker"].to_pylist(), pairs["day"].to_pylist(), strict=True):
        days[ticker].add(day)
    return {ticker: frozenset(d) for ticker, d in days.items()}


def clear_slice(client: Client, target: Target, s: Slice, *, skip_empty: bool = True) -> None:
    """Delete the slice's rows; with skip_empty, first count them and send no DELETE if none."""
    if skip_empty and int(client.command(*count_slice_sql(target.database, target.table, s))) == 0:
        return
    sql, params = delete_slice_sql(target.database, target.table, s, target.cluster)
    client.command(sql, parameters=params)


def insert_rows(client: Client, target: Target, rows: pa.Table) -> None:
    """One INSERT of canonical rows as one block (see INSERT_SETTINGS); nothing for zero rows.

    Sent as an ArrowStream, batch by batch: `client.insert_arrow` first builds the whole Arrow file in
    one growing buffer, which doubles peak memory and, for a year of bars, the time.
    """
    if rows.num_rows:
        table = qualified(target.database, target.table)
        client.raw_insert(
            table, rows.column_names, _arrow_stream(rows), settings=dict(INSERT_SETTINGS), fmt="ArrowStream"
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


def read_slices(client: Client, target: Target) -> pa.Table:
    parts = [
        conform(client.query_arrow(sql, parameters=params), target.spec.schema)
        for sql, params in (
            select_slice_sql(target.database, target.table, s, target.spec.order_by) for s in target.slices
        )
    ]
    return pa.concat_tables(parts)


class ArrowTypeHandler:
    supported_types: tuple[type, ...] = (pa.Table,)

    def handle_output(self, connect: Connect, target: Target, obj: pa.Table) -> int:
        rows, _ = target.conform(obj)
        with connect() as client:
            for s in target.slices:
                clear_slice(client, target, s)
                insert_rows(client, target, _rows_of_ticker(rows, s.ticker, len(target.slices)))
        return rows.num_rows

    def load_input(self, client: Client, target: Target) -> pa.Table:
        return read_slices(client, target)


class PandasTypeHandler:
    supported_types: tuple[type, ...] = (pd.DataFrame,)

    def handle_output(self, connect: Connect, target: Target, obj: pd.DataFrame) -> int:
        return ArrowTypeHandler().handle_output(
            connect, target, pa.Table.from_pandas(obj, preserve_index=False)
        )

    def load_input(self, client: Client, target: Target) -> pd.DataFrame:
        return read_slices(client, target).to_pandas()


class StreamTypeHandler:
    """An iterable of pyarrow Tables, each holding whole (ticker, day)s: one or several days.

    Tables are buffered up to STREAM_FLUSH_ROWS rows (a month of one ticker's bars), then written with
    one connection: a count per ticker, a DELETE where rows exist, one INSERT. So an embedded store is
    locked only while a batch is written, not while the next archives download and parse, and a run of
    31 days opens the store once instead of 31 times. If the iterable raises, the tables it produced
    are written and the days it did not reach keep their rows.
    """

    supported_types: tuple[type, ...] = (Iterable,)

    def handle_output(self, connect: Connect, target: Target, obj: Iterable[pa.Table]) -> int:
        seen: dict[str, set[dt.date]] = defaultdict(set)
        buffer: list[tuple[pa.Table, dict[str, frozenset[dt.date]]]] = []
        count = 0
        try:
            for item in obj:
                if not isinstance(item, pa.Table):
                    raise TypeError(
                        f"{target.name}: a streamed output must yield pyarrow Tables, got {type(item)}"
                    )
                rows, present = target.conform(item)
                for ticker, days in present.items():
                    if days & seen[ticker]:
                        raise ValueError(
                            f"{target.name}: {ticker} {min(days & seen[ticker])} came in two tables; "
                            "each (ticker, day) must be in one table of the stream"
                        )
                    seen[ticker] |= days
                buffer.append((rows, present))
                if sum(rows.num_rows for rows, _ in buffer) >= STREAM_FLUSH_ROWS:
                    count += _write_buffer(connect, target, buffer)
                    buffer = []
        except Exception:
            _write_buffer(connect, target, buffer)
            raise
        unseen = [replace(s, days=s.days - seen[s.ticker]) for s in target.slices if s.days - seen[s.ticker]]
        return count + _write_buffer(connect, target, buffer, clear=unseen)


def _write_buffer(
    connect: Connect,
    target: Target,
    buffer: list[tuple[pa.Table, dict[str, frozenset[dt.date]]]],
    clear: Sequence[Slice] = (),
) -> int:
    """Replace the buffered tables' (ticker, days) with their rows, and empty the `clear` slices."""
    days: dict[str, set[dt.date]] = defaultdict(set)
    for _, present in buffer:
        for ticker, ticker_days in present.items():
            days[ticker] |= ticker_days
    slices = [Slice(target.market, ticker, frozenset(d)) for ticker, d in days.items()] + list(clear)
    rows = [table for table, _ in buffer if table.num_rows]
    if not slices:
        return 0
    with connect() as client:
        for s in slices:
            clear_slice(client, target, s)
        if rows:
            insert_rows(client, target, pa.concat_tables(rows))
    return sum(table.num_rows for table in rows)


class OutputHandler(Protocol):
    supported_types: tuple[type, ...]

    def handle_output(self, connect: Connect, target: Target, obj: Any) -> int: ...


OUTPUT_HANDLERS: tuple[OutputHandler, ...] = (ArrowTypeHandler(), PandasTypeHandler(), StreamTypeHandler())
"""In lookup order: a DataFrame is iterable too."""


class ClickHouseIOManager(ConfigurableIOManager):
    """Stores `[..., <market>, "hl5s_bars" | "daily_liquidity"]` partition slices in ClickHouse."""

    url: str = Field(
        description="CLICKHOUSE_URL: chdb:///abs/path (embedded chDB store) or http(s)://user:password@host:port"
    )
    password: str = Field(
        default="",
        description="CLICKHOUSE_PASSWORD, for a server URL built from run.py's CLICKHOUSE_HOST... settings "
        "(kept out of url so it can be an EnvVar); empty: the url's own",
    )
    database: str = Field(default="binance", description="CLICKHOUSE_DATABASE: database of both tables")
    bars_table: str = Field(default="hl5s", description="CLICKHOUSE_BARS_TABLE: table of the 5-second bars")
    liquidity_table: str = Field(
        default="daily_liquidity", description="CLICKHOUSE_LIQUIDITY_TABLE: table of the per-day stats"
    )
    archives_table: str = Field(
        default="archives", description="CLICKHOUSE_ARCHIVES_TABLE: the archive ledger"
    )
    cluster: str = Field(
        default="",
        description="CLICKHOUSE_CLUSTER: a cluster of servers (Distributed over ReplicatedMergeTree tables); "
        "empty: one server or the embedded store",
    )

    @field_validator("url", mode="before")
    @classmethod
    def _valid_url(cls, value: object) -> object:
        # Before pydantic casts an EnvVar to its name; Dagster builds the IO manager again from its value.
        return validate_url(value) if isinstance(value, str) and not isinstance(value, EnvVar) else value

    @field_validator("database", "bars_table", "liquidity_table", "archives_table")
    @classmethod
    def _valid_identifier(cls, value: str) -> str:
        quote(value)
        return value

    @field_validator("cluster")
    @classmethod
    def _valid_cluster(cls, value: str) -> str:
        if value:
            quote(value)
        return value

    def handle_output(self, context: OutputContext, obj: object) -> None:
        started = time.perf_counter()
        handler = _output_handler(obj)
        target = self._target(context, context.definition_metadata)
        rows = handler.handle_output(self._connect, target, obj)
        context.add_output_metadata(_output_metadata(target, rows, time.perf_counter() - started))

    def load_input(self, context: InputContext) -> pa.Table | pd.DataFrame:
        handler = _load_handler(context.dagster_type.typing_type)
        upstream = context.upstream_output
        target = self._target(context, upstream.definition_metadata if upstream else {})
        with self._connect() as client:
            return handler.load_input(client, target)

    @contextmanager
    def _connect(self) -> Iterator[Client]:
        """The store, with its tables in place; for chdb:// its lock is held until the block ends."""
        with open_store(
            self.url,
            self.database,
            self.bars_table,
            self.liquidity_table,
            self.archives_table,
            password=self.password,
            cluster=self.cluster,
        ) as client:
            yield client

    def _target(self, context: OutputContext | InputContext, metadata: Mapping[str, Any]) -> Target:
        if not context.has_asset_key:
            raise ValueError("ClickHouseIOManager stores asset outputs only")
        path = context.asset_key.path
        tables = {"hl5s_bars": (self.bars_table, BARS), "daily_liquidity": (self.liquidity_table, LIQUIDITY)}
        if len(path) < 2 or path[-1] not in tables:
            raise ValueError(
                f"ClickHouseIOManager has no table for asset {context.asset_key.to_user_string()}: "
                f"the key must end with <market>/{' or <market>/'.join(tables)}"
            )
        market, (table, spec) = path[-2], tables[path[-1]]
        slices = _run_slices(context, metadata, market)
        return Target(self.database, table, spec, market, slices, self.cluster)


def _output_handler(obj: object) -> OutputHandler:
    if obj is None:
        raise TypeError("ClickHouseIOManager got None: return a pyarrow Table, a pandas DataFrame or tables")
    for handler in OUTPUT_HANDLERS:
        if isinstance(obj, handler.supported_types) and not isinstance(obj, (str, bytes)):
            return handler
    raise TypeError(
        f"ClickHouseIOManager cannot store {type(obj)}: "
        "return a pyarrow Table, a pandas DataFrame or an iterable of pyarrow Tables"
    )


def _load_handler(load_type: object) -> ArrowTypeHandler | PandasTypeHandler:
    """As dagster-duckdb: by the input's type; an unannotated input (Any) loads as a pyarrow Table."""
    if load_type is Any or load_type is pa.Table:
        return ArrowTypeHandler()
    if load_type is pd.DataFrame:
        return PandasTypeHandler()
    raise TypeError(f"ClickHouseIOManager loads pyarrow.Table or pandas.DataFrame inputs, not {load_type}")


def _run_slices(
    context: OutputContext | InputContext, metadata: Mapping[str, Any], market: str
) -> tuple[Slice, ...]:
    """One slice per ticker from the run's partition keys (a single key or a backfill range)."""
    key = context.asset_key.to_user_string()
    partitions_def = context.asset_partitions_def if context.has_asset_partitions else None
    if not isinstance(partitions_def, MultiPartitionsDefinition):
        raise ValueError(
            f"{key}: ClickHouseIOManager stores assets multi-partitioned by date and ticker only"
        )
    day_dim, ticker_dim = _partition_dimensions(key, partitions_def, metadata.get("partition_expr"))
    key_range = context.asset_partition_key_range
    days = days_of_range(partitions_def, key_range, day_dim, ticker_dim, lambda: context.asset_partition_keys)
    return tuple(Slice(market, ticker, frozenset(d)) for ticker, d in days.items())


def _partition_dimensions(
    key: str, partitions_def: MultiPartitionsDefinition, expr: object
) -> tuple[str, str]:
    """(day dimension, ticker dimension) from `partition_expr`, checked column by column."""
    if not isinstance(expr, Mapping):
        raise ValueError(
            f"{key} is partitioned but its output has no 'partition_expr' metadata mapping each dimension "
            'to a column, e.g. metadata={"partition_expr": {"date": "day", "ticker": "ticker"}}'
        )
    dims = {}
    for dim in partitions_def.partitions_defs:
        column = expr.get(dim.name)
        if column not in PARTITION_COLUMNS or column in dims:
            raise ValueError(
                f"{key}: 'partition_expr' maps dimension {dim.name!r} to {column!r}; "
                f"map one dimension to each of {PARTITION_COLUMNS}"
            )
        dims[column] = dim
    day = dims["day"].partitions_def
    if not isinstance(day, TimeWindowPartitionsDefinition):
        raise ValueError(f"{key}: dimension {dims['day'].name!r} (column day) must be daily time partitions")
    return dims["day"].name, dims["ticker"].name


def _rows_of_ticker(rows: pa.Table, ticker: str, tickers: int) -> pa.Table:
    return rows if tickers == 1 else rows.filter(pc.equal(rows["ticker"], ticker))


def _describe_slices(slices: tuple[Slice, ...]) -> str:
    return "; ".join(f"{s.ticker} {min(s.days)}..{max(s.days)} ({len(s.days)} days)" for s in slices)


def _output_metadata(target: Target, rows: int, seconds: float) -> dict[str, Any]:
    return {
        "dagster/row_count": rows,
        "dagster/table_name": target.name,
        "dagster/column_schema": TableSchema(
            columns=[TableColumn(c.name, c.type, description=c.description) for c in target.spec.columns]
        ),
        "tickers": ", ".join(s.ticker for s in target.slices),
        "days": len(frozenset().union(*(s.days for s in target.slices))),
        "seconds": round(seconds, 3),
        "Query": target.query(),
    }
