"""The same synthetic 3M-trade UM day as a trades and as an aggTrades archive: zip bytes, seconds,
trades/s, rows/s and peak RSS of read_archive + aggregate_trades on each.

    python benchmarks/dataset_bench.py [--trades 3000000] [--workdir DIR] [--repeat 3] [--passes 3]

The trades archive is bars_bench's (same generator, same cache); the aggTrades archive merges those
trades as Binance does (`archives.agg_trades`) and is cached beside it. Timing as in bars_bench: fresh
subprocesses, imports excluded, best warm pass, peak RSS per process. trades/s counts the trades the
rows stand for (an aggregate's last - first + 1), rows/s the CSV rows.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import bars_bench

if TYPE_CHECKING:
    from binance_assets.vision.archive import Dataset


def _dataset(name: str) -> Dataset:
    from binance_assets.vision.agg_trades import AGG_TRADES
    from binance_assets.vision.trades import TRADES

    return {"trades": TRADES, "aggTrades": AGG_TRADES}[name]


def _loader(name: str) -> Callable[[], Callable[[Path], int]]:
    def load() -> Callable[[Path], int]:
        from binance_assets.bars import aggregate_trades
        from binance_assets.markets import MARKETS
        from binance_assets.vision.archive import read_archive

        market, dataset = MARKETS["um"], _dataset(name)

        def run(path: Path) -> int:
            return aggregate_trades(read_archive(path, market, dataset)).bars.num_rows

        return run

    return load


LOADERS = {name: _loader(name) for name in ("trades", "aggTrades")}


def build_agg_archive(workdir: Path, trades: int) -> Path:
    """Write (once) the aggTrades archive of bars_bench's trades into its mirror; return its path."""
    from binance_assets.markets import MARKETS
    from binance_assets_tests.archives import agg_trades, agg_trades_csv, write_archive, zip_archive

    key = MARKETS["um"].archive_key("aggTrades", bars_bench.TICKER, bars_bench.DAY.isoformat())
    root = bars_bench.cache_root(workdir, trades)
    path = root / key
    if not path.with_name(path.name + ".CHECKSUM").exists():  # written last: the zip is complete
        text = agg_trades_csv(agg_trades(bars_bench.synthetic_day(trades)), "um_header")
        write_archive(root, key, zip_archive(text, path.with_suffix(".csv").name))
    return path


def _counts(path: Path, name: str) -> tuple[int, int]:
    """(rows, trades the rows stand for) of an archive, read once outside the timing."""
    import pyarrow.compute as pc

    from binance_assets.markets import MARKETS
    from binance_assets.vision.archive import read_archive

    rows = trades = 0
    for batch in read_archive(path, MARKETS["um"], _dataset(name)):
        rows += batch.num_rows
        last = batch.column("last_id") if "last_id" in batch.schema.names else batch.column("id")
        trades += pc.sum(pc.add(pc.subtract(last, batch.column("id")), 1)).as_py()
    return rows, trades


def main() -> None:
    args = bars_bench.parse_or_run_child(__doc__ or "", LOADERS)
    if args is None:
        return
    paths = {
        "trades": bars_bench.build_archive(args.workdir, args.trades),
        "aggTrades": build_agg_archive(args.workdir, args.trades),
    }
    print(f"best of {args.repeat} processes x {args.passes} passes (warm seconds)")
    header = f"{'dataset':<10} {'zip MB':>7} {'rows':>10} {'trades':>10} {'warm s':>7} {'M trades/s':>11}"
    print(f"{header} {'M rows/s':>9} {'peak RSS MB':>12} {'bars':>6}")
    for name, path in paths.items():
        rows, trades = _counts(path, name)
        result = bars_bench.measure(name, path, args.repeat, args.passes, script=__file__)
        if "error" in result:
            print(f"{name}: failed ({result['error']})")
            continue
        seconds = result["seconds"]
        print(
            f"{name:<10} {path.stat().st_size / 1e6:>7.2f} {rows:>10,} {trades:>10,} {seconds:>7.3f} "
            f"{trades / seconds / 1e6:>11.2f} {rows / seconds / 1e6:>9.2f} {result['rss_mb']:>12.0f} "
            f"{result['bars']:>6}"
        )


if __name__ == "__main__":
    main()
