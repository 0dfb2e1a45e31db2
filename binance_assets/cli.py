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
import logging
import os
import re
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any, NoReturn

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError, OperationalError
from dagster import (
    AssetCheckEvaluation,
    AssetCheckSeverity,
    AssetsDefinition,
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    ExecuteInProcessResult,
    MetadataValue,
    RunsFilter,
    materialize,
)
from dagster._core.execution.backfill import BULK_ACTION_TERMINAL_STATUSES, PartitionBackfill
from dagster._core.instance.ref import InstanceRef
from dagster._core.storage.tags import BACKFILL_ID_TAG, PARTITION_NAME_TAG
from dagster._core.utils import make_new_backfill_id
from dotenv import load_dotenv

from binance_assets.assets import BARS, DEFAULT_RETRY, LIQUIDITY, asset_key, build_market_assets
from binance_assets.clickhouse import tables
from binance_assets.clickhouse.client import describe_url, open_client
from binance_assets.clickhouse.tables import (
    ServerVersionError,
    TableSpec,
    check_server_version,
    ensure_tables,
    qualified,
    quote,
)
from binance_assets.definitions import build_definitions, build_resources
from binance_assets.interrupts import restore_interrupts
from binance_assets.markets import MARKETS, Market
from binance_assets.pipeline import DayLoad, LoadStats, load_days
from binance_assets.plan import TickerPlan, plan_ticker, run_ranges
from binance_assets.resources import VisionResource
from binance_assets.sensors import RANGE_END, RANGE_START
from binance_assets.settings import Settings, SettingsError, SettingsWarning, load_settings
from binance_assets.vision.errors import VisionError
from binance_assets.vision.listing import ArchiveInfo, VisionListing
from binance_assets.vision.trades import TradesFormatError

PROG = "binance-assets"
REASON = "cli"
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_TICKER = re.compile(r"^[A-Z0-9_]+$")
_OS_ERROR = re.compile(r"\[Errno -?\d+\] ([^\"')]+)")
"""The reason inside a driver's connection error: ``[Errno 111] Connection refused``."""


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
        if name == "materialize":
            command.add_argument(
                "--no-retries", action="store_true", help="fail at once instead of retrying a failed run step"
            )
            command.add_argument(
                "--verbose", action="store_true", help="also print Dagster's run log (at LOG_LEVEL) on stderr"
            )
        command.set_defaults(handler=handler)

    init = commands.add_parser(
        "init",
        help="create the ClickHouse database and tables",
        description="Create CLICKHOUSE_DATABASE and its tables (CLICKHOUSE_BARS_TABLE, "
        "CLICKHOUSE_LIQUIDITY_TABLE, CLICKHOUSE_ARCHIVES_TABLE) on CLICKHOUSE_URL where missing; print what "
        "was created and what was found.",
    )
    init.set_defaults(handler=cmd_init)

    status = commands.add_parser(
        "status",
        help="what the store holds, per ticker",
        description="Per ticker, from the liquidity table: first and last day loaded, days loaded, days "
        "missing between them (and which), trades, last load time.",
    )
    status.add_argument("--market", type=_market, help="one market (default: all)")
    status.add_argument("--ticker", type=_ticker, action="append", help="symbol such as BTCUSDT; repeatable")
    status.set_defaults(handler=cmd_status)

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


_NO_CAPTURE = {
    "compute_logs": {
        "module": "dagster._core.storage.noop_compute_log_manager",
        "class": "NoOpComputeLogManager",
    }
}
"""A run captures its process's stdout/stderr by redirecting file descriptors 1 and 2: runs in parallel
threads would swap each other's streams (and the CLI's own output), so those runs capture nothing."""


def _instance(settings: Settings, *, capture_logs: bool = True) -> DagsterInstance:
    """The instance of $DAGSTER_HOME (unset: Settings' default, created); Dagster's own errors here are
    paragraphs, ours one line."""
    home = os.environ.get("DAGSTER_HOME", "")
    path = os.path.expanduser(home) if home.strip() else str(settings.dagster_home)
    if not home.strip():
        settings.dagster_home.mkdir(parents=True, exist_ok=True)
        _say(f"DAGSTER_HOME is unset: using {path}", progress=True)
    elif not (os.path.isabs(path) and os.path.isdir(path)):
        raise CliError(
            f"DAGSTER_HOME={home!r} is invalid: expected the absolute path of an existing directory", code=2
        )
    return DagsterInstance.from_ref(
        InstanceRef.from_dir(path, overrides=None if capture_logs else _NO_CAPTURE)
    )


