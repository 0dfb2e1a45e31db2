"""The arguments of the read API and `export`, checked: each error is one line naming the argument.

Pure, no I/O: whether a ticker is loaded is asked of the store by `api.py`.
"""

from __future__ import annotations

import datetime as dt
import re

from binance_assets.markets import MARKETS
from binance_assets.read.errors import ArgumentError

BAR_SECONDS = 5
"""The stored bars' size: every interval is a multiple of it."""
DAY_SECONDS = 86_400
FORMATS = ("pandas", "polars", "arrow")
_INTERVAL = re.compile(r"^(\d+)(s|m|min|h|d)$")
_UNIT_SECONDS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": DAY_SECONDS}
_LABELS = (("d", DAY_SECONDS), ("h", 3600), ("m", 60), ("s", 1))


def market_key(market: str) -> str:
    if not isinstance(market, str) or market not in MARKETS:
        raise ArgumentError("market", f"market {market!r} is unknown: expected one of {', '.join(MARKETS)}")
    return market


def ticker_name(ticker: str) -> str:
    """One ticker, as a non-empty string (whether it is loaded is the store's to say)."""
    if not isinstance(ticker, str) or not ticker.strip():
        raise ArgumentError(
            "ticker", f"ticker {ticker!r} is invalid: expected one ticker name, such as 'BTCUSDT'"
        )
    return ticker


def interval_seconds(interval: str) -> int:
    """Seconds of an interval such as ``5s``, ``1m`` (or ``1min``), ``15m``, ``1h``, ``1d``: a positive
    multiple of the 5 s bars."""
    match = _INTERVAL.fullmatch(interval.strip()) if isinstance(interval, str) else None
    seconds = int(match[1]) * _UNIT_SECONDS[match[2]] if match else 0
    if seconds <= 0 or seconds % BAR_SECONDS:
        raise ArgumentError(
            "interval",
            f"interval {interval!r} is invalid: expected a positive multiple of {BAR_SECONDS} s written "
            "<N>s, <N>m, <N>h or <N>d, such as 5s, 1m, 15m, 1h or 1d",
        )
    return seconds


def interval_label(seconds: int) -> str:
    """The canonical spelling of an interval: its largest whole unit (60 -> 1m, 90 -> 90s)."""
    unit, size = next((unit, size) for unit, size in _LABELS if seconds % size == 0)
    return f"{seconds // size}{unit}"


def day(argument: str, value: dt.date | str) -> dt.date:
    """A date, or an ISO date string YYYY-MM-DD; a datetime gives its date."""
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", value.strip()):
        try:
            return dt.date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise ArgumentError(argument, f"{argument} {value!r} is invalid: expected a date or a YYYY-MM-DD string")


def day_range(start: dt.date | str, end: dt.date | str) -> tuple[dt.date, dt.date]:
    """``start`` and ``end`` (inclusive), ``end`` not before ``start``."""
    first, last = day("start", start), day("end", end)
    if last < first:
        raise ArgumentError("end", f"end {last} is before start {first}")
    return first, last


def output_format(value: str) -> str:
    if value not in FORMATS:
        raise ArgumentError("format", f"format {value!r} is unknown: expected one of {', '.join(FORMATS)}")
    return value
