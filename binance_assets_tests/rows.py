"""Rows of the store's tables built directly, for tests of the store and the IO manager. No Dagster: the
spawned processes of test_clickhouse_client.py import it."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

from binance_assets.clickhouse.tables import BARS_TABLE


def bars_of_day(
    ticker: str, day: dt.date, n: int = 6, version: float = 1.0, *, market: str = "spot"
) -> pa.Table:
    """n bars of one ticker-day in the hl5s schema; `open` carries the version so a test can tell writes
    apart."""
    start = int(dt.datetime.combine(day, dt.time(), dt.UTC).timestamp())
    columns = {
        "market": [market] * n,
        "ticker": [ticker] * n,
        "day": [day] * n,
        "ts": [start + 5 * (i + 1) for i in range(n)],
        "open": [version] * n,
        **{name: [float(i) for i in range(n)] for name in BARS_TABLE.schema.names[5:11]},
        "trade_count": list(range(1, n + 1)),
    }
    return pa.Table.from_pydict(columns, schema=BARS_TABLE.schema)
