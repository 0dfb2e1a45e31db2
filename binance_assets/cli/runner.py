"""Run each ticker's ranges of days (in order per ticker, tickers in parallel) and add up a summary."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from binance_assets.cli.common import Request, count_of, say, size_of
from binance_assets.cli.errors import CliError, RunFailed
from binance_assets.markets import Market
from binance_assets.pipeline import LoadFigures
from binance_assets.plan import run_ranges
from binance_assets.settings import Settings

if TYPE_CHECKING:
    from binance_assets.cli.warm_up import WarmUp


@dataclass(frozen=True)
class Totals(LoadFigures):
    """What runs did, for the closing summary: one run's, one ticker's or the whole command's. Its counts
    of ticker-days (`days`: done), trades, bars and bytes are a load's (pipeline.LoadFigures), added up."""

    tickers: int = 0
    without_archive: int = 0
    failed: int = 0
    late: int = 0
    """Ticker-days not yet published on Vision: left missing for the daily sensor or a re-run."""
    skipped: int = 0
    """Ticker-days not run: by a backfill that ended without them."""
    fallbacks: tuple[str, ...] = ()
    """``TICKER YYYY-MM-DD: why`` of each ticker-day built from the fallback dataset (aggTrades)."""
    failures: tuple[str, ...] = ()
    """``TICKER YYYY-MM-DD[..YYYY-MM-DD]: why`` of each failed ticker-day (or span of one archive)."""

    def summary(self, verb: str, market: Market, seconds: float) -> str:
        """One line of counts, then one line per ticker-day built from the fallback dataset, and one per
        failure."""
        fallback = f", {len(self.fallbacks):,} built from aggTrades" if self.fallbacks else ""
        late = f", {self.late:,} not yet published" if self.late else ""
        lines = [
            f"{verb} {market.key}: {count_of(self.tickers, 'ticker')}; ticker-days: {self.days:,} done "
            f"({self.without_archive:,} without archive{fallback}), {self.failed:,} failed{late}, "
            f"{self.skipped:,} skipped; {self.trades:,} trades, {self.bars:,} bars, "
            f"{size_of(self.downloaded_bytes)} downloaded; {seconds:.1f} s"
        ]
        lines += [f"  from aggTrades: {market.key} {day}" for day in self.fallbacks]
        return "\n".join(lines + [f"  failed: {market.key} {failure}" for failure in self.failures])


RunRange = Callable[[str, dt.date, dt.date], Totals]
"""Runs (or previews) one ticker's consecutive days, inclusive; raises CliError when it fails (RunFailed
when it wrote some of them)."""


def run_all(
    request: Request, settings: Settings, run: RunRange, verb: str, *, warm_up: WarmUp | None = None
) -> int:
    """Each ticker's ranges in order, BINANCE_PARALLEL_TICKERS tickers at once. Every range runs, whatever
    failed before it: a failure costs its own days. Prints the summary (each failed ticker-day named, and
    the bytes the warm-up downloaded for the runs counted), then raises the first failure."""
    started = time.monotonic()
    ranges = run_ranges(request.days, settings.max_days_per_run)

    def ticker_runs(ticker: str) -> tuple[Totals, CliError | None]:
        totals, error = Totals(tickers=1), None
        for first, last in ranges:
            try:
                totals += run(ticker, first, last)
            except RunFailed as failure:
                totals, error = totals + failure.totals, error or failure
            except CliError as failure:
                days = (last - first).days + 1
                totals, error = (
                    totals + Totals(failed=days, failures=(f"{ticker} {first}..{last}",)),
                    error or failure,
                )
        return totals, error

    with ThreadPoolExecutor(max_workers=ticker_workers(request, settings)) as pool:
        outcomes = list(pool.map(ticker_runs, request.tickers))
    totals = sum((t for t, _ in outcomes), warm_up.totals() if warm_up else Totals())
    say(totals.summary(verb, request.market, time.monotonic() - started))
    errors = [error for _, error in outcomes if error is not None]
    if errors:
        raise errors[0]
    return 0


def ticker_workers(request: Request, settings: Settings) -> int:
    """Tickers run at once: BINANCE_PARALLEL_TICKERS (run.py's NUM_PROCESSES), at most one per ticker."""
    return min(settings.parallel_tickers, len(request.tickers))


def progress_line(what: str, days: str, seconds: float, trades: int, bars: int) -> str:
    return f"{what}: {days}, {seconds:.1f} s, {trades:,} trades, {bars:,} bars"
