"""Binance's 1m klines: the reader on real and synthetic files, the 1m comparison, and the
`matches_binance_klines` check end to end (fake Vision server -> Dagster -> chDB), COIN-M included."""

from __future__ import annotations

import datetime as dt
import io
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from dagster import (
    AssetCheckEvaluation,
    AssetCheckSeverity,
    AssetKey,
    DagsterInstance,
    ExecuteInProcessResult,
    FreshnessPolicy,
    materialize,
)

from binance_assets.bars import GAPS_SCHEMA, aggregate_trades
from binance_assets.clickhouse.client import open_client
from binance_assets.clickhouse.store import Store
from binance_assets.clickhouse.tables import BARS_TABLE
from binance_assets.markets import MARKETS
from binance_assets.orchestration.assets import build_market_assets, liquidity_freshness
from binance_assets.orchestration.definitions import build_definitions
from binance_assets.plan import plan_ticker
from binance_assets.settings import Settings
from binance_assets.trust.klines_check import (
    MONTH_FILE_FROM_DAYS,
    compare_minutes,
    kline_sources,
    read_bars_1m,
)
from binance_assets.vision.archive import read_archive
from binance_assets.vision.errors import KlinesFormatError
from binance_assets.vision.klines import KLINES_SCHEMA, parse_klines, read_klines
from binance_assets.vision.listing import ArchiveInfo
from binance_assets.vision.trades import TRADES
from binance_assets_tests.archives import (
    expected_klines,
    klines_csv,
    make_trades,
    publish,
    publish_uncovered,
    ranges_text,
    uncovered_ids,
    write_klines,
    zip_archive,
)
from binance_assets_tests.helpers import RANGE_END, RANGE_START, REAL, materialize_range, resources
from binance_assets_tests.vision_server import VisionServer

UM, CM, SPOT = MARKETS["um"], MARKETS["cm"], MARKETS["spot"]
DAYS = [dt.date(2024, 3, 1) + dt.timedelta(days=i) for i in range(3)]
FEB = [dt.date(2024, 2, 1) + dt.timedelta(days=i) for i in range(29)]


# --- the reader ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("day", "count", "ohlc", "volume"),
    [
        ("01", 194_010, (7195.24, 7255.00, 7175.15, 7200.85), 16792.388165),
        ("02", 302_667, None, None),
        ("03", 519_854, None, None),
    ],
)
def test_real_kline_zips_parse(
    day: str, count: int, ohlc: tuple[float, ...] | None, volume: float | None
) -> None:
    """The real spot BTCUSDT 2020-01-0X files: no header, ms times; the figures of
    docs/vision-format.md section 7."""
    klines = read_klines(REAL / f"BTCUSDT-1m-2020-01-{day}.zip")
    assert klines.schema == KLINES_SCHEMA and klines.num_rows == 1440
    midnight_us = int(dt.datetime(2020, 1, int(day), tzinfo=dt.UTC).timestamp()) * 10**6
    open_us = klines["open_time_us"].to_numpy()
    np.testing.assert_array_equal(open_us, midnight_us + np.arange(1440) * 60_000_000)
    np.testing.assert_array_equal(klines["close_time_us"].to_numpy(), open_us + 59_999_000)
    assert pc.sum(klines["count"]).as_py() == count
    if ohlc is not None:
        assert (klines["open"][0].as_py(), pc.max(klines["high"]).as_py()) == ohlc[:2]
        assert (pc.min(klines["low"]).as_py(), klines["close"][-1].as_py()) == ohlc[2:]
        assert pc.sum(klines["volume"]).as_py() == pytest.approx(volume, rel=1e-12)


def test_real_microsecond_kline_row_parses() -> None:
    """Spot from 2025 is in microseconds: the real 2025-01-01 00:00 row, every field."""
    (row,) = parse_klines((REAL / "spot_BTCUSDT_1m_kline_2025-01-01T00-00.csv").read_bytes()).to_pylist()
    assert row == {
        "open_time_us": 1735689600000000,
        "open": 93576.0,
        "high": 93610.93,
        "low": 93537.5,
        "close": 93610.93,
        "volume": 8.21827,
        "close_time_us": 1735689659999999,
        "quote_volume": 768978.7552247,
        "count": 2631,
        "taker_buy_volume": 3.95157,
        "taker_buy_quote_volume": 369757.3265289,
    }