def _register(instance: DagsterInstance, market: Market, tickers: Sequence[str]) -> list[str]:
    """Add the tickers missing from the market's dynamic partitions; return them."""
    known = set(instance.get_dynamic_partitions(market.tickers_partition_name))
    new = [t for t in tickers if t not in known]
    if new:
        instance.add_dynamic_partitions(market.tickers_partition_name, new)
    return new


Listed = Mapping[str, Sequence[ArchiveInfo]]
"""Each requested ticker's trades archives, as listed on Vision."""


def _listed(request: Request, settings: Settings) -> Listed:
    """List each ticker's archives on Vision; fail on a ticker that has none."""
    listing = VisionListing(settings.listing_url)
    listed = {ticker: listing.list_trades_archives(request.market, ticker) for ticker in request.tickers}
    for ticker, archives in listed.items():
        if not archives:
            raise CliError(
                f"{ticker} has no trades archives on Binance Vision under {request.market.vision_path}/"
            )
    return listed


def _prepare(request: Request, settings: Settings, *, capture_logs: bool = True) -> DagsterInstance:
    """The instance, with the request's new tickers registered."""
    instance = _instance(settings, capture_logs=capture_logs)
    new = _register(instance, request.market, request.tickers)
    if new:
        _say(f"registered {request.market.key} tickers: {', '.join(new)}", progress=True)
    return instance


def _preview(args: argparse.Namespace, settings: Settings) -> bool:
    """--plan, --dry-run, or BINANCE_DRY_RUN / DRY_RUN_MODE unless --no-dry-run."""
    return bool(args.plan or (settings.dry_run if args.dry_run is None else args.dry_run))


def cmd_discover(args: argparse.Namespace, settings: Settings) -> int:
    """List, filter and register each market's tickers; print them, new ones marked."""
    markets = [_enabled(args.market, settings)] if args.market else [MARKETS[k] for k in settings.markets]
    instance = _instance(settings)
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
    """Run each ticker's ranges in this process, one Dagster run per range, BINANCE_PARALLEL_TICKERS
    tickers at once; no run starts after a failure. Or preview them (--plan, --dry-run)."""
    request = _request(args, settings)
    listed = _listed(request, settings)
    if _preview(args, settings):
        return _run_preview(args, request, listed, settings)
    runs = InProcessRuns(
        market=request.market,
        assets=build_market_assets(
            request.market,
            settings.max_days_per_run,
            retry_policy=None if args.no_retries else DEFAULT_RETRY,
            kline_check=settings.kline_check,
            freshness_deadline=settings.freshness_deadline,
        ),
        resources=build_resources(settings),
        instance=_prepare(request, settings, capture_logs=_workers(request, settings) == 1),
        log_level=settings.log_level if args.verbose else "CRITICAL",
    )
    return _run_all(request, settings, runs, "materialised")


@dataclass(frozen=True)
class Totals:
    """What runs did, for the closing summary: one run's, one ticker's or the whole command's."""

    tickers: int = 0
    done: int = 0
    """Ticker-days written (or, in a dry run, aggregated), days without an archive included."""
    without_archive: int = 0
    failed: int = 0
    skipped: int = 0
    """Ticker-days not run: after a failed run (materialize), or by a backfill that ended without them."""
    trades: int = 0
    bars: int = 0
    downloaded: int = 0
    """Bytes."""

    def __add__(self, other: Totals) -> Totals:
        return Totals(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))

    def summary(self, verb: str, market: Market, seconds: float) -> str:
        return (
            f"{verb} {market.key}: {_count(self.tickers, 'ticker')}; ticker-days: {self.done:,} done "
            f"({self.without_archive:,} without archive), {self.failed:,} failed, {self.skipped:,} skipped; "
            f"{self.trades:,} trades, {self.bars:,} bars, {_size(self.downloaded)} downloaded; "
            f"{seconds:.1f} s"
        )


RunRange = Callable[[str, dt.date, dt.date], Totals]
"""Runs (or previews) one ticker's consecutive days, inclusive; raises CliError when it fails."""


