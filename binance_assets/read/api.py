"""The read API: bars of any size and daily liquidity, into pandas, polars or Arrow. No Dagster.

Settings come from the environment and a `.env` file in the working directory, as for the CLI. An
embedded store is opened, queried and closed by each call, its lock held for that span only: a notebook
reads while `dagster dev` or a backfill writes, each waiting its turn (at most ``lock_timeout`` seconds,
then :class:`~binance_assets.clickhouse.errors.StoreBusyError`).
"""

from __future__ import annotations

import datetime as dt
import warnings
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

import pyarrow as pa

from binance_assets.clickhouse.store import OpenStore, Store
from binance_assets.clickhouse.tables import LIQUIDITY_TABLE, conform
from binance_assets.read import arguments
from binance_assets.read.errors import ArgumentError
from binance_assets.read.sql import (
    BARS_READ_SCHEMA,
    LIQUIDITY_READ_SCHEMA,
    bars_sql,
    liquidity_sql,
    tickers_sql,
)
from binance_assets.settings import SettingsWarning, settings_from_environment

DEFAULT_LOCK_TIMEOUT = 60.0
"""Seconds a read waits for an embedded store another process is using."""


def read_bars(
    market: str,
    ticker: str,
    start: dt.date | str,
    end: dt.date | str,
    interval: str = "5s",
    format: str = "pandas",
    *,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
) -> Any:
    """One ticker's bars from ``start`` to ``end`` (UTC days, inclusive), of ``interval`` (a multiple of 5 s:
    "5s", "1m", "15m", "1h", "1d"), as a pandas or polars DataFrame or an Arrow table (``format``).

    Columns ts, open, high, low, close, volume, quote_volume, taker_buy_volume, trade_count; right-labelled:
    the bar stamped ts covers [ts - interval, ts). Computed in ClickHouse from the 5 s bars: open of the
    first, close of the last, high/low the extremes, volumes and counts the sums.
    """
    market, ticker = arguments.market_key(market), arguments.ticker_name(ticker)
    seconds = arguments.interval_seconds(interval)
    first, last = arguments.day_range(start, end)
    arguments.output_format(format)
    with open_reader(environment_store(), lock_timeout) as store:
        require_loaded(store, market, [ticker])
        parameters = {"market": market, "ticker": ticker, "first": first, "last": last}
        table = store.client.query_arrow(bars_sql(store.store, seconds), parameters)
    return as_format(typed(table, BARS_READ_SCHEMA), format)


def read_liquidity(
    market: str,
    ticker: str | None = None,
    start: dt.date | str | None = None,
    end: dt.date | str | None = None,
    format: str = "pandas",
    *,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
) -> Any:
    """daily_liquidity's rows of a market (one ``ticker``, or all) on days ``start`` to ``end`` (inclusive,
    either open-ended when None), by ticker and day, as a pandas or polars DataFrame or an Arrow table."""
    market = arguments.market_key(market)
    ticker = None if ticker is None else arguments.ticker_name(ticker)
    first = None if start is None else arguments.day("start", start)
    last = None if end is None else arguments.day("end", end)
    if first is not None and last is not None:
        arguments.day_range(first, last)
    arguments.output_format(format)
    with open_reader(environment_store(), lock_timeout) as store:
        if ticker is not None:
            require_loaded(store, market, [ticker])
        table = store.client.query_arrow(*liquidity_sql(store.store, market, ticker, first, last))
    return as_format(typed(table, LIQUIDITY_READ_SCHEMA), format)


def environment_store() -> Store:
    """The store of the CLI's settings; a setting given both ways is a SettingsWarning at the caller of
    the API."""
    settings = settings_from_environment(lambda text: warnings.warn(text, SettingsWarning, stacklevel=5))
    return settings.store


def open_reader(store: Store, lock_timeout: float) -> AbstractContextManager[OpenStore]:
    """The store open for reading (no table created), an embedded store's lock held (waiting up to
    lock_timeout) until closed."""
    return store.open(lock_timeout=lock_timeout, create_tables=False)


def loaded_tickers(store: OpenStore, market: str) -> list[str]:
    """The market's tickers with a row in the liquidity table (none if the table does not exist)."""
    if not int(store.client.command(f"EXISTS TABLE {store.qualified(LIQUIDITY_TABLE)}")):
        return []
    result = store.client.query(tickers_sql(store.store), parameters={"market": market})
    return sorted(row[0] for row in result.result_rows)


def require_loaded(store: OpenStore, market: str, tickers: Sequence[str]) -> None:
    loaded = set(loaded_tickers(store, market))
    missing = [ticker for ticker in tickers if ticker not in loaded]
    if missing:
        raise ArgumentError(
            "ticker",
            f"ticker {', '.join(map(repr, missing))} is not loaded in market {market!r}: nothing in "
            f"{store.store.label(LIQUIDITY_TABLE)} (see `binance-assets status`)",
        )


def typed(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """The result in ``schema``; an empty result (chDB may send it without columns) as an empty table."""
    return conform(table, schema) if table.num_rows else schema.empty_table()


def as_format(table: pa.Table, format: str) -> Any:
    if format == "arrow":
        return table
    if format == "polars":
        return _polars().from_arrow(table)
    return table.to_pandas()


def _polars() -> Any:
    try:
        import polars
    except ImportError:
        raise ImportError('format="polars" needs polars: pip install "binance-assets[polars]"') from None
    return polars
