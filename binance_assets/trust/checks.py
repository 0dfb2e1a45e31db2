"""Data checks over the ticker-days of a run, as ClickHouse SQL on the stored rows (no Dagster here).

Each check returns the offending ticker-days (at most ``LIMIT`` of them) plus totals, so a check result
can show exactly which day is wrong. `bars_well_formed` and `liquidity_matches_bars` test our own
writes (severity ERROR); `trade_ids_continuous`, `day_coverage` and `sane_trades` flag archives that
look partial or odd (severity WARN: Binance's data is like that at times, see docs/vision-format.md
section 5).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from binance_assets.clickhouse.store import OpenStore
from binance_assets.clickhouse.tables import BARS_TABLE, LIQUIDITY_TABLE

LIMIT = 50
RELATIVE_TOLERANCE = 1e-9
QUIET_FLAG_SECONDS = 3 * 3600
"""day_coverage: a day without trades for this long (from midnight, between trades, or to midnight)..."""
AROUND_THE_CLOCK_SECONDS = 3600
"""...is flagged when none of the ticker's previous days went this long without a trade..."""
REFERENCE_DAYS = 7
MIN_REFERENCE_DAYS = 3
"""...among the REFERENCE_DAYS days before it, of which at least MIN_REFERENCE_DAYS are loaded."""


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
    details: dict[str, Any] = field(default_factory=dict)
    """Further metadata a check reports (e.g. the mismatching minutes of each day)."""

    @property
    def first_failure(self) -> str:
        """``TICKER YYYY-MM-DD`` of the first offending day (and ``HH:MM``, for checks with minutes)."""
        if not self.failures:
            return ""
        row = self.failures[0]
        minute = f" {row['first_minute']}" if row.get("first_minute") else ""
        return f"{row['ticker']} {row['day']}{minute}"


_SLICE = "market = {market:String} AND ticker IN {tickers:Array(String)} AND day IN {days:Array(Date)}"
_SPAN = (
    "market = {market:String} AND ticker IN {tickers:Array(String)} "
    "AND day >= {since:Date} AND day <= {until:Date}"
)


def bars_well_formed(store: OpenStore, run: RunSlice) -> CheckOutcome:
    """Every bar: low <= open, close <= high; ts inside its day (00:00:05 .. next 00:00:00); no ts twice;
    at least one trade."""
    sql = f"""
        SELECT ticker, day,
               countIf(NOT (low <= open AND open <= high AND low <= close AND close <= high)) AS bad_ohlc,
               countIf(ts <= toDateTime(day, 'UTC') OR ts > toDateTime(day, 'UTC') + 86400) AS ts_outside_day,
               count() - uniqExact(ts) AS duplicate_ts,
               countIf(trade_count = 0) AS empty_bars
        FROM {store.qualified(BARS_TABLE)}
        WHERE {_SLICE}
        GROUP BY ticker, day
        HAVING bad_ohlc + ts_outside_day + duplicate_ts + empty_bars > 0
        ORDER BY ticker, day
    """
    return _outcome(store, sql, run, ("bad_ohlc", "ts_outside_day", "duplicate_ts", "empty_bars"))