def _run_all(request: Request, settings: Settings, run: RunRange, verb: str) -> int:
    """Each ticker's ranges in order, BINANCE_PARALLEL_TICKERS tickers at once; after a failure no run
    starts (the ticker-days left are skipped). Prints the summary, then raises the first failure."""
    started = time.monotonic()
    ranges = run_ranges(request.days, settings.max_days_per_run)
    stop = threading.Event()

    def ticker_runs(ticker: str) -> tuple[Totals, CliError | None]:
        totals, error = Totals(tickers=1), None
        for first, last in ranges:
            days = (last - first).days + 1
            if stop.is_set():
                totals += Totals(skipped=days)
                continue
            try:
                totals += run(ticker, first, last)
            except CliError as failure:
                stop.set()
                totals, error = totals + Totals(failed=days), failure
        return totals, error

    with ThreadPoolExecutor(max_workers=_workers(request, settings)) as pool:
        outcomes = list(pool.map(ticker_runs, request.tickers))
    totals = sum((t for t, _ in outcomes), Totals())
    _say(totals.summary(verb, request.market, time.monotonic() - started))
    errors = [error for _, error in outcomes if error is not None]
    if errors:
        raise errors[0]
    return 0


def _workers(request: Request, settings: Settings) -> int:
    """Tickers run at once: BINANCE_PARALLEL_TICKERS (run.py's NUM_PROCESSES), at most one per ticker."""
    return min(settings.parallel_tickers, len(request.tickers))


@dataclass(frozen=True)
class InProcessRuns:
    """One Dagster run in this process per (ticker, days): a RunRange."""

    market: Market
    assets: AssetsDefinition
    resources: Mapping[str, Any]
    instance: DagsterInstance
    log_level: str

    def __call__(self, ticker: str, first: dt.date, last: dt.date) -> Totals:
        what = f"{self.market.key} {ticker} {first}..{last}"
        started = time.monotonic()
        result = materialize(
            [self.assets],
            instance=self.instance,
            resources=dict(self.resources),
            tags={
                RANGE_START: f"{first}|{ticker}",
                RANGE_END: f"{last}|{ticker}",
                "binance/market": self.market.key,
                "binance/reason": REASON,
            },
            run_config={"loggers": {"console": {"config": {"log_level": self.log_level}}}},
            raise_on_error=False,
        )
        seconds = time.monotonic() - started
        if not result.success:
            raise CliError(f"{what}: run {result.run_id} failed after {seconds:.1f} s: {_failure(result)}")
        totals = _run_totals(result, self.assets.node_def.name, self.market)
        days = _count((last - first).days + 1, "day")
        _say(_progress(what, days, seconds, totals.trades, totals.bars), progress=True)
        checks = result.get_asset_check_evaluations()
        _say("\n".join(_check_line(check) for check in checks), progress=True)
        failed = [c for c in checks if not c.passed and c.severity == AssetCheckSeverity.ERROR]
        if failed:
            more = f" (and {_count(len(failed) - 1, 'other ERROR check')})" if len(failed) > 1 else ""
            failure = _check_line(failed[0]).strip()
            raise CliError(
                f"{what}: run {result.run_id} wrote its rows, but check {failure}{more}", CHECK_FAILED
            )
        return totals


CHECK_FAILED = 3
"""Exit status of `materialize` when a check of severity ERROR fails (WARN checks never change it)."""


def _check_line(check: AssetCheckEvaluation) -> str:
    """``  matches_binance_klines (ERROR) passed`` or ``... failed, first on BTCUSDT 2024-03-02 07:41``."""
    first = check.metadata.get("first_failure")
    outcome = "passed" if check.passed else "failed" + (f", first on {first.value}" if first else "")
    return f"  {check.check_name} ({check.severity.value}) {outcome}"


def _progress(what: str, days: str, seconds: float, trades: int, bars: int) -> str:
    return f"{what}: {days}, {seconds:.1f} s, {trades:,} trades, {bars:,} bars"


def _run_totals(result: ExecuteInProcessResult, node: str, market: Market) -> Totals:
    """The run's counts, from daily_liquidity's output metadata (each partition's materialisation
    carries the run's totals)."""
    key = asset_key(market, LIQUIDITY)
    return _metadata_totals(
        next(m.metadata for m in result.asset_materializations_for_node(node) if m.asset_key == key)
    )


