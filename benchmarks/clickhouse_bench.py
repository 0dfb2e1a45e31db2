"""Write throughput of the ClickHouse IO manager's storage path on a fresh embedded (chDB) store.

Prints rows/s for: one ticker's month of 5-second bars (31 x 17,280 rows) and year (365 x 17,280)
through the Arrow handler (cast + checks + count + one INSERT), the bare INSERT with and without our
INSERT_SETTINGS, and the replacement of one day with and without the skip-empty DELETE.

    python benchmarks/clickhouse_bench.py [--days-per-year 365] [--repeat 5]
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
from clickhouse_connect.driver.client import Client

from binance_assets.clickhouse.client import open_client
from binance_assets.clickhouse.io_manager import ArrowTypeHandler, Target, clear_slice, insert_rows
from binance_assets.clickhouse.tables import BARS, BARS_SCHEMA, INSERT_SETTINGS, Slice, ensure_tables

BARS_PER_DAY = 17_280
FIRST_DAY = dt.date(2023, 1, 1)


def synthetic_bars(days: int, first: dt.date = FIRST_DAY, ticker: str = "BTCUSDT") -> pa.Table:
    """days x 17,280 bars of one ticker, vectorised (no Python loop per row)."""
    n = days * BARS_PER_DAY
    epoch_day = np.repeat(np.arange(days, dtype=np.int32) + (first - dt.date(1970, 1, 1)).days, BARS_PER_DAY)
    ts = epoch_day.astype(np.int64) * 86_400 + np.tile(
        np.arange(1, BARS_PER_DAY + 1, dtype=np.int64) * 5, days
    )
    price = 100 + np.cumsum(np.random.default_rng(0).normal(0, 0.01, n))
    columns = {
        "market": pa.array(["spot"] * n, pa.string()),
        "ticker": pa.array([ticker] * n, pa.string()),
        "day": pa.array(epoch_day).cast(pa.date32()),
        "ts": pa.array(ts, pa.timestamp("s", tz="UTC")),
        **{name: pa.array(price) for name in BARS_SCHEMA.names[4:11]},
        "trade_count": pa.array(np.full(n, 42, dtype=np.uint32)),
    }
    return pa.Table.from_pydict(columns, schema=BARS_SCHEMA)


def target_for(rows: pa.Table, ticker: str = "BTCUSDT") -> Target:
    days = frozenset(rows["day"].unique().to_pylist())
    return Target("binance", "hl5s", BARS, "spot", (Slice("spot", ticker, days),))


@contextmanager
def fresh_store() -> Iterator[Client]:
    with (
        tempfile.TemporaryDirectory(prefix="clickhouse-bench-") as tmp,
        open_client(f"chdb://{Path(tmp) / 's'}") as client,
    ):
        ensure_tables(client, "binance", "hl5s", "daily_liquidity")
        yield client


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def bulk(label: str, rows: pa.Table, write: Callable[[Client, pa.Table], object]) -> tuple[str, int, float]:
    with fresh_store() as client:
        seconds = timed(lambda: write(client, rows))
        assert client.command("SELECT count() FROM binance.hl5s") == rows.num_rows
    return label, rows.num_rows, seconds


def handler_write(client: Client, rows: pa.Table) -> None:
    ArrowTypeHandler().handle_output(client, target_for(rows), rows)


def bare_insert(settings: dict[str, int]) -> Callable[[Client, pa.Table], None]:
    return lambda client, rows: client.insert_arrow("binance.hl5s", rows, settings=settings)


def replace_day(month: pa.Table, repeat: int) -> list[tuple[str, int, float]]:
    """Median seconds to replace one day: existing or new, with or without the skip-empty count."""
    results = []
    with fresh_store() as client:
        insert_rows(client, target_for(month), month)
        for day, state in (
            (FIRST_DAY + dt.timedelta(days=14), "existing"),
            (FIRST_DAY + dt.timedelta(days=40), "new"),
        ):
            rows = synthetic_bars(1, day)
            target = target_for(rows)
            for skip_empty in (True, False):

                def replace(
                    skip_empty: bool = skip_empty, target: Target = target, rows: pa.Table = rows
                ) -> None:
                    clear_slice(client, target, target.slices[0], skip_empty=skip_empty)
                    insert_rows(client, target, rows)

                runs = []
                for _ in range(repeat):
                    if state == "new":
                        client.command("DELETE FROM binance.hl5s WHERE day = {d:Date}", parameters={"d": day})
                    runs.append(timed(replace))
                how = "count, skip DELETE if empty" if skip_empty else "always DELETE"
                results.append((f"replace 1 {state} day ({how})", rows.num_rows, statistics.median(runs)))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days-per-year", type=int, default=365)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    month, year = synthetic_bars(31), synthetic_bars(args.days_per_year)
    results = [
        bulk("month, handler (cast+check+count+insert)", month, handler_write),
        bulk("month, bare insert, default settings", month, bare_insert({})),
        bulk("month, bare insert, INSERT_SETTINGS", month, bare_insert(dict(INSERT_SETTINGS))),
        bulk("year, handler (cast+check+count+insert)", year, handler_write),
        bulk("year, bare insert, default settings", year, bare_insert({})),
        bulk("year, bare insert, INSERT_SETTINGS", year, bare_insert(dict(INSERT_SETTINGS))),
        *replace_day(month, args.repeat),
    ]
    print(f"{'case':<52} {'rows':>10} {'seconds':>8} {'rows/s':>12}")
    for label, rows, seconds in results:
        print(f"{label:<52} {rows:>10,} {seconds:>8.3f} {rows / seconds:>12,.0f}")


if __name__ == "__main__":
    main()
