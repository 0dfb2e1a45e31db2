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
from collections.abc import Sequence

import pyarrow as pa

from binance_assets.markets import Market
from binance_assets.plan import TickerPlan
from binance_assets.trust.klines_check import LoadedKlines, kline_sources, load_klines
from binance_assets.vision.download import VisionDownloader
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


def load_day_counts(
    downloader: VisionDownloader, market: Market, plans: Sequence[TickerPlan], today: dt.date
) -> DayCounts:
    """Trades per planned (ticker, day) from the `1d` klines: a past month's file (its days' files where
    it is not published), the days' files of ``today``'s month. A day whose klines cannot be had is left
    out: its trades archive is then taken as complete, as where the fallback is off."""
    return counts_from_klines(
        load_klines(downloader, kline_sources(market, plans, today, "1d", month_from=1))
    )
