"""Per-market assets: one op downloads and resamples a run's ticker-days into hl5s_bars + daily_liquidity.

Thin wiring, in steps (docs/design.md "Layers and data flow"): the run's partitions become (ticker,
days); `plan.py` picks archives; a `pipeline.RunLoad` downloads and aggregates them, and the ClickHouse
IO manager writes its bars stream day by day; then the liquidity rows the drained load made are written;
the archives read go to the ledger (`trust/ledger.py`); and checks verify the stored rows of the run: ours
(ERROR), the archives' (WARN) and against Binance's own klines (ERROR, `trust/klines_check.py`).
"""

import datetime as dt
import inspect
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import PurePosixPath
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetMaterialization,
    AssetsDefinition,
    AssetSpec,
    BackfillPolicy,
    Backoff,
    DagsterEventType,
    DailyPartitionsDefinition,
    DynamicPartitionsDefinition,
    Failure,
    FreshnessPolicy,
    Jitter,
    MaterializeResult,
    MetadataValue,
    MultiPartitionKey,
    MultiPartitionsDefinition,
    RetryPolicy,
    multi_asset,
)

from binance_assets.clickhouse.day_writer import DayWriter, TickerDay
from binance_assets.clickhouse.io_manager import table_schema
from binance_assets.clickhouse.resource import ClickHouseResource
from binance_assets.clickhouse.store import OpenStore
from binance_assets.clickhouse.tables import BARS_TABLE, LIQUIDITY_TABLE
from binance_assets.markets import DatasetName, Market
from binance_assets.orchestration.dagster_internals import add_partition_metadata, plan_partitions
from binance_assets.orchestration.failures import permanent_failure
from binance_assets.orchestration.partition_range import asset_run_days
from binance_assets.orchestration.resources import VisionResource
from binance_assets.orchestration.run_metadata import (
    FAILED_DAYS,
    check_metadata,
    day_figures,
    failed_days,
    fallback_days,
    partial_days,
    run_metadata,
)
from binance_assets.pipeline import FailedDay, RunLoad
from binance_assets.plan import ArchiveLister, TickerPlan, plan_tickers
from binance_assets.settings import DEFAULT_RETRY_DELAY_SECONDS
from binance_assets.trust.checks import (
    LIMIT,
    CheckOutcome,
    RunSlice,
    bars_well_formed,
    day_coverage,
    liquidity_matches_bars,
    sane_trades,
    trade_ids_continuous,
)
from binance_assets.trust.day_counts import KlinesAhead
from binance_assets.trust.fallback import Fallback
from binance_assets.trust.klines_check import matches_binance_klines
from binance_assets.trust.ledger import write_ledger
from binance_assets.vision.listing import ArchiveInfo

BARS = "hl5s_bars"
LIQUIDITY = "daily_liquidity"
WELL_FORMED = "bars_well_formed"
MATCHES_BARS = "liquidity_matches_bars"
IDS_CONTINUOUS = "trade_ids_continuous"
DAY_COVERAGE = "day_coverage"
SANE_TRADES = "sane_trades"
MATCHES_KLINES = "matches_binance_klines"


def asset_key(market: Market, name: str) -> AssetKey:
    return AssetKey([*market.asset_prefix, name])


def market_asset_keys(market: Market) -> list[AssetKey]:
    """The market's two assets, written by one op: what its sensors and runs request."""
    return [asset_key(market, BARS), asset_key(market, LIQUIDITY)]


def tickers_partitions(market: Market) -> DynamicPartitionsDefinition:
    return DynamicPartitionsDefinition(name=market.tickers_partition_name)


def market_partitions(market: Market) -> MultiPartitionsDefinition:
    """date (daily, up to yesterday UTC) x ticker (dynamic); keys look like ``2024-01-01|BTCUSDT``."""
    return MultiPartitionsDefinition(
        {
            "date": DailyPartitionsDefinition(start_date=market.first_day.isoformat(), timezone="UTC"),
            "ticker": tickers_partitions(market),
        }
    )


ONE_OP = (
    "Written together with {other} by one op, {op}, a day's bars with its liquidity row: Materialize "
    "therefore adds {other} ('Additional assets will be materialized ... a multi-asset that does not "
    "support subsetting'), as expected. For large selections launch the {market}_backfill job from the "
    'Launchpad instead of the partition dialog (docs/operations.md "A big backfill from the UI").'
)
"""The assets' shared note: why the UI materialises both, and the light path for big backfills."""

