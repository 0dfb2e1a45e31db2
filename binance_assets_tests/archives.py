"""Synthetic Binance Vision trades and aggTrades archives in every real layout, and an independent bars
oracle.

Layouts follow docs/vision-format.md sections 3 and 8. The oracle (`expected_bars`, `expected_day_stats`,
`expected_1m`) is written the obvious way with pandas groupby, so it shares no algorithm with
`binance_assets.bars`. Everything here is pure numpy/pandas/zipfile.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

BAR_US = 5_000_000
MINUTE_US = 60_000_000
DAY_US = 86_400_000_000
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_DECIMALS = 8
_CHUNK_ROWS = 500_000


@dataclass(frozen=True)
class Layout:
    """How one market writes its trades CSV."""

    market: str
    """Key in `binance_assets.markets.MARKETS`."""
    header: str | None
    time_unit: str
    """Unit of the time column: "ms" or "us"."""
    padded: bool
    """Numbers with 8 fixed decimals (spot) or unpadded (futures, e.g. `68402.6`)."""
    true: bytes
    false: bytes
    third_column: str
    """Name of the third numeric column: `quote_qty` (price*qty) or `base_qty` (COIN-M)."""
    integer_qty: bool = False
    """qty is a whole number of contracts (COIN-M)."""
    best_match: bool = False
    """Spot's trailing isBestMatch column, always True."""


_SPOT_MS = Layout(
    market="spot",
    header=None,
    time_unit="ms",
    padded=True,
    true=b"True",
    false=b"False",
    third_column="quote_qty",
    best_match=True,
)
_UM_HEADER = Layout(
    market="um",
    header="id,price,qty,quote_qty,time,is_buyer_maker",
    time_unit="ms",
    padded=False,
    true=b"true",
    false=b"false",
    third_column="quote_qty",
)
LAYOUTS: dict[str, Layout] = {
    "spot_ms": _SPOT_MS,
    "spot_us": replace(_SPOT_MS, time_unit="us"),
    "um_header": _UM_HEADER,
    "um_noheader": replace(_UM_HEADER, header=None),
    "cm": replace(
        _UM_HEADER,
        market="cm",
        header="id,price,qty,base_qty,time,is_buyer_maker",
        third_column="base_qty",
        integer_qty=True,
    ),
}


_AGG_HEADER = "agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,is_buyer_maker"
AGG_LAYOUTS: dict[str, Layout] = {
    "spot_ms": LAYOUTS["spot_ms"],
    "spot_us": LAYOUTS["spot_us"],
    "um_header": replace(_UM_HEADER, header=_AGG_HEADER),
    "um_noheader": LAYOUTS["um_noheader"],
    "cm_header": replace(LAYOUTS["cm"], header=_AGG_HEADER),
    "cm_noheader": replace(LAYOUTS["cm"], header=None),
}
"""aggTrades layouts: the trades layout of the same market and era with the aggTrades header (spot has
none); `third_column` is unused."""


def to_us(when: dt.datetime) -> int:
    """UTC microseconds since the epoch of an aware datetime."""
    return (when - _EPOCH) // dt.timedelta(microseconds=1)


def cm_base_qty(
    price: np.ndarray | pd.Series, qty: np.ndarray | pd.Series, contract_size: float = 100.0
) -> np.ndarray:
    """COIN-M base_qty of a trade of `qty` contracts of `contract_size` USD (100: BTCUSD_*):
    qty*contract_size/price, rounded to 8 decimals as the trades archive writes it."""
    qty = np.asarray(qty, dtype=np.float64)
    return np.round(qty * contract_size / np.asarray(price, dtype=np.float64), 8)


