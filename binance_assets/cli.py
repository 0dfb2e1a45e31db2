"""`binance-assets`: discover tickers, materialise or backfill ticker-days, query the store.

Configuration comes from the environment (`settings.py`); the Dagster instance is the one of
``$DAGSTER_HOME``, so CLI runs, backfills and registered tickers show in the UI. Usage errors exit 2,
failures exit 1, each with one line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from clickhouse_connect.driver.exceptions import ClickHouseError
from dagster import AssetKey, DagsterInstance, ExecuteInProcessResult, materialize
from dagster._core.execution.backfill import PartitionBackfill
from dagster._core.utils import make_new_backfill_id

from binance_assets.assets import BARS, DEFAULT_RETRY, LIQUIDITY, asset_key, build_market_assets
from binance_assets.clickhouse.client import open_client
from binance_assets.clickhouse.tables import ensure_tables
from binance_assets.definitions import build_definitions, build_resources
from binance_assets.markets import MARKETS, Market
from binance_assets.plan import run_ranges
from binance_assets.sensors import RANGE_END, RANGE_START
from binance_assets.settings import Settings, SettingsError, load_settings
from binance_assets.vision.errors import VisionError
from binance_assets.vision.listing import VisionListing

PROG = "binance-assets"
REASON = "cli"
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_TICKER = re.compile(r"^[A-Z0-9_]+$")


class CliError(Exception):
    """A failure reported as one line on stderr; ``code`` 2 for usage errors, 1 otherwise."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


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
    if not _TICKER.fullmatch(value):
        raise argparse.ArgumentTypeError(
            f"invalid ticker {value!r}: expected an uppercase symbol such as BTCUSDT"
        )
    return value


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand; each sets ``handler``."""
    parser = _Parser(
        prog=PROG, description="Discover tickers, materialise or backfill ticker-days, query the store."
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
    discover.set_defaults(handler=cmd_discover)

    for name, handler, text in (
        ("materialize", cmd_materialize, "materialise ticker-days now, in this process"),
        ("backfill", cmd_backfill, "submit a Dagster backfill that the daemon runs"),
    ):
        command = commands.add_parser(
            name,
            help=text,
            description=f"{text[0].upper()}{text[1:]}: hl5s_bars and daily_liquidity of each ticker on every "
            "day from --start to --end (UTC, inclusive), in runs of at most BINANCE_MAX_DAYS_PER_RUN "
            "consecutive days. Tickers are registered first if needed.",
        )
        command.add_argument(
            "--market", type=_market, required=True, help="spot, um or cm (see BINANCE_MARKETS)"
        )
        command.add_argument(
            "--ticker",
            type=_ticker,
            action="append",
            required=True,
            help="symbol such as BTCUSDT; repeatable",
        )
        command.add_argument("--start", type=_day, required=True, metavar="YYYY-MM-DD", help="first day")
        command.add_argument("--end", type=_day, metavar="YYYY-MM-DD", help="last day (default: --start)")
        if name == "materialize":
            command.add_argument(
                "--no-retries", action="store_true", help="fail at once instead of retrying a failed run step"
            )
            command.add_argument(
                "--verbose", action="store_true", help="also print Dagster's run log (at LOG_LEVEL) on stderr"
            )
        command.set_defaults(handler=handler)

    sql = commands.add_parser(
        "sql",
        help="run a query on the ClickHouse store",
        description="Run QUERY on CLICKHOUSE_URL (database CLICKHOUSE_DATABASE); print the result as a table",
    )
    sql.add_argument("query", metavar="QUERY", help='e.g. "SELECT ticker, count() FROM hl5s GROUP BY ticker"')
    sql.set_defaults(handler=cmd_sql)
    return parser


@dataclass(frozen=True)
class Request:
    """A validated materialize/backfill request."""

    market: Market
    tickers: tuple[str, ...]
    days: tuple[dt.date, ...]

    def describe(self) -> str:
        span = f"{self.days[0]}..{self.days[-1]}"
        return f"{_count(len(self.tickers), 'ticker')} x {_count(len(self.days), 'day')} ({span})"


def _enabled(market: Market, settings: Settings) -> Market:
    if market.key not in settings.markets:
        raise CliError(
            f"market {market.key!r} is not enabled: BINANCE_MARKETS={','.join(settings.markets)}", code=2
        )
    return market


def _request(args: argparse.Namespace, settings: Settings) -> Request:
    """The checked market, tickers and days of a materialize/backfill command."""
    market = _enabled(args.market, settings)
    start, end = args.start, args.end or args.start
    today = dt.datetime.now(dt.UTC).date()
    if end < start:
        raise CliError(f"--end {end} is before --start {start}", code=2)
    if start < market.first_day:
        raise CliError(f"--start {start} is before {market.key}'s first day {market.first_day}", code=2)
    if end >= today:
        raise CliError(f"--end {end} is not before today ({today} UTC): the newest day is yesterday", code=2)
    days = tuple(start + dt.timedelta(days=i) for i in range((end - start).days + 1))
    return Request(market, tuple(dict.fromkeys(args.ticker)), days)


def _instance() -> DagsterInstance:
    """The instance of $DAGSTER_HOME; Dagster's own errors here are paragraphs, ours one line."""
    home = os.environ.get("DAGSTER_HOME", "")
    path = os.path.expanduser(home)
    if not (os.path.isabs(path) and os.path.isdir(path)):
        raise CliError(
            f"DAGSTER_HOME={home!r} is invalid: expected the absolute path of an existing directory", code=2
        )
    return DagsterInstance.get()


