"""The one place that wires assets, checks, sensors, resources and the IO manager together."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

from dagster import AssetsDefinition, Definitions, EnvVar, definitions, in_process_executor

from binance_assets.clickhouse.client import without_password
from binance_assets.clickhouse.io_manager import ClickHouseIOManager
from binance_assets.clickhouse.resource import ClickHouseResource
from binance_assets.markets import MARKETS, Market
from binance_assets.orchestration.assets import build_market_assets, retry_policy
from binance_assets.orchestration.backfill_job import build_backfill_job
from binance_assets.orchestration.sensors import (
    build_daily_sensor,
    build_republished_sensor,
    build_ticker_sensor,
)
from binance_assets.processes import freeze_at_exit
from binance_assets.settings import Settings, apply_dagster_tuning, load_settings


def _clickhouse_connection(settings: Settings) -> dict[str, str | EnvVar]:
    """The store's url (and password): a password is handed to Dagster as an EnvVar, never as a value, so
    it lands in no config. CLICKHOUSE_URL set in the process environment: its EnvVar. A server URL built
    from run.py's CLICKHOUSE_HOST ... settings: that URL without its password, and
    EnvVar("CLICKHOUSE_PASSWORD")."""
    if settings.process_variable("CLICKHOUSE_URL"):
        return {"url": EnvVar("CLICKHOUSE_URL")}
    if urlparse(settings.clickhouse_url).password is not None and settings.process_variable(
        "CLICKHOUSE_PASSWORD"
    ):
        return {"url": without_password(settings.clickhouse_url), "password": EnvVar("CLICKHOUSE_PASSWORD")}
    return {"url": settings.clickhouse_url}


def build_resources(settings: Settings) -> dict[str, Any]:
    """The resources of the code location; the CLI materialises in-process with the same ones."""
    clickhouse = ClickHouseResource.of(settings.store, **_clickhouse_connection(settings))
    return {
        "clickhouse_io_manager": ClickHouseIOManager(clickhouse=clickhouse),
        "clickhouse": clickhouse,
        "vision": settings.vision,
    }


def market_assets(market: Market, settings: Settings, *, retries: bool = True) -> AssetsDefinition:
    """The market's multi_asset as the settings configure it; without ``retries``, no RetryPolicy."""
    return build_market_assets(
        market,
        settings.max_days_per_run,
        retry_policy(settings.retry_delay) if retries else None,
        kline_check=settings.kline_check,
        freshness_deadline=settings.freshness_deadline,
        dataset=settings.dataset,
        fallback=settings.fallback_dataset,
    )


def build_definitions(settings: Settings) -> Definitions:
    markets = [MARKETS[key] for key in settings.markets]
    assets = [market_assets(market, settings) for market in markets]
    return Definitions(
        assets=assets,
        jobs=[build_backfill_job(market, defn) for market, defn in zip(markets, assets, strict=True)],
        sensors=[
            *(build_ticker_sensor(market, settings) for market in markets),
            *(build_daily_sensor(market, settings, settings.publish_grace_days) for market in markets),
            *(build_republished_sensor(market, settings) for market in markets),
        ],
        resources=build_resources(settings),
        # One op per run: executing it in the run worker saves a process start per run, and its retry
        # waits sleep (the multiprocess executor busy-waits on RetryPolicy delays).
        executor=in_process_executor,
    )


@definitions
def defs() -> Definitions:
    apply_dagster_tuning()  # the code server's run workers inherit it
    freeze_at_exit()  # a run worker's exit: 0.07 s instead of 0.7 (processes.py)
    return build_definitions(load_settings())
