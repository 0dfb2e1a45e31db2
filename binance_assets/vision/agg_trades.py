"""The aggTrades dataset: one row per taker order's fills at one price and time (docs/vision-format.md
section 8), in AGG_TRADES_SCHEMA: TRADES_SCHEMA with ``id`` = first_trade_id plus ``last_id`` =
last_trade_id, so a row stands for the trades ``id..last_id`` and the bars aggregator rebuilds every
bar field from it. ``quote_qty`` is price * qty, or for COIN-M (qty in contracts) the base-asset
volume qty * contract size / price, which is what Binance's COIN-M klines report.
"""

from __future__ import annotations

from operator import attrgetter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from binance_assets.markets import Market
from binance_assets.vision.archive import Conversion, Dataset, time_us
from binance_assets.vision.errors import BadRow
from binance_assets.vision.trades import TRADES_SCHEMA

AGG_TRADES_SCHEMA = TRADES_SCHEMA.append(pa.field("last_id", pa.int64()))
_PARSED = ("price", "qty", "first_trade_id", "last_trade_id", "time", "is_buyer_maker")


def _conversion(market: Market, contract_size: float | None) -> Conversion:
    if market.qty_in_contracts and contract_size is None:
        raise ValueError(f"{market.key} aggTrades need the contract size: pass cm_contract_size(ticker)")

    def build(batch: pa.RecordBatch) -> pa.RecordBatch:
        first, last = batch.column("first_trade_id"), batch.column("last_trade_id")
        below = np.flatnonzero(last.to_numpy() < first.to_numpy())
        if len(below):
            row = int(below[0])
            raise BadRow(row, f"last_trade_id {last[row]} is below first_trade_id {first[row]}")
        price, qty = batch.column("price"), batch.column("qty")
        if market.qty_in_contracts:
            quote = pc.divide(pc.multiply(qty, contract_size), price)
        else:
            quote = pc.multiply(price, qty)
        columns = [
            first,
            price,
            qty,
            quote,
            time_us(batch.column("time")),
            batch.column("is_buyer_maker"),
            last,
        ]
        return pa.RecordBatch.from_arrays(columns, schema=AGG_TRADES_SCHEMA)

    return Conversion(_PARSED, build)


AGG_TRADES = Dataset("aggTrades", AGG_TRADES_SCHEMA, attrgetter("agg_csv_columns"), _conversion)
