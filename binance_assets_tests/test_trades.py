"""The trades reader on synthetic archives in every layout, the real Binance samples and bad input."""

from __future__ import annotations

import datetime as dt
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from binance_assets.markets import MARKETS
from binance_assets.vision.archive import PARSE_POOL, read_archive
from binance_assets.vision.errors import ArchiveFormatError
from binance_assets.vision.trades import TRADES, TRADES_SCHEMA
from binance_assets_tests.archives import LAYOUTS, make_trades, trades_csv, zip_archive
from binance_assets_tests.helpers import REAL

START = dt.datetime(2024, 1, 1, 23, 59, tzinfo=dt.UTC)


def write_zip(tmp_path: Path, csv: bytes, name: str = "BTCUSDT-trades-2024-01-01", **kwargs: object) -> Path:
    path = tmp_path / f"{name}.zip"
    path.write_bytes(zip_archive(csv, f"{name}.csv", **kwargs))  # type: ignore[arg-type]
    return path


def read_all(path: Path, market: str, **kwargs: int) -> pa.Table:
    return pa.Table.from_batches(
        list(read_archive(path, MARKETS[market], TRADES, **kwargs)), schema=TRADES_SCHEMA
    )


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_layout_reads_to_the_one_schema(tmp_path: Path, layout: str) -> None:
    spec = LAYOUTS[layout]
    trades = make_trades(5_000, START, 120, time_unit=spec.time_unit, contracts=spec.integer_qty, seed=3)
    path = write_zip(tmp_path, trades_csv(trades, layout))

    table = read_all(path, spec.market, chunk_size=16 << 10)  # small blocks: many batches

    assert table.schema == TRADES_SCHEMA
    assert table.num_rows == len(trades)
    np.testing.assert_array_equal(table["id"].to_numpy(), trades["id"].to_numpy())
    np.testing.assert_array_equal(table["time_us"].to_numpy(), trades["time_us"].to_numpy())
    np.testing.assert_array_equal(table["is_buyer_maker"].to_numpy(), trades["is_buyer_maker"].to_numpy())
    np.testing.assert_allclose(table["price"].to_numpy(), trades["price"].to_numpy(), rtol=1e-15)
    np.testing.assert_allclose(table["qty"].to_numpy(), trades["qty"].to_numpy(), rtol=1e-15)
    expected_quote = trades["base_qty"] if spec.market == "cm" else trades["price"] * trades["qty"]
    np.testing.assert_allclose(table["quote_qty"].to_numpy(), expected_quote.to_numpy(), rtol=1e-12)


def test_the_parsed_columns_are_held_by_the_parse_pool(tmp_path: Path) -> None:
    """The parser allocates from jemalloc (archive.PARSE_POOL), not from Arrow's default pool."""
    trades = make_trades(20_000, START, 120, time_unit="ms", seed=5)
    path = write_zip(tmp_path, trades_csv(trades, "um_header"))
    before = PARSE_POOL.bytes_allocated()

    batches = list(read_archive(path, MARKETS["um"], TRADES))

    assert PARSE_POOL.backend_name == "jemalloc"
    assert sum(batch.num_rows for batch in batches) == len(trades)
    assert PARSE_POOL.bytes_allocated() - before >= 8 * len(trades)  # the ids at least, kept as parsed


def test_a_blank_line_is_skipped(tmp_path: Path) -> None:
    lines = trades_csv(make_trades(100, START, 60, time_unit="ms"), "um_noheader").split(b"\n")
    lines[40] = b""
    table = read_all(write_zip(tmp_path, b"\n".join(lines)), "um")
    assert table["id"].to_pylist() == [int(line.split(b",")[0]) for line in lines if line]


def test_long_row_names_its_line(tmp_path: Path) -> None:
    lines = trades_csv(make_trades(100, START, 60, time_unit="ms"), "um_noheader").split(b"\n")
    lines[41] += b",7"
    error = expect_error(write_zip(tmp_path, b"\n".join(lines)), "Expected 6 columns, got 7")
    assert error.line == 42


def test_quote_qty_is_recomputed_not_read(tmp_path: Path) -> None:
    """UM BTCUSDT 2024-01-01 trade 4428495241 has quote_qty 1.0704968 for price*qty 10704968.43."""
    trades = make_trades(10, START, 5, time_unit="ms")
    trades["quote_qty"] = trades["price"] * trades["qty"]
    trades.loc[4, "quote_qty"] = 1.0704968
    table = read_all(write_zip(tmp_path, trades_csv(trades, "um_header")), "um")
    assert table["quote_qty"][4].as_py() == pytest.approx(trades["price"][4] * trades["qty"][4], rel=1e-12)


def test_spot_time_unit_changes_on_2025_01_01(tmp_path: Path) -> None:
    ms = (REAL / "binance_spot_BTCUSDT_trades_2024-01-01_first5.csv").read_bytes()
    us = (REAL / "BTCUSDT-trades-2025-01-01_first-minute.csv").read_bytes()
    old = read_all(write_zip(tmp_path, ms, "BTCUSDT-trades-2024-01-01"), "spot")
    new = read_all(write_zip(tmp_path, us, "BTCUSDT-trades-2025-01-01"), "spot")
    assert old["time_us"][0].as_py() == 1704067200000 * 1000
    assert old["id"][0].as_py() == 3344774379
    assert old.num_rows == 5
    assert new["time_us"][0].as_py() == 1735689600010866
    assert new.num_rows == 2631
    assert new["is_buyer_maker"][0].as_py() is True


