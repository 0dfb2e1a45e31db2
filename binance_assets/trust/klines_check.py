"""`matches_binance_klines`: the run's stored 5 s bars, aggregated to 1m, against Binance's own 1m klines.

Binance computes its klines from the same trades (docs/vision-format.md section 4: count, OHLC, volume,
sum(price * qty) and taker-buy volume agree on every minute), so a disagreement means our rows, or the
trades archive they came from, are wrong. The klines come from the month's file where the run read a
monthly trades archive, or a week or more of daily ones in a month that is over (`kline_sources`), and
from the days' own files otherwise, or where the month's file is not published.

A day built from aggTrades may have trade ids no aggregate covers (bars.py, uncovered_trade_ids). Whether
Binance's kline `count` counts them is not known (docs/vision-format.md section 8), so such a day's
counts match under either rule, COVERED or COVERED_PLUS_GAPS (trust/fallback.py), and the check reports
which one did; every other field stays exact.
No Dagster here: the asset downloads with `load_klines`, then compares with `matches_binance_klines`.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from binance_assets.clickhouse.store import OpenStore, Store
from binance_assets.clickhouse.tables import BARS_TABLE
from binance_assets.markets import Market
from binance_assets.plan import TickerPlan
from binance_assets.trust.checks import LIMIT, CheckOutcome
from binance_assets.trust.fallback import COVERED, COVERED_PLUS_GAPS
from binance_assets.vision.download import VisionDownloader
from binance_assets.vision.errors import ArchiveFormatError, ArchiveNotFound, VisionError
from binance_assets.vision.klines import minute_day, read_klines

RELATIVE_TOLERANCE = 1e-7
ABSOLUTE_TOLERANCE = 1e-8
"""Binance prints 8 decimals: values within one unit of the last digit match whatever their size."""
FIELDS = ("open", "high", "low", "close", "volume", "quote_volume", "count", "taker_buy_volume")
PRICE_FIELDS = ("open", "high", "low", "close")
MINUTES_SHOWN = 10
"""Mismatching minutes listed per day in the check's metadata."""
MINUTE_US = 60_000_000
NEITHER = "neither"
"""The count rule of a day with uncovered ids whose counts match under neither rule."""


MONTH_FILE_FROM_DAYS = 7
"""Daily trades archives of a month that is over read the month's klines file, one download for up to 31
days, where the run has at least this many of its days; fewer read the days' own files."""


@dataclass(frozen=True)
class KlineSource:
    """One klines archive and the run's days of one ticker it covers."""

    ticker: str
    key: str
    days: tuple[dt.date, ...]
    instead: tuple[KlineSource, ...] = ()
    """The days' own files, read where this (month's) file is not published."""


def kline_sources(
    market: Market,
    plans: Sequence[TickerPlan],
    today: dt.date,
    interval: str = "1m",
    month_from: int = MONTH_FILE_FROM_DAYS,
) -> list[KlineSource]:
    """The klines of the planned days read from archives: the month's file for a monthly trades archive;
    for daily ones, the month's file where that month is over and the run has ``month_from`` of its days
    or more (the days' files where it is not published), else the days' files. Days without a trades
    archive are not checked."""
    sources = []
    for plan in plans:
        ticker = plan.ticker
        by_month: dict[dt.date, list[dt.date]] = defaultdict(list)
        for archive, days in plan.serves.items():
            if archive.freq == "monthly":
                sources.append(KlineSource(ticker, market.klines_key(ticker, archive.period, interval), days))
            else:
                for day in days:
                    by_month[day.replace(day=1)].append(day)
        for month, days in sorted(by_month.items()):
            files = tuple(
                KlineSource(ticker, market.klines_key(ticker, day.isoformat(), interval), (day,))
                for day in sorted(days)
            )
            if month < today.replace(day=1) and len(days) >= month_from:
                key = market.klines_key(ticker, f"{month:%Y-%m}", interval)
                sources.append(KlineSource(ticker, key, tuple(sorted(days)), instead=files))
            else:
                sources += files
    return sources


@dataclass
class LoadedKlines:
    """Binance's klines of the run's checkable ticker-days, and why the others cannot be checked."""

    klines: dict[str, list[pa.Table]] = field(default_factory=lambda: defaultdict(list))
    """Per ticker: kline tables restricted to the days of their source."""
    days: dict[str, list[dt.date]] = field(default_factory=lambda: defaultdict(list))
    """Per ticker: the days those tables cover."""
    not_published: list[str] = field(default_factory=list)
    """``TICKER YYYY-MM-DD`` of days whose kline archive does not exist (404)."""
    unusable: dict[str, str] = field(default_factory=dict)
    """Kline archive key -> why it could not be used (download failed, checksum, corrupt zip)."""