@pytest.mark.parametrize("layout", ["spot_ms", "spot_us", "um_header", "um_noheader", "cm"])
def test_every_layout_reads_back(layout: str) -> None:
    trades = make_trades(500, dt.datetime(2024, 3, 1, tzinfo=dt.UTC), 86_400, time_unit="ms", contracts=True)
    want = expected_klines(trades, DAYS[:1], "base_qty" if layout == "cm" else None)
    csv = klines_csv(want, layout)
    assert csv.startswith(b"open_time,open,") == (layout in ("um_header", "cm"))
    klines = parse_klines(csv).to_pandas()
    assert len(klines) == 1440 and int(klines["count"].sum()) == 500
    np.testing.assert_array_equal(klines["open_time_us"], want["open_time"] * 1000)
    for column in ("open", "high", "low", "close", "volume", "quote_volume", "taker_buy_volume"):
        np.testing.assert_allclose(klines[column], want[column], rtol=1e-12, atol=5e-9, err_msg=column)


def _stored_zip(csv: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("BTCUSDT-1m-2025-01-01.csv", csv)
    return buffer.getvalue()


ROW = (REAL / "spot_BTCUSDT_1m_kline_2025-01-01T00-00.csv").read_bytes()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not a zip", "not a readable zip archive"),
        (zip_archive(b"open,time\n" + ROW, "X.csv"), "unexpected header"),
        (zip_archive(b",".join(ROW.split(b",")[:8]) + b"\n", "X.csv"), "8 fields in line 1, expected 12"),
        (_stored_zip(ROW).replace(b"93576.0", b"93576.1", 1), "Bad CRC-32"),
        (zip_archive(ROW.replace(b"2631", b"many"), "X.csv"), "unparsable row"),
    ],
    ids=["not-a-zip", "header", "fields", "crc", "row"],
)
def test_bad_kline_files_raise_naming_the_archive(tmp_path: Path, data: bytes, message: str) -> None:
    path = tmp_path / "BTCUSDT-1m-2025-01-01.zip"
    path.write_bytes(data)
    with pytest.raises(KlinesFormatError, match=message) as error:
        read_klines(path)
    assert str(error.value).startswith("BTCUSDT-1m-2025-01-01.zip: ")


# --- the 1m comparison ---------------------------------------------------------------------------


def test_real_first_minute_trades_reproduce_binance_kline_through_the_stored_1m_aggregation(
    tmp_path: Path,
) -> None:
    """Spot BTCUSDT 2025-01-01 00:00: 2631 real trades -> 5 s bars -> chDB -> 1m SQL == Binance's row."""
    archive = tmp_path / "BTCUSDT-trades-2025-01-01.zip"
    archive.write_bytes(
        zip_archive((REAL / "BTCUSDT-trades-2025-01-01_first-minute.csv").read_bytes(), "x.csv")
    )
    bars = aggregate_trades(read_archive(archive, SPOT, TRADES)).bars
    n = bars.num_rows
    rows = bars.add_column(0, "ticker", pa.array(["BTCUSDT"] * n)).add_column(
        0, "market", pa.array(["spot"] * n)
    )
    kline = parse_klines((REAL / "spot_BTCUSDT_1m_kline_2025-01-01T00-00.csv").read_bytes()).to_pandas()
    with Store(f"chdb://{tmp_path / 'store'}").open() as store:
        store.insert(BARS_TABLE, rows.select(BARS_TABLE.schema.names).cast(BARS_TABLE.schema))
        ours = read_bars_1m(store, "spot", "BTCUSDT", [dt.date(2025, 1, 1)])
    assert len(ours) == 1 and int(ours["count"].iloc[0]) == 2631
    assert compare_minutes(ours, kline).empty

    off = kline.assign(taker_buy_volume=kline["taker_buy_volume"] * (1 + 2e-7))
    (mismatch,) = compare_minutes(ours, off).to_dict("records")
    assert (mismatch["fields"], mismatch["field"]) == ("taker_buy_volume", "taker_buy_volume")
    assert compare_minutes(ours, kline.assign(close=kline["close"] * (1 + 5e-8))).empty  # within 1e-7


