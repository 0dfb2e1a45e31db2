"""Data checks over the ticker-days of a run, as ClickHouse SQL on the stored rows (no Dagster here).

Each check returns the offending ticker-days (at most ``LIMIT`` of them) plus totals, so a check result
can show exactly which day is wrong.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from clickhouse_connect.driver.client import Client

from binance_assets.clickhouse.tables import qualified

LIMIT = 50
RELATIVE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class RunSlice:
    """The ticker-days of a run: Dagster's multi-partition ranges are products of tickers and days."""

    market: str
    tickers: tuple[str, ...]
    days: tuple[dt.date, ...]

    def parameters(self) -> dict[str, Any]:
        return {"market": self.market, "tickers": list(self.tickers), "days": list(self.days)}


@dataclass(frozen=True)
class CheckOutcome:
    passed: bool
    failures: list[dict[str, Any]] = field(default_factory=list)
    """Offending ticker-days, first ``LIMIT``."""
    totals: dict[str, int] = field(default_factory=dict)

    @property
    def first_failure(self) -> str:
        if not self.failures:
            return ""
        row = self.failures[0]
        return f"{row['ticker']} {row['day']}"


_SLICE = "market = {market:String} AND ticker IN {tickers:Array(String)} AND day IN {days:Array(Date)}"


def bars_well_formed(client: Client, database: str, bars_table: str, run: RunSlice) -> CheckOutcome:
    """Every bar: low <= open, close <= high; ts inside its day (00:00:05 .. next 00:00:00); no ts twice;
    at least one trade."""
    sql = f"""
        SELECT ticker, toString(day) AS day,
               countIf(NOT (low <= open AND open <= high AND low <= close AND close <= high)) AS bad_ohlc,
               countIf(ts <= toDateTime(day, 'UTC') OR ts > toDateTime(day, 'UTC') + 86400) AS ts_outside_day,
               count() - uniqExact(ts) AS duplicate_ts,
               countIf(trade_count = 0) AS empty_bars
        FROM {qualified(database, bars_table)}
        WHERE {_SLICE}
        GROUP BY ticker, day
        HAVING bad_ohlc + ts_outside_day + duplicate_ts + empty_bars > 0
        ORDER BY ticker, day
    """
    return _outcome(client, sql, run, ("bad_ohlc", "ts_outside_day", "duplicate_ts", "empty_bars"))


def liquidity_matches_bars(
    client: Client, database: str, bars_table: str, liquidity_table: str, run: RunSlice
) -> CheckOutcome:
    """Each ticker-day of the run has one daily_liquidity row whose counts and volumes are its bars' sums."""
    close = f"abs(l.{{0}} - b.{{0}}) <= {RELATIVE_TOLERANCE} * greatest(abs(l.{{0}}), abs(b.{{0}}), 1e-12)"
    volumes = " AND ".join(close.format(c) for c in ("volume", "quote_volume", "taker_buy_volume"))
    sql = f"""
        SELECT p.ticker AS ticker, toString(p.day) AS day,
               l.rows != 1 AS missing_row,
               NOT (l.trade_count = b.trade_count AND l.bar_count = b.bar_count AND {volumes}) AS sums_differ
        FROM (
            SELECT arrayJoin({{tickers:Array(String)}}) AS ticker, arrayJoin({{days:Array(Date)}}) AS day
        ) AS p
        LEFT JOIN (
            SELECT ticker, day, count() AS rows, any(trade_count) AS trade_count, any(bar_count) AS bar_count,
                   any(volume) AS volume, any(quote_volume) AS quote_volume,
                   any(taker_buy_volume) AS taker_buy_volume
            FROM {qualified(database, liquidity_table)} FINAL WHERE {_SLICE} GROUP BY ticker, day
        ) AS l ON l.ticker = p.ticker AND l.day = p.day
        LEFT JOIN (
            SELECT ticker, day, sum(trade_count) AS trade_count, count() AS bar_count, sum(volume) AS volume,
                   sum(quote_volume) AS quote_volume, sum(taker_buy_volume) AS taker_buy_volume
            FROM {qualified(database, bars_table)} WHERE {_SLICE} GROUP BY ticker, day
        ) AS b ON b.ticker = p.ticker AND b.day = p.day
        WHERE missing_row OR sums_differ
        ORDER BY ticker, day
    """
    return _outcome(client, sql, run, ("missing_row", "sums_differ"))


def _outcome(client: Client, sql: str, run: RunSlice, counters: Sequence[str]) -> CheckOutcome:
    result = client.query(f"{sql} LIMIT {LIMIT}", parameters=run.parameters())
    failures = [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]
    totals = {name: int(sum(int(row[name]) for row in failures)) for name in counters}
    return CheckOutcome(passed=not failures, failures=failures, totals=totals)
