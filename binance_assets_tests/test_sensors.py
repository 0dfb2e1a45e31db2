"""Ticker discovery and daily materialisation sensors on a real instance, fake Vision and chDB."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
from dagster import DagsterInstance, SensorResult, build_sensor_context

from binance_assets.clickhouse.resource import ClickHouseResource
from binance_assets.clickhouse.tables import LIQUIDITY_TABLE
from binance_assets.markets import MARKETS
from binance_assets.orchestration.partition_range import RANGE_END, RANGE_START
from binance_assets.orchestration.resources import VisionResource
from binance_assets.orchestration.sensors import (
    build_daily_sensor,
    build_ticker_sensor,
    due_days,
)
from binance_assets.settings import Settings
from binance_assets_tests.archives import publish
from binance_assets_tests.vision_server import VisionServer

UM = MARKETS["um"]
DAYS = [dt.date(2024, 1, 30), dt.date(2024, 1, 31), dt.date(2024, 2, 1)]


def tick(
    sensor: object, instance: DagsterInstance, resources: dict[str, object], cursor: str | None
) -> SensorResult:
    context = build_sensor_context(instance=instance, resources=resources, cursor=cursor)
    result = sensor(context)  # type: ignore[operator]
    assert isinstance(result, SensorResult)
    for request in result.dynamic_partitions_requests or []:  # what the sensor daemon does
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result


def test_ticker_sensor_adds_new_filtered_tickers_once(
    vision_server: VisionServer, bare_instance: DagsterInstance, tmp_path: Path
) -> None:
    for ticker in ("BTCUSDT", "ETHUSDT", "BTCBUSD"):
        publish(vision_server.root, "um", ticker, DAYS, trades_per_day=10)
    resources = {
        "vision": VisionResource(
            vision_url=vision_server.url, listing_url=vision_server.url, cache_dir=str(tmp_path)
        )
    }
    sensor = build_ticker_sensor(UM, Settings())

    first = tick(sensor, bare_instance, resources, None)
    assert list(first.dynamic_partitions_requests[0].partition_keys) == ["BTCUSDT", "ETHUSDT"]
    assert first.run_requests == []  # BINANCE_AUTO_BACKFILL is off
    second = tick(sensor, bare_instance, resources, first.cursor)
    assert not second.dynamic_partitions_requests and not second.run_requests

    publish(vision_server.root, "um", "SOLUSDT", DAYS, trades_per_day=10)
    third = tick(sensor, bare_instance, resources, second.cursor)
    assert list(third.dynamic_partitions_requests[0].partition_keys) == ["SOLUSDT"]
    assert bare_instance.get_dynamic_partitions(UM.tickers_partition_name) == [
        "BTCUSDT",
        "ETHUSDT",
        "SOLUSDT",
    ]


def test_ticker_sensor_backfills_new_tickers_history_in_month_ranges(
    vision_server: VisionServer, bare_instance: DagsterInstance, tmp_path: Path
) -> None:
    publish(vision_server.root, "um", "BTCUSDT", DAYS, trades_per_day=10)
    resources = {
        "vision": VisionResource(
            vision_url=vision_server.url, listing_url=vision_server.url, cache_dir=str(tmp_path)
        )
    }
    sensor = build_ticker_sensor(UM, Settings(auto_backfill=True, tickers=("BTCUSDT",)))
    result = tick(sensor, bare_instance, resources, None)
    ranges = [(r.tags[RANGE_START], r.tags[RANGE_END]) for r in result.run_requests]
    assert ranges == [("2024-01-30|BTCUSDT", "2024-02-01|BTCUSDT")]  # only days with archives, one run
    assert result.run_requests[0].tags["binance/market"] == "um"
    assert result.run_requests[0].run_key == "new-ticker:BTCUSDT:2024-01-30:2024-02-01"


def test_due_days_wait_for_the_publish_time() -> None:
    morning = dt.datetime(2024, 3, 10, 8, 59, tzinfo=dt.UTC)
    assert due_days(morning, dt.time(9), 3, UM.first_day) == [
        dt.date(2024, 3, 6),
        dt.date(2024, 3, 7),
        dt.date(2024, 3, 8),
    ]
    assert due_days(morning + dt.timedelta(minutes=1), dt.time(9), 1, UM.first_day) == [dt.date(2024, 3, 9)]
    assert due_days(morning, dt.time(9), 3, dt.date(2024, 3, 8)) == [dt.date(2024, 3, 8)]


def test_daily_sensor_requests_missing_ticker_days_and_waits_before_retrying(
    bare_instance: DagsterInstance, tmp_path: Path
) -> None:
    bare_instance.add_dynamic_partitions(UM.tickers_partition_name, ["BTCUSDT", "ETHUSDT"])
    clickhouse = ClickHouseResource(url=f"chdb://{tmp_path / 'clickhouse'}")
    settings = Settings(daily_run_time="00:00")
    window = due_days(dt.datetime.now(dt.UTC), dt.time(0), 3, UM.first_day)
    loaded = [{"ticker": "BTCUSDT", "day": day, "source": "daily"} for day in window[:-1]]
    loaded.append({"ticker": "ETHUSDT", "day": window[0], "source": "none"})
    with clickhouse.open() as store:
        store.client.insert_arrow("binance.daily_liquidity", liquidity_rows(loaded))
    sensor = build_daily_sensor(UM, settings, lookback_days=3)

    first = tick(sensor, bare_instance, {"clickhouse": clickhouse}, None)
    ranges = sorted((r.tags[RANGE_START], r.tags[RANGE_END]) for r in first.run_requests)
    newest = window[-1].isoformat()
    assert ranges == sorted(
        [
            (f"{newest}|BTCUSDT", f"{newest}|BTCUSDT"),
            (f"{window[1].isoformat()}|ETHUSDT", f"{newest}|ETHUSDT"),
        ]
    )
    again = tick(sensor, bare_instance, {"clickhouse": clickhouse}, first.cursor)
    assert again.run_requests == []  # requested minutes ago: wait RETRY_AFTER


def liquidity_rows(rows: list[dict[str, object]]) -> pa.Table:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    full = [
        {
            "market": "um", "trade_count": 0, "volume": 0.0, "quote_volume": 0.0, "taker_buy_volume": 0.0,
            "bar_count": 0, "first_trade_id": 0, "last_trade_id": 0, "missing_trade_ids": 0,
            "archive_sha256": "", "loaded_at": now, "duplicate_rows": 0, "nonpositive_rows": 0,
            "dataset": "trades", "uncovered_trade_ids": 0, "uncovered_id_ranges": "", **row,
        }
        for row in rows
    ]  # fmt: skip
    return pa.Table.from_pylist(full, schema=LIQUIDITY_TABLE.schema)