def _metadata_totals(metadata: Mapping[str, MetadataValue]) -> Totals:
    """A run's counts, from daily_liquidity's output metadata (see assets._metadata)."""

    def value(name: str) -> int:
        return int(metadata[name].value)

    return Totals(
        done=value("ticker_days"),
        without_archive=value("days_without_archive"),
        trades=value("trade_count"),
        bars=value("bar_count"),
        downloaded=value("bytes_downloaded"),
    )


def _failure(result: ExecuteInProcessResult) -> str:
    """The first step failure's own message (its innermost cause: the error raised, not Dagster's wrapper)."""
    for event in result.get_step_failure_events():
        error = event.step_failure_data.error
        while error is not None and error.cause is not None:
            error = error.cause
        if error is not None:
            return _one_line(re.sub(rf"^[\w.]*\b{re.escape(error.cls_name)}: ", "", error.message))
    return "the run failed before its step started (see the run in the Dagster UI)"


def _run_preview(args: argparse.Namespace, request: Request, listed: Listed, settings: Settings) -> int:
    """--plan, or a dry run: the runs' ranges, planned (and loaded) as the asset would, nothing written."""
    today = dt.datetime.now(dt.UTC).date()
    planner = Planner(request.market, listed, today, settings.publish_grace_days)
    if args.plan:
        return _print_plan(request, settings, planner)
    _say("dry run: nothing is written to ClickHouse or the Dagster instance", progress=True)
    vision: VisionResource = build_resources(settings)["vision"]
    return _run_all(request, settings, DryRuns(planner, vision), "dry run of")


@dataclass(frozen=True)
class Planner:
    """Plans one ticker's consecutive days from its listing, as the asset does at the start of a run."""

    market: Market
    listed: Listed
    today: dt.date
    grace_days: int

    def __call__(self, ticker: str, first: dt.date, last: dt.date) -> TickerPlan:
        days = [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]
        return plan_ticker(ticker, days, self.listed[ticker], self.today, self.grace_days)


@dataclass(frozen=True)
class DryRuns:
    """A RunRange that downloads, verifies and aggregates like a run and prints each ticker-day."""

    planner: Planner
    vision: VisionResource

    def __call__(self, ticker: str, first: dt.date, last: dt.date) -> Totals:
        market = self.planner.market
        what = f"{market.key} {ticker} {first}..{last}"
        started = time.monotonic()
        plan = self.planner(ticker, first, last)
        if plan.unpublished:
            late = ", ".join(day.isoformat() for day in plan.unpublished)
            raise CliError(f"{what}: the run would fail: archives not yet published on Vision ({late})")
        stats = LoadStats()
        archive_of = {day: archive for archive, days in plan.serves.items() for day in days}
        try:
            loads = sorted(
                (load.day, _day_line(market, load, archive_of.get(load.day)))
                for load in load_days(market, [plan], self.vision.downloader(), stats)
            )
        except (VisionError, TradesFormatError) as error:  # what fails a run's step
            raise CliError(f"{what}: the run would fail: {_one_line(str(error))}") from None
        _say("\n".join(line for _, line in loads))
        days = _count(len(plan.days), "day")
        seconds = time.monotonic() - started
        _say(_progress(what, days, seconds, stats.trades, stats.bars), progress=True)
        return Totals(
            done=stats.days,
            without_archive=len(plan.no_archive),
            trades=stats.trades,
            bars=stats.bars,
            downloaded=stats.downloaded_bytes,
        )


def _day_line(market: Market, load: DayLoad, archive: ArchiveInfo | None) -> str:
    row = load.liquidity
    source = f"{archive.key.rsplit('/', 1)[-1]} ({archive.freq})" if archive else "none"
    return (
        f"{market.key} {load.ticker} {load.day}: {row['trade_count']:,} trades, {load.bars.num_rows:,} bars, "
        f"volume {row['volume']:.8g}, archive {source}"
    )