def minutes(*rows: tuple[int, float, int]) -> pd.DataFrame:
    """(minute index, price, count) rows as 1m frames; volumes follow the count."""
    return pd.DataFrame(
        {
            "open_time_us": [m * 60_000_000 for m, _, _ in rows],
            **{f: [p for _, p, _ in rows] for f in ("open", "high", "low", "close")},
            "volume": [float(c) for _, _, c in rows],
            "quote_volume": [p * c for _, p, c in rows],
            "count": [c for _, _, c in rows],
            "taker_buy_volume": [c / 2 for _, _, c in rows],
        }
    )


def test_an_empty_kline_minute_matches_no_bars_only() -> None:
    ours = minutes((0, 10.0, 3), (2, 11.0, 1))
    klines = minutes((0, 10.0, 3), (1, 10.0, 0), (2, 11.0, 1))
    assert compare_minutes(ours, klines).empty  # minute 1: count 0 and no bars
    diff = compare_minutes(minutes((0, 10.0, 3), (1, 10.5, 2), (2, 11.0, 1)), klines)
    assert diff[["open_time_us", "fields"]].to_dict("records") == [
        {"open_time_us": 60_000_000, "fields": "volume,quote_volume,count,taker_buy_volume"}
    ]
    missing = compare_minutes(minutes((0, 10.0, 3)), klines)  # minute 2 traded on Binance, not here
    assert missing["open_time_us"].tolist() == [120_000_000] and missing["field"].iloc[0] == "volume"


def gap(first_id: int, last_id: int, before_minute: int, after_minute: int) -> pa.Table:
    """One run of uncovered ids between aggregates in the two minutes (30 s into each)."""
    times = [m * 60_000_000 + 30_000_000 for m in (before_minute, after_minute)]
    return pa.table(
        {"first_id": [first_id], "last_id": [last_id], "before_us": times[:1], "after_us": times[1:]},
        schema=GAPS_SCHEMA,
    )


def test_uncovered_ids_count_in_their_minute_or_either_neighbour() -> None:
    """A gap inside minute 0 is minute 0's; a gap of 2 ids between minutes 2 and 3 may lie in either or
    be split, but its ids are counted once, and nothing else may move."""
    ours = minutes((0, 10.0, 3), (1, 10.0, 2), (2, 11.0, 1), (3, 11.0, 4))
    gaps = pa.concat_tables([gap(10, 10, 0, 0), gap(20, 21, 2, 3)])

    def counts(*binance: int) -> pd.DataFrame:
        klines = ours.assign(count=list(binance))
        return compare_minutes(ours, klines, gaps)

    for split in ((3, 4), (2, 5), (1, 6)):  # minutes 2 and 3: 1 and 4 covered trades, 2 ids between
        assert counts(4, 2, *split).empty, split
    assert not counts(3, 2, 1, 4).empty  # our counts alone: the other rule
    for bad in ((4, 2, 3, 5), (4, 2, 4, 6), (4, 3, 3, 4), (5, 2, 3, 4), (4, 2, 0, 7)):
        assert set(counts(*bad)["fields"]) == {"count"}, bad
    price = compare_minutes(ours, ours.assign(count=[4, 2, 3, 4], close=[10.0, 10.0, 11.5, 11.0]), gaps)
    assert price[["open_time_us", "fields"]].to_dict("records") == [
        {"open_time_us": 120_000_000, "fields": "close"}
    ]


def test_kline_sources_follow_the_trades_archives() -> None:
    def listed(period: str) -> ArchiveInfo:
        freq = "daily" if len(period) == 10 else "monthly"
        key = UM.archive_key("trades", "BTCUSDT", period)
        return ArchiveInfo(key, 1, dt.datetime(2024, 3, 1, tzinfo=dt.UTC), "e", "BTCUSDT", freq, period)

    archives = [listed("2024-02"), *(listed(d.isoformat()) for d in [*FEB, *DAYS])]
    plan = plan_ticker("BTCUSDT", [*FEB, *DAYS[:2]], archives, today=dt.date(2024, 6, 1))
    sources = kline_sources(UM, [plan], today=dt.date(2024, 6, 1))
    assert [(s.key, len(s.days), s.instead) for s in sources] == [
        ("data/futures/um/monthly/klines/BTCUSDT/1m/BTCUSDT-1m-2024-02.zip", 29, ()),
        ("data/futures/um/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2024-03-01.zip", 1, ()),
        ("data/futures/um/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2024-03-02.zip", 1, ()),
    ]


