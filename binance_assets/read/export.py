"""Bars to a Hive-partitioned Parquet dataset, streamed from ClickHouse. No Dagster.

Layout: ``OUT/interval=<I>/market=<M>/ticker=<T>/year=<YYYY>/month=<MM>/<first>_<last>.parquet`` (zstd),
one file per ticker-month holding the bars of days first..last (UTC, inclusive; the bars' ``day``), with
the columns of `read_bars`; the partition columns come from the path. The interval is a partition so that
exports of several intervals in one OUT never mix in one reader's dataset. A file is written to a hidden
temporary name (readers skip dot files) and renamed into place. Exporting a range again replaces its files:
a month's new file also covers the days of the files it overlaps, which are then removed, so the dataset
never holds a bar twice and loses none.

Each ticker-month is one query, its result streamed batch by batch into the Parquet writer (memory: one
batch), the embedded store's lock held for that query only.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from binance_assets.clickhouse.store import Store
from binance_assets.clickhouse.tables import conform
from binance_assets.plan import months_between
from binance_assets.read import arguments
from binance_assets.read.api import DEFAULT_LOCK_TIMEOUT, loaded_tickers, open_reader, require_loaded
from binance_assets.read.arguments import DAY_SECONDS
from binance_assets.read.errors import ArgumentError
from binance_assets.read.sql import BARS_READ_SCHEMA, bars_sql

_FILE = re.compile(r"^(\d{4}-\d{2}-\d{2})_(\d{4}-\d{2}-\d{2})\.parquet$")


@dataclass(frozen=True)
class Part:
    """One file of the export: a ticker's bars on days first..last, all in one month."""

    ticker: str
    first: dt.date
    last: dt.date

    def directory(self, out: Path, interval: str, market: str) -> Path:
        return (
            out
            / f"interval={interval}"
            / f"market={market}"
            / f"ticker={self.ticker}"
            / f"year={self.first.year:04d}"
            / f"month={self.first.month:02d}"
        )

    @property
    def name(self) -> str:
        return f"{self.first}_{self.last}.parquet"


@dataclass
class ExportSummary:
    rows: int = 0
    files: int = 0
    bytes: int = 0


def month_parts(tickers: Sequence[str], first: dt.date, last: dt.date) -> list[Part]:
    """Each ticker's days first..last cut at month ends."""
    return [Part(ticker, start, stop) for ticker in tickers for start, stop in months_between(first, last)]


def export_bars(
    store: Store,
    market: str,
    tickers: Sequence[str],
    start: dt.date | str,
    end: dt.date | str,
    interval: str,
    out: Path,
    *,
    progress: Callable[[str], None] = lambda _: None,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
) -> ExportSummary:
    """Write the bars of ``tickers`` (none: every ticker loaded in the market) to ``out``; see the module."""
    market, seconds = arguments.market_key(market), arguments.interval_seconds(interval)
    first, last = arguments.day_range(start, end)
    if DAY_SECONDS % seconds:
        raise ArgumentError(
            "interval",
            f"interval {interval!r} cannot be exported: it must divide a day (5s, 1m, 15m, 1h, 1d, ...)",
        )
    with open_reader(store, lock_timeout) as opened:
        if tickers:
            require_loaded(opened, market, tickers)
        else:
            tickers = loaded_tickers(opened, market)
    label, summary = arguments.interval_label(seconds), ExportSummary()
    sql = bars_sql(store, seconds)
    parts = month_parts(list(dict.fromkeys(tickers)), first, last)
    for done, requested in enumerate(parts, 1):
        directory = requested.directory(out, label, market)
        replaced = _overlapping(directory, requested)
        part = Part(
            requested.ticker,
            min([requested.first, *(p.first for p in replaced)]),
            max([requested.last, *(p.last for p in replaced)]),
        )
        params = {"market": market, "ticker": part.ticker, "first": part.first, "last": part.last}
        rows, size = _write(store, sql, params, directory, part.name, lock_timeout)
        for old in replaced:
            if old.name != part.name:
                (directory / old.name).unlink()
        summary.rows += rows
        summary.files += rows > 0
        summary.bytes += size
        if rows:  # a month without bars writes no file and says nothing
            span = f"{part.ticker} {part.first}..{part.last}"
            progress(f"{done}/{len(parts)} {span}: {rows:,} rows, {size:,} B")
    return summary


def _overlapping(directory: Path, part: Part) -> list[Part]:
    """The files already in the part's directory whose days overlap the part's."""
    found = []
    for path in directory.glob("*.parquet") if directory.is_dir() else ():
        match = _FILE.fullmatch(path.name)
        if match:
            old = Part(part.ticker, dt.date.fromisoformat(match[1]), dt.date.fromisoformat(match[2]))
            if old.first <= part.last and part.first <= old.last:
                found.append(old)
    return found


def _write(
    store: Store, sql: str, params: dict[str, object], directory: Path, name: str, lock_timeout: float
) -> tuple[int, int]:
    """Stream the query into ``directory/name`` (nothing when it has no rows): (rows, bytes)."""
    directory.mkdir(parents=True, exist_ok=True)
    temporary, rows = directory / f".{name}.{os.getpid()}.tmp", 0
    try:
        with (
            open_reader(store, lock_timeout) as opened,
            opened.client.query_arrow_stream(sql, parameters=params) as stream,
            pq.ParquetWriter(temporary, BARS_READ_SCHEMA, compression="zstd") as writer,
        ):
            for batch in stream:
                if batch.num_rows:
                    writer.write_table(conform(pa.Table.from_batches([batch]), BARS_READ_SCHEMA))
                    rows += batch.num_rows
        if not rows:
            (directory / name).unlink(missing_ok=True)
            return 0, 0
        os.replace(temporary, directory / name)
        return rows, (directory / name).stat().st_size
    finally:
        temporary.unlink(missing_ok=True)
