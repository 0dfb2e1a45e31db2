"""A run's days per ticker from its partition key range, without enumerating the range's keys.

A run here is one ticker over consecutive days: a `MultiPartitionKey` range such as
``2024-01-01|BTCUSDT .. 2024-12-31|BTCUSDT``. Dagster's `partition_keys` / `asset_partition_keys`
enumerate such a range through the dynamic `ticker` dimension, which looks the ticker up in the instance
(two queries, and every ticker of the market when the range's tickers differ) on each call; the asset
and the IO manager asked several times per run, some of them once per ticker-day. The daily dimension
needs no instance, so a one-ticker range costs nothing; a range across tickers (never made by our CLI,
sensors or BackfillPolicy) falls back to Dagster's enumeration.

A run we request names its range in its tags (`range_tags`, for the sensors' run requests and the CLI's
runs alike), read back by `tagged_range`; every run and backfill we request also names its market and
why (`run_tags`).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence

from dagster import (
    AssetExecutionContext,
    MultiPartitionKey,
    MultiPartitionsDefinition,
    PartitionKeyRange,
    TimeWindowPartitionsDefinition,
)

from binance_assets.markets import Market
from binance_assets.orchestration.dagster_internals import PARTITION_NAME_TAG

RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"
MARKET_TAG = "binance/market"
"""dagster.yaml limits the runs in progress per value of this tag."""
REASON_TAG = "binance/reason"
"""Who asked for the run: a sensor's reason, `cli` or `backfill_job`."""


def run_tags(market: Market, reason: str) -> dict[str, str]:
    """The tags of every run and backfill we request: its market and why."""
    return {MARKET_TAG: market.key, REASON_TAG: reason}


def range_tags(market: Market, ticker: str, first: dt.date, last: dt.date, reason: str) -> dict[str, str]:
    """The tags of one run over consecutive days of one ticker (the shape BackfillPolicy.multi_run gives
    backfills): its partition key range, first and last day inclusive, and `run_tags`."""
    return {
        RANGE_START: f"{first.isoformat()}|{ticker}",
        RANGE_END: f"{last.isoformat()}|{ticker}",
        **run_tags(market, reason),
    }


def tagged_range(tags: Mapping[str, str]) -> tuple[str, str]:
    """The first and last partition key of a run, from its tags: its range (`range_tags`, or a backfill's
    ranged run), else its one partition."""
    if RANGE_START in tags:
        return tags[RANGE_START], tags[RANGE_END]
    return tags[PARTITION_NAME_TAG], tags[PARTITION_NAME_TAG]


def days_of_range(
    partitions_def: MultiPartitionsDefinition,
    key_range: PartitionKeyRange,
    day_dim: str,
    ticker_dim: str,
    enumerate_keys: Callable[[], Sequence[str]],
) -> dict[str, list[dt.date]]:
    """Sorted days per ticker (tickers sorted) of the run's range; ``enumerate_keys`` (the context's own
    enumeration) is called only for a range whose first and last tickers differ."""
    day_def = next(d.partitions_def for d in partitions_def.partitions_defs if d.name == day_dim)
    if not isinstance(day_def, TimeWindowPartitionsDefinition):
        raise ValueError(f"dimension {day_dim!r} must be time partitions, not {type(day_def).__name__}")
    first = partitions_def.get_partition_key_from_str(key_range.start).keys_by_dimension
    last = partitions_def.get_partition_key_from_str(key_range.end).keys_by_dimension
    if first[ticker_dim] == last[ticker_dim]:
        day_keys = day_def.get_partition_keys_in_range(PartitionKeyRange(first[day_dim], last[day_dim]))
        pairs = [(first[ticker_dim], key) for key in day_keys]
    else:
        dims = [_dimensions(partitions_def, key) for key in enumerate_keys()]
        pairs = [(by_dim[ticker_dim], by_dim[day_dim]) for by_dim in dims]
    days: dict[str, set[dt.date]] = defaultdict(set)
    for ticker, key in pairs:
        days[ticker].add(dt.datetime.strptime(key, day_def.fmt).date())
    return {ticker: sorted(values) for ticker, values in sorted(days.items())}


def _dimensions(partitions_def: MultiPartitionsDefinition, key: str) -> dict[str, str]:
    parsed = key if isinstance(key, MultiPartitionKey) else partitions_def.get_partition_key_from_str(key)
    return dict(parsed.keys_by_dimension)


def asset_run_days(context: AssetExecutionContext) -> dict[str, list[dt.date]]:
    """The run's days per ticker, for an asset partitioned as `assets.market_partitions` (date x ticker)."""
    partitions_def = context.assets_def.partitions_def
    if not isinstance(partitions_def, MultiPartitionsDefinition):
        raise ValueError(f"{context.assets_def.node_def.name} is not partitioned by date x ticker")
    return days_of_range(
        partitions_def, context.partition_key_range, "date", "ticker", lambda: context.partition_keys
    )