def _register(instance: DagsterInstance, market: Market, tickers: Sequence[str]) -> list[str]:
    """Add the tickers missing from the market's dynamic partitions; return them."""
    known = set(instance.get_dynamic_partitions(market.tickers_partition_name))
    new = [t for t in tickers if t not in known]
    if new:
        instance.add_dynamic_partitions(market.tickers_partition_name, new)
    return new


def _prepare(args: argparse.Namespace, settings: Settings) -> tuple[Request, DagsterInstance]:
    """Validate the request, check each ticker is on Vision, register the new ones."""
    request = _request(args, settings)
    instance = _instance()
    listing = VisionListing(settings.listing_url)
    for ticker in request.tickers:
        if not listing.list_trades_archives(request.market, ticker):
            raise CliError(
                f"{ticker} has no trades archives on Binance Vision under {request.market.vision_path}/"
            )
    new = _register(instance, request.market, request.tickers)
    if new:
        print(f"registered {request.market.key} tickers: {', '.join(new)}", file=sys.stderr)
    return request, instance


def cmd_discover(args: argparse.Namespace, settings: Settings) -> int:
    """List, filter and register each market's tickers; print them, new ones marked."""
    markets = [_enabled(args.market, settings)] if args.market else [MARKETS[k] for k in settings.markets]
    instance = _instance()
    listing = VisionListing(settings.listing_url)
    for market in markets:
        listed = listing.list_tickers(market)
        wanted = [t for t in listed if settings.wants_ticker(t)]
        new = set(_register(instance, market, wanted))
        print(f"{market.key}: {len(listed)} tickers listed, {len(wanted)} wanted, {len(new)} new")
        for ticker in wanted:
            print(f"  {ticker}{'  new' if ticker in new else ''}")
    return 0


def cmd_materialize(args: argparse.Namespace, settings: Settings) -> int:
    """Run each ticker's ranges in this process, one Dagster run per range; stop at the first failure."""
    request, instance = _prepare(args, settings)
    market = request.market
    assets = build_market_assets(
        market, settings.max_days_per_run, retry_policy=None if args.no_retries else DEFAULT_RETRY
    )
    resources = build_resources(settings)
    log_level = settings.log_level if args.verbose else "CRITICAL"
    runs, rows = 0, 0
    for ticker in request.tickers:
        for first, last in run_ranges(request.days, settings.max_days_per_run):
            what = f"{market.key} {ticker} {first}..{last}"
            started = time.monotonic()
            result = materialize(
                [assets],
                instance=instance,
                resources=resources,
                tags={
                    RANGE_START: f"{first}|{ticker}",
                    RANGE_END: f"{last}|{ticker}",
                    "binance/market": market.key,
                    "binance/reason": REASON,
                },
                run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
                raise_on_error=False,
            )
            seconds = time.monotonic() - started
            if not result.success:
                raise CliError(
                    f"{what}: run {result.run_id} failed after {seconds:.1f} s: {_failure(result)}"
                )
            failed_checks = [e for e in result.get_asset_check_evaluations() if not e.passed]
            if failed_checks:
                names = ", ".join(f"{e.asset_key.to_user_string()}:{e.check_name}" for e in failed_checks)
                raise CliError(f"{what}: run {result.run_id} wrote rows but checks failed: {names}")
            bars = _row_count(result, assets.node_def.name, asset_key(market, BARS))
            days = _count((last - first).days + 1, "day")
            print(f"{what}: {days}, {seconds:.1f} s, {bars:,} bars", file=sys.stderr)
            runs, rows = runs + 1, rows + bars
    print(f"materialised {market.key} {request.describe()} in {_count(runs, 'run')}: {rows:,} bars")
    return 0


