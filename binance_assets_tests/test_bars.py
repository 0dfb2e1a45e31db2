"""Bars and day stats against the independent pandas oracle, hand-made cases and Binance's own kline."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from binance_assets.bars import _merge, _merge_neighbours, _reduce, _SeenIds, aggregate_trades
from binance_assets.markets import MARKETS
from binance_assets.vision.archive import read_archive
from binance_assets.vision.trades import TRADES, TRADES_SCHEMA
from binance_assets_tests.archives import (
    drop_ids,
    duplicate_ids,
    interleave,
    make_trades,
    zip_archive,
)
from binance_assets_tests.helpers import REAL, assert_aggregation_matches

US = 1_000_000
MIDNIGHT = dt.datetime(2024, 3, 1, tzinfo=dt.UTC)


def as_batches(
    trades: pd.DataFrame, sizes: int | list[int], quote_col: str | None = None
) -> list[pa.RecordBatch]:
    """Trades in TRADES_SCHEMA cut into batches of the given sizes (cycled)."""
    quote = trades[quote_col] if quote_col else trades["price"] * trades["qty"]
    table = pa.table(
        {
            "id": trades["id"].to_numpy(np.int64),
            "price": trades["price"].to_numpy(np.float64),
            "qty": trades["qty"].to_numpy(np.float64),
            "quote_qty": quote.to_numpy(np.float64),
            "time_us": trades["time_us"].to_numpy(np.int64),
            "is_buyer_maker": trades["is_buyer_maker"].to_numpy(bool),
        },
        schema=TRADES_SCHEMA,
    )
    cycle = [sizes] if isinstance(sizes, int) else sizes
    batches, start, i = [], 0, 0
    while start < table.num_rows:
        size = cycle[i % len(cycle)]
        batches.extend(table.slice(start, size).to_batches())
        start, i = start + size, i + 1
    return batches


def assert_matches_oracle(trades: pd.DataFrame, sizes: int | list[int], quote_col: str | None = None) -> None:
    assert_aggregation_matches(aggregate_trades(as_batches(trades, sizes, quote_col)), trades, quote_col)


def three_days(n: int = 60_000, seed: int = 1) -> pd.DataFrame:
    return make_trades(n, MIDNIGHT - dt.timedelta(hours=6), 2 * 86_400, seed=seed)


@pytest.mark.parametrize("sizes", [60_000, 997, [1, 5_000, 7, 13_331]])
def test_bars_match_oracle_for_any_batching(sizes: int | list[int]) -> None:
    assert_matches_oracle(three_days(), sizes)


def test_interleaved_days_like_monthly_files() -> None:
    assert_matches_oracle(interleave(three_days(seed=2), seed=5), [4_096, 1_000])


def test_duplicated_ids_count_once_even_across_batches() -> None:
    trades = duplicate_ids(three_days(seed=3), fraction=0.05, seed=7)
    assert len(trades) > 60_000
    result = aggregate_trades(as_batches(trades, 2_500))
    assert result.days["trade_count"].to_numpy().sum() == 60_000
    assert result.days["duplicate_rows"].to_numpy().sum() == len(trades) - 60_000
    assert_matches_oracle(trades, 2_500)


def test_a_repeated_run_of_consecutive_ids_counts_once() -> None:
    """Batches of consecutive ids skip the id look-up; a later batch repeating some of them (a file that
    restarts part-way) still finds them seen."""
    trades = three_days(seed=9)
    repeated = pd.concat([trades, trades.iloc[10_003:10_500], trades.iloc[30_000:30_001]], ignore_index=True)
    result = aggregate_trades(as_batches(repeated, [4_096, 997]))
    assert result.days["trade_count"].to_numpy().sum() == 60_000
    assert result.days["duplicate_rows"].to_numpy().sum() == 498
    assert_matches_oracle(repeated, [4_096, 997])


@pytest.mark.parametrize("seed", range(6))
def test_seen_ids_match_a_set(seed: int) -> None:
    """_SeenIds against a Python set, on batches of every kind: consecutive runs above all ids seen (kept
    as ranges), runs with gaps, runs going back, shuffled ones, repeats, single ids at byte edges."""
    rng = np.random.default_rng(seed)
    seen_ids, seen, top = _SeenIds(), set(), 1_000 + int(rng.integers(0, 8))
    for _ in range(60):
        kind = rng.integers(0, 5)
        size = int(rng.integers(1, 40))
        if kind == 0:  # consecutive, above everything
            ids = np.arange(top + 1, top + 1 + size)
        elif kind == 1:  # above, with gaps
            ids = top + 1 + np.sort(rng.choice(3 * size, size, replace=False))
        elif kind == 2:  # consecutive, starting back among seen ids
            start = top - int(rng.integers(0, 30))
            ids = np.arange(start, start + size)
        elif kind == 3:  # anywhere in the span, shuffled, with repeats
            ids = rng.integers(995, top + 20, size)
        else:  # one id
            ids = np.array([top + int(rng.integers(-9, 9))])
        mask = seen_ids.first_seen(ids.astype(np.int64))
        expected, batch = [], set()
        for i in ids.tolist():
            expected.append(i not in seen and i not in batch)
            batch.add(i)
        got = np.ones(len(ids), bool) if mask is None else mask
        assert got.tolist() == expected
        seen |= batch
        top = max(top, int(ids.max()))


def test_neighbouring_partial_bars_merge_as_the_full_merge_does() -> None:
    """Partial bars of batches in time order (a bar split across batches) merge without the full sort."""
    trades = three_days(seed=10)
    parts = []
    for batch in as_batches(trades, [333, 1_000, 7]):
        time = batch.column("time_us").to_numpy()
        price, qty = batch.column("price").to_numpy(), batch.column("qty").to_numpy()
        ids = batch.column("id").to_numpy()
        parts.append(_reduce(time // 5_000_000, time, ids, price, qty, price * qty, qty, None))
    merged = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
    assert len(np.unique(merged["key"])) < len(merged["key"])  # bars were split
    expected = _merge(merged)
    got = _merge_neighbours(dict(merged))
    assert set(got) == set(expected)
    for name, values in expected.items():
        np.testing.assert_array_equal(got[name], values, err_msg=name)


def test_id_gaps_are_counted_per_day() -> None:
    trades = three_days(seed=4)
    gaps = trades["id"].to_numpy()[[100, 101, 102, 40_000]]
    days = aggregate_trades(as_batches(drop_ids(trades, gaps), 3_000)).days
    assert days["missing_trade_ids"].to_numpy().sum() == 4
    assert_matches_oracle(drop_ids(trades, gaps), 3_000)


def test_coin_m_volume_is_base_qty() -> None:
    trades = make_trades(20_000, MIDNIGHT, 3_600, contracts=True, seed=6)
    assert_matches_oracle(trades, 1_234, quote_col="base_qty")


def test_right_labelled_bars_and_midnight() -> None:
    """Hand-computed: [t, t+5s) -> bar t+5s; the last bar of a day is stamped 00:00:00 of the next."""
    day = int(MIDNIGHT.timestamp()) * US
    trades = pd.DataFrame(
        {
            "id": [1, 2, 3, 4, 5, 6],
            "price": [10.0, 12.0, 11.0, 9.0, 20.0, 21.0],
            "qty": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            "time_us": [
                day,
                day + 4_999_999,
                day + 5 * US,
                day + 5 * US,
                day + 86_395 * US,
                day + 86_400 * US,
            ],
            "is_buyer_maker": [True, False, False, True, False, True],
        }
    )
    result = aggregate_trades(as_batches(trades, 2))
    bars = result.bars.to_pylist()
    second = dt.timedelta(seconds=1)
    assert [b["ts"] for b in bars] == [MIDNIGHT + 5 * second, MIDNIGHT + 10 * second,
                                       MIDNIGHT + 86_400 * second, MIDNIGHT + 86_405 * second]  # fmt: skip
    assert [b["day"] for b in bars] == [MIDNIGHT.date()] * 3 + [MIDNIGHT.date() + dt.timedelta(days=1)]
    assert (bars[0]["open"], bars[0]["high"], bars[0]["low"], bars[0]["close"]) == (10.0, 12.0, 10.0, 12.0)
    assert bars[0]["taker_buy_volume"] == 2.0 and bars[0]["trade_count"] == 2
    assert bars[1]["quote_volume"] == 11.0 * 3 + 9.0 * 4
    assert result.days["trade_count"].to_pylist() == [5, 1]
    assert result.days["bar_count"].to_pylist() == [3, 1]


def test_open_and_close_follow_time_then_id_not_file_order() -> None:
    t = int(MIDNIGHT.timestamp()) * US + 1_000
    trades = pd.DataFrame(
        {
            "id": [7, 5, 6, 9, 8],
            "price": [3.0, 1.0, 2.0, 5.0, 4.0],
            "qty": [1.0] * 5,
            "time_us": [t, t, t, t + 10, t + 10],
            "is_buyer_maker": [False] * 5,
        }
    )
    bar = aggregate_trades(as_batches(trades, [2, 3])).bars.to_pylist()[0]
    assert (bar["open"], bar["close"]) == (1.0, 5.0)


def test_by_day_splits_bars_and_stats() -> None:
    result = aggregate_trades(as_batches(three_days(seed=8), 10_000))
    parts = list(result.by_day())
    assert [p.day for p in parts] == result.days["day"].to_pylist()
    assert sum(p.bars.num_rows for p in parts) == result.bars.num_rows
    for part in parts:
        assert set(part.bars["day"].to_pylist()) == {part.day}
        assert part.bars["trade_count"].to_numpy().sum() == part.stats["trade_count"]


def test_no_trades_no_bars() -> None:
    result = aggregate_trades([])
    assert result.bars.num_rows == 0 and result.days.num_rows == 0


def test_real_trades_reproduce_binance_kline_exactly(tmp_path: Path) -> None:
    """Spot BTCUSDT 2025-01-01 00:00: the 2631 real trades give Binance's own 1m kline, every field."""
    path = tmp_path / "BTCUSDT-trades-2025-01-01.zip"
    csv = (REAL / "BTCUSDT-trades-2025-01-01_first-minute.csv").read_bytes()
    path.write_bytes(zip_archive(csv, "BTCUSDT-trades-2025-01-01.csv"))
    kline = (REAL / "spot_BTCUSDT_1m_kline_2025-01-01T00-00.csv").read_text().strip().split(",")
    bars = aggregate_trades(read_archive(path, MARKETS["spot"], TRADES)).bars.to_pandas()
    assert len(bars) == 12  # every 5 s of the minute traded

    def exact(value: float, decimals: int = 8) -> Decimal:
        return Decimal(f"{value:.{decimals}f}")

    assert int(bars["trade_count"].sum()) == int(kline[8])
    assert exact(bars["open"].iloc[0]) == Decimal(kline[1])
    assert exact(bars["high"].max()) == Decimal(kline[2])
    assert exact(bars["low"].min()) == Decimal(kline[3])
    assert exact(bars["close"].iloc[-1]) == Decimal(kline[4])
    assert exact(bars["volume"].sum()) == Decimal(kline[5])
    assert exact(bars["quote_volume"].sum()) == Decimal(kline[7])
    assert exact(bars["taker_buy_volume"].sum()) == Decimal(kline[9])