def test_top_level_member_wins_over_nested_copy(tmp_path: Path) -> None:
    """Spot BTCUSDC-trades-2021-04.zip holds its CSV twice, once under fsx-data/collector_data/."""
    trades = make_trades(50, START, 10, time_unit="ms")
    nested = trades_csv(trades.head(3), "spot_ms")
    path = write_zip(
        tmp_path,
        trades_csv(trades, "spot_ms"),
        "BTCUSDC-trades-2021-04",
        extra_members={"fsx-data/collector_data/BTCUSDC-trades-2021-04.csv": nested},
    )
    assert read_all(path, "spot").num_rows == 50


def test_empty_member_yields_no_rows(tmp_path: Path) -> None:
    assert read_all(write_zip(tmp_path, b""), "um").num_rows == 0


def good_zip(tmp_path: Path) -> Path:
    return write_zip(tmp_path, trades_csv(make_trades(20_000, START, 60, time_unit="ms"), "um_header"))


def expect_error(path: Path, match: str, market: str = "um") -> ArchiveFormatError:
    with pytest.raises(ArchiveFormatError, match=match) as caught:
        read_all(path, market, chunk_size=16 << 10)
    assert path.name in str(caught.value)
    return caught.value


def test_not_a_zip(tmp_path: Path) -> None:
    path = tmp_path / "BTCUSDT-trades-2024-01-01.zip"
    path.write_bytes(b"<html>AccessDenied</html>")
    expect_error(path, "not a readable zip")


def test_truncated_zip(tmp_path: Path) -> None:
    path = good_zip(tmp_path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    expect_error(path, "not a readable zip")


def test_corrupt_deflate_data_is_caught_by_inflate_or_crc(tmp_path: Path) -> None:
    path = good_zip(tmp_path)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)
    path.write_bytes(bytes(data))
    expect_error(path, "corrupt zip")


def test_member_shorter_than_its_directory_entry(tmp_path: Path) -> None:
    """A zip whose central directory promises more than the member holds (the truncated-upload case)."""
    path = good_zip(tmp_path)
    with zipfile.ZipFile(path) as archive:
        info = archive.infolist()[0]
    data = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename)
    cut = start + info.compress_size // 2
    path.write_bytes(bytes(data[:cut]) + bytes(data[start + info.compress_size :]))
    expect_error(path, "corrupt zip|not a readable zip")


def test_unexpected_column_count(tmp_path: Path) -> None:
    spot_rows = trades_csv(make_trades(10, START, 5, time_unit="ms"), "spot_ms")
    error = expect_error(write_zip(tmp_path, spot_rows), "unexpected columns: 7 fields, expected 6")
    assert error.line == 1


def test_unexpected_header(tmp_path: Path) -> None:
    csv = trades_csv(make_trades(10, START, 5, time_unit="ms"), "um_noheader")
    path = write_zip(
        tmp_path, b"agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time\n" + csv
    )
    expect_error(path, "unexpected columns agg_trade_id")


def test_unparsable_row_names_its_line(tmp_path: Path) -> None:
    lines = trades_csv(make_trades(30_000, START, 60, time_unit="ms"), "um_header").split(b"\n")
    fields = lines[25_000].split(b",")
    fields[1] = b"abc"
    lines[25_000] = b",".join(fields)
    error = expect_error(write_zip(tmp_path, b"\n".join(lines)), "unparsable row")
    assert error.line == 25_001


def test_short_row_names_its_line(tmp_path: Path) -> None:
    lines = trades_csv(make_trades(100, START, 60, time_unit="ms"), "um_noheader").split(b"\n")
    lines[41] = lines[41].rsplit(b",", 1)[0]
    error = expect_error(write_zip(tmp_path, b"\n".join(lines)), "Expected 6 columns, got 5")
    assert error.line == 42


def test_empty_field_names_its_line(tmp_path: Path) -> None:
    lines = trades_csv(make_trades(100, START, 60, time_unit="ms"), "um_header").split(b"\n")
    fields = lines[10].split(b",")
    fields[4] = b""
    lines[10] = b",".join(fields)
    error = expect_error(write_zip(tmp_path, b"\n".join(lines)), "empty time field")
    assert error.line == 11


def test_two_csv_members_are_ambiguous(tmp_path: Path) -> None:
    csv = trades_csv(make_trades(10, START, 5, time_unit="ms"), "um_header")
    path = write_zip(tmp_path, csv, extra_members={"other.csv": csv})
    expect_error(path, "expected one CSV member")


def test_real_kline_zips_are_real_zips() -> None:
    """The 2020 spot 1m kline files: 1440 rows each, count sums as docs/vision-format.md section 7 states."""
    counts = {}
    for day, expected in (("01", 194_010), ("02", 302_667), ("03", 519_854)):
        with zipfile.ZipFile(REAL / f"BTCUSDT-1m-2020-01-{day}.zip") as archive:
            (member,) = archive.infolist()
            assert member.filename == f"BTCUSDT-1m-2020-01-{day}.csv"
            rows = archive.read(member).decode().strip().split("\n")
        counts[day] = sum(int(row.split(",")[8]) for row in rows)
        assert len(rows) == 1440
        assert counts[day] == expected