CHECKED_IN_RUN = (
    " Evaluated by the run that writes the days, on the rows it wrote: it cannot be executed on its own "
    "(the UI greys out Execute); materialise the days again to re-check them."
)
"""Why the checks' Execute button is greyed out: each is a check of the multi_asset's op, not an op of its
own (the op yields the results after its writes)."""


def _check_spec(name: str, key: AssetKey, description: str | None) -> AssetCheckSpec:
    return AssetCheckSpec(name, asset=key, description=inspect.cleandoc(description or "") + CHECKED_IN_RUN)


def retry_policy(delay_seconds: float = DEFAULT_RETRY_DELAY_SECONDS) -> RetryPolicy:
    """A run step's retries of transient failures (network, a busy store): three, after about 1, 3 and 7
    times ``delay_seconds`` (BINANCE_RETRY_DELAY_SECONDS), each +/- ``delay_seconds``: by default 0-60 s,
    60-120 s and 180-240 s (Dagster's exponential backoff is (2^n - 1) x delay). A retry writes only the
    days the run has not written yet."""
    return RetryPolicy(
        max_retries=3, delay=delay_seconds, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS
    )


DEFAULT_RETRY = retry_policy()


@contextmanager
def failing_fast() -> Iterator[None]:
    """Turn a failure that cannot heal by waiting (failures.py) into a Failure that no RetryPolicy or
    run retry repeats; transient ones pass through to the retries."""
    try:
        yield
    except Failure:
        raise
    except Exception as exc:
        reason = permanent_failure(exc)
        if reason is None:
            raise
        raise Failure(description=reason, allow_retries=False) from exc


def liquidity_freshness(deadline: str) -> FreshnessPolicy:
    """Yesterday's rows expected by ``deadline`` (HH:MM UTC): a materialisation between midnight UTC, when
    yesterday becomes materialisable, and the deadline. Dagster judges the asset's latest
    materialisation, of any partition."""
    hours, minutes = (int(part) for part in deadline.split(":"))
    since_midnight = dt.timedelta(hours=hours, minutes=minutes) or dt.timedelta(days=1)
    return FreshnessPolicy.cron(deadline_cron=f"{minutes} {hours} * * *", lower_bound_delta=since_midnight)


