"""A run's days per ticker from its key range equal Dagster's own enumeration of the range."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence

import pytest
from dagster import DagsterInstance, PartitionKeyRange, partition_loading_context

from binance_assets.markets import MARKETS
from binance_assets.orchestration.assets import market_partitions
from binance_assets.orchestration.partition_range import days_of_range

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
