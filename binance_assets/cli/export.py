"""`export`: bars to a Hive-partitioned Parquet dataset (see `binance_assets/read/export.py`). No Dagster."""

from __future__ import annotations

import argparse

from clickhouse_connect.driver.exceptions import ClickHouseError

from binance_assets.cli.common import count_of, one_line, say, size_of
from binance_assets.cli.errors import CliError
from binance_assets.read.export import export_bars
from binance_assets.settings import Settings


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    """Progress on stderr, one line per file; the summary on stdout."""
    try:
        summary = export_bars(
            settings.store,
            args.market.key,
            args.ticker or (),
            args.start,
            args.end or args.start,
            args.interval,
            args.out,
            progress=lambda line: say(line, progress=True),
        )
    except (ClickHouseError, OSError) as error:
        raise CliError(one_line(str(error))) from None
    say(
        f"exported {count_of(summary.rows, 'row')} in {count_of(summary.files, 'file')}, "
        f"{size_of(summary.bytes)}, to {args.out}"
    )
    return 0