def make_trades(
    n: int,
    start: dt.datetime,
    seconds: float,
    *,
    first_id: int = 1,
    seed: int = 0,
    price: float = 100.0,
    time_unit: str = "us",
    contracts: bool = False,
) -> pd.DataFrame:
    """`n` trades in file order over [start, start+seconds), `start` an aware UTC datetime.

    Ids are contiguous from `first_id`; times are non-decreasing and clustered: taker orders arrive
    with heavy-tailed gaps and each fills one or more trades at one timestamp and one side. Prices are
    a log random walk rounded to 2 decimals (2% volatility over the whole n trades), qty is
    log-normal rounded to 5 decimals. `time_unit="ms"` aligns times to whole milliseconds (needed for
    exact round trips through the ms layouts). `contracts=True` makes qty whole COIN-M contracts and
    adds a `base_qty` column.
    """
    unit_us = {"us": 1, "ms": 1000}[time_unit]
    start_us = to_us(start)
    if start_us % unit_us:
        raise ValueError(f"start {start} is not aligned to whole {time_unit}")
    span = int(seconds * 1_000_000) // unit_us
    if n < 1 or span < 1:
        raise ValueError(f"need n >= 1 and at least one {time_unit} of span, got n={n}, seconds={seconds}")
    rng = np.random.default_rng(seed)

    fills = rng.geometric(0.6, size=n)
    order_of_trade = np.repeat(np.arange(n), fills)[:n]
    n_orders = int(order_of_trade[-1]) + 1
    gaps = rng.lognormal(0.0, 2.0, size=n_orders + 1)
    position = np.cumsum(gaps)[:n_orders] / gaps.sum()
    offset = np.minimum(np.floor(position * span).astype(np.int64), span - 1)
    time_us = start_us + offset[order_of_trade] * unit_us
    is_buyer_maker = (rng.random(n_orders) < 0.5)[order_of_trade]

    walk = np.cumsum(rng.normal(0.0, 0.02 / np.sqrt(n), size=n))
    prices = np.maximum(np.round(price * np.exp(walk), 2), 0.01)
    if contracts:
        qty = rng.geometric(0.2, size=n).astype(np.float64)
    else:
        qty = np.maximum(np.round(rng.lognormal(np.log(0.05), 1.2, size=n), 5), 0.00001)
    trades = pd.DataFrame(
        {
            "id": np.arange(first_id, first_id + n, dtype=np.int64),
            "price": prices,
            "qty": qty,
            "time_us": time_us,
            "is_buyer_maker": is_buyer_maker,
        }
    )
    if contracts:
        trades["base_qty"] = cm_base_qty(prices, qty)
    return trades


def _digits(values: np.ndarray, width: int) -> np.ndarray:
    """ASCII digits of non-negative ints, right-aligned and zero-padded to `width` columns."""
    out = np.empty((len(values), width), dtype=np.uint8)
    rest = values
    for column in range(width - 1, -1, -1):
        rest, digit = np.divmod(rest, 10)
        out[:, column] = digit + ord("0")
    return out


