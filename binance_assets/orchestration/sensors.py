"""Sensors per market: discover new tickers on Vision, materialise each new day (with catch-up), and
re-materialise the days of archives Binance republished.

All request only ticker-days that have (or will have) archives, in runs of consecutive days cut by
`plan.run_ranges`, so a whole market stays thousands of runs (docs/design.md "Dagster at full-market scale").
"""

import bisect
import datetime as dt
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from dagster import (
    DefaultSensorStatus,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from binance_assets.clickhouse.resource import ClickHouseResource
from binance_assets.clickhouse.store import OpenStore
from binance_assets.clickhouse.tables import LIQUIDITY_TABLE
from binance_assets.markets import Market
from binance_assets.orchestration.assets import market_asset_keys, tickers_partitions
from binance_assets.orchestration.partition_range import range_tags
from binance_assets.orchestration.resources import VisionResource
from binance_assets.plan import run_ranges
from binance_assets.settings import Settings
from binance_assets.trust.ledger import Republished, read_broken_days, read_ledger, republished

RETRY_AFTER = dt.timedelta(hours=6)
"""A ticker-day still missing is requested again at most this often (late archives:
docs/vision-format.md section 5)."""
ARCHIVE_TAG = "binance/archive"
REPUBLISHED_TICK_SECONDS = 600
REPUBLISHED_TICKERS_PER_TICK = 10
"""Tickers re-listed per tick of the republished-archives sensor: 144 ticks a day x 10 = 1,440 tickers a
day, so a market of 600 tickers is re-checked more than twice a day, each tick listing 10 tickers'
daily and monthly folders (about 30 listing pages) and reading the ledger in one query."""


def range_run_request(
    market: Market,
    ticker: str,
    first: dt.date,
    last: dt.date,
    reason: str,
    run_key: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> RunRequest:
    """One run over consecutive days of one ticker (partition_range.range_tags), of both assets."""
    return RunRequest(
        run_key=run_key,
        asset_selection=market_asset_keys(market),
        tags={**range_tags(market, ticker, first, last, reason), **(tags or {})},
    )


def _market_sensor(
    market: Market, name: str, seconds: int, status: DefaultSensorStatus, description: str
) -> Callable[[Callable[..., Any]], SensorDefinition]:
    """The decorator of the market's sensor ``<market>_<name>``, ticking at most every ``seconds``."""
    return sensor(
        name=f"{market.key}_{name}",
        minimum_interval_seconds=seconds,
        target=market_asset_keys(market),
        default_status=status,
        description=description,
    )


def history_requests(
    market: Market, ticker: str, days: Iterable[dt.date], max_days: int, reason: str
) -> list[RunRequest]:
    return [
        range_run_request(market, ticker, first, last, reason, run_key=f"{reason}:{ticker}:{first}:{last}")
        for first, last in run_ranges(days, max_days)
    ]


def build_ticker_sensor(market: Market, settings: Settings) -> SensorDefinition:
    """``<market>_ticker_sensor``: add newly listed (and wanted) tickers to the market's partitions."""
    partitions = tickers_partitions(market)

    @_market_sensor(
        market,
        "ticker_sensor",
        3600,
        DefaultSensorStatus.RUNNING,
        f"Adds new {market.key} tickers listed on Binance Vision (TICKER_FILTER / TICKERS)"
        + (" and backfills their history" if settings.auto_backfill else ""),
    )
    def ticker_sensor(context: SensorEvaluationContext, vision: VisionResource) -> SensorResult:
        listing = vision.listing()
        wanted = [t for t in listing.list_tickers(market, context.log.warning) if settings.wants_ticker(t)]
        digest = hashlib.sha256("\n".join(wanted).encode()).hexdigest()
        if digest == context.cursor:
            return SensorResult(skip_reason=SkipReason(f"{len(wanted)} tickers, none new"), cursor=digest)
        known = set(context.instance.get_dynamic_partitions(partitions.name))
        new = [t for t in wanted if t not in known]
        requests: list[RunRequest] = []
        if settings.auto_backfill:
            for ticker in new:
                listed = listing.list_trades_archives(market, ticker, dataset=settings.dataset)
                days = {d for archive in listed for d in archive.days()}
                days = {d for d in days if d < _today()}
                requests += history_requests(market, ticker, days, settings.max_days_per_run, "new-ticker")
        context.log.info(f"{market.key}: {len(wanted)} tickers wanted, {len(new)} new: {', '.join(new[:20])}")
        return SensorResult(
            run_requests=requests,
            dynamic_partitions_requests=[partitions.build_add_request(new)] if new else [],
            cursor=digest,
        )

    return ticker_sensor


def build_daily_sensor(market: Market, settings: Settings, lookback_days: int) -> SensorDefinition:
    """``<market>_daily_sensor``: after Binance's publish time, each registered ticker's newest days.

    A ticker-day counts as done when its daily_liquidity row exists (rows with ``source = 'none'``
    included), so a day that failed or was published late is requested again, every ``RETRY_AFTER``,
    for ``lookback_days``.
    """
    partitions = tickers_partitions(market)
    publish_at = dt.time.fromisoformat(settings.daily_run_time)

    @_market_sensor(
        market,
        "daily_sensor",
        900,
        # Off until turned on in the UI: with the default TICKER_FILTER it keeps ~600 tickers per market
        # up to date, gigabytes a day, which nobody should get from merely starting `dagster dev`.
        DefaultSensorStatus.STOPPED,
        f"Materialises each new {market.key} day after {settings.daily_run_time} UTC, "
        f"re-trying late archives for {lookback_days} days",
    )
    def daily_sensor(
        context: SensorEvaluationContext, clickhouse: ClickHouseResource
    ) -> SensorResult | SkipReason:
        now = dt.datetime.now(dt.UTC)
        days = due_days(now, publish_at, lookback_days, market.first_day)
        tickers = context.instance.get_dynamic_partitions(partitions.name)
        if not days or not tickers:
            return SkipReason("no ticker registered yet" if not tickers else "nothing due yet")
        with clickhouse.open() as store:
            done = loaded_ticker_days(store, market, tickers, days)
        requested: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
        requests, requested = daily_requests(market, tickers, days, done, requested, now, settings)
        return SensorResult(run_requests=requests, cursor=json.dumps(requested, sort_keys=True))

    return daily_sensor


def due_days(now: dt.datetime, publish_at: dt.time, lookback_days: int, first_day: dt.date) -> list[dt.date]:
    """Days whose archives should exist by ``now``: yesterday once past the publish time, and before."""
    newest = now.date() - dt.timedelta(days=1 if now.time() >= publish_at else 2)
    days = [newest - dt.timedelta(days=i) for i in range(lookback_days)]
    return sorted(d for d in days if d >= first_day)


def loaded_ticker_days(
    store: OpenStore, market: Market, tickers: Sequence[str], days: Sequence[dt.date]
) -> set[tuple[str, dt.date]]:
    sql = (
        f"SELECT DISTINCT ticker, day FROM {store.qualified(LIQUIDITY_TABLE)} "
        "WHERE market = {market:String} AND ticker IN {tickers:Array(String)} AND day IN {days:Array(Date)}"
    )
    parameters = {"market": market.key, "tickers": list(tickers), "days": list(days)}
    return {(ticker, day) for ticker, day in store.client.query(sql, parameters=parameters).result_rows}


def daily_requests(
    market: Market,
    tickers: Sequence[str],
    days: Sequence[dt.date],
    done: set[tuple[str, dt.date]],
    requested: dict[str, str],
    now: dt.datetime,
    settings: Settings,
) -> tuple[list[RunRequest], dict[str, str]]:
    """Run requests for missing ticker-days not requested within RETRY_AFTER; the updated cursor."""
    window = {f"{day}|{ticker}" for ticker in tickers for day in days if (ticker, day) not in done}
    kept = {key: at for key, at in requested.items() if key in window}
    requests: list[RunRequest] = []
    for ticker in tickers:
        missing = [
            d
            for d in days
            if (ticker, d) not in done
            and now - dt.datetime.fromisoformat(kept.get(f"{d}|{ticker}", "1970-01-01T00:00:00+00:00"))
            >= RETRY_AFTER
        ]
        for first, last in run_ranges(missing, settings.max_days_per_run):
            requests.append(range_run_request(market, ticker, first, last, "daily"))
        kept.update({f"{d}|{ticker}": now.isoformat() for d in missing})
    return requests, kept


def build_republished_sensor(market: Market, settings: Settings) -> SensorDefinition:
    """``<market>_republished_archives_sensor``: re-list the archives of a few registered tickers per
    tick (rotating, cursor = last ticker checked) and compare size / ETag / LastModified with the
    archive ledger; a changed archive re-materialises exactly the ticker-days it fed. With a fallback
    dataset, days loaded from a broken trades archive (trust/fallback.py) are materialised again too, once a
    day: the run builds them from aggTrades."""
    partitions = tickers_partitions(market)

    @_market_sensor(
        market,
        "republished_archives_sensor",
        REPUBLISHED_TICK_SECONDS,
        DefaultSensorStatus.RUNNING,
        f"Re-lists {market.key} archives already loaded ({REPUBLISHED_TICKERS_PER_TICK} tickers per tick) "
        "and re-materialises the days of those Binance republished",
    )
    def republished_sensor(
        context: SensorEvaluationContext, vision: VisionResource, clickhouse: ClickHouseResource
    ) -> SensorResult | SkipReason:
        tickers = sorted(context.instance.get_dynamic_partitions(partitions.name))
        if not tickers:
            return SkipReason("no ticker registered yet")
        batch = rotate(tickers, context.cursor, REPUBLISHED_TICKERS_PER_TICK)
        with clickhouse.open() as store:
            ledger = read_ledger(store, market.key, batch)
            broken = read_broken_days(store, market.key, batch) if settings.fallback_dataset else {}
        listing = vision.listing()
        datasets = {(entry.ticker, entry.dataset) for entry in ledger}
        listed = [
            archive
            for ticker, dataset in sorted(datasets)
            for archive in listing.list_trades_archives(market, ticker, dataset=dataset)
        ]
        changes = republished(listed, ledger)
        for change in changes:
            context.log.info(f"{market.key} {change.listed.key} republished: {'; '.join(change.changes)}")
        today = _today()
        requests = republished_requests(market, changes, settings.max_days_per_run, today)
        for ticker, days in broken.items():
            context.log.info(f"{market.key} {ticker}: {len(days)} days loaded from a broken trades archive")
            for first, last in run_ranges(days, settings.max_days_per_run):
                run_key = f"broken:{ticker}:{today}:{first}:{last}"
                requests.append(range_run_request(market, ticker, first, last, "broken_trades", run_key))
        return SensorResult(run_requests=requests, cursor=batch[-1])

    return republished_sensor


def rotate(tickers: Sequence[str], after: str | None, size: int) -> list[str]:
    """The next ``size`` sorted tickers after ``after`` (the previous tick's last), wrapping around."""
    start = bisect.bisect_right(tickers, after) if after else 0
    ordered = [*tickers[start:], *tickers[:start]]
    return ordered[:size]


def republished_requests(
    market: Market, changes: Sequence[Republished], max_days: int, today: dt.date
) -> list[RunRequest]:
    """Runs re-materialising the days each changed archive fed, tagged with the reason and the key.

    The run key holds the new ETag and the day: the same change is requested at most once a day, so a
    failed re-run is tried again on a later day while the ledger still holds the old listing.
    """
    requests = []
    for change in changes:
        ticker, key, etag = change.loaded.ticker, change.loaded.key, change.listed.etag
        for first, last in run_ranges(change.loaded.days, max_days):
            run_key = f"republished:{key}:{etag}:{today}:{first}:{last}"
            requests.append(
                range_run_request(market, ticker, first, last, "republished", run_key, {ARCHIVE_TAG: key})
            )
    return requests


def _today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()