def liquidity_matches_bars(store: OpenStore, run: RunSlice) -> CheckOutcome:
    """Each ticker-day of the run has one daily_liquidity row whose counts and volumes are its bars' sums."""
    close = f"abs(l.{{0}} - b.{{0}}) <= {RELATIVE_TOLERANCE} * greatest(abs(l.{{0}}), abs(b.{{0}}), 1e-12)"
    volumes = " AND ".join(close.format(c) for c in ("volume", "quote_volume", "taker_buy_volume"))
    sql = f"""
        SELECT p.ticker AS ticker, p.day AS day,
               l.rows != 1 AS missing_row,
               NOT (l.trade_count = b.trade_count AND l.bar_count = b.bar_count AND {volumes}) AS sums_differ
        FROM (
            SELECT arrayJoin({{tickers:Array(String)}}) AS ticker, arrayJoin({{days:Array(Date)}}) AS day
        ) AS p
        LEFT JOIN (
            SELECT ticker, day, count() AS rows, any(trade_count) AS trade_count, any(bar_count) AS bar_count,
                   any(volume) AS volume, any(quote_volume) AS quote_volume,
                   any(taker_buy_volume) AS taker_buy_volume
            FROM {store.qualified(LIQUIDITY_TABLE)} FINAL WHERE {_SLICE} GROUP BY ticker, day
        ) AS l ON l.ticker = p.ticker AND l.day = p.day
        LEFT JOIN (
            SELECT ticker, day, sum(trade_count) AS trade_count, count() AS bar_count, sum(volume) AS volume,
                   sum(quote_volume) AS quote_volume, sum(taker_buy_volume) AS taker_buy_volume
            FROM {store.qualified(BARS_TABLE)} WHERE {_SLICE} GROUP BY ticker, day
        ) AS b ON b.ticker = p.ticker AND b.day = p.day
        WHERE missing_row OR sums_differ
        ORDER BY ticker, day
    """
    return _outcome(store, sql, run, ("missing_row", "sums_differ"))


def trade_ids_continuous(store: OpenStore, run: RunSlice) -> CheckOutcome:
    """No trade id missing inside a day, and each day's first id follows the previous day's last id when
    both days are loaded with trades (a gap or an overlap between days is flagged)."""
    liquidity = store.qualified(LIQUIDITY_TABLE)
    sql = f"""
        SELECT d.ticker AS ticker, d.day AS day, d.missing_trade_ids AS missing_ids,
               toUInt64(if(p.trade_count > 0, greatest(d.first_trade_id - p.last_trade_id - 1, 0), 0))
                   AS ids_missing_after_previous_day,
               toUInt64(if(p.trade_count > 0, greatest(p.last_trade_id + 1 - d.first_trade_id, 0), 0))
                   AS ids_overlapping_previous_day,
               d.first_trade_id AS first_trade_id, p.last_trade_id AS previous_day_last_trade_id
        FROM (
            SELECT ticker, day, first_trade_id, missing_trade_ids
            FROM {liquidity} FINAL WHERE {_SLICE} AND trade_count > 0
        ) AS d
        LEFT JOIN (
            SELECT ticker, day + 1 AS next_day, last_trade_id, trade_count
            FROM {liquidity} FINAL
            WHERE market = {{market:String}} AND ticker IN {{tickers:Array(String)}}
              AND day IN {{previous_days:Array(Date)}} AND trade_count > 0
        ) AS p ON p.ticker = d.ticker AND p.next_day = d.day
        WHERE missing_ids > 0 OR ids_missing_after_previous_day > 0 OR ids_overlapping_previous_day > 0
        ORDER BY ticker, day
    """
    previous = sorted({day - dt.timedelta(days=1) for day in run.days})
    counters = ("missing_ids", "ids_missing_after_previous_day", "ids_overlapping_previous_day")
    return _outcome(store, sql, run, counters, previous_days=previous)