def _integer_field(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(chars, keep) matrices of a column of non-negative ints, leading zeros not kept."""
    values = np.asarray(values, dtype=np.int64)
    if len(values) and values.min() < 0:
        raise ValueError("Binance trades layouts hold no negative numbers")
    width = len(str(int(values.max()))) if len(values) else 1
    chars = _digits(values, width)
    keep = np.logical_or.accumulate(chars != ord("0"), axis=1)
    keep[:, -1] = True
    return chars, keep


def _decimal_field(values: np.ndarray, padded: bool) -> tuple[np.ndarray, np.ndarray]:
    """(chars, keep) of floats rounded to 8 decimals: `93576.00000000` padded, `68402.6` unpadded."""
    scaled = np.rint(np.asarray(values, dtype=np.float64) * 10**_DECIMALS).astype(np.int64)
    whole, fraction = np.divmod(scaled, 10**_DECIMALS)
    whole_chars, whole_keep = _integer_field(whole)
    fraction_chars = _digits(fraction, _DECIMALS)
    if padded:
        fraction_keep = np.ones_like(fraction_chars, dtype=bool)
    else:
        nonzero_after = (fraction_chars != ord("0"))[:, ::-1]
        fraction_keep = np.logical_or.accumulate(nonzero_after, axis=1)[:, ::-1].copy()
        fraction_keep[:, 0] = True
    dot = np.full((len(values), 1), ord("."), dtype=np.uint8)
    return (
        np.hstack([whole_chars, dot, fraction_chars]),
        np.hstack([whole_keep, np.ones_like(dot, dtype=bool), fraction_keep]),
    )


def _bool_field(values: np.ndarray, true: bytes, false: bytes) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(true), len(false))
    rows = np.zeros((2, width), dtype=np.uint8)
    rows[0, : len(true)] = list(true)
    rows[1, : len(false)] = list(false)
    keeps = np.arange(width) < np.array([[len(true)], [len(false)]])
    pick = np.where(np.asarray(values, dtype=bool), 0, 1)
    return rows[pick], keeps[pick]


def _csv_rows(columns: list[tuple[np.ndarray, np.ndarray]]) -> bytes:
    """Join (chars, keep) fields with commas and end each row with a newline."""
    n = len(columns[0][0])
    separator = np.full((n, 1), ord(","), dtype=np.uint8)
    newline = np.full((n, 1), ord("\n"), dtype=np.uint8)
    always = np.ones((n, 1), dtype=bool)
    chars, keep = [], []
    for index, (field_chars, field_keep) in enumerate(columns):
        chars += [field_chars, separator if index < len(columns) - 1 else newline]
        keep += [field_keep, always]
    return np.hstack(chars)[np.hstack(keep)].tobytes()


def trades_csv(df: pd.DataFrame, layout: str) -> bytes:
    """The CSV text of trades `df` in one of `LAYOUTS` (spot_ms, spot_us, um_header, um_noheader, cm).

    The third numeric column is `df["quote_qty"]` / `df["base_qty"]` when present (so tests can plant
    the corrupt quote_qty rows of docs/vision-format.md section 5), else price*qty / `cm_base_qty`.
    Vectorised: 3M rows take a few seconds.
    """
    spec = LAYOUTS[layout]
    qty = df["qty"].to_numpy(np.float64)
    if spec.third_column in df:
        third = df[spec.third_column].to_numpy(np.float64)
    elif spec.third_column == "base_qty":
        third = cm_base_qty(df["price"], qty)
    else:
        third = df["price"].to_numpy(np.float64) * qty
    kinds = ("integer", "decimal", "qty", "decimal", "time", "side")
    values = (df["id"], df["price"], qty, third, df["time_us"], df["is_buyer_maker"])
    return _csv_text(spec, layout, list(zip(kinds, values, strict=True)))


def agg_trades(trades: pd.DataFrame, first_agg_id: int = 1) -> pd.DataFrame:
    """Binance's aggregate trades of `trades` (id order): consecutive trades with contiguous ids and the
    same time, price and side merge into one row with their qty summed and their first/last trade id;
    aggregate ids count up from `first_agg_id`. Columns: agg_trade_id, price, qty, first_trade_id,
    last_trade_id, time_us, is_buyer_maker."""
    ids = trades["id"].to_numpy(np.int64)
    time_us = trades["time_us"].to_numpy(np.int64)
    price = trades["price"].to_numpy(np.float64)
    side = trades["is_buyer_maker"].to_numpy(bool)
    if len(ids) and (np.diff(ids) <= 0).any():
        raise ValueError("agg_trades needs trades in increasing id order (aggregate first, then shuffle)")
    new = np.ones(len(ids), bool)
    new[1:] = (ids[1:] != ids[:-1] + 1) | (time_us[1:] != time_us[:-1]) | (price[1:] != price[:-1])
    new[1:] |= side[1:] != side[:-1]
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], len(ids)) - 1
    return pd.DataFrame(
        {
            "agg_trade_id": np.arange(first_agg_id, first_agg_id + len(starts), dtype=np.int64),
            "price": price[starts],
            "qty": np.add.reduceat(trades["qty"].to_numpy(np.float64), starts) if len(ids) else [],
            "first_trade_id": ids[starts],
            "last_trade_id": ids[ends],
            "time_us": time_us[starts],
            "is_buyer_maker": side[starts],
        }
    )


def agg_trades_csv(aggs: pd.DataFrame, layout: str) -> bytes:
    """The CSV text of aggregate trades `aggs` (as `agg_trades` makes them) in one of `AGG_LAYOUTS`."""
    kinds = ("integer", "decimal", "qty", "integer", "integer", "time", "side")
    names = ("agg_trade_id", "price", "qty", "first_trade_id", "last_trade_id", "time_us", "is_buyer_maker")
    return _csv_text(
        AGG_LAYOUTS[layout], layout, [(kind, aggs[name]) for kind, name in zip(kinds, names, strict=True)]
    )


def _csv_text(spec: Layout, layout: str, columns: list[tuple[str, pd.Series | np.ndarray]]) -> bytes:
    """The header (if any) and the rows of `columns` ((kind, values) in file order), written
    `_CHUNK_ROWS` at a time, plus spot's trailing isBestMatch (always True). Kinds: integer, decimal,
    qty (whole contracts for COIN-M), time (microseconds, written in the layout's unit), side (a bool)."""
    arrays = [(kind, _file_values(kind, np.asarray(values), spec, layout)) for kind, values in columns]
    n = len(arrays[0][1])
    parts = [] if spec.header is None else [spec.header.encode() + b"\n"]
    for lo in range(0, n, _CHUNK_ROWS):
        rows = slice(lo, min(lo + _CHUNK_ROWS, n))
        fields = [_field(kind, values[rows], spec) for kind, values in arrays]
        if spec.best_match:
            fields.append(_field("side", np.ones(rows.stop - rows.start, dtype=bool), spec))
        parts.append(_csv_rows(fields))
    return b"".join(parts)


def _file_values(kind: str, values: np.ndarray, spec: Layout, layout: str) -> np.ndarray:
    """`values` as the layout writes them, after checking that it can hold them exactly."""
    if kind == "time":
        if spec.time_unit == "ms" and (values % 1000).any():
            raise ValueError(
                f"layout {layout} writes ms: time_us must be whole ms (make_trades(time_unit='ms'))"
            )
        return values // 1000 if spec.time_unit == "ms" else values
    if kind == "qty" and spec.integer_qty and (values != np.round(values)).any():
        raise ValueError(f"layout {layout} writes whole contracts: qty must be integral")
    return values


def _field(kind: str, values: np.ndarray, spec: Layout) -> tuple[np.ndarray, np.ndarray]:
    if kind == "side":
        return _bool_field(values, spec.true, spec.false)
    if kind in ("integer", "time") or (kind == "qty" and spec.integer_qty):
        return _integer_field(values)
    return _decimal_field(values, spec.padded)


def zip_archive(
    csv_bytes: bytes,
    member_name: str,
    *,
    extra_members: dict[str, bytes] | None = None,
) -> bytes:
    """A deflated zip holding `member_name`; `extra_members` are written first, as in the
    `fsx-data/collector_data/<name>.csv` duplicate-member quirk, so a reader taking the first
    member gets caught."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in (extra_members or {}).items():
            archive.writestr(name, data)
        archive.writestr(member_name, csv_bytes)
    return buffer.getvalue()


def write_archive(root: Path, key: str, zip_bytes: bytes) -> Path:
    """Write `root/key` and its `.CHECKSUM` (`<sha256 hex>  <zip name>\\n`); return the zip path."""
    path = root / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(zip_bytes)
    digest = hashlib.sha256(zip_bytes).hexdigest()
    path.with_name(path.name + ".CHECKSUM").write_text(f"{digest}  {path.name}\n")
    return path


def interleave(df: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Move a run of an earlier day's rows to just after a later day's rows, like monthly files do."""
    day = df["time_us"].to_numpy(np.int64) // DAY_US
    days = np.unique(day)
    if len(days) < 2:
        raise ValueError("interleave needs trades on at least two UTC days")
    rng = np.random.default_rng(seed)
    earlier = rng.integers(0, len(days) - 1)
    later = days[rng.integers(earlier + 1, len(days))]
    source = np.flatnonzero(day == days[earlier])
    length = int(rng.integers(1, len(source) + 1))
    first = int(rng.integers(0, len(source) - length + 1))
    moved = source[first : first + length]
    rest = np.setdiff1d(np.arange(len(df)), moved)
    cut = np.searchsorted(rest, np.flatnonzero(day == later)[-1]) + 1
    order = np.concatenate([rest[:cut], moved, rest[cut:]])
    return df.iloc[order].reset_index(drop=True)


def duplicate_ids(df: pd.DataFrame, fraction: float, seed: int) -> pd.DataFrame:
    """Repeat round(fraction*len) random rows exactly, each copy at a random place after its original."""
    n = len(df)
    rng = np.random.default_rng(seed)
    copied = rng.choice(n, size=round(fraction * n), replace=False)
    after = rng.integers(copied, n)
    keys = np.concatenate([np.arange(n, dtype=np.float64), after + 0.5])
    rows = np.concatenate([np.arange(n), copied])[np.argsort(keys, kind="stable")]
    return df.iloc[rows].reset_index(drop=True)


def drop_ids(df: pd.DataFrame, ids: list[int] | np.ndarray) -> pd.DataFrame:
    """`df` without the rows of `ids` (id gaps); every id must be present."""
    dropped = df["id"].isin(ids)
    absent = set(np.asarray(ids).tolist()) - set(df.loc[dropped, "id"].tolist())
    if absent:
        raise ValueError(f"ids not in the trades: {sorted(absent)}")
    return df[~dropped].reset_index(drop=True)


def _oracle_frame(df: pd.DataFrame, quote_col: str | None) -> pd.DataFrame:
    """Trades without duplicate ids (first occurrence kept), in (time, id) order, with volumes."""
    trades = df.drop_duplicates(subset="id", keep="first")
    quote = trades["price"] * trades["qty"] if quote_col is None else trades[quote_col]
    taker_buy = ~trades["is_buyer_maker"]
    return trades.assign(
        quote=quote,
        taker_buy=trades["qty"].where(taker_buy, 0.0),
        taker_buy_quote=quote.where(taker_buy, 0.0),
        day=trades["time_us"] // DAY_US,
        ts=(trades["time_us"] // BAR_US + 1) * BAR_US,
    ).sort_values(["time_us", "id"], kind="stable")


def _ohlcv(trades: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    return (
        trades.groupby(keys, sort=True)
        .agg(
            open=("price", "first"),
            high=("price", "max"),
            low=("price", "min"),
            close=("price", "last"),
            volume=("qty", "sum"),
            quote_volume=("quote", "sum"),
            taker_buy_volume=("taker_buy", "sum"),
            taker_buy_quote_volume=("taker_buy_quote", "sum"),
            trade_count=("id", "size"),
        )
        .reset_index()
    )


def _as_date(day_numbers: pd.Series) -> pd.Series:
    return day_numbers.map(lambda number: dt.date(1970, 1, 1) + dt.timedelta(days=int(number)))


def expected_bars(df: pd.DataFrame, quote_col: str | None = None) -> pd.DataFrame:
    """5s bars stamped at their right edge `ts` (trades in [ts-5s, ts)), by the trade's own UTC day.

    quote_volume is sum(price*qty), or sum(df[quote_col]) (e.g. COIN-M `base_qty`).
    """
    bars = _ohlcv(_oracle_frame(df, quote_col), ["day", "ts"])
    bars["day"] = _as_date(bars["day"])
    return bars.drop(columns="taker_buy_quote_volume")


def expected_day_stats(df: pd.DataFrame, quote_col: str | None = None) -> pd.DataFrame:
    """Per UTC day: totals, bar count, id range and the ids missing from it, first/last time."""
    stats = (
        _oracle_frame(df, quote_col)
        .groupby("day", sort=True)
        .agg(
            trade_count=("id", "size"),
            volume=("qty", "sum"),
            quote_volume=("quote", "sum"),
            taker_buy_volume=("taker_buy", "sum"),
            bar_count=("ts", "nunique"),
            first_trade_id=("id", "min"),
            last_trade_id=("id", "max"),
            distinct_ids=("id", "nunique"),
            first_time_us=("time_us", "min"),
            last_time_us=("time_us", "max"),
        )
        .reset_index()
    )
    stats["day"] = _as_date(stats["day"])
    span = stats["last_trade_id"] - stats["first_trade_id"] + 1
    stats.insert(8, "missing_trade_ids", span - stats.pop("distinct_ids"))
    return stats


def expected_1m(df: pd.DataFrame, quote_col: str | None = None) -> pd.DataFrame:
    """1-minute klines as Binance publishes them: left-labelled `open_time` in ms."""
    trades = _oracle_frame(df, quote_col)
    trades["open_time"] = trades["time_us"] // MINUTE_US * 60_000
    klines = _ohlcv(trades, ["open_time"]).rename(columns={"trade_count": "count"})
    columns = ["open_time", "open", "high", "low", "close", "volume", "quote_volume", "count"]
    return klines[[*columns, "taker_buy_volume", "taker_buy_quote_volume"]]


KLINES_HEADER = (
    "open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,"
    "taker_buy_quote_volume,ignore"
)


def expected_klines(df: pd.DataFrame, days: list[dt.date], quote_col: str | None = None) -> pd.DataFrame:
    """Binance's 1m klines of trades `df` on `days`: all 1440 minutes of each day, `open_time` in ms.

    Built on `expected_1m`; a minute without trades has count 0, zero volumes and OHLC at the previous
    close (docs/vision-format.md section 4). For COIN-M pass quote_col="base_qty": its kline
    `quote_volume` column is the base-asset volume.
    """
    starts = np.array([to_us(dt.datetime.combine(d, dt.time(), tzinfo=dt.UTC)) // 1000 for d in sorted(days)])
    minutes = (starts[:, None] + np.arange(1440) * 60_000).ravel()
    klines = pd.DataFrame({"open_time": minutes}).merge(
        expected_1m(df, quote_col), on="open_time", how="left"
    )
    close = klines["close"].ffill().fillna(klines["open"].bfill()).fillna(0.0)
    for column in ("open", "high", "low", "close"):
        klines[column] = klines[column].fillna(close)
    return klines.fillna(0).astype({"count": np.int64})


def klines_csv(klines: pd.DataFrame, layout: str) -> bytes:
    """The CSV text of `klines` (as `expected_klines` makes them) in the kline layout of a trades layout:
    no header for spot, a header for futures; ms, or us for `spot_us`; whole contracts for COIN-M."""
    spec = LAYOUTS[layout]
    open_ms = klines["open_time"].to_numpy(np.int64)
    scale, last = (1000, 59_999_999) if spec.time_unit == "us" else (1, 59_999)

    def number(column: str, whole: bool = False) -> tuple[np.ndarray, np.ndarray]:
        values = klines[column].to_numpy(np.float64)
        return _integer_field(values.astype(np.int64)) if whole else _decimal_field(values, spec.padded)

    columns = [
        _integer_field(open_ms * scale),
        *(number(c) for c in ("open", "high", "low", "close")),
        number("volume", spec.integer_qty),
        _integer_field(open_ms * scale + last),
        number("quote_volume"),
        _integer_field(klines["count"].to_numpy(np.int64)),
        number("taker_buy_volume", spec.integer_qty),
        number("taker_buy_quote_volume"),
        _integer_field(np.zeros(len(klines), np.int64)),
    ]
    header = b"" if spec.header is None else KLINES_HEADER.encode() + b"\n"
    return header + (_csv_rows(columns) if len(klines) else b"")


def daily_klines(klines: pd.DataFrame) -> pd.DataFrame:
    """The 1d klines of 1m klines (as `expected_klines` makes them): one row per day, its `count` the
    day's trades."""
    day = klines["open_time"] // 86_400_000 * 86_400_000
    days = klines.groupby(day, sort=True).agg(
        open=("open", "first"), high=("high", "max"), low=("low", "min"), close=("close", "last"),
        volume=("volume", "sum"), quote_volume=("quote_volume", "sum"), count=("count", "sum"),
        taker_buy_volume=("taker_buy_volume", "sum"),
        taker_buy_quote_volume=("taker_buy_quote_volume", "sum"),
    )  # fmt: skip
    return days.rename_axis("open_time").reset_index()


def write_klines(
    root: Path, market: str, ticker: str, period: str, klines: pd.DataFrame, interval: str = "1m"
) -> Path:
    """Write the klines archive of `period` (YYYY-MM-DD or YYYY-MM) and its `.CHECKSUM` into a mirror."""
    from binance_assets.markets import MARKETS

    name = f"{ticker}-{interval}-{period}"
    data = zip_archive(klines_csv(klines, _PUBLISHED_LAYOUT[market]), f"{name}.csv")
    return write_archive(root, MARKETS[market].klines_key(ticker, period, interval), data)


_PUBLISHED_LAYOUT = {"spot": "spot_ms", "um": "um_header", "cm": "cm"}
_PUBLISHED_AGG_LAYOUT = {"spot": "spot_ms", "um": "um_header", "cm": "cm_header"}
"""The layouts `publish` writes each market's trades and aggTrades archives in."""


def publish(
    root: Path,
    market: str,
    ticker: str,
    days: list[dt.date],
    *,
    trades_per_day: int = 400,
    monthly: tuple[str, ...] = (),
    daily: bool = True,
    seed: int = 0,
    klines: bool = False,
    spread: int = 1,
    datasets: tuple[str, ...] = ("trades",),
) -> pd.DataFrame:
    """Write a ticker's trades for `days` into a mirror `root` laid out like the bucket; return the trades.

    `datasets` says which archives each period gets: trades, aggTrades (`agg_trades` of the same trades),
    or both.
    Each day gets `trades_per_day` trades with ids continuing across days. Daily archives are written
    when `daily`, and a monthly archive for each `YYYY-MM` in `monthly` (holding that month's days).
    With `klines`, each archive gets Binance's 1m klines of the same period, from the same trades
    (`expected_klines`). `spread` cuts each day into that many equal windows, each with its share of the
    trades (24: every hour trades, as liquid tickers do; 1: heavy-tailed gaps of hours).
    """
    from binance_assets.markets import MARKETS

    layout = _PUBLISHED_LAYOUT[market]
    frames = []
    window, next_id = 86_400 // spread, 1
    for index, day in enumerate(sorted(days)):
        midnight = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
        for part in range(spread):
            count = trades_per_day // spread + (part < trades_per_day % spread)
            frames.append(
                make_trades(
                    count,
                    midnight + dt.timedelta(seconds=part * window),
                    window,
                    first_id=next_id,
                    seed=seed + index + 1000 * part,
                    time_unit="ms",
                    contracts=market == "cm",
                )
            )
            next_id += count
    trades = pd.concat(frames, ignore_index=True)
    stamps = trades["time_us"].to_numpy().astype("datetime64[us]")
    day_of, month_of = stamps.astype("datetime64[D]").astype(str), stamps.astype("datetime64[M]").astype(str)
    periods = [(d.isoformat(), day_of == d.isoformat()) for d in days if daily]
    periods += [(month, month_of == month) for month in monthly]
    for period, rows in periods:
        for dataset in datasets:
            if dataset == "trades":
                text = trades_csv(trades[rows], layout)
            else:
                text = agg_trades_csv(agg_trades(trades[rows]), _PUBLISHED_AGG_LAYOUT[market])
            key = MARKETS[market].archive_key(dataset, ticker, period)
            write_archive(root, key, zip_archive(text, f"{ticker}-{dataset}-{period}.csv"))
        if klines:
            served = sorted(d for d in days if d.isoformat().startswith(period))
            quote_col = "base_qty" if market == "cm" else None
            write_klines(root, market, ticker, period, expected_klines(trades[rows], served, quote_col))
    return trades


def uncovered_ids(trades: pd.DataFrame, day: dt.date) -> np.ndarray:
    """Trade ids of `day` to leave out of every aggregate, as a day of real USD-M aggTrades does
    (docs/vision-format.md section 5): a single id and a run of three inside minutes, the first trade of
    a minute and the last trade of another (each gap's neighbours in two minutes)."""
    rows = trades[pd.to_datetime(trades["time_us"], unit="us").dt.date == day]
    minute = rows["time_us"].to_numpy(np.int64) // MINUTE_US
    ids = rows["id"].to_numpy(np.int64)
    inside = np.flatnonzero((minute[1:-1] == minute[:-2]) & (minute[1:-1] == minute[2:])) + 1
    runs = inside[np.isin(inside - 1, inside) & np.isin(inside + 1, inside)]
    first_of_minute = np.flatnonzero(minute[1:-1] != minute[:-2]) + 1
    last_of_minute = np.flatnonzero(minute[1:-1] != minute[2:]) + 1
    picks = [inside[len(inside) // 5], first_of_minute[len(first_of_minute) // 2]]
    picks += [last_of_minute[3 * len(last_of_minute) // 4], *(runs[4 * len(runs) // 5] + np.arange(-1, 2))]
    return np.sort(ids[picks])


def publish_uncovered(
    root: Path,
    market: str,
    ticker: str,
    day: dt.date,
    trades: pd.DataFrame,
    uncovered: np.ndarray,
    *,
    count_uncovered: bool,
    count_offset: int = 0,
) -> pd.DataFrame:
    """Rewrite `day`'s aggTrades archive so that no aggregate covers the ids `uncovered`, and its 1m klines
    from the covered trades; with `count_uncovered` the klines' `count` also counts each uncovered id in
    the minute of its own trade, every other field staying that of the covered trades. `count_offset` is
    added to the count of the day's busiest minute. Returns the covered trades of the day."""
    from binance_assets.markets import MARKETS

    rows = trades[pd.to_datetime(trades["time_us"], unit="us").dt.date == day]
    covered = drop_ids(rows, uncovered)
    text = agg_trades_csv(agg_trades(covered), _PUBLISHED_AGG_LAYOUT[market])
    key = MARKETS[market].archive_key("aggTrades", ticker, day.isoformat())
    write_archive(root, key, zip_archive(text, f"{ticker}-aggTrades-{day}.csv"))
    klines = expected_klines(covered, [day], "base_qty" if market == "cm" else None)
    if count_uncovered:
        gone = rows[rows["id"].isin(uncovered)]
        extra = (gone["time_us"] // MINUTE_US * 60_000).value_counts()
        klines["count"] += klines["open_time"].map(extra).fillna(0).astype(np.int64)
    klines.loc[klines["count"].idxmax(), "count"] += count_offset
    write_klines(root, market, ticker, day.isoformat(), klines)
    return covered


def ranges_text(ids: np.ndarray) -> str:
    """Sorted distinct ids as runs, the way daily_liquidity.uncovered_id_ranges writes them: `3,7-9`."""
    runs = np.split(ids, np.flatnonzero(np.diff(ids) > 1) + 1) if len(ids) else []
    return ",".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)
