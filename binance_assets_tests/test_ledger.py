"""The archive ledger and the republished-archives sensor: fake Vision server, real Dagster, chDB."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pandas as pd
import pytest
from dagster import (
    DagsterInstance,
    RunRequest,
    SensorResult,
    build_sensor_context,
    materialize,
)

from binance_assets.clickhouse.client import open_client
from binance_assets.clickhouse.resource import ClickHouseResource
from binance_assets.clickhouse.store import OpenStore, Store
from binance_assets.clickhouse.tables import ARCHIVES_TABLE, LIQUIDITY_TABLE
from binance_assets.markets import MARKETS
from binance_assets.orchestration.assets import build_market_assets
from binance_assets.orchestration.partition_range import RANGE_END, RANGE_START
from binance_assets.orchestration.sensors import (
    ARCHIVE_TAG,
    REPUBLISHED_TICK_SECONDS,
    REPUBLISHED_TICKERS_PER_TICK,
    build_republished_sensor,
    rotate,
)
from binance_assets.settings import Settings
from binance_assets.trust.ledger import LedgerEntry, republished
from binance_assets.vision.listing import ArchiveInfo, VisionListing
from binance_assets_tests.archives import expected_bars, publish
from binance_assets_tests.helpers import query, resources
from binance_assets_tests.vision_server import VisionServer

UM = MARKETS["um"]
FEB = [dt.date(2024, 2, 1) + dt.timedelta(days=i) for i in range(29)]
MAR = [dt.date(2024, 3, 1) + dt.timedelta(days=i) for i in range(3)]


def run(
    instance: DagsterInstance, res: dict[str, object], ticker: str, first: dt.date, last: dt.date
) -> bool:
    return run_tags(instance, res, {RANGE_START: f"{first}|{ticker}", RANGE_END: f"{last}|{ticker}"})


def run_tags(instance: DagsterInstance, res: dict[str, object], tags: dict[str, str]) -> bool:
    assets = build_market_assets(UM, 31, retry_policy=None, kline_check=False)
    return materialize([assets], instance=instance, resources=res, tags=tags, raise_on_error=False).success


def test_each_loaded_archive_has_one_ledger_row_linked_to_its_days(
    vision_server: VisionServer, instance: DagsterInstance, store_url: str, tmp_path: Path
) -> None:
    trades = publish(vision_server.root, "um", "BTCUSDT", [*FEB, *MAR], monthly=("2024-02",), seed=1)
    res = resources(vision_server, store_url, tmp_path)
    assert run(instance, res, "BTCUSDT", FEB[0], MAR[-1])
    assert run(instance, res, "BTCUSDT", MAR[1], MAR[1])  # loaded again: still one row (the newest)

    ledger = query(store_url, "SELECT * FROM binance.archives FINAL ORDER BY key").set_index("key")
    listed = {a.key: a for a in VisionListing(vision_server.url).list_trades_archives(UM, "BTCUSDT")}
    monthly = UM.archive_key("trades", "BTCUSDT", "2024-02")
    assert sorted(ledger.index) == sorted(
        [monthly, *(UM.archive_key("trades", "BTCUSDT", str(d)) for d in MAR)]
    )
    days = pd.to_datetime(trades["time_us"], unit="us").dt.date
    for key, row in ledger.iterrows():
        archive = listed[key]
        assert (row["market"], row["ticker"], row["freq"]) == ("um", "BTCUSDT", archive.freq)
        assert (row["size"], row["etag"]) == (archive.size, archive.etag)
        assert row["last_modified"].to_pydatetime().replace(tzinfo=dt.UTC) == archive.last_modified
        checksum = (vision_server.root / f"{key}.CHECKSUM").read_text().split()[0]
        assert row["sha256"] == checksum
        mine = trades[days.isin(archive.days())]
        assert row["rows"] == len(mine)
        assert (row["first_trade_id"], row["last_trade_id"]) == (mine["id"].min(), mine["id"].max())
        assert row["first_time"].value // 1000 == mine["time_us"].min()
        assert row["last_time"].value // 1000 == mine["time_us"].max()

    liquidity = query(store_url, "SELECT day, archive_sha256 FROM binance.daily_liquidity FINAL ORDER BY day")
    by_sha = {row["sha256"]: key for key, row in ledger.iterrows()}
    fed = liquidity.groupby(liquidity["archive_sha256"].map(by_sha))["day"].apply(list).to_dict()
    assert fed == {monthly: FEB, **{UM.archive_key("trades", "BTCUSDT", str(d)): [d] for d in MAR}}


def tick(instance: DagsterInstance, res: dict[str, object], cursor: str | None) -> SensorResult:
    sensor = build_republished_sensor(UM, Settings())
    context = build_sensor_context(
        instance=instance, resources={"vision": res["vision"], "clickhouse": res["clickhouse"]}, cursor=cursor
    )
    result = sensor(context)
    assert isinstance(result, SensorResult)
    return result


def ranges(requests: list[RunRequest]) -> list[tuple[str, str, str]]:
    return sorted((r.tags[RANGE_START], r.tags[RANGE_END], r.tags[ARCHIVE_TAG]) for r in requests)


def test_republished_archives_rerun_exactly_the_days_they_fed(
    vision_server: VisionServer, instance: DagsterInstance, store_url: str, tmp_path: Path
) -> None:
    """BTCUSDT's monthly February archive and one daily March archive are replaced on Vision; a daily
    February archive is replaced too, but it fed nothing (the monthly one did). ETHUSDT is untouched."""
    root = vision_server.root
    publish(root, "um", "BTCUSDT", [*FEB, *MAR], monthly=("2024-02",), seed=1)
    publish(root, "um", "ETHUSDT", MAR, seed=2)
    res = resources(vision_server, store_url, tmp_path)
    assert run(instance, res, "BTCUSDT", FEB[0], MAR[-1]) and run(instance, res, "ETHUSDT", MAR[0], MAR[-1])
    first = tick(instance, res, None)
    assert first.run_requests == [] and first.cursor == "ETHUSDT"
    before = query(store_url, "SELECT ticker, day, count() AS bars, sum(volume) AS volume FROM binance.hl5s "
                              "GROUP BY ticker, day ORDER BY ticker, day")  # fmt: skip

    new_feb = publish(root, "um", "BTCUSDT", FEB, monthly=("2024-02",), daily=False, seed=7)
    new_mar = publish(root, "um", "BTCUSDT", [MAR[1]], seed=8)
    publish(root, "um", "BTCUSDT", [FEB[3]], seed=9)  # a daily archive the monthly one stood in for
    checksum = root / f"{UM.archive_key('trades', 'BTCUSDT', str(MAR[1]))}.CHECKSUM"
    good_checksum = checksum.read_text()
    checksum.write_text(f"{'0' * 64}  {checksum.name.removesuffix('.CHECKSUM')}\n")  # caught mid-update

    second = tick(instance, res, first.cursor)
    monthly, daily = (
        UM.archive_key("trades", "BTCUSDT", "2024-02"),
        UM.archive_key("trades", "BTCUSDT", str(MAR[1])),
    )
    assert ranges(second.run_requests) == [
        (f"{FEB[0]}|BTCUSDT", f"{FEB[-1]}|BTCUSDT", monthly),
        (f"{MAR[1]}|BTCUSDT", f"{MAR[1]}|BTCUSDT", daily),
    ]
    assert {r.tags["binance/reason"] for r in second.run_requests} == {"republished"}
    assert len({r.run_key for r in second.run_requests}) == 2

    by_key = {r.tags[ARCHIVE_TAG]: dict(r.tags) for r in second.run_requests}
    assert not run_tags(instance, res, by_key[daily])  # the new archive must verify: it does not yet
    checksum.write_text(good_checksum)
    assert run_tags(instance, res, by_key[daily]) and run_tags(instance, res, by_key[monthly])

    after = query(store_url, "SELECT * FROM binance.hl5s ORDER BY ticker, ts")
    assert query(store_url, "SELECT count() - uniqExact(ticker, ts) AS d FROM binance.hl5s")["d"][0] == 0
    btc = after[after["ticker"] == "BTCUSDT"]
    want = pd.concat([expected_bars(new_feb), expected_bars(new_mar)])
    replaced = btc[btc["day"].isin([*FEB, MAR[1]])]
    assert len(replaced) == len(want) and replaced["trade_count"].sum() == want["trade_count"].sum()
    assert replaced["volume"].sum() == pytest.approx(want["volume"].sum(), rel=1e-12)
    unchanged = before[(before["ticker"] == "ETHUSDT") | before["day"].isin([MAR[0], MAR[2]])]
    now = query(store_url, "SELECT ticker, day, count() AS bars, sum(volume) AS volume FROM binance.hl5s "
                           "GROUP BY ticker, day ORDER BY ticker, day")  # fmt: skip
    pd.testing.assert_frame_equal(unchanged.reset_index(drop=True), now.merge(unchanged[["ticker", "day"]]))

    liquidity = query(store_url, "SELECT ticker, day, count() AS n FROM binance.daily_liquidity FINAL "
                                 "GROUP BY ticker, day HAVING n != 1")  # fmt: skip
    assert liquidity.empty
    third = tick(instance, res, second.cursor)  # the ledger now holds the new listings
    assert third.run_requests == []


def test_the_sensor_rotates_through_every_ticker() -> None:
    tickers = [f"T{i:03d}USDT" for i in range(25)]
    seen, cursor = [], None
    for _ in range(3):
        batch = rotate(tickers, cursor, 10)
        seen += batch
        cursor = batch[-1]
    assert seen == tickers + tickers[:5]  # 10 per tick, wrapping around
    assert rotate(tickers, "T007USDTX", 2) == ["T008USDT", "T009USDT"]  # a cursor ticker since removed
    assert rotate(tickers[:3], None, 10) == tickers[:3]
    ticks_per_day = 86_400 // REPUBLISHED_TICK_SECONDS
    assert ticks_per_day * REPUBLISHED_TICKERS_PER_TICK >= 2 * 600  # a 600-ticker market twice a day


def test_only_changed_listings_count_as_republished() -> None:
    when = dt.datetime(2024, 3, 2, 7, tzinfo=dt.UTC)
    entry = LedgerEntry("BTCUSDT", "k", "daily", 10, "etag", when, "sha", (dt.date(2024, 3, 1),))
    same = ArchiveInfo("k", 10, when, "etag", "BTCUSDT", "daily", "2024-03-01")
    assert republished([same], [entry]) == []
    assert republished([], [entry]) == []  # no longer listed: left alone
    for change in (
        dataclasses.replace(same, size=11),
        dataclasses.replace(same, etag="other"),
        dataclasses.replace(same, last_modified=when + dt.timedelta(milliseconds=1)),
    ):
        (found,) = republished([change], [entry])
        assert len(found.changes) == 1


def test_old_liquidity_tables_get_the_new_columns_and_the_ledger_is_created(tmp_path: Path) -> None:
    settings = Settings.from_env({"CLICKHOUSE_ARCHIVES_TABLE": "ledger"})
    assert settings.archives_table == "ledger" and Settings().archives_table == "archives"
    with pytest.raises(ValueError, match="CLICKHOUSE_ARCHIVES_TABLE='bad-name' is invalid"):
        Settings.from_env({"CLICKHOUSE_ARCHIVES_TABLE": "bad-name"})

    old = dataclasses.replace(LIQUIDITY_TABLE, columns=LIQUIDITY_TABLE.columns[:-2])
    with open_client(f"chdb://{tmp_path / 'store'}") as client:
        client.command("CREATE DATABASE binance")
        client.command(old.ddl("binance", "daily_liquidity"))
        OpenStore(Store(f"chdb://{tmp_path / 'store'}", archives_table="ledger"), client).ensure_tables()
        columns = client.query(
            "SELECT table, name, type FROM system.columns WHERE database = 'binance' ORDER BY table, position"
        ).result_rows
    assert [n for t, n, _ in columns if t == "daily_liquidity"] == [c.name for c in LIQUIDITY_TABLE.columns]
    assert [(n, k) for t, n, k in columns if t == "ledger"] == [
        (c.name, c.type) for c in ARCHIVES_TABLE.columns
    ]
    assert ClickHouseResource(url="chdb:///x").archives_table == "archives"
