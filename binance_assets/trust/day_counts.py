"""Trades per ticker-day as Binance counts them, for the fallback's partial-day rule (trust/fallback.py).

A day's `count` in Binance's klines is the number of rows of its trades archive (docs/vision-format.md
section 4), so one number a day is all the fallback needs. Where the run checks its bars against the 1m
klines (BINANCE_KLINE_CHECK), those are loaded already and summed per day (`counts_from_klines`).
Otherwise the `1d` klines give the count at one row a day: the month's file for a month before the
current one, one download for a month of days, and the day's file for the days of a month whose file is
not published (yet). No Dagster here.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Sequence

import pyarrow as pa

from binance_assets.markets import Market
from binance_assets.plan import TickerPlan
from binance_assets.trust.klines_check import KlineSource, LoadedKlines, read_sources
from binance_assets.vision.download import ArchiveNotFound, VisionDownloader
from binance_assets.vision.klines import minute_day

DayCounts = dict[tuple[str, dt.date], int]


def counts_from_klines(loaded: LoadedKlines) -> DayCounts:
    """Trades per (ticker, day) of loaded klines of any interval, summed over the day's rows."""
    counts: DayCounts = {}
    for ticker, tables in loaded.klines.items():
        for table in tables:
            sums = (
                pa.table({"day": minute_day(table), "count": table["count"]})
                .group_by("day")
                .aggregate([("count", "sum")])
            )
            for day, count in zip(sums["day"].to_pylist(), sums["count_sum"].to_pylist(), strict=True):
                counts[(ticker, day)] = counts.get((ticker, day), 0) + int(count)
    return counts


def daily_kline_sources(
    market: Market, plans: Sequence[TickerPlan], today: dt.date
) -> tuple[list[KlineSource], list[KlineSource]]:
    """The `1d` klines of the planned days read from archives: the month's file of each month before
    ``today``'s, and the day's file of each day of ``today``'s month."""
    monthly: list[KlineSource] = []
    daily: list[KlineSource] = []
    this_month = today.replace(day=1)
    for plan in plans:
        by_month: dict[dt.date, list[dt.date]] = defaultdict(list)
        for days in plan.serves.values():
            for day in days:
                by_month[day.replace(day=1)].append(day)
        for month, days in sorted(by_month.items()):
            if month < this_month:
                key = market.klines_key(plan.ticker, f"{month:%Y-%m}", "1d")
                monthly.append(KlineSource(plan.ticker, key, tuple(sorted(days))))
            else:
                daily += _days_files(market, plan.ticker, days)
    return monthly, daily


def load_day_counts(
    downloader: VisionDownloader, market: Market, plans: Sequence[TickerPlan], today: dt.date
) -> DayCounts:
    """Trades per planned (ticker, day) from the `1d` klines; a month whose file is not published falls
    back to its days' files. A day whose klines cannot be had is left out: its trades archive is then
    taken as complete, as where the fallback is off."""
    monthly, daily = daily_kline_sources(market, plans, today)
    loaded = LoadedKlines()
    for source, result in zip(monthly, read_sources(downloader, monthly), strict=True):
        if isinstance(result, ArchiveNotFound):
            daily += _days_files(market, source.ticker, source.days)
        elif isinstance(result, pa.Table):
            loaded.klines[source.ticker].append(result)
    for source, result in zip(daily, read_sources(downloader, daily), strict=True):
        if isinstance(result, pa.Table):
            loaded.klines[source.ticker].append(result)
    return counts_from_klines(loaded)


def _days_files(market: Market, ticker: str, days: Sequence[dt.date]) -> list[KlineSource]:
    return [KlineSource(ticker, market.klines_key(ticker, day.isoformat(), "1d"), (day,)) for day in days]
