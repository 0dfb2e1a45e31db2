"""A run's load without Dagster (pipeline.RunLoad): its bars stream first, then what the drained load made;
a consumer that does not drain the stream gets an error, not an empty liquidity table."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from binance_assets.bars import DAYS_SCHEMA
from binance_assets.clickhouse.tables import LIQUIDITY_TABLE
from binance_assets.errors import UnfinishedLoad
from binance_assets.markets import MARKETS, DatasetName
from binance_assets.pipeline import LIQUIDITY_STATS, RunLoad
from binance_assets.plan import plan_tickers
from binance_assets.vision.download import VisionDownloader
from binance_assets.vision.listing import ArchiveInfo, VisionListing
from binance_assets_tests.archives import publish

UM = MARKETS["um"]
DAYS = [dt.date(2024, 1, 30) + dt.timedelta(days=i) for i in range(4)]
"""DAYS[0]: no archive (before the ticker's first); DAYS[1:3]: trades archives; DAYS[3]: aggTrades only."""


def run_load(root: Path, tmp_path: Path) -> RunLoad:
    trades = publish(root, "um", "ETHUSDT", DAYS[1:3], seed=2)
    publish(root, "um", "ETHUSDT", DAYS[3:], seed=3, datasets=("aggTrades",))
    assert len(trades) == 800
    listing = VisionListing(f"file://{root}")

    def archives(ticker: str, dataset: DatasetName) -> list[ArchiveInfo]:
        return listing.list_trades_archives(UM, ticker, dataset=dataset)

    plans = plan_tickers(archives, {"ETHUSDT": DAYS}, dt.date(2025, 1, 1), 3, "trades", "aggTrades")
    return RunLoad(UM, plans, VisionDownloader(f"file://{root}", tmp_path / "cache"))


def test_the_drained_load_holds_liquidity_ledger_and_fallbacks(vision_root: Path, tmp_path: Path) -> None:
    load = run_load(vision_root, tmp_path)
    bars = list(load)

    assert [table.num_rows > 0 for table in bars] == [False, True, True, True]
    assert {table.column("ticker")[0].as_py() for table in bars[1:]} == {"ETHUSDT"}
    liquidity = load.liquidity
    assert liquidity.schema == LIQUIDITY_TABLE.schema
    assert liquidity.column("day").to_pylist() == DAYS
    assert liquidity.column("source").to_pylist() == ["none", "daily", "daily", "daily"]
    assert liquidity.column("dataset").to_pylist() == ["trades", "trades", "trades", "aggTrades"]
    assert liquidity.column("bar_count").to_pylist() == [table.num_rows for table in bars]
    assert [set(row) for row in load.liquidity_rows] == [set(LIQUIDITY_TABLE.schema.names)] * 4

    # a day without trades: every column taken from the day stats is zero (or empty text), of its type
    empty = load.liquidity_rows[0]
    assert {name: empty[name] for name in LIQUIDITY_STATS} == {
        **dict.fromkeys(LIQUIDITY_STATS, 0),
        "uncovered_id_ranges": "",
    }
    types = {
        f.name: type(pa.scalar("1" if f.type == pa.string() else 1, f.type).as_py()) for f in DAYS_SCHEMA
    }
    assert all(type(empty[name]) is types[name] for name in LIQUIDITY_STATS)
    assert "volume" in LIQUIDITY_STATS and "first_time" not in LIQUIDITY_STATS

    archives = [row["key"].rsplit("/", 1)[-1] for row in load.ledger_rows]
    assert archives == [
        "ETHUSDT-trades-2024-01-31.zip",
        "ETHUSDT-trades-2024-02-01.zip",
        "ETHUSDT-aggTrades-2024-02-02.zip",
    ]
    assert [(row["day"], row["archive"].rsplit("/", 1)[-1]) for row in load.fallbacks] == [
        (DAYS[3], "ETHUSDT-aggTrades-2024-02-02.zip")
    ]
    assert liquidity.column("trade_count").to_pylist() == [0, 400, 400, 400]
    assert load.figures.days == 4 and load.figures.trades == 1200
    assert load.figures.bars == sum(table.num_rows for table in bars)
    assert load.figures.downloaded_bytes > 0


def test_results_read_before_the_stream_is_drained_raise(vision_root: Path, tmp_path: Path) -> None:
    load = run_load(vision_root, tmp_path)
    with pytest.raises(UnfinishedLoad, match="liquidity of the run read before its bars stream was drained"):
        _ = load.liquidity
    stream = iter(load)
    next(stream)
    next(stream)
    for results in ("liquidity", "liquidity_rows", "ledger_rows", "fallbacks"):
        with pytest.raises(UnfinishedLoad, match=r"\(2 ticker-days yielded\)"):
            getattr(load, results)
    assert sum(1 for _ in stream) == 2
    assert load.liquidity.num_rows == 4

    with pytest.raises(RuntimeError, match="a RunLoad is read once"):
        next(iter(load))


def test_freed_heap_goes_back_to_the_os() -> None:
    """In a fresh process: freed heap that glibc keeps (blocks below its raised mmap threshold, with a
    live block on top) leaves the process's RSS only through release_freed_memory."""
    script = """
import numpy as np
from binance_assets.pipeline import release_freed_memory

def rss():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) // 1024

big = np.ones(2 << 20)  # 16 MB, mmapped; freeing it raises glibc's mmap threshold to 16 MB
del big
blocks = [np.ones(1 << 17) for _ in range(300)]  # 300 MB of 1 MB blocks on the heap
top = np.ones(1 << 17)
del blocks
before = rss()
release_freed_memory()
print(before, rss())
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    before, after = (int(v) for v in done.stdout.split())
    assert before - after > 200, (before, after)
