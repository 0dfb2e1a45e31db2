"""The Binance markets we load: where they live on Vision and how their trades CSV is laid out.

Pure data, no Dagster: `assets.py` builds partitions and asset keys from these fields.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

TICKER_PATTERN = re.compile(r"^[A-Z0-9_]+$")
"""What a ticker may be (BTCUSDT, BTCUSD_PERP, BTCUSDT_210326): nothing that could break a partition key
(``|`` is the multi-partition delimiter), an object key or a file name."""


@dataclass(frozen=True)
class Market:
    key: str
    vision_path: str
    first_day: dt.date
    csv_columns: tuple[str, ...]
    """Trades CSV columns in file order (FORMAT.md section 3)."""
    quote_column: str | None
    """Column holding the per-trade volume that Binance's klines report as quote volume;
    None means it is price * qty (the archive's quote_qty column has corrupt rows)."""

    def trades_prefix(self, freq: str, ticker: str | None = None) -> str:
        base = f"{self.vision_path}/{freq}/trades/"
        return base if ticker is None else f"{base}{ticker}/"

    def trades_key(self, ticker: str, period: str) -> str:
        """Object key of a trades archive; period is YYYY-MM-DD (daily) or YYYY-MM (monthly)."""
        freq = "daily" if len(period) == 10 else "monthly"
        return f"{self.trades_prefix(freq, ticker)}{ticker}-trades-{period}.zip"

    def klines_key(self, ticker: str, period: str, interval: str = "1m") -> str:
        freq = "daily" if len(period) == 10 else "monthly"
        return f"{self.vision_path}/{freq}/klines/{ticker}/{interval}/{ticker}-{interval}-{period}.zip"

    @property
    def asset_prefix(self) -> tuple[str, str]:
        return ("binance", self.key)

    @property
    def tickers_partition_name(self) -> str:
        return f"{self.key}_tickers"


MARKETS: dict[str, Market] = {
    "spot": Market(
        key="spot",
        vision_path="data/spot",
        first_day=dt.date(2017, 8, 17),
        csv_columns=("id", "price", "qty", "quote_qty", "time", "is_buyer_maker", "is_best_match"),
        quote_column=None,
    ),
    "um": Market(
        key="um",
        vision_path="data/futures/um",
        first_day=dt.date(2019, 9, 8),
        csv_columns=("id", "price", "qty", "quote_qty", "time", "is_buyer_maker"),
        quote_column=None,
    ),
    "cm": Market(
        key="cm",
        vision_path="data/futures/cm",
        first_day=dt.date(2020, 8, 11),
        csv_columns=("id", "price", "qty", "base_qty", "time", "is_buyer_maker"),
        quote_column="base_qty",
    ),
}


def get_market(key: str) -> Market:
    try:
        return MARKETS[key]
    except KeyError:
        raise ValueError(f"unknown market {key!r}: expected one of {', '.join(MARKETS)}") from None