def test_a_week_of_daily_archives_in_a_month_that_is_over_reads_the_month_s_klines() -> None:
    """One download for the month's days, with the days' files to read where it is not published; in the
    current month, or for fewer days, the days' files; the 1d klines of the fallback's counts take the
    month's file from one day."""
    week = FEB[:MONTH_FILE_FROM_DAYS]
    archives = [listed_daily(day) for day in week]
    plan = plan_ticker("BTCUSDT", week, archives, today=dt.date(2024, 6, 1))
    (month,) = kline_sources(UM, [plan], today=dt.date(2024, 3, 1))
    assert month.key == "data/futures/um/monthly/klines/BTCUSDT/1m/BTCUSDT-1m-2024-02.zip"
    assert month.days == tuple(week)
    assert [s.key for s in month.instead] == [UM.klines_key("BTCUSDT", str(day)) for day in week]
    assert kline_sources(UM, [plan], today=dt.date(2024, 2, 20)) == list(month.instead)
    fewer = plan_ticker("BTCUSDT", week[1:], archives, today=dt.date(2024, 6, 1))
    assert [s.days for s in kline_sources(UM, [fewer], today=dt.date(2024, 6, 1))] == [(d,) for d in week[1:]]
    one = plan_ticker("BTCUSDT", week[:1], archives, today=dt.date(2024, 6, 1))
    (counts,) = kline_sources(UM, [one], today=dt.date(2024, 6, 1), interval="1d", month_from=1)
    assert counts.key == "data/futures/um/monthly/klines/BTCUSDT/1d/BTCUSDT-1d-2024-02.zip"


def listed_daily(day: dt.date) -> ArchiveInfo:
    key = UM.archive_key("trades", "BTCUSDT", day.isoformat())
    return ArchiveInfo(
        key, 1, dt.datetime(2024, 3, 1, tzinfo=dt.UTC), "e", "BTCUSDT", "daily", day.isoformat()
    )


# --- the check, end to end -----------------------------------------------------------------------


def run_checks(
    server: VisionServer,
    instance: DagsterInstance,
    tmp_path: Path,
    market: str,
    ticker: str,
    first: dt.date,
    last: dt.date,
) -> dict[str, AssetCheckEvaluation]:
    result = materialize(
        [build_market_assets(MARKETS[market], 31, retry_policy=None)],
        instance=instance,
        resources=resources(server, f"chdb://{tmp_path / 'clickhouse'}", tmp_path),
        tags={RANGE_START: f"{first}|{ticker}", RANGE_END: f"{last}|{ticker}"},
        raise_on_error=False,
    )
    assert result.success  # a failing check never fails the run: the rows are written
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_matching_klines_pass_daily_and_monthly(
    vision_server: VisionServer, instance: DagsterInstance, tmp_path: Path
) -> None:
    publish(vision_server.root, "um", "BTCUSDT", [*FEB, *DAYS], monthly=("2024-02",), klines=True, seed=3)
    checks = run_checks(vision_server, instance, tmp_path, "um", "BTCUSDT", FEB[0], DAYS[-1])
    klines = checks["matches_binance_klines"]
    assert klines.passed and klines.severity == AssetCheckSeverity.ERROR
    assert klines.metadata["days_checked"].value == 32 and klines.metadata["mismatching_minutes"].value == 0
    assert vision_server.hits("monthly/klines/BTCUSDT/1m/BTCUSDT-1m-2024-02.zip") >= 1
    assert vision_server.hits("daily/klines/BTCUSDT/1m/BTCUSDT-1m-2024-02-") == 0
    assert all(c.passed for c in checks.values()), {n: c.metadata for n, c in checks.items() if not c.passed}


