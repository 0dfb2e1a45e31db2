"""The archive ledger: one row per trades or aggTrades archive the pipeline loaded, and what changed on
Vision since.

A ledger row records the archive as listed (size, ETag, LastModified) and as read (sha256 verified
against its .CHECKSUM, rows, trade-id and time range). `daily_liquidity.archive_sha256` links each
ticker-day to the archive it was read from, so a republished archive maps to exactly the days it fed.
SQL builders over a `Store`, reads and writes through an open one, and comparisons; no Dagster here.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from binance_assets.clickhouse.store import OpenStore, Store
from binance_assets.clickhouse.tables import ARCHIVES_TABLE, LIQUIDITY_TABLE
from binance_assets.markets import DatasetName
from binance_assets.trust.fallback import BUSY_DAY_TRADES
from binance_assets.vision.download import LocalArchive
from binance_assets.vision.listing import ArchiveInfo

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def ledger_row(
    market: str,
    ticker: str,
    archive: ArchiveInfo,
    local: LocalArchive,
    days: pa.Table,
    loaded_at: dt.datetime,
) -> dict[str, Any]:
    """The ledger row of one loaded archive; ``days`` is its aggregation's day stats (bars.DAYS_SCHEMA),
    every day of the archive, requested or not. An archive without trades has ids 0 and times at the epoch."""
    has_rows = days.num_rows > 0

    def total(column: str) -> int:
        return int(pc.sum(days[column]).as_py() or 0)

    def extreme(column: str, pick: str, empty: Any) -> Any:
        return pc.min_max(days[column]).as_py()[pick] if has_rows else empty

    return {
        "market": market,
        "ticker": ticker,
        "key": archive.key,
        "freq": archive.freq,
        "size": archive.size,
        "etag": archive.etag,
        "last_modified": archive.last_modified,
        "sha256": local.sha256,
        "rows": total("trade_count") + total("duplicate_rows"),
        "first_trade_id": extreme("first_trade_id", "min", 0),
        "last_trade_id": extreme("last_trade_id", "max", 0),
        "first_time": extreme("first_time", "min", _EPOCH),
        "last_time": extreme("last_time", "max", _EPOCH),
        "loaded_at": loaded_at,
        "dataset": archive.dataset,
    }


def write_ledger(store: OpenStore, rows: Sequence[Mapping[str, Any]]) -> int:
    """One INSERT of a run's ledger rows (ReplacingMergeTree by loaded_at: the newest row of a key wins)."""
    if not rows:
        return 0
    schema = ARCHIVES_TABLE.schema
    data = pa.Table.from_pylist([{name: row[name] for name in schema.names} for row in rows], schema)
    store.insert(ARCHIVES_TABLE, data)
    return data.num_rows


@dataclass(frozen=True)
class LedgerEntry:
    """A loaded archive as the ledger knows it, with the days whose rows it still feeds."""

    ticker: str
    key: str
    freq: str
    size: int
    etag: str
    last_modified: dt.datetime
    sha256: str
    days: tuple[dt.date, ...]
    dataset: DatasetName = "trades"


def ledger_sql(store: Store) -> str:
    """Ledger rows of some tickers of a market, each with the ticker-days that were read from it."""
    where = "market = {market:String} AND ticker IN {tickers:Array(String)}"
    return f"""
        SELECT a.ticker, a.key, a.freq, a.size, a.etag, a.last_modified, a.sha256,
               arraySort(groupArrayIf(l.day, l.archive_sha256 != '')) AS days, a.dataset
        FROM (
            SELECT ticker, key, freq, size, etag, last_modified, sha256, dataset
            FROM {store.qualified(ARCHIVES_TABLE)} FINAL WHERE {where}
        ) AS a
        LEFT JOIN (
            SELECT ticker, archive_sha256, day
            FROM {store.qualified(LIQUIDITY_TABLE)} FINAL WHERE {where} AND source != 'none'
        ) AS l ON l.ticker = a.ticker AND l.archive_sha256 = a.sha256
        GROUP BY a.ticker, a.key, a.freq, a.size, a.etag, a.last_modified, a.sha256, a.dataset
        ORDER BY a.ticker, a.key
    """


def read_ledger(store: OpenStore, market: str, tickers: Sequence[str]) -> list[LedgerEntry]:
    """The ledger of ``tickers`` in one query."""
    if not tickers:
        return []
    parameters = {"market": market, "tickers": list(tickers)}
    result = store.client.query(ledger_sql(store.store), parameters=parameters)
    return [
        LedgerEntry(ticker, key, freq, int(size), etag, _utc(modified), sha256, tuple(days), dataset)
        for ticker, key, freq, size, etag, modified, sha256, days, dataset in result.result_rows
    ]


def broken_days_sql(store: Store) -> str:
    """Ticker-days loaded from a trades archive that shows itself broken (trust/fallback.py): busy, and not
    one taker buy."""
    return f"""
        SELECT ticker, arraySort(groupArray(day)) AS days
        FROM {store.qualified(LIQUIDITY_TABLE)} FINAL
        WHERE market = {{market:String}} AND ticker IN {{tickers:Array(String)}} AND dataset = 'trades'
          AND trade_count >= {BUSY_DAY_TRADES} AND taker_buy_volume = 0
        GROUP BY ticker ORDER BY ticker
    """


def read_broken_days(store: OpenStore, market: str, tickers: Sequence[str]) -> dict[str, list[dt.date]]:
    """Per ticker, the days loaded from a broken trades archive: to build again from the fallback."""
    if not tickers:
        return {}
    parameters = {"market": market, "tickers": list(tickers)}
    result = store.client.query(broken_days_sql(store.store), parameters=parameters)
    return {ticker: list(days) for ticker, days in result.result_rows}


@dataclass(frozen=True)
class Republished:
    """A loaded archive whose listing differs from the ledger: Binance replaced it."""

    loaded: LedgerEntry
    listed: ArchiveInfo

    @property
    def changes(self) -> list[str]:
        """Which listed fields differ, e.g. ['size 100 -> 120', 'etag ...']."""
        pairs = {
            "size": (self.loaded.size, self.listed.size),
            "etag": (self.loaded.etag, self.listed.etag),
            "last_modified": (self.loaded.last_modified, _utc(self.listed.last_modified)),
        }
        return [f"{name} {old} -> {new}" for name, (old, new) in pairs.items() if old != new]


def republished(listed: Iterable[ArchiveInfo], ledger: Iterable[LedgerEntry]) -> list[Republished]:
    """Ledger archives still listed whose size, ETag or LastModified changed (an archive no longer listed
    is left alone: its rows stay, nothing replaces them)."""
    by_key = {archive.key: archive for archive in listed}
    candidates = (Republished(entry, by_key[entry.key]) for entry in ledger if entry.key in by_key)
    return [change for change in candidates if change.changes]


def _utc(value: dt.datetime) -> dt.datetime:
    """Aware UTC (ClickHouse may hand back naive UTC datetimes)."""
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
