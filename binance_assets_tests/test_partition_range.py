"""A run's days per ticker from its key range equal Dagster's own enumeration of the range; the range a run's
tags name reads back."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence

import pytest
from dagster import DagsterInstance, PartitionKeyRange, partition_loading_context

from binance_assets.markets import MARKETS
from binance_assets.orchestration.assets import market_partitions
from binance_assets.orchestration.partition_range import days_of_range, range_tags, run_tags, tagged_range

PARTITIONS = market_partitions(MARKETS["um"])


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(MARKETS["um"].tickers_partition_name, ["BTCUSDT", "ETHUSDT"])
        yield instance


@pytest.mark.parametrize(
    ("first", "last", "enumerates", "sizes"),
    [
        ("2024-01-30|BTCUSDT", "2024-03-02|BTCUSDT", False, {"BTCUSDT": 33}),  # 2024 is a leap year
        ("2024-01-01|BTCUSDT", "2024-01-03|ETHUSDT", True, {"BTCUSDT": 3, "ETHUSDT": 3}),
    ],
)
def test_days_of_a_range_enumerate_only_a_range_across_tickers(
    instance: DagsterInstance, first: str, last: str, enumerates: bool, sizes: dict[str, int]
) -> None:
    key_range = PartitionKeyRange(first, last)
    calls = []

    def enumerate_keys() -> Sequence[str]:
        calls.append(key_range)
        with partition_loading_context(dynamic_partitions_store=instance):
            return PARTITIONS.get_partition_keys_in_range(key_range)

    expected: dict[str, list[dt.date]] = {}
    for key in enumerate_keys():
        by_dim = key.keys_by_dimension
        expected.setdefault(by_dim["ticker"], []).append(dt.date.fromisoformat(by_dim["date"]))
    calls.clear()
    assert days_of_range(PARTITIONS, key_range, "date", "ticker", enumerate_keys) == expected
    assert bool(calls) == enumerates
    assert {ticker: len(days) for ticker, days in expected.items()} == sizes


def test_a_runs_tags_name_its_range_market_and_reason_and_read_back() -> None:
    tags = range_tags(MARKETS["um"], "BTCUSDT", dt.date(2024, 1, 30), dt.date(2024, 3, 2), "daily")
    assert tags == {
        "dagster/asset_partition_range_start": "2024-01-30|BTCUSDT",
        "dagster/asset_partition_range_end": "2024-03-02|BTCUSDT",
        "binance/market": "um",
        "binance/reason": "daily",
    }
    assert tagged_range(tags) == ("2024-01-30|BTCUSDT", "2024-03-02|BTCUSDT")
    one_partition = {"dagster/partition": "2024-01-30|BTCUSDT", **run_tags(MARKETS["um"], "cli")}
    assert tagged_range(one_partition) == ("2024-01-30|BTCUSDT", "2024-01-30|BTCUSDT")
