"""Write whole ticker-days: a batch of days' bars and their daily_liquidity rows, together.

A run's days arrive one at a time (pipeline.RunLoad); they are buffered up to `flush_rows` bars (a month
of one ticker fits) and written with one store open: for each ticker of the batch, its days' liquidity
rows are deleted (the day is no longer marked complete), then its bars; the batch's bars go in as one
INSERT, then its liquidity rows as one INSERT (each INSERT is one block: all its rows or none). So a day
is marked complete only once its bars are in, and a failure between two batches leaves every day either
written or as it was (docs/design.md "Writes, failures and recovery"). A kill inside a batch can leave
its days with bars and no liquidity row: the next run writes them again, or, if they fail there,
`discard_incomplete` deletes those bars. No Dagster here.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from typing import Any

import pyarrow as pa

from binance_assets.clickhouse.store import OpenStore
from binance_assets.clickhouse.tables import (
    BARS_TABLE,
    LIQUIDITY_TABLE,
    Slice,
    TableSpec,
    conform,
    days_of_slice_sql,
)

FLUSH_ROWS = 600_000
"""Bars buffered before a write: a month of 5 s bars (535,680) fits; about 60 MB."""
Connect = Callable[[], AbstractContextManager[OpenStore]]
"""Opens the store (and, for chdb://, locks it) for the span of a `with` block."""
TickerDay = tuple[str, dt.date]


class DayWriter:
    """Buffers ticker-days and writes them in batches; `written` lists the days committed so far, in order.

    ``token`` names this write (for example the run and its attempt): each INSERT carries it with the
    batch's table, ticker and days, so a retried INSERT of the same batch is deduplicated by a replicated
    table, and a re-run (another token) never is.
    """

    def __init__(self, connect: Connect, market: str, *, token: str, flush_rows: int = FLUSH_ROWS) -> None:
        self.connect = connect
        self.market = market
        self.token = token
        self.flush_rows = flush_rows
        self.written: list[TickerDay] = []
        self._bars: list[pa.Table] = []
        self._rows: list[Mapping[str, Any]] = []
        self._buffered = 0

    def add(self, ticker: str, day: dt.date, bars: pa.Table, liquidity: Mapping[str, Any]) -> None:
        """Buffer one ticker-day (its bars in hl5s columns, its daily_liquidity row); write when full."""
        if (liquidity["ticker"], liquidity["day"], liquidity["market"]) != (ticker, day, self.market):
            raise ValueError(f"{self.market} {ticker} {day}: the liquidity row is of another ticker-day")
        if bars.num_rows:
            self._bars.append(bars)
        self._rows.append(liquidity)
        self._buffered += bars.num_rows
        if self._buffered >= self.flush_rows:
            self.flush()

    def flush(self) -> list[TickerDay]:
        """Write the buffered days; return them."""
        if not self._rows:
            return []
        rows, bars = self._rows, self._bars
        days: dict[str, set[dt.date]] = defaultdict(set)
        for row in rows:
            days[row["ticker"]].add(row["day"])
        slices = [Slice(self.market, ticker, frozenset(d)) for ticker, d in days.items()]
        with self.connect() as store:
            for spec in (LIQUIDITY_TABLE, BARS_TABLE):
                for s in slices:
                    store.clear(spec, s)
            batch = "; ".join(f"{s.ticker} {min(s.days)}..{max(s.days)}" for s in slices)
            if bars:
                bars_table = conform(pa.concat_tables(bars), BARS_TABLE.schema)
                store.insert(BARS_TABLE, bars_table, token=f"{self.token}/hl5s/{batch}")
            liquidity = pa.Table.from_pylist(list(rows), schema=LIQUIDITY_TABLE.schema)
            store.insert(LIQUIDITY_TABLE, liquidity, token=f"{self.token}/daily_liquidity/{batch}")
        self._bars, self._rows, self._buffered = [], [], 0
        done = [(row["ticker"], row["day"]) for row in rows]
        self.written += done
        return done

    def discard_incomplete(self, days: Iterable[TickerDay]) -> list[TickerDay]:
        """Delete the bars of those of ``days`` that have no liquidity row (left by a write killed in the
        middle of a batch), so a day that fails has either its complete rows or none; return them."""
        by_ticker: dict[str, set[dt.date]] = defaultdict(set)
        for ticker, day in days:
            by_ticker[ticker].add(day)
        if not by_ticker:
            return []
        discarded = []
        with self.connect() as store:

            def days_with_rows(spec: TableSpec, s: Slice) -> set[dt.date]:
                sql, params = days_of_slice_sql(store.store.database, store.store.name(spec), s)
                return {day for (day,) in store.client.query(sql, parameters=params).result_rows}

            for ticker, ticker_days in sorted(by_ticker.items()):
                s = Slice(self.market, ticker, frozenset(ticker_days))
                incomplete = frozenset(days_with_rows(BARS_TABLE, s) - days_with_rows(LIQUIDITY_TABLE, s))
                if incomplete:
                    store.clear(BARS_TABLE, Slice(self.market, ticker, incomplete))
                    discarded += [(ticker, day) for day in sorted(incomplete)]
        return discarded