def build_market_assets(
    market: Market,
    max_days_per_run: int,
    retry_policy: RetryPolicy | None = DEFAULT_RETRY,
    *,
    kline_check: bool = True,
    freshness_deadline: str = "12:00",
    dataset: DatasetName = "trades",
    fallback: DatasetName | None = "aggTrades",
) -> AssetsDefinition:
    """The market's multi_asset: hl5s_bars and daily_liquidity of every (date, ticker) partition.

    ``kline_check`` (BINANCE_KLINE_CHECK) adds `matches_binance_klines`; ``freshness_deadline``
    (BINANCE_FRESHNESS_DEADLINE) is daily_liquidity's freshness policy; ``dataset`` (BINANCE_DATASET) is
    the archives read and ``fallback`` (BINANCE_FALLBACK, effective only when it differs) the dataset a
    missing, broken or partial day is built from (trust/fallback.py).
    """
    fallback = fallback if fallback != dataset else None
    bars_key, liquidity_key = asset_key(market, BARS), asset_key(market, LIQUIDITY)
    checks = [
        _check_spec(WELL_FORMED, bars_key, bars_well_formed.__doc__),
        _check_spec(MATCHES_BARS, liquidity_key, liquidity_matches_bars.__doc__),
        _check_spec(IDS_CONTINUOUS, liquidity_key, trade_ids_continuous.__doc__),
        _check_spec(DAY_COVERAGE, bars_key, day_coverage.__doc__),
        _check_spec(SANE_TRADES, liquidity_key, sane_trades.__doc__),
        _check_spec(FROM_FALLBACK, liquidity_key, FROM_FALLBACK_DESCRIPTION),
    ]
    if kline_check:
        checks.append(_check_spec(MATCHES_KLINES, bars_key, matches_binance_klines.__doc__))

    partitions = market_partitions(market)

    @multi_asset(
        name=f"{market.key}_trades_to_bars",
        # The op writes both tables itself (clickhouse/day_writer.py), a day's bars with its liquidity row,
        # and says which partitions it materialised: a day that fails fails alone.
        specs=[
            AssetSpec(
                bars_key,
                description=f"{market.key}: 5-second bars, right-labelled (trades in [ts-5s, ts)). "
                + ONE_OP.format(op=f"{market.key}_trades_to_bars", other=LIQUIDITY, market=market.key),
                metadata={"dagster/column_schema": table_schema(BARS_TABLE)},
                skippable=True,
                partitions_def=partitions,
            ),
            AssetSpec(
                liquidity_key,
                description=f"{market.key}: one row per ticker-day: trades, volumes, ids, source archive. "
                + ONE_OP.format(op=f"{market.key}_trades_to_bars", other=BARS, market=market.key),
                metadata={"dagster/column_schema": table_schema(LIQUIDITY_TABLE)},
                freshness_policy=liquidity_freshness(freshness_deadline),
                skippable=True,
                partitions_def=partitions,
            ),
        ],
        partitions_def=partitions,
        backfill_policy=BackfillPolicy.multi_run(max_partitions_per_run=max_days_per_run),
        retry_policy=retry_policy,
        check_specs=checks,
        group_name=f"binance_{market.key}",
        pool=f"binance_{market.key}",
    )
    def trades_to_bars(
        context: AssetExecutionContext, vision: VisionResource, clickhouse: ClickHouseResource
    ) -> Iterator[MaterializeResult | AssetCheckResult]:
        days_by_ticker = asset_run_days(context)
        kept = _written_by_earlier_attempts(context, liquidity_key) if context.retry_number else set()
        todo = {t: [d for d in days if (t, d) not in kept] for t, days in days_by_ticker.items()}
        if kept:
            context.log.info(f"{len(kept)} ticker-days written by earlier attempts of this run are kept")
        listing = vision.listing()

        def archives(ticker: str, name: DatasetName) -> list[ArchiveInfo]:
            return listing.list_trades_archives(market, ticker, dataset=name)

        with failing_fast():
            plans = _plan(context, market, archives, vision.publish_grace_days, todo, dataset, fallback)
        downloader = vision.downloader()
        today = dt.datetime.now(dt.UTC).date()
        ahead = KlinesAhead(downloader, market, plans, today, kline_check=kline_check, counts=bool(fallback))
        rebuild = None
        if fallback:  # a partial day is one with fewer trades than Binance counts
            rebuild = Fallback(fallback, lambda ticker: archives(ticker, fallback), ahead.counts)
        load = RunLoad(market, plans, downloader, fallback=rebuild)
        writer = DayWriter(clickhouse.open, market.key, token=f"{context.run.run_id}/{context.retry_number}")

        # 1. each ticker-day's bars and liquidity row, written together as the load yields them
        started = time.monotonic()
        figures: dict[TickerDay, dict[str, Any]] = {}
        try:
            with failing_fast():
                for index, day in enumerate(load.days(), 1):
                    writer.add(day.ticker, day.day, day.bars, day.liquidity)
                    figures[day.ticker, day.day] = day_figures(day)
                    if index % 25 == 0:
                        context.log.info(f"{index} ticker-days: {load.figures.trades:,} trades")
                writer.flush()
            klines = ahead.klines  # waited for here: the store is closed meanwhile, the days written kept
        except BaseException:
            # what is written stays materialised: a retry of this run resumes after it
            for event in _materializations(market, writer.written, figures, {}):
                context.log_event(event)
            raise
        failed, late = load.failed, load.late
        metadata = run_metadata(load, [p.ticker for p in plans], time.monotonic() - started)
        _log_outcome(context, market, len(writer.written), failed, late)
        # 2. the ledger: the archives read, now that their days are written; 3. the checks of the stored rows
        written = sorted(kept | set(writer.written))
        run = RunSlice(
            market.key, tuple(sorted({t for t, _ in written})), tuple(sorted({d for _, d in written}))
        )
        # nothing written (a run of late days only, or every day failed): nothing to check
        results = [_nothing_checked(spec) for spec in checks if spec.name != FROM_FALLBACK]
        if written:
            with clickhouse.open() as store:
                write_ledger(store, load.ledger_rows)
                results = _checks(market, store, run)
                if klines is not None:
                    outcome = matches_binance_klines(store, market.key, klines, load.uncovered)
                    results.append(_check_result(bars_key, MATCHES_KLINES, outcome))
        # 4. the materialisations: Dagster's own, one per partition of the run, when every day is written;
        # else one per day written, so that only the days not written show failed (or missing, when late)
        if failed or late or kept:
            for event in _materializations(market, writer.written, figures, metadata):
                context.log_event(event)
        else:
            partitions = [(_partition(ticker, day), figures[ticker, day]) for ticker, day in writer.written]
            add_partition_metadata(context, bars_key, [(p, _bars_figures(f)) for p, f in partitions])
            add_partition_metadata(context, liquidity_key, partitions)
            yield MaterializeResult(asset_key=bars_key)
            yield MaterializeResult(asset_key=liquidity_key, metadata=metadata)
        yield from results
        yield _fallback_check(liquidity_key, load)
        if failed:
            raise _failure(context, market, failed, writer)

    return trades_to_bars


