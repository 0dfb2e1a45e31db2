"""The SQL of the read API and `export` (on a `Store`'s tables), and the Arrow schemas of their results.
Pure: text only.

Bars of any multiple S of 5 s are computed from the 5 s bars: a 5 s bar stamped t covers [t - 5, t), so
it belongs to the S-bar stamped ceil(t / S) * S, which covers [t' - S, t'). Days follow the bars' ``day``
column (the 5 s bar stamped 00:00:00 belongs to the day before), so for any S dividing a day the S-bars of
a day range hold exactly that range's 5 s bars; a 1d bar stamped D + 1 is day D. Larger or odd intervals
are aligned on the Unix epoch, their first and last bars cut by the range.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from binance_assets.clickhouse.store import Store
from binance_assets.clickhouse.tables import BARS_TABLE, LIQUIDITY_TABLE, Column, quote

BARS_READ_SCHEMA = pa.schema(
    [
        pa.field("ts", pa.timestamp("s", tz="UTC"), nullable=False),
        *(
            pa.field(name, pa.float64(), nullable=False)
            for name in ("open", "high", "low", "close", "volume", "quote_volume", "taker_buy_volume")
        ),
        pa.field("trade_count", pa.uint64(), nullable=False),
    ]
)
"""read_bars' columns at every interval: ts is the bar's right edge."""

LIQUIDITY_READ_SCHEMA = pa.schema(
    [f.with_type(pa.timestamp("s", tz="UTC")) if f.name == "loaded_at" else f for f in LIQUIDITY_TABLE.schema]
)
"""daily_liquidity's columns, loaded_at as a timestamp."""

_BAR_FILTER = (
    "market = {market:String} AND ticker = {ticker:String} AND day >= {first:Date} AND day <= {last:Date}"
)
_SUMS = ("volume", "quote_volume", "taker_buy_volume")


def bars_sql(store: Store, seconds: int) -> str:
    """One ticker's bars of ``seconds`` on days [first, last]; parameters market, ticker, first, last."""
    source = store.qualified(BARS_TABLE)
    if seconds == 5:
        columns = ", ".join(quote(name) for name in BARS_READ_SCHEMA.names[1:-1])
        return (
            f"SELECT toDateTime64(ts, 0, 'UTC') AS ts, {columns}, toUInt64(trade_count) AS trade_count "
            f"FROM {source} WHERE {_BAR_FILTER} ORDER BY ts"
        )
    # the 5 s bars' ts is renamed bar_ts: an alias `ts` would shadow it inside argMin/argMax
    sums = ", ".join(f"sum({name}) AS {name}" for name in _SUMS)
    right_edge = f"intDiv(toUInt32(bar_ts) + {seconds - 1}, {seconds}) * {seconds}"
    return (
        f"SELECT toDateTime64({right_edge}, 0, 'UTC') AS ts, "
        "argMin(open, bar_ts) AS open, max(high) AS high, min(low) AS low, argMax(close, bar_ts) AS close, "
        f"{sums}, toUInt64(sum(trade_count)) AS trade_count "
        f"FROM (SELECT ts AS bar_ts, open, high, low, close, {', '.join(_SUMS)}, trade_count "
        f"FROM {source} WHERE {_BAR_FILTER}) "
        "GROUP BY ts ORDER BY ts"
    )


def tickers_sql(store: Store) -> str:
    """The tickers of market {market:String} with a row in the liquidity table: those loaded."""
    return f"SELECT DISTINCT ticker FROM {store.qualified(LIQUIDITY_TABLE)} WHERE market = {{market:String}}"


def liquidity_sql(
    store: Store, market: str, ticker: str | None, first: Any, last: Any
) -> tuple[str, dict[str, Any]]:
    """daily_liquidity's rows (FINAL: the newest load of each ticker-day) of a market, optionally one ticker
    and a day range, by ticker and day."""
    where, params = ["market = {market:String}"], {"market": market}
    for name, value, condition in (
        ("ticker", ticker, "ticker = {ticker:String}"),
        ("first", first, "day >= {first:Date}"),
        ("last", last, "day <= {last:Date}"),
    ):
        if value is not None:
            where.append(condition)
            params[name] = value
    columns = ", ".join(_select(c) for c in LIQUIDITY_TABLE.columns)
    sql = (
        f"SELECT {columns} FROM {store.qualified(LIQUIDITY_TABLE)} FINAL WHERE {' AND '.join(where)} "
        "ORDER BY ticker, day"
    )
    return sql, params


def _select(column: Column) -> str:
    """A column as Arrow gets it typed: ClickHouse sends a DateTime as UInt32, a DateTime64 as a timestamp."""
    if column.type == "DateTime('UTC')":
        return f"toDateTime64({quote(column.name)}, 0, 'UTC') AS {quote(column.name)}"
    return quote(column.name)
