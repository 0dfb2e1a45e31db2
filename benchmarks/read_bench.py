"""Read and export throughput on a year of one ticker's 5 s bars (365 x 17,280 = 6.3M rows) in a fresh
embedded (chDB) store.

Prints rows/s of `read_bars` at 5s and 1m into pandas, polars and Arrow (rows of 5 s bars read per
second: the 1m result has 12x fewer rows), and of `binance-assets export` of the year at 5s and 1m in
a process of its own (start-up included), with the files' size and the export process's peak memory.
Best of --repeat runs after one discarded warm-up read.

    python benchmarks/read_bench.py [--repeat 2] [--days 365]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
from clickhouse_bench import BARS_PER_DAY, FIRST_DAY, synthetic_bars

from binance_assets import read_bars
from binance_assets.clickhouse.store import Store
from binance_assets.clickhouse.tables import BARS_TABLE, LIQUIDITY_TABLE


def fill(url: str, days: int) -> int:
    """The year's bars through the IO manager's insert path, merged, and one daily_liquidity row (the
    ticker is loaded); the bars' count."""
    rows = synthetic_bars(days)
    liquidity = {f.name: ["" if pa.types.is_string(f.type) else 0] for f in LIQUIDITY_TABLE.schema}
    liquidity.update(
        market=["spot"], ticker=["BTCUSDT"], day=[FIRST_DAY], source=["daily"], dataset=["trades"]
    )
    with Store(url).open() as store:
        store.insert(BARS_TABLE, rows)
        store.insert(LIQUIDITY_TABLE, pa.Table.from_pydict(liquidity, schema=LIQUIDITY_TABLE.schema))
        # settle the parts, as in a store that has been running: otherwise the export processes below would
        # run the merges of the fresh insert (about 3 GB of memory)
        store.client.command("OPTIMIZE TABLE binance.hl5s FINAL")
    return rows.num_rows


def best(seconds: list[float]) -> float:
    return min(seconds)


def time_read(last: str, interval: str, fmt: str, repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        read_bars("spot", "BTCUSDT", FIRST_DAY, last, interval, format=fmt)
        runs.append(time.perf_counter() - started)
    return best(runs)


EXPORT = """
import re, sys
from binance_assets.cli.main import main
code = main(sys.argv[1:])
print(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read())[1], file=sys.stderr)
sys.exit(code)
"""
"""The CLI, printing its peak RSS (KB) last on stderr: VmHWM, as ru_maxrss of a child started by vfork +
exec keeps the parent's peak (this process's, with a year of bars in memory)."""


def time_export(out: Path, last: str, interval: str) -> tuple[float, int, float]:
    """Seconds, bytes written and the process's peak RSS (MB) of one CLI export."""
    command = [sys.executable, "-c", EXPORT, "export", "--market", "spot", "--ticker", "BTCUSDT"]
    command += ["--start", str(FIRST_DAY), "--end", last, "--interval", interval, "--out", str(out)]
    started = time.perf_counter()
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    peak_mb = int(result.stderr.split()[-1]) / 1024
    return seconds, sum(p.stat().st_size for p in out.rglob("*.parquet")), peak_mb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--days", type=int, default=365)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["CLICKHOUSE_URL"] = f"chdb://{Path(tmp) / 'clickhouse'}"
        os.chdir(tmp)  # no .env but ours (none)
        bars = fill(os.environ["CLICKHOUSE_URL"], args.days)
        last = str(FIRST_DAY.fromordinal(FIRST_DAY.toordinal() + args.days - 1))
        assert bars == args.days * BARS_PER_DAY
        read_bars("spot", "BTCUSDT", FIRST_DAY, last, "5s", format="arrow")  # warm-up
        print(f"read_bars over {bars:,} 5 s bars ({args.days} days), best of {args.repeat}")
        print(f"{'interval':>8} {'format':>7} {'seconds':>8} {'rows/s':>12}")
        for interval in ("5s", "1m"):
            for fmt in ("arrow", "pandas", "polars"):
                seconds = time_read(last, interval, fmt, args.repeat)
                print(f"{interval:>8} {fmt:>7} {seconds:8.2f} {bars / seconds:12,.0f}")
        print(f"\nexport (CLI process, start-up included) of the {bars:,} bars")
        print(f"{'interval':>8} {'seconds':>8} {'rows/s':>12} {'MB written':>11} {'peak MB':>8}")
        for interval in ("5s", "1m"):
            seconds, size, peak = time_export(Path(tmp) / f"out-{interval}", last, interval)
            print(f"{interval:>8} {seconds:8.2f} {bars / seconds:12,.0f} {size / 1e6:11.1f} {peak:8.0f}")


if __name__ == "__main__":
    main()
