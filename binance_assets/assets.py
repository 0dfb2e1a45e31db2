"""Per-market assets: one op downloads and resamples a run's ticker-days into hl5s_bars + daily_liquidity.

Thin wiring, in steps (docs/design.md "Layers and data flow"): the run's partitions become (ticker,
days); `plan.py` picks archives; a `pipeline.RunLoad` downloads and aggregates them, and the ClickHouse
IO manager writes its bars stream day by day; then the liquidity rows the drained load made are written;
the archives read go to the ledger (`trust/ledger.py`); and checks verify the stored rows of the run: ours
(ERROR), the archives' (WARN) and against Binance's own klines (ERROR, `trust/klines_check.py`).
"""

import datetime as dt
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import pyarrow as pa
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetOut,
    AssetsDefinition,
    BackfillPolicy,
    Backoff,
    DailyPartitionsDefinition,
    DynamicPartitionsDefinition,
    Failure,
    FreshnessPolicy,
    Jitter,
    MetadataValue,
    MultiPartitionKey,
    MultiPartitionsDefinition,
    Output,
    RetryPolicy,
    multi_asset,
)

from binance_assets.clickhouse.resource import ClickHouseResource
from binance_assets.clickhouse.store import OpenStore
from binance_assets.failures import permanent_failure
from binance_assets.markets import DatasetName, Market
from binance_assets.partition_range import asset_run_days
from binance_assets.pipeline import RunLoad
from binance_assets.plan import ArchiveLister, TickerPlan, plan_tickers
from binance_assets.resources import VisionResource
from binance_assets.run_metadata import check_metadata, day_metadata, fallback_days, run_metadata
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
from binance_assets.trust.fallback import Fallback
from binance_assets.trust.klines_check import day_counts, kline_sources, load_klines, matches_binance_klines
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


DEFAULT_RETRY = RetryPolicy(max_retries=3, delay=30, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS)
"""Transient failures (network, an archive not yet published) are retried after about 30 s, 60 s, 120 s."""


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
        AssetCheckSpec(WELL_FORMED, asset=bars_key, description=bars_well_formed.__doc__),
        AssetCheckSpec(MATCHES_BARS, asset=liquidity_key, description=liquidity_matches_bars.__doc__),
        AssetCheckSpec(IDS_CONTINUOUS, asset=liquidity_key, description=trade_ids_continuous.__doc__),
        AssetCheckSpec(DAY_COVERAGE, asset=bars_key, description=day_coverage.__doc__),
        AssetCheckSpec(SANE_TRADES, asset=liquidity_key, description=sane_trades.__doc__),
        AssetCheckSpec(FROM_FALLBACK, asset=liquidity_key, description=FROM_FALLBACK_DESCRIPTION),
    ]
    if kline_check:
        checks.append(
            AssetCheckSpec(MATCHES_KLINES, asset=bars_key, description=matches_binance_klines.__doc__)
        )

    @multi_asset(
        name=f"{market.key}_trades_to_bars",
        outs={
            BARS: AssetOut(
                key=asset_key(market, BARS),
                io_manager_key="clickhouse_io_manager",
                description=f"{market.key}: 5-second bars, right-labelled (trades in [ts-5s, ts))",
            ),
            LIQUIDITY: AssetOut(
                key=asset_key(market, LIQUIDITY),
                io_manager_key="clickhouse_io_manager",
                description=f"{market.key}: one row per ticker-day: trades, volumes, ids, source archive",
                freshness_policy=liquidity_freshness(freshness_deadline),
            ),
        },
        partitions_def=market_partitions(market),
        backfill_policy=BackfillPolicy.multi_run(max_partitions_per_run=max_days_per_run),
        retry_policy=retry_policy,
        check_specs=checks,
        group_name=f"binance_{market.key}",
        pool=f"binance_{market.key}",
    )
    def trades_to_bars(
        context: AssetExecutionContext, vision: VisionResource, clickhouse: ClickHouseResource
    ) -> Iterator[Output[Any] | AssetCheckResult]:
        days_by_ticker = asset_run_days(context)
        ticker_days = sum(len(days) for days in days_by_ticker.values())
        listing = vision.listing()

        def archives(ticker: str, name: DatasetName) -> list[ArchiveInfo]:
            return listing.list_trades_archives(market, ticker, dataset=name)

        with failing_fast():
            plans = _plan(
                context, market, archives, vision.publish_grace_days, days_by_ticker, dataset, fallback
            )
        downloader = vision.downloader()
        klines = None
        if kline_check or fallback:  # before the writes: the fallback compares day counts with them
            klines = load_klines(downloader, kline_sources(market, plans))
        rebuild = None
        if fallback and klines is not None:
            rebuild = Fallback(fallback, lambda ticker: archives(ticker, fallback), day_counts(klines))
        load = RunLoad(market, plans, downloader, fallback=rebuild)

        # 1. the bars: the IO manager drains the load's stream, day by day
        started = time.monotonic()
        yield Output(_bars_stream(context, load, ticker_days), output_name=BARS)
        # 2. the liquidity rows the drained load made; each partition also gets its own day's figures
        with failing_fast():
            liquidity = load.liquidity
        _add_partition_metadata(
            context,
            liquidity_key,
            (
                (MultiPartitionKey({"date": row["day"].isoformat(), "ticker": row["ticker"]}), figures)
                for row, figures in day_metadata(load)
            ),
        )
        metadata = run_metadata(load, [p.ticker for p in plans], time.monotonic() - started)
        yield Output(liquidity, output_name=LIQUIDITY, metadata=metadata)
        # 3. the ledger: the archives read, now that their days are written; 4. the checks of the stored rows
        run = RunSlice(
            market.key, tuple(days_by_ticker), tuple(sorted({d for v in days_by_ticker.values() for d in v}))
        )
        with clickhouse.open() as store:
            write_ledger(store, load.ledger_rows)
            results = _checks(market, store, run)
            if kline_check and klines is not None:
                outcome = matches_binance_klines(store, market.key, klines)
                results.append(_check_result(bars_key, MATCHES_KLINES, outcome))
        yield from results
        yield _fallback_check(liquidity_key, load)

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
    """Plan every ticker of the run from its listing; fail (retryably) before any write if a day is late."""
    today = dt.datetime.now(dt.UTC).date()
    plans = plan_tickers(archives, days_by_ticker, today, grace_days, dataset, fallback)
    late = {p.ticker: p.unpublished for p in plans if p.unpublished}
    if late:
        described = "; ".join(f"{t}: {', '.join(d.isoformat() for d in days)}" for t, days in late.items())
        raise Failure(
            description=f"{market.key} archives not yet published on Binance Vision ({described}); "
            "Binance publishes hours to days late: this run will be retried.",
            metadata={
                "unpublished": MetadataValue.json({t: [d.isoformat() for d in v] for t, v in late.items()})
            },
        )
    for plan in plans:
        monthly = sum(1 for a in plan.serves if a.freq == "monthly")
        context.log.info(
            f"{market.key} {plan.ticker}: {len(plan.days)} days from {len(plan.serves) - monthly} daily and "
            f"{monthly} monthly archives ({plan.download_bytes / 1e6:.1f} MB), {len(plan.no_archive)} without"
            + (f", {len(plan.fallbacks)} from {fallback}" if plan.fallbacks else "")
        )
    return plans