def test_daily_archives_of_a_month_that_is_over_are_checked_against_the_month_s_klines(
    vision_server: VisionServer, instance: DagsterInstance, tmp_path: Path
) -> None:
    """The month's file is read, not the days' (a minute changed in it fails the check); where it is not
    published, the days' files are."""
    week = FEB[:MONTH_FILE_FROM_DAYS]
    trades = publish(vision_server.root, "um", "BTCUSDT", week, monthly=(), klines=True, seed=6)
    passed = run_checks(vision_server, instance, tmp_path, "um", "BTCUSDT", week[0], week[-1])
    assert passed["matches_binance_klines"].passed
    assert passed["matches_binance_klines"].metadata["days_checked"].value == len(week)
    assert vision_server.hits("monthly/klines/BTCUSDT/1m/BTCUSDT-1m-2024-02.zip") >= 1
    assert vision_server.hits("daily/klines/BTCUSDT/1m/BTCUSDT-1m-2024-02-") >= len(week)

    klines = expected_klines(trades, week)
    traded = klines.index[klines["count"] > 0][3]
    klines.loc[traded, "volume"] *= 2
    write_klines(vision_server.root, "um", "BTCUSDT", "2024-02", klines)
    before = vision_server.hits("daily/klines/")
    failed = run_checks(vision_server, instance, tmp_path, "um", "BTCUSDT", week[0], week[-1])
    check = failed["matches_binance_klines"]
    minute = pd.Timestamp(klines.loc[traded, "open_time"], unit="ms")
    assert not check.passed
    assert check.metadata["first_failure"].value == f"BTCUSDT {minute.date()} {minute:%H:%M}"
    assert vision_server.hits("daily/klines/") == before


def test_the_trades_download_while_the_klines_load(
    vision_server: VisionServer, instance: DagsterInstance, tmp_path: Path
) -> None:
    """The klines load in a thread of their own (trust/day_counts.KlinesAhead): slow kline downloads hold
    back none of the trades archives, and the check waits for them."""
    publish(vision_server.root, "um", "BTCUSDT", DAYS, klines=True, seed=8)
    vision_server.slow("/klines/BTCUSDT/1m/BTCUSDT-1m-", 3.0, times=None)

    checks = run_checks(vision_server, instance, tmp_path, "um", "BTCUSDT", DAYS[0], DAYS[-1])

    assert checks["matches_binance_klines"].passed
    assert checks["matches_binance_klines"].metadata["days_checked"].value == len(DAYS)
    zips = [r for r in vision_server.requests if r.endswith(".zip")]  # in the order they arrived
    kline_zips = [i for i, r in enumerate(zips) if "/klines/" in r]
    trades_zips = [i for i, r in enumerate(zips) if "/trades/BTCUSDT/" in r]
    assert len(trades_zips) == len(DAYS) and max(trades_zips) < min(kline_zips)


def test_a_kline_disagreeing_in_one_minute_fails_naming_it(
    vision_server: VisionServer, instance: DagsterInstance, tmp_path: Path
) -> None:
    trades = publish(vision_server.root, "um", "BTCUSDT", DAYS, klines=True, seed=4)
    klines = expected_klines(trades, [DAYS[1]])
    traded = klines.index[klines["count"] > 0][7]
    klines.loc[traded, "close"] += 0.01
    write_klines(vision_server.root, "um", "BTCUSDT", DAYS[1].isoformat(), klines)
    minute = pd.Timestamp(klines.loc[traded, "open_time"], unit="ms").strftime("%H:%M")

    check = run_checks(vision_server, instance, tmp_path, "um", "BTCUSDT", DAYS[0], DAYS[-1])[
        "matches_binance_klines"
    ]
    assert not check.passed and check.severity == AssetCheckSeverity.ERROR
    assert check.metadata["first_failure"].value == f"BTCUSDT {DAYS[1]} {minute}"
    assert check.metadata["mismatching_minutes"].value == 1
    assert check.metadata["failing_ticker_days"].value == [
        {
            "ticker": "BTCUSDT",
            "day": str(DAYS[1]),
            "mismatching_minutes": 1,
            "first_minute": minute,
            "fields": "close",
        }
    ]
    (shown,) = check.metadata["mismatching_minutes_by_day"].value[f"BTCUSDT {DAYS[1]}"]
    assert shown.startswith(f"{minute} close: ours ")


def test_missing_klines_are_reported_not_failed(
    vision_server: VisionServer, instance: DagsterInstance, tmp_path: Path
) -> None:
    """A 404 (not published, or a hole in Binance's klines) leaves the day unchecked, said so in metadata."""
    publish(vision_server.root, "um", "BTCUSDT", DAYS, klines=True, seed=5)
    gone = vision_server.root / UM.klines_key("BTCUSDT", DAYS[2].isoformat())
    gone.unlink()
    gone.with_name(gone.name + ".CHECKSUM").unlink()
    check = run_checks(vision_server, instance, tmp_path, "um", "BTCUSDT", DAYS[0], DAYS[-1])[
        "matches_binance_klines"
    ]
    assert check.passed
    assert check.metadata["days_checked"].value == 2 and check.metadata["days_without_klines"].value == 1
    assert check.metadata["klines_not_published"].value == [f"BTCUSDT {DAYS[2]}"]