def _plan(
    context: AssetExecutionContext,
    market: Market,
    archives: ArchiveLister,
    grace_days: int,
    days_by_ticker: dict[str, list[dt.date]],
    dataset: DatasetName,
    fallback: DatasetName | None,
) -> list[TickerPlan]:
    """Plan every ticker of the run from its listing (days not yet published are left for a later run)."""
    today = dt.datetime.now(dt.UTC).date()
    plans = plan_tickers(archives, days_by_ticker, today, grace_days, dataset, fallback)
    for plan in plans:
        monthly = sum(1 for a in plan.serves if a.freq == "monthly")
        context.log.info(
            f"{market.key} {plan.ticker}: {len(plan.days)} days from {len(plan.serves) - monthly} daily and "
            f"{monthly} monthly archives ({plan.download_bytes / 1e6:.1f} MB), {len(plan.no_archive)} without"
            + (f", {len(plan.fallbacks)} from {fallback}" if plan.fallbacks else "")
            + (f", {len(plan.unpublished)} not yet published" if plan.unpublished else "")
        )
    return plans


def _partition(ticker: str, day: dt.date) -> MultiPartitionKey:
    return MultiPartitionKey({"date": day.isoformat(), "ticker": ticker})


def _written_by_earlier_attempts(context: AssetExecutionContext, key: AssetKey) -> set[TickerDay]:
    """The ticker-days this run materialised before this attempt (a step retry resumes after them)."""
    written: set[TickerDay] = set()
    cursor = None
    while True:
        page = context.instance.get_records_for_run(
            context.run.run_id, cursor=cursor, of_type=DagsterEventType.ASSET_MATERIALIZATION, limit=10_000
        )
        for record in page.records:
            event = record.event_log_entry.asset_materialization
            if event is not None and event.asset_key == key and event.partition:
                day, ticker = event.partition.split("|")
                written.add((ticker, dt.date.fromisoformat(day)))
        if not page.has_more:
            return written
        cursor = page.cursor


def _materializations(
    market: Market,
    written: Iterable[TickerDay],
    figures: Mapping[TickerDay, Mapping[str, Any]],
    metadata: Mapping[str, Any],
) -> Iterator[AssetMaterialization]:
    """One materialisation per asset and day written: the day's figures, the run's totals on liquidity."""
    for ticker, day in written:
        partition = _partition(ticker, day)
        yield AssetMaterialization(
            asset_key(market, BARS), partition=partition, metadata=_bars_figures(figures[ticker, day])
        )
        yield AssetMaterialization(
            asset_key(market, LIQUIDITY), partition=partition, metadata={**metadata, **figures[ticker, day]}
        )


def _bars_figures(figures: Mapping[str, Any]) -> dict[str, Any]:
    """What a day's hl5s_bars materialisation carries: its bar count."""
    return {"dagster/row_count": figures["bar_count"]}


def _log_outcome(
    context: AssetExecutionContext,
    market: Market,
    written: int,
    failed: Sequence[FailedDay],
    late: Sequence[TickerDay],
) -> None:
    context.log.info(f"{market.key}: {written} ticker-days written")
    if late:
        days = ", ".join(f"{ticker} {day}" for ticker, day in late)
        context.log.warning(
            f"{market.key}: not yet published on Binance Vision, left missing: {days}. The daily sensor, or "
            "a re-run of the missing days, loads them once Binance publishes them."
        )
    if failed:
        context.log.error(f"{market.key}: failed: {_describe_failures(failed)}")


