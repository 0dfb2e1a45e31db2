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

from binance_assets.bars import DAY_BARS_SCHEMA, DayResult, aggregate_trades
from binance_assets.fallback import Fallback, accepts, suspect_reason
from binance_assets.ledger import ledger_row
from binance_assets.markets import Market
from binance_assets.plan import TickerPlan
from binance_assets.prefetch import prefetch
from binance_assets.vision.agg_trades import AGG_TRADES
from binance_assets.vision.archive import read_archive
from binance_assets.vision.download import LocalArchive, VisionDownloader
from binance_assets.vision.listing import ArchiveInfo
from binance_assets.vision.trades import TRADES
from binance_assets.vision.zip_member import ArchiveFormatError

_READERS = {"trades": TRADES, "aggTrades": AGG_TRADES}
"""The reader of each dataset (markets.DATASETS)."""

_EMPTY_BARS = DAY_BARS_SCHEMA.empty_table()


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
    fallbacks: list[dict[str, Any]] = field(default_factory=list)
    """One row per ticker-day built from the fallback dataset: ticker, day, reason, archive."""
    downloaded_bytes: int = 0
    download_seconds: float = 0.0
    aggregate_seconds: float = 0.0
    days: int = 0
    trades: int = 0
    bars: int = 0


@dataclass(frozen=True)
class _Read:
    """One archive downloaded and aggregated, by day."""

    archive: ArchiveInfo
    local: LocalArchive
    by_day: dict[dt.date, DayResult]


def load_days(
    market: Market,
    plans: Sequence[TickerPlan],
    downloader: VisionDownloader,
    stats: LoadStats,
    loaded_at: dt.datetime | None = None,
    fallback: Fallback | None = None,
) -> Iterator[DayLoad]:
    """Yield every planned ticker-day: days without an archive first (zero rows), then archive by archive.

    Archives download concurrently ahead of the one being aggregated; a corrupt or unverifiable archive
    raises before any of its days is yielded, so its days keep whatever rows they had. With a
    ``fallback``, a day whose trades archive is broken or partial (fallback.py) is built from the
    fallback dataset's archive instead, where that archive is listed (and, for a partial day, agrees with
    Binance's klines).
    """
    loaded_at = loaded_at or dt.datetime.now(dt.UTC).replace(microsecond=0)
    for plan in plans:
        for day in plan.no_archive:
            yield _day(market, plan.ticker, day, None, None, loaded_at, stats)
    work = [(plan, archive, days) for plan in plans for archive, days in plan.serves.items()]
    fetched = downloader.iter_fetch(archive.key for _, archive, _ in work)
    for (plan, archive, days), local in zip(work, fetched, strict=True):
        read = _read(market, plan.ticker, archive, local, loaded_at, stats)
        replaced = {}
        if fallback is not None and archive.dataset != fallback.dataset:
            replaced = _rebuilt(market, plan.ticker, read, days, fallback, downloader, loaded_at, stats)
        for day in days:
            if day in plan.fallbacks:
                stats.fallbacks.append(_fallback_row(plan.ticker, day, plan.fallbacks[day], archive))
            chosen = replaced.get(day, read)
            yield _day(market, plan.ticker, day, chosen.by_day.get(day), chosen, loaded_at, stats)
    downloader.evict()  # keep the cache within BINANCE_CACHE_MAX_GB, least recently used first


def _read(
    market: Market,
    ticker: str,
    archive: ArchiveInfo,
    local: LocalArchive,
    loaded_at: dt.datetime,
    stats: LoadStats,
) -> _Read:
    """Aggregate one verified archive of its dataset; its ledger row goes to ``stats``."""
    stats.downloaded_bytes += local.downloaded_bytes
    stats.download_seconds += local.seconds
    started = time.monotonic()
    name = PurePosixPath(archive.key).name
    dataset = _READERS[archive.dataset]
    batches = read_archive(local.path, market, dataset, contract_size=market.contract_size(ticker), name=name)
    try:
        aggregation = aggregate_trades(prefetch(batches))
    except ArchiveFormatError:
        raise
    except ValueError as exc:  # rows the aggregator cannot take (an impossible id span)
        raise ArchiveFormatError(name, str(exc)) from None
    stats.aggregate_seconds += time.monotonic() - started
    stats.archives.append(ledger_row(market.key, ticker, archive, local, aggregation.days, loaded_at))
    return _Read(archive, local, {result.day: result for result in aggregation.by_day()})


def _rebuilt(
    market: Market,
    ticker: str,
    read: _Read,
    days: Sequence[dt.date],
    fallback: Fallback,
    downloader: VisionDownloader,
    loaded_at: dt.datetime,
    stats: LoadStats,
) -> dict[dt.date, _Read]:
    """The days of ``read`` that its fallback archives replace (fallback.py), each with that read."""
    suspects = {}
    for day in days:
        result = read.by_day.get(day)
        reason = suspect_reason(ticker, day, result.stats if result else None, fallback)
        if reason is not None:
            suspects[day] = reason
    replaced: dict[dt.date, _Read] = {}
    reads: dict[str, _Read] = {}
    for day, reason in suspects.items():
        archive = fallback.archive_for(ticker, day, read.archive.freq)
        if archive is None:
            continue
        if archive.key not in reads:
            local = downloader.fetch(archive.key)
            reads[archive.key] = _read(market, ticker, archive, local, loaded_at, stats)
        candidate = reads[archive.key]
        result = candidate.by_day.get(day)
        if accepts(ticker, day, reason, result.stats if result else None, fallback):
            replaced[day] = candidate
            stats.fallbacks.append(_fallback_row(ticker, day, reason, archive))
    return replaced


def _fallback_row(ticker: str, day: dt.date, reason: str, archive: ArchiveInfo) -> dict[str, Any]:
    return {"ticker": ticker, "day": day, "reason": reason, "archive": archive.key}


def _day(
    market: Market,
    ticker: str,
    day: dt.date,
    result: DayResult | None,
    read: _Read | None,
    loaded_at: dt.datetime,
    stats: LoadStats,
) -> DayLoad:
    bars = result.bars if result else _EMPTY_BARS
    rows = bars.num_rows
    stats.days += 1
    stats.bars += rows
    stats.trades += int(result.stats["trade_count"]) if result else 0
    keyed = bars.add_column(0, "ticker", pa.array([ticker] * rows, pa.string()))
    keyed = keyed.add_column(0, "market", pa.array([market.key] * rows, pa.string()))
    liquidity = _liquidity(market, ticker, day, result.stats if result else None, read, loaded_at)
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
    read: _Read | None,
    loaded_at: dt.datetime,
) -> dict[str, Any]:
    values = day_stats or _LIQUIDITY_STATS
    return {
        "market": market.key,
        "ticker": ticker,
        "day": day,
        **{name: values[name] for name in _LIQUIDITY_STATS},
        "source": read.archive.freq if read else "none",
        "archive_sha256": read.local.sha256 if read else "",
        "dataset": read.archive.dataset if read else "trades",
        "loaded_at": loaded_at,
    }
