"""When a day is built from aggTrades instead of its trades archive (BINANCE_FALLBACK), as pure rules.

The plan (plan.py) already serves a day that has no trades archive from the aggTrades one. Here are the
two cases only the loaded archive can show (docs/vision-format.md section 5):
- a broken trades archive: every row `is_buyer_maker=true` on a busy day, so no taker-buy volume at
  all (USD-M since 2026-07-03, binance-public-data #476; COIN-M since 2026-07-01, also cut after about
  two hours, #492);
- a partial one: fewer trades than Binance's own 1m klines count for the day (#413, #367). Its aggTrades
  archive replaces it only where it agrees with the klines: its covered trades, or those plus the ids no
  aggregate covers, are the klines' count (`count_rule`; whether Binance counts those ids is not known,
  docs/vision-format.md section 8). Otherwise the partial trades day stays, reported as partial.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from binance_assets.markets import DatasetName
from binance_assets.vision.listing import ArchiveInfo

BUSY_DAY_TRADES = 1_000
"""A day with this many trades and not one taker buy is broken: by chance that has odds of 2^-1000."""
PARTIAL = "partial trades archive"
"""How the reason for a partial day begins."""
COVERED = "covered"
COVERED_PLUS_GAPS = "covered+gaps"
"""The two counts of an aggTrades day that Binance's klines may hold: the trades its aggregates cover, or
those plus the ids of its range no aggregate covers (bars.py, uncovered_trade_ids)."""


@dataclass
class Fallback:
    """What a load needs to rebuild days from the fallback dataset."""

    dataset: DatasetName
    listing: Callable[[str], Sequence[ArchiveInfo]]
    """A ticker's archives of the fallback dataset (listed once per ticker and load, when needed)."""
    kline_counts: Mapping[tuple[str, dt.date], int] = field(default_factory=dict)
    """Trades per (ticker, day) in Binance's 1m klines, where the klines were read."""
    _listed: dict[str, Sequence[ArchiveInfo]] = field(default_factory=dict)

    def archive_for(self, ticker: str, day: dt.date, freq: str) -> ArchiveInfo | None:
        """The fallback archive holding ``day``: of the same frequency as the archive it replaces if
        listed, else the other."""
        if ticker not in self._listed:
            self._listed[ticker] = self.listing(ticker)
        periods = {"daily": day.isoformat(), "monthly": day.strftime("%Y-%m")}
        by_period = {(a.freq, a.period): a for a in self._listed[ticker]}
        other = "monthly" if freq == "daily" else "daily"
        return by_period.get((freq, periods[freq])) or by_period.get((other, periods[other]))


def suspect_reason(
    ticker: str, day: dt.date, stats: Mapping[str, Any] | None, fallback: Fallback
) -> str | None:
    """Why a day read from a trades archive should be rebuilt from the fallback, or None."""
    trades = int(stats["trade_count"]) if stats else 0
    if stats and trades >= BUSY_DAY_TRADES and float(stats["taker_buy_volume"]) == 0.0:
        return f"every one of its {trades:,} trades has is_buyer_maker=true (binance-public-data #476, #492)"
    expected = fallback.kline_counts.get((ticker, day))
    if expected is not None and trades < expected:
        return f"{PARTIAL}: {trades:,} trades against {expected:,} in Binance's klines"
    return None


def count_rule(stats: Mapping[str, Any] | None, expected: int | None) -> str | None:
    """Which count of a day's stats is Binance's klines count ``expected``: COVERED, COVERED_PLUS_GAPS
    (covered trades plus uncovered ids, when there are some), or None for neither."""
    if stats is None or expected is None:
        return None
    covered = int(stats["trade_count"])
    uncovered = int(stats.get("uncovered_trade_ids", 0))
    if covered == expected:
        return COVERED
    if uncovered and covered + uncovered == expected:
        return COVERED_PLUS_GAPS
    return None


def accepts(
    ticker: str, day: dt.date, reason: str, stats: Mapping[str, Any] | None, fallback: Fallback
) -> bool:
    """Whether the fallback's day replaces the trades archive's: always for a broken archive (the archive
    itself shows it), for a partial one only if one of its counts (`count_rule`) is the klines'."""
    if stats is None or int(stats["trade_count"]) == 0:
        return False
    if reason.startswith(PARTIAL):
        return count_rule(stats, fallback.kline_counts.get((ticker, day))) is not None
    return True


def partial_kept(ticker: str, day: dt.date, stats: Mapping[str, Any] | None, fallback: Fallback) -> str:
    """Why a partial trades day stays: what its fallback day counts against the klines."""
    expected = fallback.kline_counts.get((ticker, day), 0)
    if stats is None or int(stats["trade_count"]) == 0:
        return f"kept: the {fallback.dataset} day has no trades"
    covered, uncovered = int(stats["trade_count"]), int(stats.get("uncovered_trade_ids", 0))
    return (
        f"kept: {fallback.dataset} covers {covered:,} trades and {uncovered:,} uncovered ids; neither "
        f"{covered:,} nor {covered + uncovered:,} is the klines' {expected:,}"
    )
