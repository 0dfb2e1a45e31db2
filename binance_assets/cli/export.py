"""`export`: bars to a Hive-partitioned Parquet dataset (see `binance_assets/export.py`). No Dagster."""

from __future__ import annotations

import argparse

from binance_assets.cli.common import count_of, say, size_of
from binance_assets.export import export_bars
from binance_assets.settings import Settings


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    """Progress on stderr, one line per file; the summary on stdout."""
    summary = export_bars(
        settings,
        args.market.key,
        args.ticker or (),
        args.start,
        args.end or args.start,
        args.interval,
        args.out,
        progress=lambda line: say(line, progress=True),
    )
    say(
        f"exported {count_of(summary.rows, 'row')} in {count_of(summary.files, 'file')}, "
        f"{size_of(summary.bytes)}, to {args.out}"
    )
    return 0
