"""The Binance markets we load: where they live on Vision and how their trades and aggTrades CSVs are
laid out (docs/vision-format.md sections 1, 3 and 8).

Pure data, no Dagster: `orchestration/assets.py` builds partitions and asset keys from these fields.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Literal

DatasetName = Literal["trades", "aggTrades"]
"""A Vision dataset we read: its folder name and the infix of its file names."""
DATASETS: tuple[DatasetName, ...] = ("trades", "aggTrades")

TICKER_PATTERN = re.compile(r"^[A-Z0-9_]+$")
"""What a ticker may be (BTCUSDT, BTCUSD_PERP, BTCUSDT_210326): nothing that could break a partition key
(``|`` is the multi-partition delimiter), an object key or a file name."""


@dataclass(frozen=True)
class Market:
    key: str
    vision_path: str
    first_day: dt.date
    csv_columns: tuple[str, ...]
    """Trades CSV columns in file order (docs/vision-format.md section 3)."""
    agg_csv_columns: tuple[str, ...]
    """aggTrades CSV columns in file order (docs/vision-format.md section 8)."""
    quote_column: str | None
    """Column holding the per-trade volume that Binance's klines report as quote volume;
    None means it is price * qty (the archive's quote_qty column has corrupt rows)."""
    qty_in_contracts: bool = False
    """qty counts contracts of a fixed USD size (COIN-M): the bars' quote volume is then the base-asset
    volume, qty * contract size / price (`cm_contract_size`)."""

    def contract_size(self, ticker: str) -> float | None:
        """USD per contract of `ticker` when qty counts contracts (COIN-M), else None: what
        `read_archive(..., contract_size=...)` takes."""
        return cm_contract_size(ticker) if self.qty_in_contracts else None

    def archive_prefix(self, dataset: DatasetName, freq: str, ticker: str | None = None) -> str:
        base = f"{self.vision_path}/{freq}/{dataset}/"
        return base if ticker is None else f"{base}{ticker}/"

    def archive_key(self, dataset: DatasetName, ticker: str, period: str) -> str:
        """Object key of a trades or aggTrades archive; period is YYYY-MM-DD (daily) or YYYY-MM (monthly)."""
        freq = "daily" if len(period) == 10 else "monthly"
        return f"{self.archive_prefix(dataset, freq, ticker)}{ticker}-{dataset}-{period}.zip"

    def trades_prefix(self, freq: str, ticker: str | None = None) -> str:
        return self.archive_prefix("trades", freq, ticker)

    def klines_key(self, ticker: str, period: str, interval: str = "1m") -> str:
        freq = "daily" if len(period) == 10 else "monthly"
        return f"{self.vision_path}/{freq}/klines/{ticker}/{interval}/{ticker}-{interval}-{period}.zip"

    @property
    def asset_prefix(self) -> tuple[str, str]:
        return ("binance", self.key)

    @property
    def tickers_partition_name(self) -> str:
        return f"{self.key}_tickers"


_SPOT_AGG_COLUMNS = (
    "agg_trade_id", "price", "qty", "first_trade_id", "last_trade_id", "time", "is_buyer_maker",
    "is_best_match",
)  # fmt: skip
_FUTURES_AGG_COLUMNS = (
    "agg_trade_id", "price", "quantity", "first_trade_id", "last_trade_id", "transact_time", "is_buyer_maker",
)  # fmt: skip

MARKETS: dict[str, Market] = {
    "spot": Market(
        key="spot",
        vision_path="data/spot",
        first_day=dt.date(2017, 8, 17),
        csv_columns=("id", "price", "qty", "quote_qty", "time", "is_buyer_maker", "is_best_match"),
        agg_csv_columns=_SPOT_AGG_COLUMNS,
        quote_column=None,
    ),
    "um": Market(
        key="um",
        vision_path="data/futures/um",
        first_day=dt.date(2019, 9, 8),
        csv_columns=("id", "price", "qty", "quote_qty", "time", "is_buyer_maker"),
        agg_csv_columns=_FUTURES_AGG_COLUMNS,
        quote_column=None,
    ),
    "cm": Market(
        key="cm",
        vision_path="data/futures/cm",
        first_day=dt.date(2020, 8, 11),
        csv_columns=("id", "price", "qty", "base_qty", "time", "is_buyer_maker"),
        agg_csv_columns=_FUTURES_AGG_COLUMNS,
        quote_column="base_qty",
        qty_in_contracts=True,
    ),
}


def cm_contract_size(ticker: str) -> float:
    """USD value of one COIN-M contract: 100 for BTCUSD_* symbols, 10 for every other one (Binance's
    COIN-M contract specifications, docs/vision-format.md section 8)."""
    return 100.0 if ticker.startswith("BTCUSD_") else 10.0