def test_coin_m_bars_match_coin_m_klines(
    vision_server: VisionServer, instance: DagsterInstance, tmp_path: Path
) -> None:
    """COIN-M in its real layout: volume in contracts, the kline quote_volume column is base-asset volume."""
    trades = publish(vision_server.root, "cm", "BTCUSD_PERP", DAYS, monthly=(), klines=True, seed=6)
    header = zipfile.ZipFile(vision_server.root / CM.archive_key("trades", "BTCUSD_PERP", str(DAYS[0]))).read(
        f"BTCUSD_PERP-trades-{DAYS[0]}.csv"
    )
    assert header.startswith(b"id,price,qty,base_qty,time,is_buyer_maker\n")
    checks = run_checks(vision_server, instance, tmp_path, "cm", "BTCUSD_PERP", DAYS[0], DAYS[-1])
    assert checks["matches_binance_klines"].passed
    assert checks["matches_binance_klines"].metadata["days_checked"].value == 3
    with open_client(f"chdb://{tmp_path / 'clickhouse'}") as client:
        volume, base = client.query(
            "SELECT sum(volume), sum(quote_volume) FROM binance.hl5s WHERE market = 'cm'"
        ).result_rows[0]
    assert volume == trades["qty"].sum() and float(volume).is_integer()  # contracts
    assert base == pytest.approx(trades["base_qty"].sum(), rel=1e-12)  # not price * qty
    assert base != pytest.approx((trades["price"] * trades["qty"]).sum(), rel=1e-3)


def publish_uncovered_day(root: Path, count_uncovered: bool) -> tuple[np.ndarray, pd.DataFrame]:
    """USD-M BTCUSDT aggTrades on DAYS, the middle day's aggregates skipping ids (`uncovered_ids`), and
    klines counting those ids or not; the ids and the covered trades of that day."""
    trades = publish(
        root, "um", "BTCUSDT", DAYS, trades_per_day=20_000, spread=24, seed=7, klines=True,
        datasets=("aggTrades",),
    )  # fmt: skip
    uncovered = uncovered_ids(trades, DAYS[1])
    covered = publish_uncovered(
        root, "um", "BTCUSDT", DAYS[1], trades, uncovered, count_uncovered=count_uncovered
    )
    return uncovered, covered


def run_aggtrades(
    server: VisionServer, instance: DagsterInstance, tmp_path: Path
) -> tuple[ExecuteInProcessResult, AssetCheckEvaluation]:
    """A run of BTCUSDT on DAYS from aggTrades, and its matches_binance_klines evaluation."""
    res = resources(server, f"chdb://{tmp_path / 'clickhouse'}", tmp_path)
    result = materialize_range(instance, res, "BTCUSDT", str(DAYS[0]), str(DAYS[-1]), dataset="aggTrades")
    (check,) = [e for e in result.get_asset_check_evaluations() if e.check_name == "matches_binance_klines"]
    return result, check


@pytest.mark.parametrize(
    ("count_uncovered", "rule"), [(True, "covered+gaps"), (False, "covered")], ids=["with", "without"]
)
def test_aggtrades_day_with_uncovered_ids_passes_under_either_count(
    vision_server: VisionServer, instance: DagsterInstance, tmp_path: Path, count_uncovered: bool, rule: str
) -> None:
    """A USD-M aggTrades day whose aggregates skip ids (#378): Binance's klines counting them or not, the
    day passes and the check says which count matched; the row and the partition record the ids."""
    uncovered, _ = publish_uncovered_day(vision_server.root, count_uncovered)
    result, check = run_aggtrades(vision_server, instance, tmp_path)
    assert check.passed, check.metadata
    assert check.metadata["count_rule"].value == {f"BTCUSDT {DAYS[1]}": rule}
    assert check.metadata["days_with_uncovered_ids"].value == 1
    assert check.metadata[f"days_count_{rule.replace('+', '_plus_')}"].value == 1

    with open_client(f"chdb://{tmp_path / 'clickhouse'}") as client:
        rows = client.query(
            "SELECT uncovered_trade_ids, uncovered_id_ranges, missing_trade_ids "
            "FROM binance.daily_liquidity FINAL ORDER BY day"
        ).result_rows
    n, text = len(uncovered), ranges_text(uncovered)
    assert rows == [(0, "", 0), (n, text, n), (0, "", 0)]
    assert n == 6 and text.count(",") == 3  # three single ids and a run of three
    (partition,) = [
        m for m in result.asset_materializations_for_node("um_trades_to_bars")
        if m.partition == f"{DAYS[1]}|BTCUSDT" and m.asset_key.path[-1] == "daily_liquidity"
    ]  # fmt: skip
    assert partition.metadata["uncovered_trade_ids"].value == n
    assert partition.metadata["uncovered_id_ranges"].value == text