def _print_plan(request: Request, settings: Settings, planner: Planner) -> int:
    """Per ticker, what its runs would read: one table, then the totals; no archive is downloaded."""
    ranges = run_ranges(request.days, settings.max_days_per_run)
    plans = {ticker: [planner(ticker, first, last) for first, last in ranges] for ticker in request.tickers}
    header = [
        "ticker", "monthly_archives", "days_monthly", "days_daily", "days_no_archive", "days_unpublished",
        "download_bytes",
    ]  # fmt: skip
    rows = [[ticker, *_plan_row(ticker_plans)] for ticker, ticker_plans in plans.items()]
    print(format_table(header, rows))
    archives = {a.key: a for ticker_plans in plans.values() for p in ticker_plans for a in p.serves}
    monthly = sum(a.freq == "monthly" for a in archives.values())
    print(
        f"plan of {request.market.key} {request.describe()}: {monthly:,} monthly and "
        f"{len(archives) - monthly:,} daily archives, {_size(sum(a.size for a in archives.values()))} "
        "to download (as listed; cached archives are not downloaded again)"
    )
    return 0


def _plan_row(plans: Sequence[TickerPlan]) -> list[Any]:
    archives = {a.key: a for p in plans for a in p.serves}
    served = [(archive.freq, len(days)) for p in plans for archive, days in p.serves.items()]
    months = sorted(a.period for a in archives.values() if a.freq == "monthly")
    return [
        _month_spans(months) or "-",
        sum(n for freq, n in served if freq == "monthly"),
        sum(n for freq, n in served if freq == "daily"),
        sum(len(p.no_archive) for p in plans),
        sum(len(p.unpublished) for p in plans),
        sum(a.size for a in archives.values()),
    ]


def _month_spans(months: Sequence[str]) -> str:
    """Sorted YYYY-MM months as spans: ``2023-11..2024-02, 2024-05``."""
    spans: list[list[str]] = []
    for month in months:
        if spans and _month_after(spans[-1][-1]) == month:
            spans[-1].append(month)
        else:
            spans.append([month])
    return ", ".join(span[0] if len(span) == 1 else f"{span[0]}..{span[-1]}" for span in spans)


def _month_after(month: str) -> str:
    year, number = int(month[:4]), int(month[5:])
    return f"{year + number // 12:04d}-{number % 12 + 1:02d}"


def cmd_backfill(args: argparse.Namespace, settings: Settings) -> int:
    """Add asset backfills to the instance; the daemon chunks each into runs by the BackfillPolicy.
    Or preview the runs (--plan, --dry-run) as `materialize` would make them.

    Dagster cuts a multi-partition backfill along its dimension with fewer keys, so each backfill holds
    at most as many tickers as days: its runs are then a ticker's consecutive days (which lets a run use
    a month's monthly archive), not one day of many tickers.
    """
    request = _request(args, settings)
    listed = _listed(request, settings)
    if _preview(args, settings):
        return _run_preview(args, request, listed, settings)
    started = time.monotonic()
    instance = _prepare(request, settings)
    market = request.market
    asset_graph = build_definitions(settings).resolve_asset_graph()
    group = max(1, len(request.days))
    backfill_ids = []
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
        backfill_ids.append(backfill.backfill_id)
        _say(backfill.backfill_id)
    _say(f"submitted backfill of {market.key} {request.describe()}; dagster-daemon runs it", progress=True)
    if not args.wait:
        return 0
    runs = _follow(instance, backfill_ids)
    totals = sum(
        (_backfill_run_totals(instance, run, market) for run in runs), Totals(tickers=len(request.tickers))
    )
    totals += Totals(skipped=len(request.tickers) * len(request.days) - totals.done - totals.failed)
    _say(totals.summary("backfilled", market, time.monotonic() - started))
    failed = [run.run_id for run in runs if run.status != DagsterRunStatus.SUCCESS]
    if failed:
        raise CliError(f"{_count(len(failed), 'run')} of the backfill did not succeed: {', '.join(failed)}")
    return 0


_POLL_SECONDS = 2.0


