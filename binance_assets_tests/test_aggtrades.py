"""aggTrades archives against trades archives of the same trades, in every layout, and bad input.

The proof: the same synthetic trades, written as a trades archive and (merged the way Binance merges
them, `archives.agg_trades`) as an aggTrades archive, give the same bars and day stats, both equal to
the independent pandas oracle of the trades (docs/vision-format.md section 8).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from binance_assets.bars import GAPS_SCHEMA, Aggregation, aggregate_trades, id_ranges
from binance_assets.markets import MARKETS, cm_contract_size
from binance_assets.vision.agg_trades import AGG_TRADES, AGG_TRADES_SCHEMA
from binance_assets.vision.archive import read_archive
from binance_assets.vision.errors import ArchiveFormatError
from binance_assets.vision.trades import TRADES
from binance_assets_tests.archives import (
    AGG_LAYOUTS,
    agg_trades,
    agg_trades_csv,
    cm_base_qty,
    drop_ids,
    interleave,
    make_trades,
    ranges_text,
    trades_csv,
    uncovered_ids,
    zip_archive,
)
from binance_assets_tests.helpers import assert_aggregation_matches, assert_volumes

MIDNIGHT = dt.datetime(2024, 3, 1, tzinfo=dt.UTC)
TRADES_LAYOUT = {"cm_header": "cm", "cm_noheader": "cm"}
"""The trades layout holding the same market and era as an aggTrades layout (itself unless named)."""
BASE_QTY_ROUNDING = 5e-9
"""COIN-M trades archives write each trade's base_qty rounded to 8 decimals, so a sum over n trades
differs from the exact sum over aggregates (quantity * contract size / price) by at most n * 5e-9."""


def two_days(layout: str, n: int = 40_000, seed: int = 1) -> pd.DataFrame:
    """`n` trades from 18:00 to 18:00 two days later, in the layout's time unit and qty kind."""
    spec = AGG_LAYOUTS[layout]
    return make_trades(
        n,
        MIDNIGHT - dt.timedelta(hours=6),
        2 * 86_400,
        seed=seed,
        time_unit=spec.time_unit,
        contracts=spec.integer_qty,
    )


def write(tmp_path: Path, name: str, csv: bytes) -> Path:
    path = tmp_path / f"{name}.zip"
    path.write_bytes(zip_archive(csv, f"{name}.csv"))
    return path


def agg_zip(
    tmp_path: Path, aggs: pd.DataFrame, layout: str, name: str = "BTCUSD_PERP-aggTrades-2024-03"
) -> Path:
    return write(tmp_path, name, agg_trades_csv(aggs, layout))


def read_aggs(layout: str, *paths: Path, ticker: str = "BTCUSD_PERP", **kwargs: int) -> Aggregation:
    """Bars of aggTrades archives read one after the other into one aggregator."""
    market = MARKETS[AGG_LAYOUTS[layout].market]
    size = market.contract_size(ticker)
    return aggregate_trades(
        batch
        for path in paths
        for batch in read_archive(path, market, AGG_TRADES, contract_size=size, **kwargs)
    )


def read_trades_zip(tmp_path: Path, trades: pd.DataFrame, layout: str) -> Aggregation:
    csv = trades_csv(trades, TRADES_LAYOUT.get(layout, layout))
    path = write(tmp_path, "BTCUSD_PERP-trades-2024-03", csv)
    return aggregate_trades(read_archive(path, MARKETS[AGG_LAYOUTS[layout].market], TRADES))


def oracle_args(layout: str) -> dict[str, object]:
    """COIN-M: the oracle's quote volume is the trades' base_qty, met within the rounding of each."""
    if AGG_LAYOUTS[layout].market == "cm":
        return {"quote_col": "base_qty", "quote_atol_per_trade": BASE_QTY_ROUNDING}
    return {}


def assert_same_aggregation(got: Aggregation, want: Aggregation, quote_atol_per_trade: float = 0.0) -> None:
    """Bar by bar and day by day: every field exactly, volumes within 1e-9 relative (+ quote atol)."""
    exact_bars = ["day", "ts", "open", "high", "low", "close", "trade_count"]
    exact_days = ["day", "trade_count", "bar_count", "first_trade_id", "last_trade_id", "missing_trade_ids"]
    for name, exact in (("bars", exact_bars), ("days", exact_days)):
        a, b = getattr(got, name), getattr(want, name)
        assert a.num_rows == b.num_rows, name
        assert a.select(exact).equals(b.select(exact)), name
        assert_volumes(a.to_pandas(), b.to_pandas(), quote_atol_per_trade)


