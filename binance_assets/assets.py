"""Per-market assets: one op downloads and resamples a run's ticker-days into hl5s_bars + daily_liquidity.

Thin wiring: the run's partitions become (ticker, days); `plan.py` picks archives, `pipeline.py`
downloads and aggregates them, the ClickHouse IO manager writes the streamed days, the archives read
go to the ledger (`ledger.py`), and checks verify the stored rows of the run: ours (ERROR), the
archives' (WARN) and against Binance's own klines (ERROR, `klines_check.py`).
"""

import datetime as dt
import time
from collections.abc import Iterator
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

from binance_assets.checks import (
    LIMIT,
    CheckOutcome,
    RunSlice,
    bars_well_formed,
    day_coverage,
    liquidity_matches_bars,
    sane_trades,
    trade_ids_continuous,
)
from binance_assets.clickhouse.resource import ClickHouseResource
from binance_assets.clickhouse.tables import LIQUIDITY_TABLE
from binance_assets.failures import permanent_failure
from binance_assets.fallback import Fallback
from binance_assets.klines_check import day_counts, kline_sources, load_klines, matches_binance_klines
from binance_assets.ledger import write_ledger
from binance_assets.markets import DatasetName, Market
from binance_assets.partition_range import asset_run_days
from binance_assets.pipeline import LoadStats, load_days
from binance_assets.plan import ArchiveLister, TickerPlan, plan_tickers
from binance_assets.resources import VisionResource
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
    missing, broken or partial day is built from (fallback.py).
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
        stats = LoadStats()
        liquidity_rows: list[dict[str, Any]] = []
        rebuild = None
        if fallback and klines is not None:
            rebuild = Fallback(fallback, lambda ticker: archives(ticker, fallback), day_counts(klines))
        loads = load_days(market, plans, downloader, stats, fallback=rebuild)

        def bars_per_day() -> Iterator[pa.Table]:
            with failing_fast():
                for index, load in enumerate(loads, 1):
                    liquidity_rows.append(load.liquidity)
                    if index % 25 == 0 or index == ticker_days:
                        context.log.info(f"{index}/{ticker_days} ticker-days: {stats.trades:,} trades")
                    yield load.bars

        started = time.monotonic()
        yield Output(bars_per_day(), output_name=BARS)
        liquidity = pa.Table.from_pylist(liquidity_rows, schema=LIQUIDITY_TABLE.schema)
        keys = {archive["sha256"]: archive["key"] for archive in stats.archives}
        for row in liquidity_rows:  # each partition's own figures, so the UI plots liquidity per day
            partition = MultiPartitionKey({"date": row["day"].isoformat(), "ticker": row["ticker"]})
            context.add_asset_metadata(
                _day_metadata(row, keys), asset_key=liquidity_key, partition_key=partition
            )
        yield Output(liquidity, output_name=LIQUIDITY, metadata=_metadata(stats, liquidity, plans, started))
        run = RunSlice(
            market.key, tuple(days_by_ticker), tuple(sorted({d for v in days_by_ticker.values() for d in v}))
        )
        yield from _checks(market, clickhouse, run, stats)
        yield _fallback_check(liquidity_key, stats)
        if kline_check and klines is not None:
            with clickhouse.open() as store:
                outcome = matches_binance_klines(store, market.key, klines)
            yield _check_result(bars_key, MATCHES_KLINES, outcome)

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


def _day_metadata(row: dict[str, Any], archive_keys: dict[str, str]) -> dict[str, Any]:
    """One ticker-day's figures, on its own partition's materialisation."""
    return {
        "trade_count": int(row["trade_count"]),
        "volume": float(row["volume"]),
        "quote_volume": float(row["quote_volume"]),
        "bar_count": int(row["bar_count"]),
        "missing_trade_ids": int(row["missing_trade_ids"]),
        "source": row["source"],
        "dataset": row["dataset"],
        "archive": archive_keys.get(row["archive_sha256"], "none"),
        "archive_sha256": row["archive_sha256"] or "none",
    }