def _follow(instance: DagsterInstance, backfill_ids: Sequence[str]) -> list[DagsterRun]:
    """Poll until every backfill is done, printing run counts as they change; each range's latest run."""
    _say("waiting for dagster-daemon (Ctrl-C stops waiting, not the backfill)", progress=True)
    shown = ""
    while True:
        done = all(instance.get_backfill(i).status in BULK_ACTION_TERMINAL_STATUSES for i in backfill_ids)
        latest: dict[tuple[str, str], DagsterRun] = {}
        for backfill_id in backfill_ids:
            for run in instance.get_runs(RunsFilter(tags={BACKFILL_ID_TAG: backfill_id})):  # newest first
                latest.setdefault(_run_partitions(run), run)
        counts = Counter(run.status.value.lower() for run in latest.values())
        progress = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no run yet"
        if progress != shown:
            _say(f"backfill runs: {progress}", progress=True)
            shown = progress
        if done:
            return list(latest.values())
        time.sleep(_POLL_SECONDS)


def _run_partitions(run: DagsterRun) -> tuple[str, str]:
    """First and last partition key of a backfill run (one ticker's consecutive days)."""
    if RANGE_START in run.tags:
        return run.tags[RANGE_START], run.tags[RANGE_END]
    return run.tags[PARTITION_NAME_TAG], run.tags[PARTITION_NAME_TAG]


def _backfill_run_totals(instance: DagsterInstance, run: DagsterRun, market: Market) -> Totals:
    """A finished run's counts: from its daily_liquidity materialisation, or its range as failed days."""
    if run.status != DagsterRunStatus.SUCCESS:
        first, last = (dt.date.fromisoformat(key.split("|")[0]) for key in _run_partitions(run))
        return Totals(failed=(last - first).days + 1)
    records = instance.get_records_for_run(run.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION).records
    key = asset_key(market, LIQUIDITY)
    materializations = (r.event_log_entry.asset_materialization for r in records)
    return _metadata_totals(next(m.metadata for m in materializations if m and m.asset_key == key))


@contextlib.contextmanager
def _store(settings: Settings) -> Iterator[Client]:
    """A client on CLICKHOUSE_URL; a server that cannot be reached or used is one error line."""
    try:
        with open_client(settings.clickhouse_url) as client:
            yield client
    except OperationalError as error:
        reason = _OS_ERROR.search(str(error))
        raise CliError(
            f"ClickHouse at {describe_url(settings.clickhouse_url)} is unreachable: "
            f"{reason[1] if reason else _one_line(str(error))}"
        ) from None
    except (ClickHouseError, ServerVersionError) as error:
        raise CliError(
            f"ClickHouse at {describe_url(settings.clickhouse_url)}: {_one_line(str(error))}"
        ) from None


def _tables(settings: Settings) -> list[tuple[str, TableSpec]]:
    return [
        (settings.bars_table, tables.BARS),
        (settings.liquidity_table, tables.LIQUIDITY),
        (settings.archives_table, tables.ARCHIVES),
    ]


def cmd_init(args: argparse.Namespace, settings: Settings) -> int:
    """Create the database and tables where missing (as every write does); print what was created or
    found. A table found under one of our names must be ours (key columns present, our columns' types)."""
    database = settings.clickhouse_database
    with _store(settings) as client:
        check_server_version(client)
        found = {f"database {database}": _exists(client, "DATABASE", quote(database))}
        for table, spec in _tables(settings):
            label = f"table {database}.{table}"
            found[label] = _exists(client, "TABLE", qualified(database, table))
            if found[label]:
                _refuse_foreign(client, database, table, spec)
        ensure_tables(
            client,
            database,
            settings.bars_table,
            settings.liquidity_table,
            settings.archives_table,
            cluster=settings.clickhouse_cluster,
        )
        print(f"ClickHouse {describe_url(settings.clickhouse_url)}, server {client.server_version}")
    for what, existed in found.items():
        print(f"{what}: {'found' if existed else 'created'}")
    return 0


def _exists(client: Client, kind: str, name: str) -> bool:
    return bool(int(client.command(f"EXISTS {kind} {name}")))


def _refuse_foreign(client: Client, database: str, table: str, spec: TableSpec) -> None:
    """Fail, before any DDL touches it, on an existing table that cannot be ours (run.py's, say)."""
    problems = _foreign_columns(client, database, table, spec)
    if problems:
        raise CliError(
            f"table {database}.{table} exists but was not made by {PROG} ({'; '.join(problems)}): pick "
            "another name (CLICKHOUSE_*_TABLE, or run.py's DATA_TABLE_NAME / CONTROL_TABLE_NAME)"
        )


