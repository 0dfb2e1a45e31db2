"""Download, verify and aggregate the planned archives of tickers, one ticker-day at a time.

Pure (no Dagster): the asset op feeds plans in and streams the per-day results to the IO manager, so
memory holds one archive's bars at a time while the next archives download.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import pyarrow as pa

from binance_assets.bars import BARS_SCHEMA, aggregate_trades
from binance_assets.ledger import ledger_row
from binance_assets.markets import Market
from binance_assets.plan import TickerPlan
from binance_assets.prefetch import prefetch
from binance_assets.vision.download import LocalArchive, VisionDownloader
from binance_assets.vision.trades import TradesFormatError, read_trades

_EMPTY_BARS = BARS_SCHEMA.empty_table()


@dataclass(frozen=True)
class DayLoad:
    """One ticker-day ready to write: its bars (hl5s columns) and its daily_liquidity row."""

    ticker: str
    day: dt.date
    bars: pa.Table
    liquidity: dict[str, Any]


@dataclass
class LoadStats:
    """What a load did, for metadata and the run summary."""

    archives: list[dict[str, Any]] = field(default_factory=list)
    """One archive-ledger row (ledger.ledger_row) per archive loaded, in load order."""
    downloaded_bytes: int = 0
    download_seconds: float = 0.0
    aggregate_seconds: float = 0.0
    days: int = 0
    trades: int = 0
    bars: int = 0


def load_days(
    market: Market,
    plans: Sequence[TickerPlan],
    downloader: VisionDownloader,
    stats: LoadStats,
    loaded_at: dt.datetime | None = None,
) -> Iterator[DayLoad]:
    """Yield every planned ticker-day: days without an archive first (zero rows), then archive by archive.

    Archives download concurrently ahead of the one being aggregated; a corrupt or unverifiable archive
    raises before any of its days is yielded, so its days keep whatever rows they had.
    """
    loaded_at = loaded_at or dt.datetime.now(dt.UTC).replace(microsecond=0)
    for plan in plans:
        for day in plan.no_archive:
            yield _day(market, plan.ticker, day, _EMPTY_BARS, None, None, "none", loaded_at, stats)
    work = [(plan.ticker, archive, days) for plan in plans for archive, days in plan.serves.items()]
    fetched = downloader.iter_fetch(archive.key for _, archive, _ in work)
    for (ticker, archive, days), local in zip(work, fetched, strict=True):
        stats.downloaded_bytes += local.downloaded_bytes
        stats.download_seconds += local.seconds
        started = time.monotonic()
        name = PurePosixPath(archive.key).name
        try:
            aggregation = aggregate_trades(prefetch(read_trades(local.path, market, name=name)))
        except TradesFormatError:
            raise
        except ValueError as exc:  # rows the aggregator cannot take (an impossible id span)
            raise TradesFormatError(name, str(exc)) from None
        stats.aggregate_seconds += time.monotonic() - started
        stats.archives.append(ledger_row(market.key, ticker, archive, local, aggregation.days, loaded_at))
        by_day = {result.day: result for result in aggregation.by_day()}
        for day in days:
            result = by_day.get(day)
            bars = result.bars if result else _EMPTY_BARS
            day_stats = result.stats if result else None
            yield _day(market, ticker, day, bars, day_stats, local, archive.freq, loaded_at, stats)
    downloader.evict()  # keep the cache within BINANCE_CACHE_MAX_GB, least recently used first


def _day(
    market: Market,
    ticker: str,
    day: dt.date,
    bars: pa.Table,
    day_stats: dict[str, Any] | None,
    local: LocalArchive | None,
    source: str,
    loaded_at: dt.datetime,
    stats: LoadStats,
) -> DayLoad:
    rows = bars.num_rows
    stats.days += 1
    stats.bars += rows
    stats.trades += int(day_stats["trade_count"]) if day_stats else 0
    keyed = bars.add_column(0, "ticker", pa.array([ticker] * rows, pa.string()))
    keyed = keyed.add_column(0, "market", pa.array([market.key] * rows, pa.string()))
    liquidity = _liquidity(market, ticker, day, day_stats, local, source, loaded_at)
    return DayLoad(ticker, day, keyed, liquidity)


_LIQUIDITY_STATS = {
    "trade_count": 0,
    "volume": 0.0,
    "quote_volume": 0.0,
    "taker_buy_volume": 0.0,
    "bar_count": 0,
    "first_trade_id": 0,
    "last_trade_id": 0,
    "missing_trade_ids": 0,
    "duplicate_rows": 0,
    "nonpositive_rows": 0,
}
"""daily_liquidity's columns taken from the day stats of bars.py, with their value on a day without trades."""


def _liquidity(
    market: Market,
    ticker: str,
    day: dt.date,
    day_stats: dict[str, Any] | None,
    local: LocalArchive | None,
    source: str,
    loaded_at: dt.datetime,
) -> dict[str, Any]:
    values = day_stats or _LIQUIDITY_STATS
    return {
        "market": market.key,
        "ticker": ticker,
        "day": day,
        **{name: values[name] for name in _LIQUIDITY_STATS},
        "source": source,
        "archive_sha256": local.sha256 if local else "",
        "loaded_at": loaded_at,
    }
