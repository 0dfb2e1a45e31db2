"""INSERT compression (CLICKHOUSE_COMPRESSION) on a year of one ticker's 5-second bars (365 x 17,280 =
6,307,200 rows): none, lz4 and zstd.

For each method, median of --repeat runs:
- the bytes of the ArrowStream body an INSERT sends (`store.arrow_stream`, compressed by `store.compressed`
  as `OpenStore.insert` does for a server) and the ratio to uncompressed;
- the client's CPU seconds to build and compress that body (drained, nothing sent);
- wall seconds of the whole INSERT into a fresh embedded store (chDB) through clickhouse-connect's
  `raw_insert` with that Content-Encoding (`store.insert_arrow_stream`), INSERT_SETTINGS and a token.
  chDB has no HTTP input stage: clickhouse-connect decompresses the body in the client before the
  engine reads it, so this is the cost of compressing plus decompressing, with no network; a server
  decompresses on its side instead;
- the seconds the body takes on a 1 Gbit/s and a 10 Gbit/s link (its bytes divided by 125 MB/s or
  1.25 GB/s: computed, not measured).

The bars are a random walk quantised to a 0.01 tick, high/low around open/close, lognormal volumes and
Poisson trade counts: closer to real bars than identical price columns.

    python benchmarks/insert_compression_bench.py [--repeat 3] [--days 365]
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa

from binance_assets.clickhouse.store import (
    INSERT_SETTINGS,
    Store,
    arrow_stream,
    compressed,
    insert_arrow_stream,
)
from binance_assets.clickhouse.tables import BARS_TABLE

BARS_PER_DAY = 17_280
METHODS = (None, "lz4", "zstd")
LINKS = {"1 Gbit/s": 125e6, "10 Gbit/s": 1.25e9}


def year_of_bars(days: int, seed: int = 0) -> pa.Table:
    """days x 17,280 bars of one ticker, vectorised."""
    rng = np.random.default_rng(seed)
    n = days * BARS_PER_DAY
    epoch_day = np.repeat(
        np.arange(days, dtype=np.int32) + (dt.date(2023, 1, 1) - dt.date(1970, 1, 1)).days, BARS_PER_DAY
    )
    ts = epoch_day.astype(np.int64) * 86_400 + np.tile(
        np.arange(1, BARS_PER_DAY + 1, dtype=np.int64) * 5, days
    )
    close = np.round(30_000 + np.cumsum(rng.normal(0, 2.0, n)), 2)
    open_ = np.round(np.concatenate([[close[0]], close[:-1]]) + rng.normal(0, 0.5, n), 2)
    spread = np.round(np.abs(rng.normal(0, 1.5, n)), 2)
    volume = np.round(rng.lognormal(0, 1.2, n), 5)
    columns = {
        "market": pa.array(["spot"] * n, pa.string()),
        "ticker": pa.array(["BTCUSDT"] * n, pa.string()),
        "day": pa.array(epoch_day).cast(pa.date32()),
        "ts": pa.array(ts, pa.timestamp("s", tz="UTC")),
        "open": open_,
        "high": np.maximum(open_, close) + spread,
        "low": np.minimum(open_, close) - spread,
        "close": close,
        "volume": volume,
        "quote_volume": volume * close,
        "taker_buy_volume": np.round(volume * rng.uniform(0, 1, n), 5),
        "trade_count": pa.array(rng.poisson(40, n).astype(np.uint32) + 1),
    }
    return pa.Table.from_pydict(columns, schema=BARS_TABLE.schema)


def body_size(rows: pa.Table, method: str | None) -> tuple[int, float]:
    """Bytes of the INSERT body and CPU seconds to build it."""
    started = time.process_time()
    size = sum(len(chunk) for chunk in compressed(arrow_stream(rows), method))
    return size, time.process_time() - started


def insert_seconds(rows: pa.Table, method: str | None) -> float:
    """Wall seconds of one INSERT of rows, compressed by method, into a fresh chDB store."""
    with tempfile.TemporaryDirectory() as tmp, Store(f"chdb://{Path(tmp) / 'store'}").open() as store:
        settings = {**INSERT_SETTINGS, "insert_deduplication_token": uuid.uuid4().hex}
        started = time.perf_counter()
        insert_arrow_stream(store.client, store.qualified(BARS_TABLE), rows, settings, method)
        seconds = time.perf_counter() - started
        assert store.client.command("SELECT count() FROM binance.hl5s") == rows.num_rows
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--days", type=int, default=365)
    args = parser.parse_args()
    rows = year_of_bars(args.days)
    print(
        f"{rows.num_rows:,} rows ({args.days} days of one ticker), Arrow {rows.nbytes / 1e6:.0f} MB in memory"
    )
    insert_seconds(rows.slice(0, 100_000), None)  # warm-up: the engine's first start
    plain = 0
    print("method | body MB | ratio | compress CPU s | chDB insert s (median, max) | " + " | ".join(LINKS))
    for method in METHODS:
        sizes, cpu, wall = [], [], []
        for _ in range(args.repeat):
            size, seconds = body_size(rows, method)
            sizes.append(size)
            cpu.append(seconds)
            wall.append(insert_seconds(rows, method))
        size = sizes[0]
        plain = plain or size
        links = " | ".join(f"{size / rate:.2f} s" for rate in LINKS.values())
        print(
            f"{method or 'none'} | {size / 1e6:.1f} | {plain / size:.2f} | {statistics.median(cpu):.2f} | "
            f"{statistics.median(wall):.2f}, {max(wall):.2f} | {links}"
        )


if __name__ == "__main__":
    main()