def day_coverage(store: OpenStore, run: RunSlice) -> CheckOutcome:
    """A day with no trade for QUIET_FLAG_SECONDS (trades starting late, stopping early, or a hole; a
    loaded day without trades counts as quiet all day) while the ticker's previous loaded days traded
    around the clock (none quiet for AROUND_THE_CLOCK_SECONDS) looks cut short: flagged. Spans are
    measured on the 5 s bars, so to within 5 s."""
    sql = f"""
        SELECT ticker, day, longest_quiet_seconds, first_trade_after_seconds,
               last_trade_before_end_seconds, reference_days, reference_longest_quiet_seconds,
               1 AS flagged_days
        FROM (
            SELECT ticker, day, longest_quiet_seconds, first_trade_after_seconds,
                   last_trade_before_end_seconds,
                   count() OVER previous AS reference_days,
                   max(longest_quiet_seconds) OVER previous AS reference_longest_quiet_seconds
            FROM (
                SELECT l.ticker AS ticker, l.day AS day,
                       if(b.bars = 0, 86400, b.longest_quiet) AS longest_quiet_seconds,
                       if(b.bars = 0, 86400, b.first_after) AS first_trade_after_seconds,
                       if(b.bars = 0, 86400, b.last_before) AS last_trade_before_end_seconds
                FROM (
                    SELECT DISTINCT ticker, day FROM {store.qualified(LIQUIDITY_TABLE)} FINAL
                    WHERE {_SPAN}
                ) AS l
                LEFT JOIN (
                    SELECT ticker, day, count() AS bars,
                           toInt64(toDateTime(day, 'UTC')) AS midnight,
                           arrayMax(arrayDifference(arrayConcat(
                               [midnight], arraySort(groupArray(toInt64(ts))), [midnight + 86405]
                           ))) - 5 AS longest_quiet,
                           toInt64(min(ts)) - 5 - midnight AS first_after,
                           midnight + 86400 - toInt64(max(ts)) AS last_before
                    FROM {store.qualified(BARS_TABLE)} WHERE {_SPAN}
                    GROUP BY ticker, day
                ) AS b ON b.ticker = l.ticker AND b.day = l.day
            )
            WINDOW previous AS (
                PARTITION BY ticker ORDER BY toUInt32(day)
                RANGE BETWEEN {REFERENCE_DAYS} PRECEDING AND 1 PRECEDING
            )
        )
        WHERE day IN {{days:Array(Date)}} AND longest_quiet_seconds >= {QUIET_FLAG_SECONDS}
          AND reference_days >= {MIN_REFERENCE_DAYS}
          AND reference_longest_quiet_seconds < {AROUND_THE_CLOCK_SECONDS}
        ORDER BY ticker, day
    """
    since = min(run.days) - dt.timedelta(days=REFERENCE_DAYS)
    return _outcome(store, sql, run, ("flagged_days",), since=since, until=max(run.days))


def sane_trades(store: OpenStore, run: RunSlice) -> CheckOutcome:
    """No trade with a zero or negative price or quantity (such rows are kept in the counts), and no
    trade id repeated in an archive (repeats are dropped, counted once)."""
    sql = f"""
        SELECT ticker, day, nonpositive_rows, duplicate_rows
        FROM {store.qualified(LIQUIDITY_TABLE)} FINAL
        WHERE {_SLICE} AND (nonpositive_rows > 0 OR duplicate_rows > 0)
        ORDER BY ticker, day
    """
    return _outcome(store, sql, run, ("nonpositive_rows", "duplicate_rows"))


def _outcome(
    store: OpenStore, sql: str, run: RunSlice, counters: Sequence[str], **parameters: Any
) -> CheckOutcome:
    """The first LIMIT failing rows of ``sql``, and its counters summed over every failing row."""
    bound = {**run.parameters(), **parameters}
    result = store.client.query(f"{sql} LIMIT {LIMIT}", parameters=bound)
    # Days are formatted here, not with toString(day) AS day: ClickHouse substitutes a SELECT alias into
    # WHERE, which would then compare the string with the Date parameters and match nothing.
    failures = [
        {
            name: value.isoformat() if isinstance(value, dt.date) else value
            for name, value in zip(result.column_names, row, strict=True)
        }
        for row in result.result_rows
    ]
    totals = dict.fromkeys(counters, 0)
    if len(failures) == LIMIT:  # more may follow: sum them all in the store
        sums = ", ".join(f"toInt64(sum({name}))" for name in counters)
        (row,) = store.client.query(f"SELECT {sums} FROM ({sql})", parameters=bound).result_rows
        totals = {name: int(value) for name, value in zip(counters, row, strict=True)}
    elif failures:
        totals = {name: sum(int(row[name]) for row in failures) for name in counters}
    return CheckOutcome(passed=not failures, failures=failures, totals=totals)