def _foreign_columns(client: Client, database: str, table: str, spec: TableSpec) -> list[str]:
    """Why an existing table cannot be ours: a key column missing, or a column of ours with another type."""
    result = client.query(
        "SELECT name, type FROM system.columns WHERE database = {database:String} AND table = {table:String}",
        parameters={"database": database, "table": table},
    )
    types = dict(result.result_rows)
    missing = [name for name in spec.order_by if name not in types]
    retyped = [f"{c.name} is {types[c.name]}" for c in spec.columns if types.get(c.name, c.type) != c.type]
    return ([f"no column {', '.join(missing)}"] if missing else []) + retyped


STATUS_SQL = """
WITH arraySort(groupArray(day)) AS days
SELECT market, ticker, min(day) AS first_day, max(day) AS last_day, count() AS days_loaded,
  dateDiff('day', first_day, last_day) + 1 - days_loaded AS days_missing,
  arrayStringConcat(arrayMap(
    i -> if(dateDiff('day', days[i - 1], days[i]) = 2, toString(days[i - 1] + 1),
            concat(toString(days[i - 1] + 1), '..', toString(days[i] - 1))),
    arrayFilter(i -> i > 1 AND dateDiff('day', days[i - 1], days[i]) > 1, arrayEnumerate(days))), ', ')
    AS missing,
  sum(trade_count) AS trades, max(loaded_at) AS last_loaded
FROM {table} FINAL
WHERE {where}
GROUP BY market, ticker
ORDER BY market, ticker
"""
"""One query for a whole market: per ticker, its loaded span, the days missing inside it (as ranges)."""


def status_sql(
    database: str, table: str, market: str | None, tickers: Sequence[str]
) -> tuple[str, dict[str, Any]]:
    where, params = ["1"], {}
    if market:
        where.append("market = {market:String}")
        params["market"] = market
    if tickers:
        where.append("ticker IN {tickers:Array(String)}")
        params["tickers"] = list(tickers)
    sql = STATUS_SQL.replace("{table}", qualified(database, table)).replace("{where}", " AND ".join(where))
    return sql.strip(), params


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    """Per ticker: what the liquidity table says was loaded, gaps included."""
    database, table = settings.clickhouse_database, settings.liquidity_table
    sql, params = status_sql(database, table, args.market.key if args.market else None, args.ticker or ())
    with _store(settings) as client:
        if not _exists(client, "TABLE", qualified(database, table)):
            raise CliError(f"table {database}.{table} does not exist: nothing loaded yet (see {PROG} init)")
        result = client.query(sql, parameters=params)
    print(format_table(result.column_names, result.result_rows))
    return 0


def cmd_sql(args: argparse.Namespace, settings: Settings) -> int:
    """Run a query on the store (its tables created if missing) and print the result."""
    try:
        with open_client(settings.clickhouse_url) as client:
            ensure_tables(
                client,
                settings.clickhouse_database,
                settings.bars_table,
                settings.liquidity_table,
                settings.archives_table,
                cluster=settings.clickhouse_cluster,
            )
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


def _size(n: int) -> str:
    return f"{n / 1e6:,.1f} MB" if n >= 100_000 else f"{n:,} bytes"


_OUTPUT = threading.Lock()


def _say(text: str, *, progress: bool = False) -> None:
    """Whole lines on stdout (results) or stderr (progress), whichever thread prints them."""
    if text:
        with _OUTPUT:
            print(text, file=sys.stderr if progress else sys.stdout, flush=True)


def _one_line(message: str) -> str:
    """A server or library error as one line: the ClickHouse exception line when there is one."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    exception = next((line for line in lines if "DB::Exception" in line), None)
    return exception or (lines[0] if lines else "unknown error")


def _settings() -> Settings:
    """load_settings(), its warnings (a setting given both ways) printed as one line each."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SettingsWarning)
        settings = load_settings()
    for warning in caught:
        print(f"{PROG}: warning: {warning.message}", file=sys.stderr)
    return settings


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script: the exit code."""
    restore_interrupts()
    try:
        args = build_parser().parse_args(argv)
        load_dotenv(Path.cwd() / ".env", override=False)
        # The driver also logs the errors it raises; they reach the user as our one error line.
        logging.getLogger("clickhouse_connect").addHandler(logging.NullHandler())
        code: int = args.handler(args, _settings())
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