def _bars_stream(context: AssetExecutionContext, load: RunLoad, ticker_days: int) -> Iterator[pa.Table]:
    """The load's bars, day by day, logging progress every 25 ticker-days."""
    with failing_fast():
        for index, bars in enumerate(load, 1):
            if index % 25 == 0 or index == ticker_days:
                context.log.info(f"{index}/{ticker_days} ticker-days: {load.figures.trades:,} trades")
            yield bars


FROM_FALLBACK = "built_from_fallback"
FROM_FALLBACK_DESCRIPTION = (
    "Ticker-days built from the fallback dataset (aggTrades) rather than their trades archive, and why: "
    "no trades archive, a broken one (every row is_buyer_maker=true) or a partial one (fewer trades than "
    "Binance's klines). The rows are right; the trades archive is not."
)


def _fallback_check(key: AssetKey, load: RunLoad) -> AssetCheckResult:
    """WARN naming each day of the run built from the fallback dataset, and why."""
    failures = fallback_days(load)
    totals = {"days_from_fallback": len(failures)}
    outcome = CheckOutcome(passed=not failures, failures=failures[:LIMIT], totals=totals)
    return _check_result(key, FROM_FALLBACK, outcome, AssetCheckSeverity.WARN)


def _add_partition_metadata(
    context: AssetExecutionContext, key: AssetKey, metadata: Iterable[tuple[str, Mapping[str, Any]]]
) -> None:
    """Give each of the run's partitions its own metadata, as `context.add_asset_metadata(partition_key=)`
    does after it checks the key. That check lists every key of the run's range, with an instance query
    per dynamic key (dagster 1.13.27, StepExecutionContext.add_asset_metadata): quadratic in the run's
    days, about 13 ms a day in a 365-day run and 40 ms in a 1096-day one. Our keys are the run's own days
    (partition_range.py), so they go to the step's metadata accumulator directly."""
    step = context.op_execution_context._step_execution_context
    accumulator = step._metadata_accumulator
    for partition, figures in metadata:
        accumulator = accumulator.with_additional_asset_metadata(
            asset_key=key, partition_key=partition, metadata=figures
        )
    step._metadata_accumulator = accumulator


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