def load_klines(downloader: VisionDownloader, sources: Sequence[KlineSource]) -> LoadedKlines:
    """Download (concurrently, verified, cached) and read every source's klines, or its days' files where
    a month's file is not published; a missing or unusable archive is recorded, never raised: the trades
    rows are written already and stay checkable later."""
    loaded = LoadedKlines()
    results = read_sources(downloader, sources)
    instead = [
        day for source, result in zip(sources, results, strict=True)
        if isinstance(result, ArchiveNotFound) for day in source.instead
    ]  # fmt: skip
    for source, result in zip(
        [*sources, *instead], [*results, *read_sources(downloader, instead)], strict=True
    ):
        if isinstance(result, ArchiveNotFound):
            if not source.instead:
                loaded.not_published += [f"{source.ticker} {day}" for day in source.days]
        elif isinstance(result, Exception):
            loaded.unusable[source.key] = str(result)
        else:
            loaded.klines[source.ticker].append(result)
            loaded.days[source.ticker] += source.days
    return loaded


def read_sources(downloader: VisionDownloader, sources: Sequence[KlineSource]) -> list[pa.Table | Exception]:
    """Each source's klines restricted to its days, or why not (ArchiveNotFound for a 404), downloaded
    concurrently."""
    with ThreadPoolExecutor(max_workers=downloader.concurrency, thread_name_prefix="klines") as pool:
        return list(pool.map(lambda source: _read(downloader, source), sources))


def _read(downloader: VisionDownloader, source: KlineSource) -> pa.Table | Exception:
    try:
        klines = read_klines(downloader.fetch(source.key).path)
    except (VisionError, ArchiveFormatError) as error:
        return error
    wanted = pa.array(source.days, pa.date32())
    return klines.filter(pc.is_in(minute_day(klines), value_set=wanted))


def bars_1m_sql(store: Store) -> str:
    """One ticker's 5 s bars on some days as 1m klines: a bar stamped ts covers [ts-5s, ts), so its
    minute is that of ts - 5 s; open and close are those of the minute's first and last bar."""
    return f"""
        SELECT toInt64(toUnixTimestamp(toStartOfMinute(ts - 5))) * 1000000 AS open_time_us,
               argMin(open, ts) AS open, max(high) AS high, min(low) AS low, argMax(close, ts) AS close,
               sum(volume) AS volume, sum(quote_volume) AS quote_volume, toInt64(sum(trade_count)) AS count,
               sum(taker_buy_volume) AS taker_buy_volume
        FROM {store.qualified(BARS_TABLE)}
        WHERE market = {{market:String}} AND ticker = {{ticker:String}} AND day IN {{days:Array(Date)}}
        GROUP BY open_time_us
        ORDER BY open_time_us
    """


def read_bars_1m(store: OpenStore, market: str, ticker: str, days: Sequence[dt.date]) -> pd.DataFrame:
    parameters = {"market": market, "ticker": ticker, "days": sorted(days)}
    return store.client.query_df(bars_1m_sql(store.store), parameters=parameters)