def _metadata(
    stats: LoadStats, liquidity: pa.Table, plans: list[TickerPlan], started: float
) -> dict[str, Any]:
    """The run's totals (every partition of the run carries them, beside its own day's figures)."""
    sources = liquidity.column("source").to_pylist()
    return {
        "run_trade_count": stats.trades,
        "run_bar_count": stats.bars,
        "run_volume": float(sum(liquidity.column("volume").to_pylist())),
        "run_quote_volume": float(sum(liquidity.column("quote_volume").to_pylist())),
        "run_ticker_days": stats.days,
        "run_days_from_daily": sources.count("daily"),
        "run_days_from_monthly": sources.count("monthly"),
        "run_days_without_archive": sources.count("none"),
        "run_days_from_fallback": len(stats.fallbacks),
        "fallback_days": MetadataValue.json(
            [{**row, "day": row["day"].isoformat()} for row in stats.fallbacks]
        ),
        "archives": MetadataValue.md(_archives_table(stats.archives)) if stats.archives else "none",
        "bytes_downloaded": stats.downloaded_bytes,
        "seconds_download": round(stats.download_seconds, 3),
        "seconds_aggregate": round(stats.aggregate_seconds, 3),
        "seconds_total": round(time.monotonic() - started, 3),
        "tickers": MetadataValue.json(sorted(p.ticker for p in plans)),
    }


def _archives_table(archives: list[dict[str, Any]]) -> str:
    lines = ["| key | freq | bytes | sha256 |", "|---|---|---|---|"]
    lines += [f"| {a['key']} | {a['freq']} | {a['size']} | `{a['sha256']}` |" for a in archives]
    return "\n".join(lines)


FROM_FALLBACK = "built_from_fallback"
FROM_FALLBACK_DESCRIPTION = (
    "Ticker-days built from the fallback dataset (aggTrades) rather than their trades archive, and why: "
    "no trades archive, a broken one (every row is_buyer_maker=true) or a partial one (fewer trades than "
    "Binance's klines). The rows are right; the trades archive is not."
)


def _fallback_check(key: AssetKey, stats: LoadStats) -> AssetCheckResult:
    """WARN naming each day of the run built from the fallback dataset, and why."""
    failures = [{**row, "day": row["day"].isoformat()} for row in stats.fallbacks]
    totals = {"days_from_fallback": len(failures)}
    outcome = CheckOutcome(passed=not failures, failures=failures[:LIMIT], totals=totals)
    return _check_result(key, FROM_FALLBACK, outcome, AssetCheckSeverity.WARN)


def _checks(
    market: Market, clickhouse: ClickHouseResource, run: RunSlice, stats: LoadStats
) -> Iterator[AssetCheckResult]:
    """Record the run's archives in the ledger (its bars and liquidity are in), then check the rows."""
    with clickhouse.open() as store:
        write_ledger(store, stats.archives)
        errors = {
            (BARS, WELL_FORMED): bars_well_formed(store, run),
            (LIQUIDITY, MATCHES_BARS): liquidity_matches_bars(store, run),
        }
        warnings = {
            (LIQUIDITY, IDS_CONTINUOUS): trade_ids_continuous(store, run),
            (BARS, DAY_COVERAGE): day_coverage(store, run),
            (LIQUIDITY, SANE_TRADES): sane_trades(store, run),
        }
    for severity, outcomes in ((AssetCheckSeverity.ERROR, errors), (AssetCheckSeverity.WARN, warnings)):
        for (asset, name), outcome in outcomes.items():
            yield _check_result(asset_key(market, asset), name, outcome, severity)


def _check_result(
    key: AssetKey, name: str, outcome: CheckOutcome, severity: AssetCheckSeverity = AssetCheckSeverity.ERROR
) -> AssetCheckResult:
    metadata: dict[str, Any] = {**outcome.totals, "failing_ticker_days": MetadataValue.json(outcome.failures)}
    if outcome.failures:
        metadata["first_failure"] = outcome.first_failure
    metadata.update({detail: MetadataValue.json(value) for detail, value in outcome.details.items()})
    return AssetCheckResult(
        asset_key=key, check_name=name, passed=outcome.passed, severity=severity, metadata=metadata
    )