def _describe_failures(failed: Sequence[FailedDay]) -> str:
    """``BTCUSDT 2024-01-30: why (BTCUSDT-trades-2024-01-30.zip)``, the days of one archive as a range."""
    by_archive: dict[tuple[str, str], list[FailedDay]] = {}
    for failure in failed:
        by_archive.setdefault((failure.ticker, failure.archive), []).append(failure)
    parts = []
    for (ticker, archive), days in by_archive.items():
        first, last = min(f.day for f in days), max(f.day for f in days)
        span = f"{first}" if first == last else f"{first}..{last}"
        name, reason = PurePosixPath(archive).name, permanent_failure(days[0].error)
        reason = " ".join((reason or f"{days[0].error} (may heal: retried)").split())
        parts.append(f"{ticker} {span}: {reason}" + ("" if name in reason else f" ({name})"))
    return "; ".join(parts)


def _failure(
    context: AssetExecutionContext, market: Market, failed: Sequence[FailedDay], writer: DayWriter
) -> Failure:
    """The run's failure: one line naming each failed day and its archive. Retried only when every
    failure may heal by waiting; the retry redoes the failed days alone. A failed day keeps its rows, but
    not bars without their liquidity row (day_writer.py)."""
    discarded = writer.discard_incomplete((f.ticker, f.day) for f in failed)
    if discarded:
        context.log.warning(
            f"{market.key}: bars without a liquidity row deleted on {len(discarded)} failed days"
        )
    written = len(writer.written)
    keys = [str(_partition(f.ticker, f.day)) for f in failed]
    plan_partitions(context, {asset_key(market, BARS): keys, asset_key(market, LIQUIDITY): keys})
    transient = all(permanent_failure(f.error) is None for f in failed)
    return Failure(
        description=f"{market.key}: {len(failed)} ticker-day(s) failed, {written} written: "
        + _describe_failures(failed),
        metadata={FAILED_DAYS: MetadataValue.json(failed_days(failed))},
        allow_retries=transient,
    )


FROM_FALLBACK = "built_from_fallback"
FROM_FALLBACK_DESCRIPTION = (
    "Ticker-days built from the fallback dataset (aggTrades) rather than their trades archive, and why: "
    "no trades archive, a broken one (every row is_buyer_maker=true) or a partial one (fewer trades than "
    "Binance's klines). The rows are right; the trades archive is not."
)


def _fallback_check(key: AssetKey, load: RunLoad) -> AssetCheckResult:
    """WARN naming each day of the run built from the fallback dataset, and why, and each partial trades
    day kept because its fallback day matched neither klines count."""
    built, partial = fallback_days(load), partial_days(load)
    failures = built + partial
    totals = {"days_from_fallback": len(built), "partial_days_kept": len(partial)}
    outcome = CheckOutcome(passed=not failures, failures=failures[:LIMIT], totals=totals)
    return _check_result(key, FROM_FALLBACK, outcome, AssetCheckSeverity.WARN)


def _checks(market: Market, store: OpenStore, run: RunSlice) -> list[AssetCheckResult]:
    """The checks of the run's stored rows: ours (ERROR), the archives' (WARN)."""
    errors = {
        (BARS, WELL_FORMED): bars_well_formed(store, run),
        (LIQUIDITY, MATCHES_BARS): liquidity_matches_bars(store, run),
    }
    warnings = {
        (LIQUIDITY, IDS_CONTINUOUS): trade_ids_continuous(store, run),
        (BARS, DAY_COVERAGE): day_coverage(store, run),
        (LIQUIDITY, SANE_TRADES): sane_trades(store, run),
    }
    return [
        _check_result(asset_key(market, asset), name, outcome, severity)
        for severity, outcomes in ((AssetCheckSeverity.ERROR, errors), (AssetCheckSeverity.WARN, warnings))
        for (asset, name), outcome in outcomes.items()
    ]


def _nothing_checked(spec: AssetCheckSpec) -> AssetCheckResult:
    return AssetCheckResult(
        asset_key=spec.asset_key,
        check_name=spec.name,
        passed=True,
        metadata={"ticker_days_checked": 0},
        description="no ticker-day written by this run",
    )


def _check_result(
    key: AssetKey, name: str, outcome: CheckOutcome, severity: AssetCheckSeverity = AssetCheckSeverity.ERROR
) -> AssetCheckResult:
    return AssetCheckResult(
        asset_key=key,
        check_name=name,
        passed=outcome.passed,
        severity=severity,
        metadata=check_metadata(outcome),
    )
