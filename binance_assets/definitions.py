"""The one place that wires assets, checks, sensors, resources and the IO manager together."""

from __future__ import annotations

import os
from typing import Any

from dagster import Definitions, EnvVar, definitions, in_process_executor

from binance_assets.assets import build_market_assets
from binance_assets.clickhouse.io_manager import ClickHouseIOManager
from binance_assets.markets import MARKETS
from binance_assets.resources import ClickHouseResource, VisionResource
from binance_assets.sensors import build_daily_sensor, build_ticker_sensor
from binance_assets.settings import Settings, load_settings


def _clickhouse_url(settings: Settings) -> str | EnvVar:
    """The URL may carry a password: hand Dagster the EnvVar when it is set, so it never lands in config."""
    return (
        EnvVar("CLICKHOUSE_URL") if os.environ.get("CLICKHOUSE_URL", "").strip() else settings.clickhouse_url
    )


def build_resources(settings: Settings) -> dict[str, Any]:
    """The resources of the code location; the CLI materialises in-process with the same ones."""
    store = {
        "url": _clickhouse_url(settings),
        "database": settings.clickhouse_database,
        "bars_table": settings.bars_table,
        "liquidity_table": settings.liquidity_table,
    }
    return {
        "clickhouse_io_manager": ClickHouseIOManager(**store),
        "clickhouse": ClickHouseResource(**store),
        "vision": VisionResource(
            vision_url=settings.vision_url,
            listing_url=settings.listing_url,
            cache_dir=str(settings.cache_dir),
            cache_max_gb=settings.cache_max_gb,
            download_concurrency=settings.download_concurrency,
            publish_grace_days=settings.publish_grace_days,
        ),
    }


def build_definitions(settings: Settings) -> Definitions:
    markets = [MARKETS[key] for key in settings.markets]
    return Definitions(
        assets=[build_market_assets(market, settings.max_days_per_run) for market in markets],
        sensors=[
            *(build_ticker_sensor(market, settings) for market in markets),
            *(build_daily_sensor(market, settings, settings.publish_grace_days) for market in markets),
        ],
        resources=build_resources(settings),
        # One op per run: executing it in the run worker saves a process start per run, and its retry
        # waits sleep (the multiprocess executor busy-waits on RetryPolicy delays).
        executor=in_process_executor,
    )


@definitions
def defs() -> Definitions:
    return build_definitions(load_settings())
