"""`discover`, `materialize`'s runs (its command: cli/materialize.py) and `backfill`: Dagster runs in this
process, or a backfill for the daemon."""

from __future__ import annotations

import argparse
import datetime as dt
import re
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from dagster import (
    AssetCheckEvaluation,
    AssetCheckSeverity,
    AssetMaterialization,
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

from binance_assets.cli.common import (
    PROG,
    REASON,
    Request,
    count_of,
    enabled_market,
    list_archives,
    one_line,
    open_instance,
    parse_request,
    prepare_instance,
    register_tickers,
    say,
)
from binance_assets.cli.errors import CliError, RunFailed
from binance_assets.cli.preview import run_preview, wants_preview
from binance_assets.cli.runner import Totals, progress_line, ticker_workers
from binance_assets.markets import MARKETS, Market
from binance_assets.orchestration.assets import BARS, LIQUIDITY, asset_key
from binance_assets.orchestration.backfills import ONLY_WHICH, Only, select_keys, submit_backfills
from binance_assets.orchestration.dagster_internals import (
    BACKFILL_ID_TAG,
    BULK_ACTION_TERMINAL_STATUSES,
    StepFailureData,
)
from binance_assets.orchestration.definitions import build_definitions, build_resources, market_assets
from binance_assets.orchestration.partition_range import range_tags, run_tags, tagged_range
from binance_assets.orchestration.run_metadata import (
    FAILED_DAYS,
    FALLBACK_DAYS,
    FIRST_FAILURE,
    LATE_DAYS,
    read_figures,
)
from binance_assets.settings import Settings


def cmd_discover(args: argparse.Namespace, settings: Settings) -> int:
    """List, filter and register each market's tickers; print them, new ones marked."""
    markets = (
        [enabled_market(args.market, settings)] if args.market else [MARKETS[k] for k in settings.markets]
    )
    instance = open_instance(settings)
    listing = settings.vision_client.listing()
    for market in markets:
        listed = listing.list_tickers(market, lambda line: say(f"{PROG}: warning: {line}", progress=True))
        wanted = [t for t in listed if settings.wants_ticker(t)]
        new = set(register_tickers(instance, market, wanted))
        print(f"{market.key}: {len(listed)} tickers listed, {len(wanted)} wanted, {len(new)} new")
        for ticker in wanted:
            print(f"  {ticker}{'  new' if ticker in new else ''}")
    return 0


@dataclass(frozen=True)
class InProcessRuns:
    """One Dagster run in this process per (ticker, days): a RunRange."""

    market: Market
    assets: AssetsDefinition
    resources: Mapping[str, Any]
    instance: DagsterInstance
    log_level: str

    @classmethod
    def of(cls, request: Request, settings: Settings, *, retries: bool, verbose: bool) -> InProcessRuns:
        """The runs of `materialize`: with its request's new tickers registered."""
        return cls(
            market=request.market,
            assets=market_assets(request.market, settings, retries=retries),
            resources=build_resources(settings),
            instance=prepare_instance(request, settings, capture_logs=ticker_workers(request, settings) == 1),
            log_level=settings.log_level if verbose else "CRITICAL",
        )

    def __call__(self, ticker: str, first: dt.date, last: dt.date) -> Totals:
        what = f"{self.market.key} {ticker} {first}..{last}"
        days = (last - first).days + 1
        started = time.monotonic()
        result = materialize(
            [self.assets],
            instance=self.instance,
            resources=dict(self.resources),
            tags=range_tags(self.market, ticker, first, last, REASON),
            run_config={"loggers": {"console": {"config": {"log_level": self.log_level}}}},
            raise_on_error=False,
        )
        seconds = time.monotonic() - started
        materializations = result.asset_materializations_for_node(self.assets.node_def.name)
        failure = next((e.step_failure_data for e in result.get_step_failure_events()), None)
        totals = run_totals(self.market, materializations, failure, days, success=result.success)
        if not result.success:
            raise RunFailed(
                f"{what}: run {result.run_id} failed after {seconds:.1f} s: {_failure(result)}", totals
            )
        say(progress_line(what, count_of(days, "day"), seconds, totals.trades, totals.bars), progress=True)
        checks = result.get_asset_check_evaluations()
        say("\n".join(_check_line(check) for check in checks), progress=True)
        failed = [c for c in checks if not c.passed and c.severity == AssetCheckSeverity.ERROR]
        if failed:
            more = f" (and {count_of(len(failed) - 1, 'other ERROR check')})" if len(failed) > 1 else ""
            failure_line = _check_line(failed[0]).strip()
            raise RunFailed(
                f"{what}: run {result.run_id} wrote its rows, but check {failure_line}{more}",
                totals,
                CHECK_FAILED,
            )
        return totals


CHECK_FAILED = 3
"""Exit status of `materialize` when a check of severity ERROR fails (WARN checks never change it)."""


def _check_line(check: AssetCheckEvaluation) -> str:
    """``  matches_binance_klines (ERROR) passed`` or ``... failed, first on BTCUSDT 2024-03-02 07:41``."""
    first = check.metadata.get(FIRST_FAILURE)
    outcome = "passed" if check.passed else "failed" + (f", first on {first.value}" if first else "")
    return f"  {check.check_name} ({check.severity.value}) {outcome}"


def run_totals(
    market: Market,
    materializations: Sequence[AssetMaterialization],
    failure: StepFailureData | None,
    days: int,
    *,
    success: bool,
) -> Totals:
    """A run's counts, from its daily_liquidity materialisations (each carries its day's figures and the
    run's totals: orchestration/run_metadata.py) and its failure (the failed days it names)."""
    key = asset_key(market, LIQUIDITY)
    by_day = {m.partition: m.metadata for m in materializations if m.asset_key == key}
    run = next(iter(by_day.values()), {})
    failed = (
        _json(failure.user_failure_data.metadata, FAILED_DAYS)
        if failure and failure.user_failure_data
        else []
    )
    if success:  # a day a successful run did not write was not yet published
        late, unwritten = days - len(by_day), 0
    else:  # a run that failed before it could name its failed days failed them all
        late, unwritten = len(_json(run, LATE_DAYS)), len(failed) or days - len(by_day)
    return Totals(
        **asdict(read_figures(by_day.values())),
        without_archive=sum(1 for m in by_day.values() if m["source"].value == "none"),
        failed=unwritten,
        late=late,
        fallbacks=tuple(
            f"{row['ticker']} {row['day']}: {row['reason']}" for row in _json(run, FALLBACK_DAYS)
        ),
        failures=tuple(f"{row['ticker']} {row['day']}: {' '.join(row['error'].split())}" for row in failed),
    )


def _json(metadata: Mapping[str, MetadataValue], name: str) -> list[dict[str, Any]]:
    return list(metadata[name].value) if name in metadata else []


def _failure(result: ExecuteInProcessResult) -> str:
    """The first step failure's own message: our Failure's description, else the innermost cause (the error
    raised, not Dagster's wrapper)."""
    for event in result.get_step_failure_events():
        error = event.step_failure_data.error
        while error is not None and error.cause is not None and error.cls_name != "Failure":
            error = error.cause
        if error is not None:
            return one_line(re.sub(rf"^[\w.]*\b{re.escape(error.cls_name)}: ", "", error.message))
    return "the run failed before its step started (see the run in the Dagster UI)"


def cmd_backfill(args: argparse.Namespace, settings: Settings) -> int:
    """Add asset backfills to the instance; the daemon chunks each into runs by the BackfillPolicy.
    Or preview the runs (--plan, --dry-run) as `materialize` would make them.

    Dagster cuts a multi-partition backfill along its dimension with fewer keys, so each backfill holds
    at most as many tickers as days: its runs are then a ticker's consecutive days (which lets a run use
    a month's monthly archive), not one day of many tickers. Each also holds at most
    `backfills.BACKFILL_TICKER_DAYS` (see there). The `<market>_backfill` job submits the same backfills
    (orchestration/backfills.py).
    """
    request = parse_request(args, settings)
    listed = list_archives(request, settings)
    if wants_preview(args, settings):
        return run_preview(args, request, listed, settings)
    started = time.monotonic()
    instance = prepare_instance(request, settings)
    market = request.market
    only: Only = "failed" if args.only_failed else "missing" if args.only_missing else "all"
    keys = select_keys(instance, market, request.tickers, request.days, only)
    if only != "all":
        which = ONLY_WHICH[only]
        say(f"{sum(map(len, keys.values())):,} ticker-days {which} in Dagster", progress=True)
        if not keys:
            say(f"nothing to backfill: no ticker-day of {market.key} {request.describe()} is {which}")
            return 0
    submitted = submit_backfills(
        instance,
        build_definitions(settings).resolve_assets_def(asset_key(market, BARS)),
        market,
        keys,
        title=f"{market.key} {request.describe()}",
        description=f"{PROG} backfill",
        tags=run_tags(market, REASON),
    )
    backfill_ids = [backfill.backfill_id for backfill in submitted]
    say("\n".join(backfill_ids))
    say(f"submitted backfill of {market.key} {request.describe()}; dagster-daemon runs it", progress=True)
    if not args.wait:
        return 0
    runs = _follow(instance, backfill_ids)
    totals = sum(
        (_backfill_run_totals(instance, run, market) for run in runs), Totals(tickers=len(request.tickers))
    )
    requested_days = sum(map(len, keys.values()))
    totals += Totals(skipped=requested_days - totals.days - totals.failed - totals.late)
    say(totals.summary("backfilled", market, time.monotonic() - started))
    failed = [run.run_id for run in runs if run.status != DagsterRunStatus.SUCCESS]
    if failed:
        raise CliError(f"{count_of(len(failed), 'run')} of the backfill did not succeed: {', '.join(failed)}")
    return 0


_POLL_SECONDS = 2.0


def _follow(instance: DagsterInstance, backfill_ids: Sequence[str]) -> list[DagsterRun]:
    """Poll until every backfill is done, printing run counts as they change; each range's latest run."""
    say("waiting for dagster-daemon (Ctrl-C stops waiting, not the backfill)", progress=True)
    shown = ""
    while True:
        done = all(instance.get_backfill(i).status in BULK_ACTION_TERMINAL_STATUSES for i in backfill_ids)
        latest: dict[tuple[str, str], DagsterRun] = {}
        for backfill_id in backfill_ids:
            for run in instance.get_runs(RunsFilter(tags={BACKFILL_ID_TAG: backfill_id})):  # newest first
                latest.setdefault(tagged_range(run.tags), run)
        counts = Counter(run.status.value.lower() for run in latest.values())
        progress = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no run yet"
        if progress != shown:
            say(f"backfill runs: {progress}", progress=True)
            shown = progress
        if done:
            return list(latest.values())
        time.sleep(_POLL_SECONDS)


def _backfill_run_totals(instance: DagsterInstance, run: DagsterRun, market: Market) -> Totals:
    """A finished run's counts, from its materialisations and its step failure."""
    first, last = (dt.date.fromisoformat(key.split("|")[0]) for key in tagged_range(run.tags))
    records = instance.get_records_for_run(run.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION).records
    materializations = [m for r in records if (m := r.event_log_entry.asset_materialization)]
    failures = instance.get_records_for_run(run.run_id, of_type=DagsterEventType.STEP_FAILURE).records
    failure = next((r.event_log_entry.dagster_event.step_failure_data for r in failures[-1:]), None)
    success = run.status == DagsterRunStatus.SUCCESS
    return run_totals(market, materializations, failure, (last - first).days + 1, success=success)