def test_aggtrades_day_with_uncovered_ids_and_a_wrong_price_fails(
    vision_server: VisionServer, instance: DagsterInstance, tmp_path: Path
) -> None:
    """Whichever count rule, a wrong high in one minute fails the day, naming that minute and field."""
    _, covered = publish_uncovered_day(vision_server.root, count_uncovered=True)
    counted = read_klines(vision_server.root / UM.klines_key("BTCUSDT", str(DAYS[1])))["count"]
    klines = expected_klines(covered, [DAYS[1]]).assign(count=counted.to_numpy())
    traded = klines.index[klines["count"] > 0][100]
    klines.loc[traded, "high"] += 0.01
    write_klines(vision_server.root, "um", "BTCUSDT", DAYS[1].isoformat(), klines)

    _, check = run_aggtrades(vision_server, instance, tmp_path)
    assert not check.passed
    minute = pd.Timestamp(klines.loc[traded, "open_time"], unit="ms").strftime("%H:%M")
    (failure,) = check.metadata["failing_ticker_days"].value
    assert [failure[k] for k in ("day", "mismatching_minutes", "first_minute", "fields", "count_rule")] == [
        str(DAYS[1]), 1, minute, "high", "neither"
    ]  # fmt: skip
    assert check.metadata["count_rule"].value == {f"BTCUSDT {DAYS[1]}": "neither"}


# --- settings: the switch and the freshness deadline ---------------------------------------------


def test_kline_check_is_on_by_default_and_can_be_turned_off(tmp_path: Path) -> None:
    def check_names(**env: str) -> set[str]:
        settings = Settings.from_env({"DAGSTER_HOME": str(tmp_path), "BINANCE_MARKETS": "um", **env})
        return {k.name for k in build_definitions(settings).resolve_asset_graph().asset_check_keys}

    assert "matches_binance_klines" in check_names()
    assert "matches_binance_klines" not in check_names(BINANCE_KLINE_CHECK="false")
    assert {"trade_ids_continuous", "day_coverage", "sane_trades"} <= check_names(BINANCE_KLINE_CHECK="0")
    with pytest.raises(ValueError, match="BINANCE_KLINE_CHECK='maybe' is invalid"):
        Settings.from_env({"BINANCE_KLINE_CHECK": "maybe"})


def test_daily_liquidity_carries_the_freshness_policy(tmp_path: Path) -> None:
    settings = Settings.from_env({"DAGSTER_HOME": str(tmp_path), "BINANCE_FRESHNESS_DEADLINE": "10:30"})
    graph = build_definitions(settings).resolve_asset_graph()
    for market in settings.markets:
        node = graph.get(AssetKey(["binance", market, "daily_liquidity"]))
        assert node.freshness_policy == FreshnessPolicy.cron(
            "30 10 * * *", dt.timedelta(hours=10, minutes=30)
        )
        assert graph.get(AssetKey(["binance", market, "hl5s_bars"])).freshness_policy is None
    assert liquidity_freshness("12:00") == FreshnessPolicy.cron("0 12 * * *", dt.timedelta(hours=12))
    assert liquidity_freshness("00:00").lower_bound_delta == dt.timedelta(days=1)
    assert Settings().freshness_deadline == "12:00"
    with pytest.raises(ValueError, match="BINANCE_FRESHNESS_DEADLINE='noon' is invalid"):
        Settings.from_env({"BINANCE_FRESHNESS_DEADLINE": "noon"})
