"""`--plan` (from the listing alone) and `--dry-run` (download, verify, aggregate; write nothing)."""

from __future__ import annotations

import argparse
import datetime as dt
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from binance_assets.cli.common import (
    Listed,
    Request,
    count_of,
    format_table,
    one_line,
    say,
    size_of,
)
from binance_assets.cli.errors import RunFailed
from binance_assets.cli.runner import Totals, progress_line, run_all
from binance_assets.markets import Market
from binance_assets.pipeline import DayLoad, RunLoad
from binance_assets.plan import TickerPlan, month_of, next_month, plan_ticker, run_ranges
from binance_assets.settings import Settings
from binance_assets.vision.client import VisionClient
from binance_assets.vision.listing import ArchiveInfo


def wants_preview(args: argparse.Namespace, settings: Settings) -> bool:
    """--plan, --dry-run, or BINANCE_DRY_RUN / DRY_RUN_MODE unless --no-dry-run."""
    return bool(args.plan or (settings.dry_run if args.dry_run is None else args.dry_run))


def run_preview(args: argparse.Namespace, request: Request, listed: Listed, settings: Settings) -> int:
    """--plan, or a dry run: the runs' ranges, planned (and loaded) as the asset would, nothing written."""
    today = dt.datetime.now(dt.UTC).date()
    planner = Planner(request.market, listed, today, settings.publish_grace_days)
    if args.plan:
        return _print_plan(request, settings, planner)
    say("dry run: nothing is written to ClickHouse or the Dagster instance", progress=True)
    return run_all(request, settings, DryRuns(planner, settings.vision_client), "dry run of")


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
    vision: VisionClient

    def __call__(self, ticker: str, first: dt.date, last: dt.date) -> Totals:
        market = self.planner.market
        what = f"{market.key} {ticker} {first}..{last}"
        started = time.monotonic()
        plan = self.planner(ticker, first, last)
        load = RunLoad(market, [plan], self.vision.downloader())
        archive_of = {day: archive for archive, days in plan.serves.items() for day in days}
        lines = sorted((day.day, _day_line(market, day, archive_of.get(day.day))) for day in load.days())
        say("\n".join(line for _, line in lines))
        days = count_of(len(plan.days), "day")
        seconds = time.monotonic() - started
        figures = load.figures
        say(progress_line(what, days, seconds, figures.trades, figures.bars), progress=True)
        failures = tuple(f"{f.ticker} {f.day}: {one_line(str(f.error))}" for f in load.failed)
        totals = Totals(
            **asdict(figures),
            without_archive=len(plan.no_archive),
            failed=len(failures),
            late=len(plan.unpublished),
            failures=failures,
        )
        if failures:
            raise RunFailed(f"{what}: the run would fail: {failures[0]}", totals)
        return totals


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
        f"{len(archives) - monthly:,} daily archives, {size_of(sum(a.size for a in archives.values()))} "
        "to download (as listed; cached archives are not downloaded again)"
    )
    return 0


def _plan_row(plans: Sequence[TickerPlan]) -> list[Any]:
    archives = {a.key: a for p in plans for a in p.serves}
    served = [(archive.freq, len(days)) for p in plans for archive, days in p.serves.items()]
    months = sorted(a.first_day for a in archives.values() if a.freq == "monthly")
    return [
        _month_spans(months) or "-",
        sum(n for freq, n in served if freq == "monthly"),
        sum(n for freq, n in served if freq == "daily"),
        sum(len(p.no_archive) for p in plans),
        sum(len(p.unpublished) for p in plans),
        sum(a.size for a in archives.values()),
    ]


def _month_spans(months: Sequence[dt.date]) -> str:
    """Sorted first days of months as spans of YYYY-MM months: ``2023-11..2024-02, 2024-05``."""
    spans: list[tuple[dt.date, dt.date]] = []
    for month in months:
        if spans and next_month(spans[-1][1]) == month:
            spans[-1] = (spans[-1][0], month)
        else:
            spans.append((month, month))
    return ", ".join(
        month_of(first) if first == last else f"{month_of(first)}..{month_of(last)}" for first, last in spans
    )