def counts_with_gaps(
    open_time_us: np.ndarray, covered: np.ndarray, binance: np.ndarray, gaps: pa.Table
) -> np.ndarray:
    """Per minute (``open_time_us`` ascending, every minute of the days compared), whether Binance's
    ``count`` can be our covered trades plus the uncovered ids (``gaps``, bars.GAPS_SCHEMA) it holds.

    A gap's ids have no time, but trade ids follow time: they happened between the aggregate before the
    gap and the one after it. A gap whose two aggregates are in one minute is that minute's. A gap whose
    aggregates are in different minutes may lie in any minute from the one before to the one after, and
    splits between them as Binance's counts say: those minutes are compared together (a block). A minute
    matches when its excess over our count is at least its own gaps and at most those plus every gap
    that may lie in it, and its block's excess is exactly its block's gaps.
    """
    n = len(open_time_us)
    size = (gaps["last_id"].to_numpy() - gaps["first_id"].to_numpy() + 1).astype(np.int64)
    before = np.searchsorted(open_time_us, gaps["before_us"].to_numpy() // MINUTE_US * MINUTE_US)
    after = np.searchsorted(open_time_us, gaps["after_us"].to_numpy() // MINUTE_US * MINUTE_US)
    before, after = np.minimum(before, n - 1), np.minimum(np.maximum(after, before), n - 1)
    own = np.zeros(n, np.int64)
    sure = before == after
    np.add.at(own, before[sure], size[sure])
    spread = np.zeros(n + 1, np.int64)  # ids that may lie in each minute, as a difference array
    np.add.at(spread, before[~sure], size[~sure])
    np.add.at(spread, after[~sure] + 1, -size[~sure])
    linked = np.zeros(n + 1, np.int64)  # minutes p and p + 1 in one block where linked[p] > 0
    np.add.at(linked, before[~sure], 1)
    np.add.at(linked, after[~sure], -1)
    block = np.concatenate(([0], np.cumsum(np.cumsum(linked)[: n - 1] == 0)))
    excess = binance.astype(np.int64) - covered.astype(np.int64)
    block_gaps = np.bincount(block, weights=own, minlength=n)
    block_gaps += np.bincount(block[before[~sure]], weights=size[~sure], minlength=n)
    exact = np.bincount(block, weights=excess, minlength=n) == block_gaps
    return (excess >= own) & (excess <= own + np.cumsum(spread)[:n]) & exact[block]


def compare_minutes(ours: pd.DataFrame, klines: pd.DataFrame, gaps: pa.Table | None = None) -> pd.DataFrame:
    """Minutes where our 1m aggregates and Binance's klines disagree, ordered by open_time_us.

    A minute present on one side only compares as count 0 and zero volumes on the other (so a kline
    with count 0 matches no bars); prices are compared where both sides traded. Numbers match within
    RELATIVE_TOLERANCE (or ABSOLUTE_TOLERANCE), counts exactly: our count, or with ``gaps`` (uncovered
    trade ids, bars.GAPS_SCHEMA) our count plus the gap ids the minute may hold (`counts_with_gaps`).
    Columns: open_time_us; fields (the disagreeing ones, comma-separated); field, ours, binance (the
    first of them and its two values).
    """
    ours_at = ours["open_time_us"].to_numpy(np.int64)
    theirs_at = klines["open_time_us"].to_numpy(np.int64)
    open_time_us = np.union1d(ours_at, theirs_at)
    # One row per field (a minute missing on one side stays 0) and temporaries of one field: a pandas outer
    # merge and whole-table temporaries took up to 0.37 s per ticker-run, now at most 0.14 s (fresh memory
    # is what costs on this project's VM, benchmarks/memory_bench.py).
    mine, theirs = (np.zeros((len(FIELDS), len(open_time_us))) for _ in range(2))
    for side, frame, at in ((mine, ours, ours_at), (theirs, klines, theirs_at)):
        rows = np.searchsorted(open_time_us, at)
        for index, name in enumerate(FIELDS):
            side[index, rows] = frame[name].to_numpy(np.float64, na_value=0.0)
    wrong = np.empty(mine.shape, bool)
    for index, (a, b) in enumerate(zip(mine, theirs, strict=True)):
        tolerance = np.maximum(np.abs(a), np.abs(b))
        tolerance *= RELATIVE_TOLERANCE
        np.maximum(tolerance, ABSOLUTE_TOLERANCE, out=tolerance)
        np.greater(np.abs(a - b), tolerance, out=wrong[index])
    count = FIELDS.index("count")
    if gaps is not None and gaps.num_rows:
        wrong[count] = ~counts_with_gaps(open_time_us, mine[count], theirs[count], gaps)
    else:
        np.not_equal(mine[count], theirs[count], out=wrong[count])
    traded = (mine[count] > 0) & (theirs[count] > 0)
    for name in PRICE_FIELDS:
        wrong[FIELDS.index(name)] &= traded
    bad = wrong.any(axis=0)
    wrong, mine, theirs = wrong[:, bad].T, mine[:, bad].T, theirs[:, bad].T
    fields = np.full(len(wrong), "", dtype=object)
    for index, name in enumerate(FIELDS):
        fields = fields + np.where(wrong[:, index], f",{name}", "")
    first = wrong.argmax(axis=1)[:, None]
    return pd.DataFrame(
        {
            "open_time_us": open_time_us[bad],
            "fields": pd.Series(fields, dtype=object).str.slice(1),
            "field": np.array(FIELDS, dtype=object)[first[:, 0]],
            "ours": np.take_along_axis(mine, first, axis=1)[:, 0],
            "binance": np.take_along_axis(theirs, first, axis=1)[:, 0],
        }
    )


def matches_binance_klines(
    store: OpenStore,
    market: str,
    loaded: LoadedKlines,
    uncovered: Mapping[tuple[str, dt.date], pa.Table] | None = None,
) -> CheckOutcome:
    """Compare each ticker's stored bars with its loaded klines; one failure row per day with mismatches.

    ``uncovered`` holds, per (ticker, day) built from aggTrades, the trade ids no aggregate covers
    (bars.GAPS_SCHEMA): such a day passes when its counts match under COVERED or COVERED_PLUS_GAPS, and
    `count_rule` in the details says which (NEITHER: the day fails).
    """
    uncovered = uncovered or {}
    failures: list[dict[str, Any]] = []
    by_day: dict[str, list[str]] = {}
    rules: dict[str, str] = {}
    mismatching = 0
    for ticker in sorted(loaded.klines):
        days = loaded.days[ticker]
        klines = pa.concat_tables(loaded.klines[ticker]).to_pandas()
        ours = read_bars_1m(store, market, ticker, days)
        diff = compare_minutes(ours, klines)
        gaps = {day: uncovered[ticker, day] for day in days if (ticker, day) in uncovered}
        if gaps:
            with_gaps = compare_minutes(ours, klines, pa.concat_tables(gaps.values()))
            diff, ticker_rules = _by_count_rule(diff, with_gaps, sorted(gaps))
            rules.update({f"{ticker} {day}": rule for day, rule in ticker_rules.items()})
        mismatching += len(diff)
        stamps = pd.to_datetime(diff["open_time_us"], unit="us", utc=True)
        for day, group in diff.groupby(stamps.dt.date.to_numpy(), sort=True):
            minutes = stamps[group.index].dt.strftime("%H:%M").tolist()
            failure = {
                "ticker": ticker,
                "day": str(day),
                "mismatching_minutes": len(group),
                "first_minute": minutes[0],
                "fields": ",".join(sorted(set(",".join(group["fields"]).split(",")), key=FIELDS.index)),
            }
            if day in gaps:
                failure["count_rule"] = NEITHER
            failures.append(failure)
            shown = group.head(MINUTES_SHOWN)
            by_day[f"{ticker} {day}"] = [
                f"{minute} {name}: ours {ours:.10g}, binance {theirs:.10g}"
                for minute, name, ours, theirs in zip(
                    minutes, shown["field"], shown["ours"], shown["binance"], strict=False
                )
            ]
    checked = sum(len(days) for days in loaded.days.values())
    details: dict[str, Any] = {"mismatching_minutes_by_day": by_day}
    if rules:
        details["count_rule"] = rules
    if loaded.not_published:
        details["klines_not_published"] = loaded.not_published
    if loaded.unusable:
        details["klines_unusable"] = loaded.unusable
    rule_counts = list(rules.values())
    return CheckOutcome(
        passed=not failures,
        failures=failures[:LIMIT],
        totals={
            "mismatching_minutes": mismatching,
            "days_checked": checked,
            "days_without_klines": len(loaded.not_published),
            "klines_unusable": len(loaded.unusable),
            "days_with_uncovered_ids": len(rules),
            "days_count_covered": rule_counts.count(COVERED),
            "days_count_covered_plus_gaps": rule_counts.count(COVERED_PLUS_GAPS),
        },
        details=details,
    )


def _by_count_rule(
    covered: pd.DataFrame, with_gaps: pd.DataFrame, gap_days: Sequence[dt.date]
) -> tuple[pd.DataFrame, dict[dt.date, str]]:
    """The mismatches to report, and the count rule of each day with uncovered ids: COVERED when its
    minutes match with our counts, else COVERED_PLUS_GAPS when they match with the gap ids, else NEITHER
    (reporting the rule's mismatches that are fewer)."""
    day_of = {
        name: pd.to_datetime(frame["open_time_us"], unit="us", utc=True).dt.date.to_numpy()
        for name, frame in (("covered", covered), ("with_gaps", with_gaps))
    }
    kept = [covered[~pd.Series(day_of["covered"]).isin(gap_days).to_numpy()]]
    rules = {}
    for day in gap_days:
        plain, gapped = covered[day_of["covered"] == day], with_gaps[day_of["with_gaps"] == day]
        if plain.empty:
            rules[day] = COVERED
        elif gapped.empty:
            rules[day] = COVERED_PLUS_GAPS
        else:
            rules[day] = NEITHER
            kept.append(min(plain, gapped, key=len))
    return pd.concat(kept).sort_values("open_time_us", ignore_index=True), rules
