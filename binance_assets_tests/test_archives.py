"""Tests of the synthetic archives and of the bars oracle itself (hand-computed and real-kline checks)."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import math
import re
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from binance_assets_tests.archives import (
    DAY_US,
    LAYOUTS,
    cm_base_qty,
    drop_ids,
    duplicate_ids,
    expected_1m,
    expected_bars,
    expected_day_stats,
    interleave,
    make_trades,
    to_us,
    trades_csv,
    write_archive,
    zip_archive,
)
from binance_assets_tests.helpers import REAL

SPOT_COLUMNS = ["id", "price", "qty", "quote_qty", "time", "is_buyer_maker", "is_best_match"]
KLINE_COLUMNS = [
    "open_time",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "close_time",
    "quote_volume",
    "count",
    "taker_buy_volume",
    "taker_buy_quote_volume",
    "ignore",
]

D1 = dt.date(2024, 1, 1)
D2 = dt.date(2024, 1, 2)
MIDNIGHT = 1_704_153_600_000_000  # 2024-01-02 00:00:00 UTC in microseconds
S = 1_000_000


def hand_trades() -> pd.DataFrame:
    """Six rows in file order: an id tie-break, an exact duplicate, a midnight bar, an interleaved row."""
    rows = [
        (10, 100.0, 1.0, MIDNIGHT - 7 * S, False),  # bar 23:59:55 (covers 23:59:50-55)
        (12, 99.0, 1.0, MIDNIGHT - 3 * S, False),  # bar 00:00:00, same time as 11 but a later id
        (11, 101.0, 2.0, MIDNIGHT - 3 * S, True),  # bar 00:00:00, opens it: (time, id) order
        (12, 99.0, 1.0, MIDNIGHT - 3 * S, False),  # exact duplicate: dropped
        (14, 102.0, 0.5, MIDNIGHT, False),  # bar 00:00:05 of D2
        (15, 98.0, 3.0, MIDNIGHT - 1, True),  # D1's last microsecond, after a D2 row; closes bar 00:00:00
    ]
    return pd.DataFrame(rows, columns=["id", "price", "qty", "time_us", "is_buyer_maker"])


def records(frame: pd.DataFrame) -> list[dict[str, object]]:
    return frame.to_dict("records")


def test_expected_bars_by_hand() -> None:
    assert records(expected_bars(hand_trades())) == [
        {
            "day": D1,
            "ts": MIDNIGHT - 5 * S,
            "open": 100.0,
            "high": 100.0,
            "low": 100.0,
            "close": 100.0,
            "volume": 1.0,
            "quote_volume": 100.0,
            "taker_buy_volume": 1.0,
            "trade_count": 1,
        },
        {
            "day": D1,
            "ts": MIDNIGHT,
            "open": 101.0,
            "high": 101.0,
            "low": 98.0,
            "close": 98.0,
            "volume": 6.0,
            "quote_volume": 595.0,
            "taker_buy_volume": 1.0,
            "trade_count": 3,
        },
        {
            "day": D2,
            "ts": MIDNIGHT + 5 * S,
            "open": 102.0,
            "high": 102.0,
            "low": 102.0,
            "close": 102.0,
            "volume": 0.5,
            "quote_volume": 51.0,
            "taker_buy_volume": 0.5,
            "trade_count": 1,
        },
    ]


def test_expected_day_stats_by_hand() -> None:
    assert records(expected_day_stats(hand_trades())) == [
        {
            "day": D1,
            "trade_count": 4,
            "volume": 7.0,
            "quote_volume": 695.0,
            "taker_buy_volume": 2.0,
            "bar_count": 2,
            "first_trade_id": 10,
            "last_trade_id": 15,
            "missing_trade_ids": 2,
            "first_time_us": MIDNIGHT - 7 * S,
            "last_time_us": MIDNIGHT - 1,
        },
        {
            "day": D2,
            "trade_count": 1,
            "volume": 0.5,
            "quote_volume": 51.0,
            "taker_buy_volume": 0.5,
            "bar_count": 1,
            "first_trade_id": 14,
            "last_trade_id": 14,
            "missing_trade_ids": 0,
            "first_time_us": MIDNIGHT,
            "last_time_us": MIDNIGHT,
        },
    ]


def test_expected_1m_by_hand() -> None:
    minute = (MIDNIGHT - 60 * S) // 1000
    assert records(expected_1m(hand_trades())) == [
        {
            "open_time": minute,
            "open": 100.0,
            "high": 101.0,
            "low": 98.0,
            "close": 98.0,
            "volume": 7.0,
            "quote_volume": 695.0,
            "count": 4,
            "taker_buy_volume": 2.0,
            "taker_buy_quote_volume": 199.0,
        },
        {
            "open_time": minute + 60_000,
            "open": 102.0,
            "high": 102.0,
            "low": 102.0,
            "close": 102.0,
            "volume": 0.5,
            "quote_volume": 51.0,
            "count": 1,
            "taker_buy_volume": 0.5,
            "taker_buy_quote_volume": 51.0,
        },
    ]


def test_oracle_keeps_first_of_conflicting_duplicates_and_uses_quote_col() -> None:
    trades = pd.DataFrame(
        [
            (20, 10.0, 1.0, 0.25, S, False),
            (20, 30.0, 5.0, 9.0, S + 1, False),
            (21, 20.0, 1.0, 0.5, S + 2, True),
        ],
        columns=["id", "price", "qty", "base_qty", "time_us", "is_buyer_maker"],
    )
    (bar,) = records(expected_bars(trades, quote_col="base_qty"))
    assert (bar["high"], bar["low"], bar["volume"], bar["trade_count"]) == (20.0, 10.0, 2.0, 2)
    assert bar["quote_volume"] == 0.75
    (day,) = records(expected_day_stats(trades, quote_col="base_qty"))
    assert (day["quote_volume"], day["trade_count"], day["missing_trade_ids"]) == (0.75, 2, 0)


def test_5s_bars_roll_up_to_1m_and_days_on_random_quirky_data() -> None:
    start = dt.datetime(2024, 1, 1, 23, 50, tzinfo=dt.UTC)
    trades = duplicate_ids(interleave(make_trades(20_000, start, 1200, seed=3), seed=4), 0.05, seed=5)
    bars = expected_bars(trades)
    minutes = bars.assign(open_time=(bars["ts"] - 1) // 60_000_000 * 60_000).groupby("open_time")
    rolled = minutes.agg(
        open=("open", "first"),
        high=("high", "max"),
        low=("low", "min"),
        close=("close", "last"),
        volume=("volume", "sum"),
        count=("trade_count", "sum"),
    ).reset_index()
    klines = expected_1m(trades)
    pd.testing.assert_frame_equal(klines[rolled.columns], rolled, check_exact=False, rtol=1e-12)
    assert klines["count"].sum() == 20_000

    days = expected_day_stats(trades)
    per_day = bars.groupby("day").agg(volume=("volume", "sum"), bar_count=("ts", "size")).reset_index()
    assert days["day"].tolist() == [D1, D2]
    assert days["bar_count"].tolist() == per_day["bar_count"].tolist()
    np.testing.assert_allclose(days["volume"], per_day["volume"], rtol=1e-12)
    assert days["missing_trade_ids"].tolist() == [0, 0]


def test_oracle_reproduces_binance_kline_of_2025_01_01_00_00() -> None:
    trades = pd.read_csv(REAL / "BTCUSDT-trades-2025-01-01_first-minute.csv", header=None, names=SPOT_COLUMNS)
    kline = pd.read_csv(REAL / "spot_BTCUSDT_1m_kline_2025-01-01T00-00.csv", header=None, names=KLINE_COLUMNS)
    (got,) = records(expected_1m(trades.rename(columns={"time": "time_us"})))
    (want,) = records(kline)
    assert got["open_time"] * 1000 == want["open_time"] == 1_735_689_600_000_000
    assert got["count"] == want["count"] == 2631
    assert (got["open"], got["high"], got["low"], got["close"]) == (93576.0, 93610.93, 93537.5, 93610.93)
    for field in ("open", "high", "low", "close"):
        assert got[field] == want[field]
    for field in ("volume", "quote_volume", "taker_buy_volume", "taker_buy_quote_volume"):
        assert math.isclose(got[field], want[field], rel_tol=1e-12), field


FIXED = r"\d+\.\d{8}"
PLAIN = r"\d+\.(?:0|\d*[1-9])"
ROW_PATTERNS = {
    "spot_ms": rf"\d+,{FIXED},{FIXED},{FIXED},\d{{13}},(?:True|False),True",
    "spot_us": rf"\d+,{FIXED},{FIXED},{FIXED},\d{{16}},(?:True|False),True",
    "um_header": rf"\d+,{PLAIN},{PLAIN},{PLAIN},\d{{13}},(?:true|false)",
    "um_noheader": rf"\d+,{PLAIN},{PLAIN},{PLAIN},\d{{13}},(?:true|false)",
    "cm": rf"\d+,{PLAIN},\d+,{PLAIN},\d{{13}},(?:true|false)",
}
HEADERS = {
    "um_header": "id,price,qty,quote_qty,time,is_buyer_maker",
    "cm": "id,price,qty,base_qty,time,is_buyer_maker",
}
START = dt.datetime(2024, 3, 5, 23, 59, tzinfo=dt.UTC)


def layout_trades(layout: str) -> pd.DataFrame:
    spec = LAYOUTS[layout]
    return make_trades(
        400, START, 120, seed=7, price=68402.6, time_unit=spec.time_unit, contracts=spec.market == "cm"
    )


@pytest.mark.parametrize(
    ("layout", "real_file"),
    [("spot_ms", "binance_spot_BTCUSDT_trades_2024-01-01_first5.csv"), ("spot_us", None)],
)
def test_spot_patterns_match_real_files(layout: str, real_file: str | None) -> None:
    name = real_file or "BTCUSDT-trades-2025-01-01_first-minute.csv"
    for line in (REAL / name).read_text().splitlines():
        assert re.fullmatch(ROW_PATTERNS[layout], line), line


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_layout_text_round_trips_through_csv_module(layout: str) -> None:
    trades = layout_trades(layout)
    lines = trades_csv(trades, layout).decode().split("\n")
    assert lines[-1] == ""
    lines = lines[:-1]
    if layout in HEADERS:
        assert lines.pop(0) == HEADERS[layout]
    assert len(lines) == len(trades)
    for line in lines:
        assert re.fullmatch(ROW_PATTERNS[layout], line), line

    rows = list(csv.reader(lines))
    to_us_factor = 1 if layout == "spot_us" else 1000
    assert [int(row[0]) for row in rows] == trades["id"].tolist()
    assert [float(row[1]) for row in rows] == trades["price"].tolist()
    assert [float(row[2]) for row in rows] == trades["qty"].tolist()
    assert [int(row[4]) * to_us_factor for row in rows] == trades["time_us"].tolist()
    assert [row[5].lower() == "true" for row in rows] == trades["is_buyer_maker"].tolist()
    assert {row[5] for row in rows} == ({"True", "False"} if layout.startswith("spot") else {"true", "false"})
    for row, price, qty in zip(rows, trades["price"], trades["qty"], strict=True):
        third = qty * 100 / price if layout == "cm" else price * qty
        assert math.isclose(float(row[3]), third, rel_tol=1e-12, abs_tol=5.000001e-9), row


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_layout_round_trips_through_pandas(layout: str) -> None:
    trades = layout_trades(layout)
    columns = ["id", "price", "qty", "third", "time", "is_buyer_maker", "is_best_match"][
        : 7 if layout.startswith("spot") else 6
    ]
    header = 0 if layout in HEADERS else None
    parsed = pd.read_csv(io.BytesIO(trades_csv(trades, layout)), header=header, names=columns)
    assert parsed["is_buyer_maker"].dtype == bool
    assert parsed["id"].tolist() == trades["id"].tolist()
    assert parsed["price"].tolist() == trades["price"].tolist()
    assert parsed["qty"].tolist() == trades["qty"].tolist()
    assert (parsed["time"] * (1 if layout == "spot_us" else 1000)).tolist() == trades["time_us"].tolist()
    assert parsed["is_buyer_maker"].tolist() == trades["is_buyer_maker"].tolist()
    if layout == "cm":
        assert parsed["third"].tolist() == trades["base_qty"].tolist()


def test_quote_qty_column_is_written_verbatim() -> None:
    trades = make_trades(3, START, 1, time_unit="ms")
    trades["quote_qty"] = [1.0704968, 2.5, 3.0]
    parsed = pd.read_csv(io.BytesIO(trades_csv(trades, "um_noheader")), header=None)
    assert parsed[3].tolist() == [1.0704968, 2.5, 3.0]


def test_trades_csv_refuses_what_a_layout_cannot_hold() -> None:
    with pytest.raises(ValueError, match="whole ms"):
        trades_csv(make_trades(50, START, 1, time_unit="us"), "spot_ms")
    with pytest.raises(ValueError, match="integral"):
        trades_csv(make_trades(50, START, 1, time_unit="ms"), "cm")


def test_make_trades_shape() -> None:
    trades = make_trades(5000, START, 600, first_id=1000, seed=1)
    assert trades.columns.tolist() == ["id", "price", "qty", "time_us", "is_buyer_maker"]
    assert trades.dtypes.astype(str).tolist() == ["int64", "float64", "float64", "int64", "bool"]
    assert trades["id"].tolist() == list(range(1000, 6000))
    times = trades["time_us"].to_numpy()
    assert (np.diff(times) >= 0).all()
    assert to_us(START) <= times.min() and times.max() < to_us(START) + 600 * S
    assert times.max() - times.min() > 500 * S
    assert trades["time_us"].nunique() < 0.9 * len(trades)
    assert (trades["price"] > 0).all() and (trades["qty"] > 0).all()
    assert (trades["price"] == trades["price"].round(2)).all()
    assert (trades["qty"] == trades["qty"].round(5)).all()
    assert trades["price"].nunique() > 50
    assert 0.3 < trades["is_buyer_maker"].mean() < 0.7
    pd.testing.assert_frame_equal(trades, make_trades(5000, START, 600, first_id=1000, seed=1))
    assert not trades["price"].equals(make_trades(5000, START, 600, first_id=1000, seed=2)["price"])


def test_make_trades_ms_and_contracts() -> None:
    trades = make_trades(2000, START, 5, time_unit="ms", contracts=True)
    assert (trades["time_us"] % 1000 == 0).all()
    assert (trades["qty"] == trades["qty"].round()).all() and (trades["qty"] >= 1).all()
    np.testing.assert_array_equal(trades["base_qty"], np.round(trades["qty"] * 100 / trades["price"], 8))
    assert cm_base_qty(np.array([9635.0]), np.array([1.0])).tolist() == [0.01037883]
    with pytest.raises(ValueError, match="aligned"):
        make_trades(10, START + dt.timedelta(microseconds=1), 5, time_unit="ms")


def test_trades_csv_joins_its_chunks_seamlessly() -> None:
    trades = make_trades(600_000, START, 86_400, time_unit="ms")
    parsed = pd.read_csv(io.BytesIO(trades_csv(trades, "um_header")))
    assert parsed.columns.tolist() == HEADERS["um_header"].split(",")
    assert parsed["id"].tolist() == trades["id"].tolist()
    assert parsed["quote_qty"].notna().all()


def test_zip_archive_members() -> None:
    data = b"1,2.0,3.0,6.0,1700000000000,true\n"
    archive = zip_archive(
        data, "X-trades-2021-04.csv", extra_members={"fsx-data/collector_data/X-trades-2021-04.csv": data}
    )
    with zipfile.ZipFile(io.BytesIO(archive)) as opened:
        assert opened.namelist() == ["fsx-data/collector_data/X-trades-2021-04.csv", "X-trades-2021-04.csv"]
        assert {info.compress_type for info in opened.infolist()} == {zipfile.ZIP_DEFLATED}
        assert opened.read("X-trades-2021-04.csv") == data


def test_write_archive_checksum(tmp_path: Path) -> None:
    key = "data/spot/daily/trades/BTCUSDT/BTCUSDT-trades-2024-01-01.zip"
    archive = zip_archive(b"1,2,3\n", "BTCUSDT-trades-2024-01-01.csv")
    path = write_archive(tmp_path, key, archive)
    assert path == tmp_path / key
    assert path.read_bytes() == archive
    checksum = (tmp_path / f"{key}.CHECKSUM").read_text()
    assert checksum == f"{hashlib.sha256(archive).hexdigest()}  BTCUSDT-trades-2024-01-01.zip\n"


def test_interleave_puts_an_earlier_day_after_a_later_one() -> None:
    trades = make_trades(3000, dt.datetime(2024, 1, 1, tzinfo=dt.UTC), 3 * 86_400)
    mixed = interleave(trades, seed=9)
    pd.testing.assert_frame_equal(mixed.sort_values("id", ignore_index=True), trades)
    day = mixed["time_us"].to_numpy() // DAY_US
    assert (day < np.maximum.accumulate(day)).any()
    with pytest.raises(ValueError, match="two UTC days"):
        interleave(make_trades(10, START, 1), seed=0)


def test_duplicate_ids_adds_exact_copies_after_their_originals() -> None:
    trades = make_trades(1000, START, 60)
    doubled = duplicate_ids(trades, 0.1, seed=2)
    assert len(doubled) == 1100
    pd.testing.assert_frame_equal(doubled.drop_duplicates(ignore_index=True), trades)
    copies = doubled[doubled.duplicated("id")]
    original_row = pd.Series(np.arange(len(doubled)), index=doubled["id"]).groupby(level=0).min()
    assert len(copies) == 100
    gap = copies.index.to_numpy() - original_row[copies["id"]].to_numpy()
    assert (gap >= 1).all() and (gap > 1).any()


def test_drop_ids_makes_gaps() -> None:
    trades = make_trades(100, START, 60)
    assert drop_ids(trades, [5, 6, 50])["id"].tolist() == [i for i in range(1, 101) if i not in (5, 6, 50)]
    with pytest.raises(ValueError, match="101"):
        drop_ids(trades, [101])
