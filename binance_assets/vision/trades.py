"""The trades dataset: one row per trade, in TRADES_SCHEMA ``id, price, qty, quote_qty, time_us,
is_buyer_maker`` for every market and era (docs/vision-format.md section 3).

``quote_qty`` is recomputed as price * qty because the archive's own column has corrupt rows (COIN-M
takes its ``base_qty`` column instead, the base-asset volume Binance's COIN-M klines report).
"""

from __future__ import annotations

from operator import attrgetter

import pyarrow as pa
import pyarrow.compute as pc

from binance_assets.markets import Market
from binance_assets.vision.archive import Conversion, Dataset, time_us

TRADES_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("price", pa.float64()),
        ("qty", pa.float64()),
        ("quote_qty", pa.float64()),
        ("time_us", pa.int64()),
        ("is_buyer_maker", pa.bool_()),
    ]
)


def _conversion(market: Market, contract_size: float | None) -> Conversion:
    volume = market.quote_column

    def build(batch: pa.RecordBatch) -> pa.RecordBatch:
        price, qty = batch.column("price"), batch.column("qty")
        quote = batch.column(volume) if volume else pc.multiply(price, qty)
        return pa.RecordBatch.from_arrays(
            [
                batch.column("id"),
                price,
                qty,
                quote,
                time_us(batch.column("time")),
                batch.column("is_buyer_maker"),
            ],
            schema=TRADES_SCHEMA,
        )

    parsed = ("id", "price", "qty", "time", "is_buyer_maker") + ((volume,) if volume else ())
    return Conversion(parsed, build)


TRADES = Dataset("trades", TRADES_SCHEMA, attrgetter("csv_columns"), _conversion)
