"""Peak memory and throughput of our path on one big synthetic UM monthly archive (default 60M trades).

    python benchmarks/monthly_bench.py [--trades 60000000] [--days 30] [--workdir DIR]

The archive is written once, a day at a time straight into its zip member (so generating it needs no
more memory than a day), and cached in the workdir. The measurement runs in a fresh subprocess that
reports its own wall time and peak RSS (VmHWM): reader + aggregator + the per-day split that the
asset op streams to the IO manager.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing the package

MONTH = dt.date(2024, 1, 1)


def build_archive(workdir: Path, trades: int, days: int) -> Path:
    from binance_assets_tests.archives import make_trades, trades_csv

    path = workdir / f"BTCUSDT-trades-2024-01-{trades}.zip"
    if path.exists():
        return path
    started = time.perf_counter()
    partial = path.with_suffix(".partial")
    per_day = trades // days
    with (
        zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive,
        archive.open("BTCUSDT-trades-2024-01.csv", "w", force_zip64=True) as member,
    ):
        member.write(b"id,price,qty,quote_qty,time,is_buyer_maker\n")
        for index in range(days):
            start = dt.datetime.combine(MONTH + dt.timedelta(days=index), dt.time(), tzinfo=dt.UTC)
            day = make_trades(
                per_day,
                start,
                86_400,
                first_id=1 + index * per_day,
                seed=index,
                price=42_000.0,
                time_unit="ms",
            )
            member.write(trades_csv(day, "um_noheader"))
    partial.rename(path)
    print(
        f"generated {path} ({path.stat().st_size / 1e6:.0f} MB zip) in {time.perf_counter() - started:.0f} s"
    )
    return path


def child(path: Path) -> None:
    from binance_assets.bars import aggregate_trades
    from binance_assets.markets import MARKETS
    from binance_assets.vision.archive import read_archive
    from binance_assets.vision.trades import TRADES

    started = time.perf_counter()
    aggregation = aggregate_trades(read_archive(path, MARKETS["um"], TRADES))
    days = sum(1 for _ in aggregation.by_day())
    seconds = time.perf_counter() - started
    status = Path("/proc/self/status").read_text()
    (peak_kb,) = (line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))
    trades = int(aggregation.days["trade_count"].to_numpy().sum())
    print(json.dumps({"seconds": seconds, "rss_mb": int(peak_kb) / 1024, "trades": trades, "days": days}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trades", type=int, default=60_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "binance-assets-bench")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    path = build_archive(args.workdir, args.trades, args.days)
    output = subprocess.run(
        [sys.executable, __file__, "--child", str(path)], check=True, capture_output=True, text=True
    ).stdout
    result = json.loads(output.strip().splitlines()[-1])
    size_mb = path.stat().st_size / 1e6
    print(f"{path.name}: {size_mb:.0f} MB zip, {result['trades']:,} trades, {result['days']} days")
    print(f"seconds {result['seconds']:.1f}  M trades/s {result['trades'] / result['seconds'] / 1e6:.2f}")
    print(f"peak RSS {result['rss_mb']:.0f} MB (target < 400 MB)")


if __name__ == "__main__":
    main()