def test_aggregate_rows_count_their_trade_ranges() -> None:
    """Hand-computed: a row with last_id stands for trades id..last_id; duplicates are keyed on id and
    counted in rows; open/close follow (time, id); the day's span less its trades is missing."""
    t = int(MIDNIGHT.timestamp()) * US
    rows = pd.DataFrame(
        {
            "id": [10, 13, 7, 13, 20],
            "last_id": [12, 15, 9, 15, 20],
            "price": [2.0, 3.0, 1.0, 3.0, 4.0],
            "qty": [1.0, 2.0, 4.0, 2.0, 8.0],
            "time_us": [t, t, t, t + 1, t + 2],
            "is_buyer_maker": [False, True, False, True, False],
        }
    )
    table = pa.Table.from_batches(as_batches(rows, 5)).append_column("last_id", pa.array(rows["last_id"]))
    result = aggregate_trades(table.to_batches(max_chunksize=2))
    (bar,) = result.bars.to_pylist()
    (day,) = result.days.to_pylist()
    assert (bar["open"], bar["close"], bar["trade_count"]) == (1.0, 4.0, 3 + 3 + 3 + 1)
    assert (bar["volume"], bar["taker_buy_volume"]) == (15.0, 13.0)
    assert (day["first_trade_id"], day["last_trade_id"], day["trade_count"]) == (7, 20, 10)
    assert (day["missing_trade_ids"], day["duplicate_rows"]) == (4, 1)  # ids 16..19
