"""Download, verify and aggregate the planned archives of a run's tickers, one ticker-day at a time.

Pure (no Dagster). A `RunLoad` is read in two steps (docs/design.md "Layers and data flow"): iterated
once, it yields each ticker-day's bars, which the asset hands to the IO manager as one stream, so memory
holds one archive's bars at a time while the next archives download; once that stream is drained, it
holds what the loads made: the daily_liquidity table, the archive-ledger rows, the days built from the
fallback dataset and the run's figures.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import PurePosixPath
from typing import Any, Self, TypeVar

import pyarrow as pa

from binance_assets.aggregate import AheadKey, aggregate_archive, taken_ahead
from binance_assets.bars import DAY_BARS_SCHEMA, DAYS_SCHEMA, DayResult
from binance_assets.clickhouse.tables import LIQUIDITY_TABLE
from binance_assets.errors import UnfinishedLoad
from binance_assets.markets import Market
from binance_assets.plan import TickerPlan
from binance_assets.trust.fallback import PARTIAL, Fallback, accepts, count_rule, partial_kept, suspect_reason
from binance_assets.trust.ledger import ledger_row
from binance_assets.vision.download import LocalArchive, VisionDownloader
from binance_assets.vision.errors import ArchiveFormatError, VisionError
from binance_assets.vision.listing import ArchiveInfo

T = TypeVar("T")

_EMPTY_BARS = DAY_BARS_SCHEMA.empty_table()
_TRIM_AFTER_BYTES = 16 << 20
"""Archives from this size up leave enough freed heap behind to be worth handing back."""
try:  # glibc: the heap's free pages go back to the OS only on request
    _MALLOC_TRIM = ctypes.CDLL(None).malloc_trim
except (OSError, AttributeError):  # pragma: no cover - another libc
    _MALLOC_TRIM = None


def release_freed_memory() -> None:
    """Hand the heap's free pages back to the OS. Parsing a big archive frees as much as it keeps: on a
    24M-trade monthly archive glibc held about 150 MB of freed heap, on which the store's insert (chDB's
    engine, the insert's blocks) stacked: 730 MB peak instead of about 620 MB."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


LIQUIDITY_STATS: tuple[str, ...] = tuple(
    f.name for f in DAYS_SCHEMA if f.name in LIQUIDITY_TABLE.schema.names and f.name != "day"
)
"""daily_liquidity's columns taken from the day stats of bars.py: those both schemas name."""
_NO_TRADES = {
    f.name: "" if pa.types.is_string(f.type) else pa.scalar(0, f.type).as_py()
    for f in DAYS_SCHEMA
    if f.name in LIQUIDITY_STATS
}
"""Their value on a day without trades: zero, or empty text."""


ARCHIVE_ERRORS = (VisionError, ArchiveFormatError)
"""What one archive can raise (not verifiable, not downloadable, not readable): its days fail, the run's
other archives go on."""


@dataclass(frozen=True)
class FailedDay:
    """A ticker-day its archive could not give: the archive's key and the error."""

    ticker: str
    day: dt.date
    archive: str
    error: Exception


@dataclass(frozen=True)
class DayLoad:
    """One ticker-day ready to write: its bars (hl5s columns), its daily_liquidity row and the key of the
    archive it was built from ("none" for a day without one)."""

    ticker: str
    day: dt.date
    bars: pa.Table
    liquidity: dict[str, Any]
    archive: str


@dataclass(frozen=True)
class LoadFigures:
    """A load's counts and timings: the one list of a run's figures. A `RunLoad` adds them up as it goes
    (current while the stream is read, final once it is drained); a run's metadata writes them and reads
    them back (orchestration/run_metadata.py), and the CLI's totals extend them (cli/runner.py `Totals`)."""

    days: int = 0
    """Ticker-days yielded (written, or in a dry run aggregated), days without an archive included."""
    trades: int = 0
    bars: int = 0
    downloaded_bytes: int = 0
    download_seconds: float = 0.0
    aggregate_seconds: float = 0.0

    def __add__(self, other: Self) -> Self:
        """Field by field, in this class or a subclass: numbers add up, tuples concatenate."""
        return replace(self, **{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})


@dataclass(frozen=True)
class _Read:
    """One archive downloaded and aggregated, by day."""

    archive: ArchiveInfo
    local: LocalArchive
    by_day: dict[dt.date, DayResult]


