"""Write throughput of the ClickHouse IO manager's storage path on fresh embedded (chDB) stores.

Prints rows/s for one ticker's month (31 x 17,280 bars) and year (365 x 17,280) written by the Arrow
handler (cast, checks, count, one INSERT), for bare `insert_arrow` with default settings and with
INSERT_SETTINGS, and for replacing one day of a month, existing or new, with and without the
skip-empty count before the DELETE. Median and max of --repeat runs, each on a fresh store, after
one discarded warm-up run (the first large insert of a process pays for its memory: see --cold).

    python benchmarks/clickhouse_bench.py [--repeat 3] [--cold]
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import pyarrow as pa

from binance_assets.clickhouse.io_manager import ArrowTypeHandler, Target
from binance_assets.clickhouse.store import INSERT_SETTINGS, OpenStore, Store
from binance_assets.clickhouse.tables import BARS_TABLE, Slice

BARS_PER_DAY = 17_280
FIRST_DAY = dt.date(2023, 1, 1)
Write = Callable[[OpenStore, pa.Table], object]
Result = tuple[str, int, list[float]]  # label, rows, seconds of each run


def synthetic_bars(days: int, first: dt.date = FIRST_DAY) -> pa.Table:
    """days x 17,280 bars of one ticker, vectorised (no Python loop per row)."""
    n = days * BARS_PER_DAY
    epoch_day = np.repeat(np.arange(days, dtype=np.int32) + (first - dt.date(1970, 1, 1)).days, BARS_PER_DAY)
    ts = epoch_day.astype(np.int64) * 86_400 + np.tile(
        np.arange(1, BARS_PER_DAY + 1, dtype=np.int64) * 5, days
    )
    price = 100 + np.cumsum(np.random.default_rng(0).normal(0, 0.01, n))
    columns = {
        "market": pa.array(["spot"] * n, pa.string()),
        "ticker": pa.array(["BTCUSDT"] * n, pa.string()),
        "day": pa.array(epoch_day).cast(pa.date32()),
        "ts": pa.array(ts, pa.timestamp("s", tz="UTC")),
        **{name: pa.array(price) for name in BARS_TABLE.schema.names[4:11]},
        "trade_count": pa.array(np.full(n, 42, dtype=np.uint32)),
    }
    return pa.Table.from_pydict(columns, schema=BARS_TABLE.schema)


def slice_of(rows: pa.Table) -> Slice:
    return Slice("spot", "BTCUSDT", frozenset(rows["day"].unique().to_pylist()))


@contextmanager
def fresh_store() -> Iterator[OpenStore]:
    with (
        tempfile.TemporaryDirectory(prefix="clickhouse-bench-") as tmp,
        Store(f"chdb://{Path(tmp) / 'store'}").open() as store,
    ):
        yield store


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def handler_write(store: OpenStore, rows: pa.Table) -> None:
    target = Target(store.store, BARS_TABLE, "spot", (slice_of(rows),))
    ArrowTypeHandler().handle_output(lambda: nullcontext(store), target, rows)


def bare_insert(settings: dict[str, int]) -> Write:
    return lambda store, rows: store.client.insert_arrow("binance.hl5s", rows, settings=settings)


def write_once(rows: pa.Table, write: Write) -> float:
    with fresh_store() as store:
        seconds = timed(lambda: write(store, rows))
        assert store.client.command("SELECT count() FROM binance.hl5s") == rows.num_rows
    return seconds


def bulk(label: str, rows: pa.Table, write: Write, repeat: int) -> Result:
    return label, rows.num_rows, [write_once(rows, write) for _ in range(repeat)]


def replace_day(store: OpenStore, day: dt.date, skip_empty: bool) -> float:
    rows = synthetic_bars(1, day)

    def replace() -> None:
        if skip_empty:
            store.clear(BARS_TABLE, slice_of(rows))
        else:
            store.delete(BARS_TABLE, slice_of(rows))
        store.insert(BARS_TABLE, rows)

    return timed(replace)


def replace_days(repeat: int) -> list[Result]:
    """Seconds to replace one day of a month: a day already there, or a day never written. A DELETE
    waits for merges running on the parts it marks (up to ~1 s here), hence the spread."""
    results = []
    with fresh_store() as store:
        store.insert(BARS_TABLE, synthetic_bars(31))
        for state, first in (("existing", FIRST_DAY), ("new", FIRST_DAY + dt.timedelta(days=31))):
            for skip_empty, how in ((True, "count, DELETE if rows"), (False, "always DELETE")):
                offset = 0 if skip_empty else repeat  # a new day is new once
                days = [first + dt.timedelta(days=offset + i) for i in range(repeat)]
                seconds = [replace_day(store, day, skip_empty) for day in days]
                results.append((f"replace 1 {state} day ({how})", BARS_PER_DAY, seconds))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cold", action="store_true", help="skip the warm-up run")
    args = parser.parse_args()
    month, year = synthetic_bars(31), synthetic_bars(365)
    results = (
        []
        if args.cold
        else [("warm-up: month, handler (discarded)", month.num_rows, [write_once(month, handler_write)])]
    )
    for name, rows in (("month", month), ("year", year)):
        results += [
            bulk(f"{name}, handler (cast+check+count+insert)", rows, handler_write, args.repeat),
            bulk(f"{name}, bare insert_arrow, default settings", rows, bare_insert({}), args.repeat),
            bulk(
                f"{name}, bare insert_arrow, INSERT_SETTINGS",
                rows,
                bare_insert(dict(INSERT_SETTINGS)),
                args.repeat,
            ),
        ]
    results += replace_days(max(args.repeat, 7))
    print(f"{'case':<50} {'rows':>10} {'median s':>9} {'max s':>7} {'rows/s':>11}")
    for label, rows, seconds in results:
        median = statistics.median(seconds)
        print(f"{label:<50} {rows:>10,} {median:>9.3f} {max(seconds):>7.3f} {rows / median:>11,.0f}")


if __name__ == "__main__":
    main()
