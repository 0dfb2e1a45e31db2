"""Backfills for the daemon: the ticker-days of a request (all, or only those Dagster shows failed or not
materialised), cut into backfills of whole tickers that share one timestamp. `binance-assets backfill`
(cli/runs.py) and the `<market>_backfill` job (backfill_job.py) both submit through `submit_backfills`.

The request's checks and the splitting are pure; Dagster is imported only by the functions that use the
instance, so the CLI's parser can import this module without it.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from binance_assets.markets import Market

if TYPE_CHECKING:
    from dagster import AssetsDefinition, DagsterInstance

Only = Literal["all", "missing", "failed"]
"""Which ticker-days of a request: every one, those Dagster does not show materialised on both assets
(failed, or never loaded), or those it shows failed on either (the UI's re-run of failed partitions)."""
ONLY_WHICH: Mapping[Only, str] = {"missing": "failed or missing", "failed": "failed"}

BACKFILL_TICKER_DAYS = 100_000
"""The ticker-days of one backfill at most. The daemon serialises a backfill's whole partition set each
time it has submitted 25 of its runs, and reads it back: for a whole market in one backfill (2M
ticker-days, a 98 MB record) that was 10 s per 25 runs, 0.4 s per run. At 100,000 (a record of about
5 MB) it is about 20 ms per run; a full market is then 21 backfills.

The backfills of one request share their timestamp. At each iteration of each backfill the daemon checks
its partitions against every partition of the market (17 s for 2M), and caches that list only for the
last timestamp it was asked for: with one timestamp, the check is made once, not once per backfill."""


@dataclass(frozen=True)
class Request:
    """A checked request: a market's tickers x days."""

    market: Market
    tickers: tuple[str, ...]
    days: tuple[dt.date, ...]

    def describe(self) -> str:
        """``2 tickers x 35 days (2024-01-01..2024-02-04)``."""
        span = f"{self.days[0]}..{self.days[-1]}"
        return f"{count_of(len(self.tickers), 'ticker')} x {count_of(len(self.days), 'day')} ({span})"


def count_of(n: int, noun: str) -> str:
    """``1 day``, ``1,096 days``."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def request_days(
    market: Market, start: dt.date, end: dt.date, today: dt.date, names: tuple[str, str] = ("start", "end")
) -> tuple[dt.date, ...]:
    """Every day from ``start`` to ``end`` (inclusive), or a ValueError of one line naming the argument
    (``names``: how the caller spells start and end): end before start, start before the market's first
    day, end not before ``today`` (UTC; the newest day is yesterday)."""
    first, last = names
    if end < start:
        raise ValueError(f"{last} {end} is before {first} {start}")
    if start < market.first_day:
        raise ValueError(f"{first} {start} is before {market.key}'s first day {market.first_day}")
    if end >= today:
        raise ValueError(f"{last} {end} is not before today ({today} UTC): the newest day is yesterday")
    return tuple(start + dt.timedelta(days=i) for i in range((end - start).days + 1))


def select_tickers(
    market: Market, registered: Sequence[str], tickers: Sequence[str], ticker_filter: str
) -> tuple[str, ...]:
    """The tickers named (each registered in the market's partitions), or the registered tickers matching
    ``ticker_filter`` (comma-separated globs, as TICKER_FILTER); exactly one of the two. One-line
    ValueErrors."""
    patterns = [part.strip().upper() for part in ticker_filter.split(",") if part.strip()]
    if bool(tickers) == bool(patterns):
        raise ValueError("give either tickers or ticker_filter, not " + ("both" if tickers else "neither"))
    known = set(registered)
    if tickers:
        unknown = [ticker for ticker in tickers if ticker not in known]
        if unknown:
            raise ValueError(
                f"not registered in {market.tickers_partition_name}: {', '.join(unknown)} "
                "(the ticker sensor or `binance-assets discover` registers a market's tickers)"
            )
        return tuple(dict.fromkeys(tickers))
    chosen = tuple(t for t in sorted(known) if any(fnmatch.fnmatchcase(t, p) for p in patterns))
    if not chosen:
        raise ValueError(
            f"ticker_filter {ticker_filter!r} matches none of the {len(known):,} tickers registered in "
            f"{market.tickers_partition_name}"
        )
    return chosen


def partition_keys(tickers: Sequence[str], days: Sequence[dt.date]) -> dict[str, list[str]]:
    """Each ticker's partition keys (``2024-01-01|BTCUSDT``), in day order."""
    return {ticker: [f"{day}|{ticker}" for day in days] for ticker in tickers}


def ticker_groups(keys: Mapping[str, Sequence[str]], limit: int = BACKFILL_TICKER_DAYS) -> list[list[str]]:
    """The tickers of each backfill, in order: whole tickers, at most ``limit`` ticker-days per backfill
    and no more tickers than the longest ticker has days (Dagster cuts a multi-partition backfill along
    the dimension with fewer keys: its runs are then one ticker's consecutive days, not one day of many
    tickers)."""
    if not keys:
        return []
    longest = max(map(len, keys.values()))
    group = max(1, min(longest, limit // longest))
    tickers = list(keys)
    return [tickers[start : start + group] for start in range(0, len(tickers), group)]


def select_keys(
    instance: DagsterInstance, market: Market, tickers: Sequence[str], days: Sequence[dt.date], only: Only
) -> dict[str, list[str]]:
    """The request's keys per ticker: all, or those ``only`` keeps (tickers left without a key dropped)."""
    keys = partition_keys(tickers, days)
    if only == "all":
        return keys
    return unmaterialized(instance, market, keys, failed_only=only == "failed")


def unmaterialized(
    instance: DagsterInstance, market: Market, keys: Mapping[str, Sequence[str]], *, failed_only: bool
) -> dict[str, list[str]]:
    """The keys, per ticker, that Dagster shows FAILED on either asset (failed_only), or not MATERIALIZED
    on both (failed, or never loaded)."""
    from dagster import AssetPartitionStatus

    from binance_assets.orchestration.assets import BARS, LIQUIDITY, asset_key, market_partitions

    partitions = market_partitions(market)
    flat = [key for ticker_keys in keys.values() for key in ticker_keys]
    statuses = [
        instance.get_status_by_partition(asset_key(market, name), flat, partitions) or {}
        for name in (BARS, LIQUIDITY)
    ]

    def wanted(key: str) -> bool:
        found = [status.get(key) for status in statuses]
        if failed_only:
            return AssetPartitionStatus.FAILED in found
        return any(value != AssetPartitionStatus.MATERIALIZED for value in found)

    chosen = {ticker: [key for key in ticker_keys if wanted(key)] for ticker, ticker_keys in keys.items()}
    return {ticker: ticker_keys for ticker, ticker_keys in chosen.items() if ticker_keys}


@dataclass(frozen=True)
class Submitted:
    """One backfill added to the instance."""

    backfill_id: str
    tickers: tuple[str, ...]
    ticker_days: int


def submit_backfills(
    instance: DagsterInstance,
    assets: AssetsDefinition,
    market: Market,
    keys: Mapping[str, Sequence[str]],
    *,
    title: str,
    description: str,
    tags: Mapping[str, str],
) -> list[Submitted]:
    """Add the backfills of ``keys`` (per ticker) on both of the market's assets, cut by `ticker_groups`
    and stamped with one time (see BACKFILL_TICKER_DAYS): titled ``title [part/parts]``, described
    ``description: <tickers>``, their runs tagged ``tags``. ``assets``: the market's multi_asset."""
    from binance_assets.orchestration.dagster_internals import new_backfill

    groups = ticker_groups(keys)
    requested = time.time()  # one time for all: see BACKFILL_TICKER_DAYS
    submitted = []
    for part, tickers in enumerate(groups, start=1):
        partition_names = [key for ticker in tickers for key in keys[ticker]]
        backfill_id = new_backfill(
            instance,
            assets,
            partition_names,
            requested=requested,
            tags=tags,
            title=title + (f" [{part}/{len(groups)}]" if len(groups) > 1 else ""),
            description=f"{description}: {', '.join(tickers)}",
        )
        submitted.append(Submitted(backfill_id, tuple(tickers), len(partition_names)))
    return submitted
