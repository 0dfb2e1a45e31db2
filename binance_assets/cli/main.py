"""`binance-assets`: discover tickers, materialise or backfill ticker-days (or preview them), set up and
inspect the store.

Configuration comes from the environment (`settings.py`), completed by a `.env` file in the working
directory as `dagster dev` does (variables already set win); the Dagster instance is the one of
``$DAGSTER_HOME``, so CLI runs, backfills and registered tickers show in the UI. Usage errors exit 2,
failures exit 1, a failed check of severity ERROR exits 3 (its rows stay written), each with one line
on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib
import logging
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from binance_assets.cli.common import PROG, one_line
from binance_assets.cli.errors import CliError
from binance_assets.errors import SettingsError
from binance_assets.markets import MARKETS, TICKER_PATTERN, Market
from binance_assets.processes import console_process, importing, restore_interrupts
from binance_assets.read.errors import ArgumentError
from binance_assets.settings import Settings, apply_dagster_tuning, settings_from_environment
from binance_assets.vision.errors import VisionError

Handler = Callable[[argparse.Namespace, Settings], int]

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        raise CliError(message, code=2)


def _market(value: str) -> Market:
    if value not in MARKETS:
        raise argparse.ArgumentTypeError(f"unknown market {value!r}: expected one of {', '.join(MARKETS)}")
    return MARKETS[value]


def _day(value: str) -> dt.date:
    if _DATE.fullmatch(value):
        with contextlib.suppress(ValueError):
            return dt.date.fromisoformat(value)
    raise argparse.ArgumentTypeError(f"invalid date {value!r}: expected YYYY-MM-DD")


def _ticker(value: str) -> str:
    if not TICKER_PATTERN.fullmatch(value):
        raise argparse.ArgumentTypeError(
            f"invalid ticker {value!r}: expected an uppercase symbol such as BTCUSDT"
        )
    return value


def _lazy(module: str, name: str) -> Handler:
    """A handler imported when its command runs: the Dagster commands' modules import Dagster (about 1 s),
    which `export`, `init`, `status` and `sql` do not need, and those import the ClickHouse driver and
    Arrow (about 0.2 s), which `--help` and a usage error do not need."""

    def handler(args: argparse.Namespace, settings: Settings) -> int:
        with importing():
            command: Handler = getattr(importlib.import_module(module), name)
        return command(args, settings)

    return handler


def _range_arguments(command: argparse.ArgumentParser, ticker_help: str, *, tickers_required: bool) -> None:
    """--market, --ticker (repeatable), --start and --end: the ticker-days a command works on."""
    command.add_argument("--market", type=_market, required=True, help="spot, um or cm")
    command.add_argument(
        "--ticker", type=_ticker, action="append", required=tickers_required, help=ticker_help
    )
    command.add_argument("--start", type=_day, required=True, metavar="YYYY-MM-DD", help="first day")
    command.add_argument("--end", type=_day, metavar="YYYY-MM-DD", help="last day (default: --start)")


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand; each sets ``handler``."""
    parser = _Parser(
        prog=PROG,
        description="Discover tickers, materialise or backfill ticker-days (or preview them), set up and "
        "inspect the store. Settings come from the environment and a .env file in the working directory.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    discover = commands.add_parser(
        "discover",
        help="register new tickers listed on Binance Vision",
        description="List each market's tickers on Binance Vision, keep those TICKER_FILTER / TICKERS want, "
        "and register the new ones as partitions (<market>_tickers) in the Dagster instance.",
    )
    discover.add_argument(
        "--market", type=_market, help="one market (default: every market in BINANCE_MARKETS)"
    )
    discover.set_defaults(handler=_lazy("binance_assets.cli.runs", "cmd_discover"))

    for name, module, text in (
        ("materialize", "materialize", "materialise ticker-days now, in this process"),
        ("backfill", "runs", "submit a Dagster backfill that the daemon runs"),
    ):
        command = commands.add_parser(
            name,
            help=text,
            description=f"{text[0].upper()}{text[1:]}: hl5s_bars and daily_liquidity of each ticker on every "
            "day from --start to --end (UTC, inclusive), in runs of at most BINANCE_MAX_DAYS_PER_RUN "
            "consecutive days. Tickers are registered first if needed.",
        )
        _range_arguments(command, "symbol such as BTCUSDT; repeatable", tickers_required=True)
        preview = command.add_mutually_exclusive_group()
        preview.add_argument(
            "--dry-run",
            action=argparse.BooleanOptionalAction,
            help="list, download, verify and aggregate as the runs would and print each ticker-day, but "
            "write nothing (no ClickHouse row, Dagster run or ticker registered); default: BINANCE_DRY_RUN",
        )
        preview.add_argument(
            "--plan",
            action="store_true",
            help="print what the runs would download, per ticker, from the Vision listing alone",
        )
        if name == "backfill":
            command.add_argument(
                "--wait",
                action="store_true",
                help="wait until dagster-daemon has run the backfill: progress on stderr, then the summary",
            )
            only = command.add_mutually_exclusive_group()
            only.add_argument(
                "--only-failed",
                action="store_true",
                help="only the ticker-days Dagster shows failed (the UI's re-run of failed partitions)",
            )
            only.add_argument(
                "--only-missing",
                action="store_true",
                help="only the ticker-days Dagster does not show materialised: failed, or never loaded",
            )
        if name == "materialize":
            command.add_argument(
                "--no-retries", action="store_true", help="fail at once instead of retrying a failed run step"
            )
            command.add_argument(
                "--verbose", action="store_true", help="also print Dagster's run log (at LOG_LEVEL) on stderr"
            )
        command.set_defaults(handler=_lazy(f"binance_assets.cli.{module}", f"cmd_{name}"))

    init = commands.add_parser(
        "init",
        help="create the ClickHouse database and tables",
        description="Create CLICKHOUSE_DATABASE and its tables (CLICKHOUSE_BARS_TABLE, "
        "CLICKHOUSE_LIQUIDITY_TABLE, CLICKHOUSE_ARCHIVES_TABLE) on CLICKHOUSE_URL where missing; print what "
        "was created and what was found.",
    )
    init.set_defaults(handler=_lazy("binance_assets.cli.store", "cmd_init"))

    status = commands.add_parser(
        "status",
        help="what the store holds, per ticker",
        description="Per ticker, from the liquidity table: first_day/last_day loaded, days_loaded, how many "
        "of them had no archive (without_archive: zero rows) or were built from aggTrades, data_from/data_to "
        "(the days with trades), days_missing (days not loaded: failed, late or never run, from --start to "
        "--end, by default the loaded span) and missing_ranges (which: blank when none), trades, "
        "last_loaded.",
    )
    status.add_argument("--market", type=_market, help="one market (default: all)")
    status.add_argument("--ticker", type=_ticker, action="append", help="symbol such as BTCUSDT; repeatable")
    status.add_argument(
        "--start",
        type=_day,
        metavar="YYYY-MM-DD",
        help="count missing days from here (default: first loaded)",
    )
    status.add_argument(
        "--end", type=_day, metavar="YYYY-MM-DD", help="count missing days up to here (default: last loaded)"
    )
    status.set_defaults(handler=_lazy("binance_assets.cli.store", "cmd_status"))

    sql = commands.add_parser(
        "sql",
        help="run a query on the ClickHouse store",
        description="Run QUERY on CLICKHOUSE_URL (database CLICKHOUSE_DATABASE); print the result as a table",
    )
    sql.add_argument("query", metavar="QUERY", help='e.g. "SELECT ticker, count() FROM hl5s GROUP BY ticker"')
    sql.set_defaults(handler=_lazy("binance_assets.cli.store", "cmd_sql"))

    export = commands.add_parser(
        "export",
        help="write bars to a Parquet dataset",
        description="Write the bars of each ticker from --start to --end (UTC, inclusive) at --interval to "
        "a Hive-partitioned Parquet dataset (zstd) in --out: interval=/market=/ticker=/year=/month=/"
        "<first>_<last>.parquet. Exporting a range again replaces its files.",
    )
    _range_arguments(export, "symbol such as BTCUSDT; repeatable (default: all)", tickers_required=False)
    export.add_argument("--interval", default="5s", help="bar size, a multiple of 5 s: 5s, 1m, 15m, 1h, 1d")
    export.add_argument("--out", type=Path, required=True, metavar="DIR", help="the dataset's directory")
    export.set_defaults(handler=_lazy("binance_assets.cli.export", "cmd_export"))
    return parser


def _warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr)


def console() -> NoReturn:
    """The console script: `main`, in a process that ends with it (processes.py)."""
    console_process()
    sys.exit(main())


def main(argv: Sequence[str] | None = None) -> int:
    """The command's exit code (the console script is `console`)."""
    restore_interrupts()
    apply_dagster_tuning()
    try:
        args = build_parser().parse_args(argv)
        # The driver also logs the errors it raises; they reach the user as our one error line.
        logging.getLogger("clickhouse_connect").addHandler(logging.NullHandler())
        code: int = args.handler(args, settings_from_environment(_warn))
    except CliError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        code = error.code
    except (SettingsError, ArgumentError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        code = 2
    except (VisionError, TimeoutError) as error:
        print(f"{PROG}: error: {one_line(str(error))}", file=sys.stderr)
        code = 1
    return code