@pytest.mark.parametrize("layout", sorted(AGG_LAYOUTS))
def test_aggtrades_and_trades_give_the_same_bars(tmp_path: Path, layout: str) -> None:
    trades = two_days(layout)
    aggs = agg_trades(trades, first_agg_id=7_000_000)
    assert len(aggs) < 0.9 * len(trades)  # real merging: counts come from first..last, not rows
    from_aggs = read_aggs(layout, agg_zip(tmp_path, aggs, layout), chunk_size=64 << 10)
    from_trades = read_trades_zip(tmp_path, trades, layout)

    assert_aggregation_matches(from_aggs, trades, **oracle_args(layout))  # type: ignore[arg-type]
    assert_aggregation_matches(from_trades, trades, **oracle_args(layout))  # type: ignore[arg-type]
    assert_same_aggregation(from_aggs, from_trades, BASE_QTY_ROUNDING if "cm" in layout else 0.0)
    assert from_aggs.days["missing_trade_ids"].to_pylist() == [0, 0, 0]


@pytest.mark.parametrize("layout", sorted(AGG_LAYOUTS))
def test_every_layout_reads_to_the_agg_schema(tmp_path: Path, layout: str) -> None:
    aggs = agg_trades(two_days(layout, n=5_000, seed=3), first_agg_id=1)
    market = MARKETS[AGG_LAYOUTS[layout].market]
    size = market.contract_size("BTCUSD_PERP")
    batches = read_archive(agg_zip(tmp_path, aggs, layout), market, AGG_TRADES, contract_size=size)
    table = pa.Table.from_batches(list(batches), schema=AGG_TRADES_SCHEMA)

    assert table.num_rows == len(aggs)
    np.testing.assert_array_equal(table["id"].to_numpy(), aggs["first_trade_id"].to_numpy())
    np.testing.assert_array_equal(table["last_id"].to_numpy(), aggs["last_trade_id"].to_numpy())
    np.testing.assert_array_equal(table["time_us"].to_numpy(), aggs["time_us"].to_numpy())
    np.testing.assert_array_equal(table["is_buyer_maker"].to_numpy(), aggs["is_buyer_maker"].to_numpy())
    np.testing.assert_allclose(table["qty"].to_numpy(), aggs["qty"].to_numpy(), rtol=1e-15)
    price, qty = aggs["price"].to_numpy(), aggs["qty"].to_numpy()
    quote = qty * 100.0 / price if market.qty_in_contracts else price * qty
    np.testing.assert_allclose(table["quote_qty"].to_numpy(), quote, rtol=1e-15)


def test_ids_missing_from_the_trades_file_are_trades_in_aggtrades(tmp_path: Path) -> None:
    """Decision: each dataset reports what it holds. An aggregate's first..last range says its trades
    happened, so ids the trades file lacks inside a range (#492: the trades file is the broken one)
    count as trades for aggTrades and as missing for trades; ids in no aggregate are missing in both."""
    trades = two_days("um_header", seed=4)
    aggs = agg_trades(trades, first_agg_id=1)
    gone_from_both = aggs.iloc[[500, 30_000]]  # two whole aggregates and their trades
    gone_ids = np.concatenate(
        [np.arange(a, b + 1) for a, b in gone_from_both[["first_trade_id", "last_trade_id"]].to_numpy()]
    )
    inside = aggs[aggs["last_trade_id"] > aggs["first_trade_id"]]
    trades_file_only = inside["first_trade_id"].to_numpy()[[10, 11, -5]] + 1  # inside three ranges
    published = drop_ids(trades, np.concatenate([gone_ids, trades_file_only]))

    from_aggs = read_aggs("um_header", agg_zip(tmp_path, aggs.drop(gone_from_both.index), "um_header"))
    from_trades = read_trades_zip(tmp_path, published, "um_header")

    assert_aggregation_matches(from_trades, published)
    assert_aggregation_matches(from_aggs, drop_ids(trades, gone_ids))
    agg_days, trade_days = from_aggs.days.to_pandas(), from_trades.days.to_pandas()
    assert agg_days["missing_trade_ids"].sum() == len(gone_ids)
    assert trade_days["missing_trade_ids"].sum() == len(gone_ids) + 3
    spans = [days["trade_count"] + days["missing_trade_ids"] for days in (agg_days, trade_days)]
    np.testing.assert_array_equal(*spans)  # same id range: the datasets differ only in what they count
    assert (agg_days["trade_count"] - trade_days["trade_count"]).sum() == 3