class RunLoad:
    """Every planned ticker-day of a run: days without an archive first (zero rows), then archive by archive.

    Archives download concurrently ahead of the one being aggregated. An archive that cannot be
    downloaded, verified or read (ARCHIVE_ERRORS) yields none of its days: they become `failed`, keep
    whatever rows they had, and the run's other archives go on. Days not yet published (the plans'
    `unpublished`) are not read at all: they are `late`. With a
    ``fallback``, a day whose trades archive is broken or partial (trust/fallback.py) is built from the
    fallback dataset's archive instead, where that archive is listed (and, for a partial day, agrees with
    Binance's klines).

    Read once: iterate it (bars) or `days()` (bars and liquidity row per day) to the end; only then are
    `liquidity`, `liquidity_rows`, `ledger_rows`, `fallbacks` and `failed` readable. Before that they raise
    UnfinishedLoad, so a consumer that does not drain the stream fails instead of writing no liquidity.
    """

    def __init__(
        self,
        market: Market,
        plans: Sequence[TickerPlan],
        downloader: VisionDownloader,
        *,
        fallback: Fallback | None = None,
        loaded_at: dt.datetime | None = None,
    ) -> None:
        self.market = market
        self.plans = tuple(plans)
        self.downloader = downloader
        self.fallback = fallback
        self.loaded_at = loaded_at or dt.datetime.now(dt.UTC).replace(microsecond=0)
        self.figures = LoadFigures()
        self._liquidity_rows: list[dict[str, Any]] = []
        self._ledger_rows: list[dict[str, Any]] = []
        self._fallbacks: list[dict[str, Any]] = []
        self._partial: list[dict[str, Any]] = []
        self._gaps: dict[tuple[str, dt.date], pa.Table] = {}
        self._failed: list[FailedDay] = []
        self._started = False
        self._drained = False

    def __iter__(self) -> Iterator[pa.Table]:
        """Each ticker-day's bars (hl5s columns, keyed by market and ticker), one table per day."""
        return (load.bars for load in self.days())

    def days(self) -> Iterator[DayLoad]:
        """Each ticker-day's bars and liquidity row."""
        if self._started:
            raise RuntimeError(f"{self.market.key}: a RunLoad is read once")
        self._started = True
        for plan in self.plans:
            for day in plan.no_archive:
                yield self._day(plan.ticker, day, None, None)
        work = [(plan, archive, days) for plan in self.plans for archive, days in plan.serves.items()]
        keys = [archive.key for _, archive, _ in work]
        sizes = {archive.key: archive.size for _, archive, _ in work}
        fetched = self.downloader.iter_fetch(keys, sizes, errors=ARCHIVE_ERRORS)
        for (plan, archive, days), local in zip(work, fetched, strict=True):
            try:
                if isinstance(local, Exception):
                    raise local
                read = self._read(plan.ticker, archive, local)
                replaced = {}
                if self.fallback is not None and archive.dataset != self.fallback.dataset:
                    replaced = self._rebuilt(plan.ticker, read, days, self.fallback)
            except ARCHIVE_ERRORS as error:
                self._failed += [FailedDay(plan.ticker, day, archive.key, error) for day in days]
                continue
            for day in days:
                if day in plan.fallbacks:
                    self._fallbacks.append(_fallback_row(plan.ticker, day, plan.fallbacks[day], archive))
                chosen = replaced.get(day, read)
                yield self._day(plan.ticker, day, chosen.by_day.get(day), chosen)
        self.downloader.evict()  # keep the cache within BINANCE_CACHE_MAX_GB, least recently used first
        self._drained = True

    @property
    def liquidity(self) -> pa.Table:
        """The run's daily_liquidity rows, one per ticker-day, in load order."""
        return pa.Table.from_pylist(
            self._finished("liquidity", self._liquidity_rows), schema=LIQUIDITY_TABLE.schema
        )

    @property
    def liquidity_rows(self) -> list[dict[str, Any]]:
        return self._finished("liquidity_rows", self._liquidity_rows)

    @property
    def failed(self) -> list[FailedDay]:
        """The ticker-days whose archive failed, in load order."""
        return self._finished("failed", self._failed)

    @property
    def late(self) -> list[tuple[str, dt.date]]:
        """The (ticker, day)s not yet published on Vision, left for a later run."""
        return [(plan.ticker, day) for plan in self.plans for day in plan.unpublished]

    @property
    def ledger_rows(self) -> list[dict[str, Any]]:
        """One archive-ledger row (ledger.ledger_row) per archive loaded, in load order."""
        return self._finished("ledger_rows", self._ledger_rows)

    @property
    def fallbacks(self) -> list[dict[str, Any]]:
        """One row per ticker-day built from the fallback dataset: ticker, day, reason, archive."""
        return self._finished("fallbacks", self._fallbacks)

    @property
    def partial_days(self) -> list[dict[str, Any]]:
        """One row per partial trades day kept because its fallback day did not match the klines (nor was
        listed): ticker, day, reason, archive (the trades archive kept)."""
        return self._finished("partial_days", self._partial)

    @property
    def uncovered(self) -> dict[tuple[str, dt.date], pa.Table]:
        """Per (ticker, day) written with uncovered trade ids: the runs of those ids (bars.GAPS_SCHEMA),
        which `matches_binance_klines` needs to place them in minutes."""
        return self._finished("uncovered", self._gaps)

    def _finished(self, name: str, rows: T) -> T:
        if not self._drained:
            raise UnfinishedLoad(
                f"{self.market.key}: {name} of the run read before its bars stream was drained "
                f"({self.figures.days} ticker-days yielded); the bars output's IO manager must consume "
                "the whole stream (the ClickHouse IO manager does)"
            )
        return rows

    def _read(self, ticker: str, archive: ArchiveInfo, local: LocalArchive) -> _Read:
        """Aggregate one verified archive of its dataset (or take what the worker aggregated ahead,
        aggregate.py) and keep its ledger row."""
        market = self.market
        self.figures += LoadFigures(downloaded_bytes=local.downloaded_bytes, download_seconds=local.seconds)
        started = time.monotonic()
        aggregation = taken_ahead(AheadKey(market.key, ticker, archive.key, local.sha256))
        if aggregation is None:
            name = PurePosixPath(archive.key).name
            aggregation = aggregate_archive(local.path, market, archive.dataset, ticker, name)
        self.figures += LoadFigures(aggregate_seconds=time.monotonic() - started)
        if local.size >= _TRIM_AFTER_BYTES:
            release_freed_memory()
        self._ledger_rows.append(
            ledger_row(market.key, ticker, archive, local, aggregation.days, self.loaded_at)
        )
        return _Read(archive, local, {result.day: result for result in aggregation.by_day()})

    def _rebuilt(
        self, ticker: str, read: _Read, days: Sequence[dt.date], fallback: Fallback
    ) -> dict[dt.date, _Read]:
        """The days of ``read`` that its fallback archives replace (trust/fallback.py), each with that
        read."""
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
                if reason.startswith(PARTIAL):
                    kept = f"{reason}; kept: no {fallback.dataset} archive"
                    self._partial.append(_fallback_row(ticker, day, kept, read.archive))
                continue
            if archive.key not in reads:
                reads[archive.key] = self._read(ticker, archive, self.downloader.fetch(archive.key))
            candidate = reads[archive.key]
            result = candidate.by_day.get(day)
            stats = result.stats if result else None
            if accepts(ticker, day, reason, stats, fallback):
                replaced[day] = candidate
                row = _fallback_row(ticker, day, reason, archive)
                if reason.startswith(PARTIAL):
                    row["count_rule"] = count_rule(stats, fallback.kline_counts.get((ticker, day)))
                self._fallbacks.append(row)
            elif reason.startswith(PARTIAL):
                kept = f"{reason}; {partial_kept(ticker, day, stats, fallback)}"
                self._partial.append(_fallback_row(ticker, day, kept, read.archive))
        return replaced

    def _day(self, ticker: str, day: dt.date, result: DayResult | None, read: _Read | None) -> DayLoad:
        market = self.market
        bars = result.bars if result else _EMPTY_BARS
        rows = bars.num_rows
        trades = int(result.stats["trade_count"]) if result else 0
        self.figures += LoadFigures(days=1, trades=trades, bars=rows)
        keyed = bars.add_column(0, "ticker", pa.array([ticker] * rows, pa.string()))
        keyed = keyed.add_column(0, "market", pa.array([market.key] * rows, pa.string()))
        values = result.stats if result else _NO_TRADES
        if result is not None and result.gaps.num_rows:
            self._gaps[ticker, day] = result.gaps
        liquidity = {
            "market": market.key,
            "ticker": ticker,
            "day": day,
            **{name: values[name] for name in LIQUIDITY_STATS},
            "source": read.archive.freq if read else "none",
            "archive_sha256": read.local.sha256 if read else "",
            "dataset": read.archive.dataset if read else "trades",
            "loaded_at": self.loaded_at,
        }
        self._liquidity_rows.append(liquidity)
        return DayLoad(ticker, day, keyed, liquidity, read.archive.key if read else "none")


def _fallback_row(ticker: str, day: dt.date, reason: str, archive: ArchiveInfo) -> dict[str, Any]:
    return {"ticker": ticker, "day": day, "reason": reason, "archive": archive.key}
