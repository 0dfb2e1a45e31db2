"""Read a Binance klines zip (1m candles, daily or monthly) into one Arrow table.

docs/vision-format.md section 4: 12 columns ``open_time, open, high, low, close, volume, close_time,
quote_volume, count, taker_buy_volume, taker_buy_quote_volume, ignore``; a header line in newer futures
files only (detected per file: line 1 is a header iff its first field is not an integer); times in
milliseconds, except spot from 2025-01-01 in microseconds (detected per row by magnitude).

Meaning per market, which is also what our bars hold (markets.Market.quote_column): spot and USD-M
``volume`` is the base asset and ``quote_volume`` is sum(price * qty); COIN-M ``volume`` is in contracts
and its ``quote_volume`` column is the base-asset volume (sum of the trades' ``base_qty``). ``count``
is the number of trade rows in the minute; a minute without trades has count 0, volume 0 and OHLC at
the previous close.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from binance_assets.vision.archive import INTEGER, MS_TO_US_BELOW
from binance_assets.vision.errors import KlinesFormatError
from binance_assets.vision.zip_member import csv_member

KLINE_COLUMNS = (
    "open_time", "open", "high", "low", "close", "volume", "close_time",
    "quote_volume", "count", "taker_buy_volume", "taker_buy_quote_volume", "ignore",
)  # fmt: skip
KLINES_SCHEMA = pa.schema(
    [
        ("open_time_us", pa.int64()),
        ("open", pa.float64()),
        ("high", pa.float64()),
        ("low", pa.float64()),
        ("close", pa.float64()),
        ("volume", pa.float64()),
        ("close_time_us", pa.int64()),
        ("quote_volume", pa.float64()),
        ("count", pa.int64()),
        ("taker_buy_volume", pa.float64()),
        ("taker_buy_quote_volume", pa.float64()),
    ]
)
_TIMES = {"open_time": "open_time_us", "close_time": "close_time_us"}


def read_klines(path: Path) -> pa.Table:
    """The klines of one zip in KLINES_SCHEMA, file order, times in UTC microseconds.

    Raises KlinesFormatError for a corrupt zip (CRC included: some monthly kline zips are corrupt,
    docs/vision-format.md section 1), unexpected columns or an unparsable row.
    """
    name = Path(path).name
    try:
        with zipfile.ZipFile(path) as archive:
            data = archive.read(csv_member(archive, name))
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise KlinesFormatError(name, f"not a readable zip archive ({exc})") from None
    return parse_klines(data, name)


def parse_klines(data: bytes, name: str = "klines") -> pa.Table:
    """The klines of one CSV text (see :func:`read_klines`)."""
    if not data.strip():
        return KLINES_SCHEMA.empty_table()
    first = data.split(b"\n", 1)[0].rstrip(b"\r").split(b",")
    header = not INTEGER.match(first[0].strip())
    if header and tuple(f.strip().decode("ascii", "replace") for f in first) != KLINE_COLUMNS:
        raise KlinesFormatError(name, f"unexpected header {first!r}; expected {','.join(KLINE_COLUMNS)}")
    if not header and len(first) != len(KLINE_COLUMNS):
        raise KlinesFormatError(name, f"{len(first)} fields in line 1, expected {len(KLINE_COLUMNS)}")
    types = {c: pa.int64() for c in ("open_time", "close_time", "count")}
    try:
        table = pa_csv.read_csv(
            pa.py_buffer(data),
            read_options=pa_csv.ReadOptions(column_names=list(KLINE_COLUMNS), skip_rows=int(header)),
            convert_options=pa_csv.ConvertOptions(
                column_types={c: types.get(c, pa.float64()) for c in KLINE_COLUMNS[:-1]},
                include_columns=list(KLINE_COLUMNS[:-1]),
                strings_can_be_null=False,
            ),
        )
    except pa.ArrowInvalid as exc:
        raise KlinesFormatError(name, f"unparsable row: {exc}") from None
    columns = []
    for column in KLINE_COLUMNS[:-1]:
        values = table[column]
        if values.null_count:
            raise KlinesFormatError(name, f"empty {column} field in {values.null_count} rows")
        if column in _TIMES:
            raw = values.to_numpy()
            values = pa.array(np.where(raw < MS_TO_US_BELOW, raw * 1000, raw), pa.int64())
        columns.append(values)
    return pa.Table.from_arrays(columns, schema=KLINES_SCHEMA)


def minute_day(klines: pa.Table) -> pa.Array:
    """The UTC day (date32) of each kline's open time."""
    return pc.cast(pc.divide(klines["open_time_us"], 86_400_000_000), pa.int32()).cast(pa.date32())