def test_interleaved_aggtrades_like_monthly_files(tmp_path: Path) -> None:
    """UM monthly aggTrades 2023-05 jump between early and late May (#339)."""
    trades = two_days("um_noheader", seed=5)
    shuffled = interleave(agg_trades(trades), seed=6)
    assert not shuffled["first_trade_id"].is_monotonic_increasing
    result = read_aggs("um_noheader", agg_zip(tmp_path, shuffled, "um_noheader"), chunk_size=32 << 10)
    assert_aggregation_matches(result, trades)


def test_every_row_doubled_counts_once(tmp_path: Path) -> None:
    """UM monthly aggTrades 2022-09 has every row doubled from 2022-09-12 (#203)."""
    trades = two_days("um_header", seed=7)
    aggs = agg_trades(trades)
    doubled_from = int(np.searchsorted(aggs["time_us"].to_numpy(), aggs["time_us"].iloc[len(aggs) // 2]))
    rows = np.concatenate([np.arange(doubled_from), np.repeat(np.arange(doubled_from, len(aggs)), 2)])
    doubled = aggs.iloc[rows].reset_index(drop=True)
    result = read_aggs("um_header", agg_zip(tmp_path, doubled, "um_header"), chunk_size=64 << 10)
    assert_aggregation_matches(result, trades)
    assert result.days["duplicate_rows"].to_numpy().sum() == len(aggs) - doubled_from


def test_aggregate_repeated_across_files_counts_once(tmp_path: Path) -> None:
    """Spot ZILBTC repeats one aggTradeId across the daily files 2021-02-28 / 03-01 (#353)."""
    trades = two_days("spot_ms", seed=8)
    aggs = agg_trades(trades)
    cut = int(np.searchsorted(aggs["time_us"].to_numpy(), int(MIDNIGHT.timestamp()) * 1_000_000))
    first = agg_zip(tmp_path, aggs.iloc[:cut], "spot_ms", "ZILBTC-aggTrades-2024-02-29")
    second = agg_zip(tmp_path, aggs.iloc[cut - 1 :], "spot_ms", "ZILBTC-aggTrades-2024-03-01")
    result = read_aggs("spot_ms", first, second)
    assert_aggregation_matches(result, trades)
    assert result.days["duplicate_rows"].to_pylist() == [1, 0, 0]  # on the repeated row's own day


@pytest.mark.parametrize("ticker", ["BTCUSD_PERP", "ETHUSD_PERP"])
def test_coin_m_quote_volume_is_the_base_asset_volume(tmp_path: Path, ticker: str) -> None:
    """quote = quantity * contract size / price: exactly the unrounded per-trade sum (1e-9 relative),
    and the trades archive's rounded base_qty within 5e-9 per trade."""
    size = cm_contract_size(ticker)
    trades = two_days("cm_header", seed=9)
    trades["base_qty"] = cm_base_qty(trades["price"], trades["qty"], size)
    result = read_aggs("cm_header", agg_zip(tmp_path, agg_trades(trades), "cm_header"), ticker=ticker)
    assert_aggregation_matches(result, trades, "base_qty", BASE_QTY_ROUNDING)
    exact = trades.assign(base_qty=trades["qty"] * size / trades["price"])
    assert_aggregation_matches(result, exact, "base_qty")


def test_contract_sizes() -> None:
    assert MARKETS["um"].contract_size("BTCUSDT") is None
    assert MARKETS["cm"].contract_size("ETHUSD_PERP") == 10.0
    assert [cm_contract_size(t) for t in ("BTCUSD_PERP", "BTCUSD_240628", "ETHUSD_PERP", "ADAUSD_PERP")] == [
        100.0,
        100.0,
        10.0,
        10.0,
    ]


def test_coin_m_needs_the_contract_size(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="contract size"):
        read_archive(tmp_path / "any.zip", MARKETS["cm"], AGG_TRADES)


def test_archive_keys() -> None:
    um, spot = MARKETS["um"], MARKETS["spot"]
    assert um.archive_key("aggTrades", "BTCUSDT", "2020-01-01") == (
        "data/futures/um/daily/aggTrades/BTCUSDT/BTCUSDT-aggTrades-2020-01-01.zip"
    )
    assert spot.archive_key("aggTrades", "ZILBTC", "2021-02") == (
        "data/spot/monthly/aggTrades/ZILBTC/ZILBTC-aggTrades-2021-02.zip"
    )
    assert um.archive_prefix("aggTrades", "daily") == "data/futures/um/daily/aggTrades/"
    assert um.archive_key("trades", "BTCUSDT", "2024-01") == (
        "data/futures/um/monthly/trades/BTCUSDT/BTCUSDT-trades-2024-01.zip"
    )
    assert um.trades_prefix("daily", "X") == "data/futures/um/daily/trades/X/"


def test_um_btcusdt_2020_01_01_shape() -> None:
    """docs/vision-format.md section 7: 71,359 aggregates covering ids 25247504..25349374 are the
    101,871 trades of the trades file; the day stats say so with no id missing."""
    rng = np.random.default_rng(0)
    first_id, trade_count, rows = 25_247_504, 101_871, 71_359
    cuts = np.sort(rng.choice(np.arange(first_id + 1, first_id + trade_count), rows - 1, replace=False))
    firsts = np.concatenate([[first_id], cuts])
    lasts = np.concatenate([cuts - 1, [first_id + trade_count - 1]])
    start_us = int(dt.datetime(2020, 1, 1, tzinfo=dt.UTC).timestamp()) * 1_000_000
    batch = pa.RecordBatch.from_pydict(
        {
            "id": firsts,
            "price": np.full(rows, 7200.0),
            "qty": np.full(rows, 0.01),
            "quote_qty": np.full(rows, 72.0),
            "time_us": start_us + np.sort(rng.integers(0, 86_400_000_000, rows)),
            "is_buyer_maker": rng.random(rows) < 0.5,
            "last_id": lasts,
        },
        schema=AGG_TRADES_SCHEMA,
    )
    (day,) = aggregate_trades([batch]).days.to_pylist()
    assert (day["trade_count"], day["first_trade_id"], day["last_trade_id"]) == (
        101_871,
        25_247_504,
        25_349_374,
    )
    assert day["missing_trade_ids"] == 0


# -- bad input: one clear line naming the archive, and the line where known --------------------------


def good_lines(layout: str = "um_header", n: int = 3_000) -> list[bytes]:
    return agg_trades_csv(agg_trades(two_days(layout, n=n, seed=11)), layout).split(b"\n")


def expect_error(path: Path, match: str, layout: str = "um_header", line: int | None = None) -> None:
    with pytest.raises(ArchiveFormatError, match=match) as caught:
        read_aggs(layout, path, chunk_size=16 << 10)
    message = str(caught.value)
    assert path.name in message and "\n" not in message
    assert caught.value.line == line


def edited(lines: list[bytes], index: int, field: int, value: bytes) -> bytes:
    fields = lines[index].split(b",")
    fields[field] = value
    return b"\n".join([*lines[:index], b",".join(fields), *lines[index + 1 :]])


def test_not_a_zip_and_truncated_zip(tmp_path: Path) -> None:
    path = tmp_path / "BTCUSDT-aggTrades-2024-03-01.zip"
    path.write_bytes(b"<Error><Code>AccessDenied</Code></Error>")
    expect_error(path, "not a readable zip")
    data = zip_archive(b"\n".join(good_lines()), "BTCUSDT-aggTrades-2024-03-01.csv")
    path.write_bytes(data[: len(data) // 2])
    expect_error(path, "not a readable zip")


def test_crc_mismatch(tmp_path: Path) -> None:
    """Intact deflate data whose CRC-32 disagrees with the zip's directory: caught after the last byte."""
    path = write(tmp_path, "BTCUSDT-aggTrades-2024-03-01", b"\n".join(good_lines()))
    data = bytearray(path.read_bytes())
    for signature, crc_at in ((b"PK\x03\x04", 14), (b"PK\x01\x02", 16)):
        offset = data.index(signature) + crc_at
        data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    expect_error(path, "corrupt zip: .* CRC [0-9a-f]{8}; expected")


def test_corrupt_deflate_data(tmp_path: Path) -> None:
    path = write(tmp_path, "BTCUSDT-aggTrades-2024-03-01", b"\n".join(good_lines(n=20_000)))
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
    path.write_bytes(bytes(data))
    expect_error(path, "corrupt zip")


def test_unexpected_header(tmp_path: Path) -> None:
    """A trades file under an aggTrades key."""
    csv = trades_csv(two_days("um_header", n=100), "um_header")
    expect_error(write(tmp_path, "BTCUSDT-aggTrades-2024-03-01", csv), "unexpected columns id,price", line=1)


def test_wrong_column_count(tmp_path: Path) -> None:
    """Spot rows (8 fields) in a USD-M file (7)."""
    csv = b"\n".join(good_lines("spot_ms"))
    expect_error(write(tmp_path, "BTCUSDT-aggTrades-2024-03-01", csv), "8 fields, expected 7", line=1)


def test_short_row(tmp_path: Path) -> None:
    lines = good_lines("um_noheader")
    lines[41] = lines[41].rsplit(b",", 1)[0]
    expect_error(
        write(tmp_path, "BTCUSDT-aggTrades-2024-03-01", b"\n".join(lines)),
        "Expected 7 columns, got 6",
        "um_noheader",
        line=42,
    )


def test_unparsable_row(tmp_path: Path) -> None:
    csv = edited(good_lines(), 1_500, 3, b"12x")
    expect_error(write(tmp_path, "BTCUSDT-aggTrades-2024-03-01", csv), "unparsable row", line=1_501)


def test_empty_field_names_the_file_column(tmp_path: Path) -> None:
    csv = edited(good_lines(), 20, 5, b"")
    expect_error(write(tmp_path, "BTCUSDT-aggTrades-2024-03-01", csv), "empty transact_time field", line=21)


def test_last_trade_id_below_first(tmp_path: Path) -> None:
    lines = good_lines(n=20_000)
    first_id = int(lines[2_500].split(b",")[3])
    csv = edited(lines, 2_500, 4, str(first_id - 1).encode())
    expect_error(
        write(tmp_path, "BTCUSDT-aggTrades-2024-03-01", csv),
        f"last_trade_id {first_id - 1} is below first_trade_id {first_id}$",
        line=2_501,
    )


# -- ids no aggregate covers (real USD-M aggTrades skip some, #378; docs/vision-format.md section 8) ---


def test_uncovered_ids_are_counted_and_listed_per_day(tmp_path: Path) -> None:
    """Aggregates skipping ids, read in small interleaved batches: per day, the ids of its range that no
    aggregate covers, as a count, as ranges and as gaps with the times of their two neighbours."""
    trades = two_days("um_header", seed=12)
    day = pd.to_datetime(trades["time_us"], unit="us").dt.date
    uncovered = np.unique(
        np.concatenate(
            [uncovered_ids(trades, d) for d in sorted(set(day))[1:]]
            + [trades["id"].to_numpy()[[5_000, 25_000, 25_001]]]
        )
    )
    covered = drop_ids(trades, uncovered)
    shuffled = interleave(agg_trades(covered), seed=13)
    result = read_aggs("um_header", agg_zip(tmp_path, shuffled, "um_header"), chunk_size=16 << 10)
    assert_aggregation_matches(result, covered)

    by_day = day[trades["id"].isin(uncovered)].value_counts().sort_index()
    days = result.days.to_pandas()
    assert days["uncovered_trade_ids"].tolist() == [by_day.get(d, 0) for d in days["day"]]
    assert (days["uncovered_trade_ids"] == days["missing_trade_ids"]).all()
    assert ",".join(r for r in days["uncovered_id_ranges"] if r) == ranges_text(uncovered)

    gaps = result.gaps.to_pandas()
    runs = np.split(uncovered, np.flatnonzero(np.diff(uncovered) > 1) + 1)
    assert gaps[["first_id", "last_id"]].values.tolist() == [[r[0], r[-1]] for r in runs]
    time_of = covered.set_index("id")["time_us"]
    assert gaps["before_us"].tolist() == time_of[gaps["first_id"] - 1].tolist()
    assert gaps["after_us"].tolist() == time_of[gaps["last_id"] + 1].tolist()
    assert sum(r.gaps.num_rows for r in result.by_day()) == len(runs)


def test_uncovered_ranges_are_cut_after_the_first_ones() -> None:
    gaps = pa.table(
        {"first_id": [3, 7, 20], "last_id": [3, 9, 20], "before_us": [0] * 3, "after_us": [0] * 3},
        schema=GAPS_SCHEMA,
    )
    assert id_ranges(gaps) == "3,7-9,20"
    assert id_ranges(gaps, kept=2) == "3,7-9,+1 more"
    assert id_ranges(gaps.slice(0, 0)) == ""