def _row_count(result: ExecuteInProcessResult, node: str, key: AssetKey) -> int:
    """Rows the IO manager wrote in the run (each partition's materialisation carries the run's total)."""
    for materialization in result.asset_materializations_for_node(node):
        if materialization.asset_key == key:
            return int(materialization.metadata["dagster/row_count"].value)
    return 0


def _failure(result: ExecuteInProcessResult) -> str:
    """The first step failure's own message (its innermost cause: the error raised, not Dagster's wrapper)."""
    for event in result.get_step_failure_events():
        error = event.step_failure_data.error
        while error is not None and error.cause is not None:
            error = error.cause
        if error is not None:
            return _one_line(re.sub(rf"^[\w.]*\b{re.escape(error.cls_name)}: ", "", error.message))
    return "the run failed before its step started (see the run in the Dagster UI)"


def cmd_backfill(args: argparse.Namespace, settings: Settings) -> int:
    """Add asset backfills to the instance; the daemon chunks each into runs by the BackfillPolicy.

    Dagster cuts a multi-partition backfill along its dimension with fewer keys, so each backfill holds
    at most as many tickers as days: its runs are then a ticker's consecutive days (which lets a run use
    a month's monthly archive), not one day of many tickers.
    """
    request, instance = _prepare(args, settings)
    market = request.market
    asset_graph = build_definitions(settings).resolve_asset_graph()
    group = max(1, len(request.days))
    for start in range(0, len(request.tickers), group):
        tickers = request.tickers[start : start + group]
        backfill = PartitionBackfill.from_asset_partitions(
            backfill_id=make_new_backfill_id(),
            asset_graph=asset_graph,
            partition_names=[f"{day}|{ticker}" for ticker in tickers for day in request.days],
            asset_selection=[asset_key(market, BARS), asset_key(market, LIQUIDITY)],
            backfill_timestamp=time.time(),
            tags={"binance/market": market.key, "binance/reason": REASON},
            dynamic_partitions_store=instance,
            all_partitions=False,
            title=f"{market.key} {request.describe()}",
            description=f"{PROG} backfill: {', '.join(tickers)}",
            run_config=None,
        )
        instance.add_backfill(backfill)
        print(backfill.backfill_id)
    print(f"submitted backfill of {market.key} {request.describe()}; dagster-daemon runs it", file=sys.stderr)
    return 0


def cmd_sql(args: argparse.Namespace, settings: Settings) -> int:
    """Run a query on the store (its tables created if missing) and print the result."""
    try:
        with open_client(settings.clickhouse_url) as client:
            ensure_tables(client, settings.clickhouse_database, settings.bars_table, settings.liquidity_table)
            client.database = settings.clickhouse_database
            result = client.query(args.query)
    except ClickHouseError as error:
        raise CliError(_one_line(str(error))) from None
    print(format_table(result.column_names, result.result_rows))
    return 0


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """An aligned text table and a row count; numbers right-aligned, everything else left-aligned."""
    footer = f"({len(rows)} row{'' if len(rows) == 1 else 's'})"
    if not header:  # an empty result may come without its columns (chDB)
        return footer
    cells = [[_cell(v) for v in row] for row in rows]
    numeric = [bool(rows) and all(isinstance(r[i], int | float) for r in rows) for i in range(len(header))]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(header)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if right else v.ljust(w) for v, w, right in zip(values, widths, numeric, strict=True)
        ).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in cells), footer])


def _cell(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ")
    return str(value)


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _one_line(message: str) -> str:
    """A server or library error as one line: the ClickHouse exception line when there is one."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    exception = next((line for line in lines if "DB::Exception" in line), None)
    return exception or (lines[0] if lines else "unknown error")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script: the exit code."""
    try:
        args = build_parser().parse_args(argv)
        code: int = args.handler(args, load_settings())
    except CliError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        code = error.code
    except SettingsError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        code = 2
    except (VisionError, TimeoutError) as error:
        print(f"{PROG}: error: {_one_line(str(error))}", file=sys.stderr)
        code = 1
    return code


if __name__ == "__main__":
    sys.exit(main())
