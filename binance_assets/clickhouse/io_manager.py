"""ClickHouseIOManager: each output replaces its run's partition slices in the store.

Shape of dagster's `DbIOManager` (context -> slices, then one connection, ensure tables, delete the
slice, a type handler writes, metadata), with our storage rules (docs/design.md "Writes, failures and
recovery"):
- asset keys `[..., <market>, "hl5s_bars" | "daily_liquidity"]`, multi-partitioned by a daily `date`
  dimension and a `ticker` dimension (`partition_expr` metadata may say so, {"date": "day", "ticker":
  "ticker"}, the default; another mapping is refused);
- a run's partition keys become one slice (market, ticker, days) per ticker;
- every table is cast to the canonical Arrow schema and checked against the run's slices before any
  DELETE is sent; DELETE is the lightweight `DELETE FROM`, skipped when a `count()` finds nothing;
- each INSERT is one block (`store.INSERT_SETTINGS`): all its rows or none.
Handlers: `pyarrow.Table` (per ticker: delete the slice, one insert), and an iterable of `pyarrow.Table`
(streamed: per table, delete the (ticker, days) it holds, insert it; at the end, delete the run's days
no table held; if the iterable raises, days not yet written keep their rows).
The asset yields bars before daily_liquidity: a liquidity row marks its ticker-day complete.
Inputs are not loaded: no asset reads these tables as an input; research reads them with
`read_bars` / `read_liquidity` (`read/api.py`) or `export`.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc
from dagster import (
    ConfigurableIOManager,
    InputContext,
    MultiPartitionsDefinition,
    OutputContext,
    TableColumn,
    TableSchema,
    TimeWindowPartitionsDefinition,
)

from binance_assets.clickhouse.resource import ClickHouseResource
from binance_assets.clickhouse.store import OpenStore, Store
from binance_assets.clickhouse.tables import (
    BARS_TABLE,
    LIQUIDITY_TABLE,
    Slice,
    TableSpec,
    conform,
    render_sql,
    select_slice_sql,
)
from binance_assets.orchestration.partition_range import days_of_range

STREAM_FLUSH_ROWS = 600_000
"""Streamed rows buffered before a write: a month of 5 s bars (535,680) fits; about 60 MB."""
Connect = Callable[[], AbstractContextManager[OpenStore]]
"""Opens the store (and, for chdb://, locks it) for the span of a `with` block."""
PARTITION_COLUMNS = ("day", "ticker")
"""The columns `partition_expr` must map the (daily) date and ticker dimensions to."""
DEFAULT_PARTITION_EXPR = {"date": "day", "ticker": "ticker"}
"""The mapping of the assets' dimensions (assets.market_partitions), taken when `partition_expr` is unset."""


@dataclass(frozen=True)
class Target:
    """Where an output goes: a table of the store and the run's slices of it, one per ticker."""

    store: Store
    spec: TableSpec
    market: str
    slices: tuple[Slice, ...]

    @property
    def name(self) -> str:
        return self.store.label(self.spec)

    def query(self) -> str:
        """A SELECT of the slices, with literal values (display only)."""
        database, table = self.store.database, self.store.name(self.spec)
        return "\nUNION ALL\n".join(
            render_sql(*select_slice_sql(database, table, s, self.spec.order_by)) for s in self.slices
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


class ArrowTypeHandler:
    """One pyarrow Table holding the run's rows."""

    def handle_output(self, connect: Connect, target: Target, obj: pa.Table) -> int:
        rows, _ = target.conform(obj)
        with connect() as store:
            for s in target.slices:
                store.clear(target.spec, s)
                store.insert(target.spec, _rows_of_ticker(rows, s.ticker, len(target.slices)))
        return rows.num_rows


class StreamTypeHandler:
    """An iterable of pyarrow Tables, each holding whole (ticker, day)s: one or several days.

    Tables are buffered up to STREAM_FLUSH_ROWS rows (a month of one ticker's bars), then written with
    one connection: a count per ticker, a DELETE where rows exist, one INSERT. So an embedded store is
    locked only while a batch is written, not while the next archives download and parse, and a run of
    31 days opens the store once instead of 31 times. If the iterable raises, the tables it produced
    are written and the days it did not reach keep their rows.
    """

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
    with connect() as store:
        for s in slices:
            store.clear(target.spec, s)
        if rows:
            store.insert(target.spec, pa.concat_tables(rows))
    return sum(table.num_rows for table in rows)


class OutputHandler(Protocol):
    def handle_output(self, connect: Connect, target: Target, obj: Any) -> int: ...


class ClickHouseIOManager(ConfigurableIOManager):
    """Stores `[..., <market>, "hl5s_bars" | "daily_liquidity"]` partition slices in ClickHouse."""

    clickhouse: ClickHouseResource
    """The store (a nested resource: its fields are this IO manager's configuration)."""

    def handle_output(self, context: OutputContext, obj: object) -> None:
        started = time.perf_counter()
        handler = _output_handler(obj)
        target = self._target(context)
        rows = handler.handle_output(self.clickhouse.open, target, obj)
        context.add_output_metadata(_output_metadata(target, rows, time.perf_counter() - started))

    def load_input(self, context: InputContext) -> None:
        upstream = context.upstream_output
        key = upstream.asset_key.to_user_string() if upstream and upstream.has_asset_key else "its input"
        raise NotImplementedError(
            f"ClickHouseIOManager loads no inputs ({key}): read the stored bars with "
            "binance_assets.read.api.read_bars (daily stats: read_liquidity), or export them with "
            "`binance-assets export`"
        )

    def _target(self, context: OutputContext) -> Target:
        if not context.has_asset_key:
            raise ValueError("ClickHouseIOManager stores asset outputs only")
        path = context.asset_key.path
        tables = {"hl5s_bars": BARS_TABLE, "daily_liquidity": LIQUIDITY_TABLE}
        if len(path) < 2 or path[-1] not in tables:
            raise ValueError(
                f"ClickHouseIOManager has no table for asset {context.asset_key.to_user_string()}: "
                f"the key must end with <market>/{' or <market>/'.join(tables)}"
            )
        market, spec = path[-2], tables[path[-1]]
        slices = _run_slices(context, context.definition_metadata, market)
        return Target(self.clickhouse.store, spec, market, slices)


def _output_handler(obj: object) -> OutputHandler:
    if isinstance(obj, pa.Table):
        return ArrowTypeHandler()
    # A data frame (pandas, polars: `__dataframe__`) is iterable too, over its column names.
    if isinstance(obj, Iterable) and not isinstance(obj, (str, bytes)) and not hasattr(obj, "__dataframe__"):
        return StreamTypeHandler()
    raise TypeError(
        f"ClickHouseIOManager cannot store {type(obj)}: return a pyarrow Table or an iterable of "
        "pyarrow Tables (a pandas DataFrame: pyarrow.Table.from_pandas(frame, preserve_index=False))"
    )


def _run_slices(context: OutputContext, metadata: Mapping[str, Any], market: str) -> tuple[Slice, ...]:
    """One slice per ticker from the run's partition keys (a single key or a backfill range)."""
    key = context.asset_key.to_user_string()
    partitions_def = context.asset_partitions_def if context.has_asset_partitions else None
    if not isinstance(partitions_def, MultiPartitionsDefinition):
        raise ValueError(
            f"{key}: ClickHouseIOManager stores assets multi-partitioned by date and ticker only"
        )
    expr = metadata.get("partition_expr", DEFAULT_PARTITION_EXPR)
    day_dim, ticker_dim = _partition_dimensions(key, partitions_def, expr)
    key_range = context.asset_partition_key_range
    days = days_of_range(partitions_def, key_range, day_dim, ticker_dim, lambda: context.asset_partition_keys)
    return tuple(Slice(market, ticker, frozenset(d)) for ticker, d in days.items())


def _partition_dimensions(
    key: str, partitions_def: MultiPartitionsDefinition, expr: object
) -> tuple[str, str]:
    """(day dimension, ticker dimension) from `partition_expr`, checked column by column."""
    if not isinstance(expr, Mapping):
        raise ValueError(
            f"{key}: 'partition_expr' must map each dimension to a column, "
            f"e.g. {{'partition_expr': {DEFAULT_PARTITION_EXPR}}}, not {expr!r}"
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


def table_schema(spec: TableSpec) -> TableSchema:
    """A table's columns and their descriptions, for the UI."""
    return TableSchema(columns=[TableColumn(c.name, c.type, description=c.description) for c in spec.columns])


def _output_metadata(target: Target, rows: int, seconds: float) -> dict[str, Any]:
    return {
        "dagster/row_count": rows,
        "dagster/table_name": target.name,
        "dagster/column_schema": table_schema(target.spec),
        "tickers": ", ".join(s.ticker for s in target.slices),
        "days": len(frozenset().union(*(s.days for s in target.slices))),
        "seconds": round(seconds, 3),
        "Query": target.query(),
    }
