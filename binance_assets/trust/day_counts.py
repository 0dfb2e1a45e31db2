"""Trades per ticker-day as Binance counts them, for the fallback's partial-day rule (trust/fallback.py).

A day's `count` in Binance's klines is the number of rows of its trades archive (docs/vision-format.md
section 4), so one number a day is all the fallback needs. Where the run checks its bars against the 1m
klines (BINANCE_KLINE_CHECK), those are loaded already and summed per day (`counts_from_klines`).
Otherwise the `1d` klines give the count at one row a day: the month's file for a month before the
current one, one download for a month of days, and the day's file for the days of a month whose file is
not published (yet). `KlinesAhead` loads them in a thread of their own, while the trades download. No
Dagster here.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

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


class KlinesAhead:
    """A run's klines, loaded in a thread while its trades download (a run of many months otherwise waits
    for dozens of kline downloads before its first archive): the 1m klines when the run checks its bars
    against them (``kline_check``), and with ``counts`` Binance's trades per day, summed from those or
    else read from the 1d klines. Each is waited for where it is first used."""

    def __init__(
        self,
        downloader: VisionDownloader,
        market: Market,
        plans: Sequence[TickerPlan],
        today: dt.date,
        *,
        kline_check: bool,
        counts: bool,
    ) -> None:
        def load() -> tuple[LoadedKlines | None, DayCounts]:
            klines = load_klines(downloader, kline_sources(market, plans, today)) if kline_check else None
            if not counts:
                return klines, {}
            if klines is not None:
                return klines, counts_from_klines(klines)
            return klines, load_day_counts(downloader, market, plans, today)

        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="klines")
        self._loaded: Future[tuple[LoadedKlines | None, DayCounts]] = pool.submit(load)
        pool.shutdown(wait=False)  # the load goes on; the thread ends with it
        self.counts: Mapping[tuple[str, dt.date], int] = _Waited(self._loaded)

    @property
    def klines(self) -> LoadedKlines | None:
        """The 1m klines (None without the kline check), once loaded."""
        return self._loaded.result()[0]


class _Waited(Mapping[tuple[str, dt.date], int]):
    """The day counts of a load still running: the first lookup waits for it."""

    def __init__(self, loaded: Future[tuple[LoadedKlines | None, DayCounts]]) -> None:
        self._loaded = loaded

    def __getitem__(self, key: tuple[str, dt.date]) -> int:
        return self._loaded.result()[1][key]

    def __iter__(self) -> Iterator[tuple[str, dt.date]]:
        return iter(self._loaded.result()[1])

    def __len__(self) -> int:
        return len(self._loaded.result()[1])
