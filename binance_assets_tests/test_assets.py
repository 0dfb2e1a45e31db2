"""The market assets end to end: fake Vision server -> real Dagster instance -> embedded ClickHouse."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dagster import AssetKey, DagsterInstance, RetryPolicy

from binance_assets.markets import MARKETS
from binance_assets_tests.archives import expected_bars, expected_day_stats, publish, write_archive
from binance_assets_tests.helpers import materialize_range, partition_status, query, resources
from binance_assets_tests.vision_server import VisionServer

UM = MARKETS["um"]
JAN = [dt.date(2024, 1, 1) + dt.timedelta(days=i) for i in range(31)]
FEB = [dt.date(2024, 2, 1) + dt.timedelta(days=i) for i in range(3)]


@pytest.fixture
def mirror(vision_root: Path) -> dict[str, pd.DataFrame]:
    """BTCUSDT: January as a monthly archive (and daily ones), then daily; ETHUSDT: listed 2024-01-30."""
    return {
        "BTCUSDT": publish(vision_root, "um", "BTCUSDT", JAN + FEB, monthly=("2024-01",), seed=1),
        "ETHUSDT": publish(vision_root, "um", "ETHUSDT", [*JAN[-2:], *FEB[:2]], seed=2),
    }


def run_range(instance: DagsterInstance, res: dict[str, object], ticker: str, first: str, last: str) -> bool:
    return materialize_range(instance, res, ticker, first, last).success


def test_range_with_monthly_archive_matches_oracle(
    vision_server: VisionServer,
    mirror: dict[str, pd.DataFrame],
    instance: DagsterInstance,
    store_url: str,
    tmp_path: Path,
) -> None:
    res = resources(vision_server, store_url, tmp_path)
    assert run_range(instance, res, "BTCUSDT", "2024-01-01", "2024-02-03")
    assert run_range(instance, res, "ETHUSDT", "2024-01-28", "2024-02-03")

    # January came from the one monthly archive, February from daily ones: no January daily download
    assert vision_server.hits("BTCUSDT-trades-2024-01.zip") >= 1
    assert vision_server.hits("BTCUSDT-trades-2024-01-15.zip") == 0

    bars = query(store_url, "SELECT * FROM binance.hl5s ORDER BY ticker, ts")
    for ticker, trades in mirror.items():
        ours = bars[bars["ticker"] == ticker].reset_index(drop=True)
        want = expected_bars(trades)
        assert len(ours) == len(want)
        np.testing.assert_array_equal(
            ours["ts"].map(lambda t: int(t.timestamp())).to_numpy(), want["ts"].to_numpy() // 10**6
        )
        for column in ("open", "high", "low", "close", "trade_count"):
            np.testing.assert_array_equal(ours[column].to_numpy(), want[column].to_numpy(), err_msg=column)
        np.testing.assert_allclose(
            ours["quote_volume"].to_numpy(), want["quote_volume"].to_numpy(), rtol=1e-12
        )

    liquidity = query(store_url, "SELECT * FROM binance.daily_liquidity FINAL ORDER BY ticker, day")
    btc = liquidity[liquidity["ticker"] == "BTCUSDT"]
    assert list(btc["source"]) == ["monthly"] * 31 + ["daily"] * 3
    eth = liquidity[liquidity["ticker"] == "ETHUSDT"].set_index("day")
    assert list(eth["source"]) == ["none", "none", "daily", "daily", "daily", "daily", "none"]
    assert eth.loc[dt.date(2024, 1, 28), "trade_count"] == 0
    stats = expected_day_stats(mirror["ETHUSDT"]).set_index("day")
    for day, row in stats.iterrows():
        assert eth.loc[day, "trade_count"] == row["trade_count"]
        assert eth.loc[day, "first_trade_id"] == row["first_trade_id"]
        assert eth.loc[day, "volume"] == pytest.approx(row["volume"], rel=1e-12)
    assert (liquidity["archive_sha256"].str.len().isin([0, 64])).all()

    # one materialisation per partition, every check green
    for name in ("hl5s_bars", "daily_liquidity"):
        key = AssetKey(["binance", "um", name])
        records = instance.fetch_materializations(key, limit=1000).records
        partitions = [r.partition_key for r in records]
        assert len(partitions) == len(set(partitions)) == 34 + 7

    # each partition carries its own day's figures (what the UI plots), beside the run's totals
    records = instance.fetch_materializations(
        AssetKey(["binance", "um", "daily_liquidity"]), limit=1000
    ).records
    by_partition = {r.partition_key: r.asset_materialization.metadata for r in records}
    day = by_partition["2024-01-31|ETHUSDT"]
    assert day["trade_count"].value == stats.loc[dt.date(2024, 1, 31), "trade_count"]
    assert day["source"].value == "daily" and day["archive"].value.endswith("ETHUSDT-trades-2024-01-31.zip")
    assert by_partition["2024-01-28|ETHUSDT"]["archive"].value == "none"
    assert by_partition["2024-01-15|BTCUSDT"]["archive"].value.endswith("BTCUSDT-trades-2024-01.zip")
    assert day["run_ticker_days"].value == 7


@pytest.mark.parametrize("checksum", ["matches the cut file", "is wrong"])
def test_bad_archive_fails_and_leaves_old_rows_then_rerun_repairs(
    vision_server: VisionServer,
    mirror: dict[str, pd.DataFrame],
    instance: DagsterInstance,
    store_url: str,
    tmp_path: Path,
    checksum: str,
) -> None:
    """A republished archive that is cut short: its checksum verifies but the zip is corrupt, or the
    checksum does not verify. Either fails the run and keeps every row; the re-run after repair is clean."""
    res = resources(vision_server, store_url, tmp_path)
    assert run_range(instance, res, "ETHUSDT", "2024-01-30", "2024-02-02")
    per_day = "SELECT day, count() AS n, sum(volume) AS v FROM binance.hl5s GROUP BY day ORDER BY day"
    before = query(store_url, per_day)

    archive = vision_server.root / UM.archive_key("trades", "ETHUSDT", "2024-02-01")
    good = archive.read_bytes()
    good_checksum = archive.with_name(archive.name + ".CHECKSUM").read_text()
    cut = good[: len(good) // 2]
    archive.write_bytes(cut)
    write_archive(vision_server.root, UM.archive_key("trades", "ETHUSDT", "2024-02-01"), cut)
    if checksum == "is wrong":
        archive.with_name(archive.name + ".CHECKSUM").write_text(f"{'0' * 64}  {archive.name}\n")
    assert not run_range(instance, res, "ETHUSDT", "2024-01-30", "2024-02-02")
    pd.testing.assert_frame_equal(before, query(store_url, per_day))

    archive.write_bytes(good)
    archive.with_name(archive.name + ".CHECKSUM").write_text(good_checksum)
    assert run_range(instance, res, "ETHUSDT", "2024-01-30", "2024-02-02")
    pd.testing.assert_frame_equal(before, query(store_url, per_day))
    assert query(store_url, "SELECT count() - uniqExact(ticker, ts) AS d FROM binance.hl5s")["d"].iloc[0] == 0


def test_a_day_not_yet_published_waits_alone(
    vision_server: VisionServer,
    mirror: dict[str, pd.DataFrame],
    instance: DagsterInstance,
    store_url: str,
    tmp_path: Path,
) -> None:
    """Yesterday is not published yet: the day before is written and materialised, the run succeeds, and
    yesterday stays missing (neither materialised nor failed) until a later run; a run of yesterday alone
    writes nothing and succeeds."""
    yesterday = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    before = yesterday - dt.timedelta(days=1)
    publish(vision_server.root, "um", "ETHUSDT", [before], seed=9)
    res = resources(vision_server, store_url, tmp_path)
    result = materialize_range(instance, res, "ETHUSDT", before.isoformat(), yesterday.isoformat())
    assert result.success
    logs = "\n".join(entry.user_message for entry in instance.all_logs(result.run_id))
    assert f"left missing: ETHUSDT {yesterday}" in logs and "will be retried" not in logs
    key = AssetKey(["binance", "um", "daily_liquidity"])
    materialized = {m.partition for m in result.asset_materializations_for_node("um_trades_to_bars")}
    assert materialized == {f"{before}|ETHUSDT"}
    status = partition_status(instance, key, [f"{before}|ETHUSDT", f"{yesterday}|ETHUSDT"])
    assert status == {f"{before}|ETHUSDT": "MATERIALIZED", f"{yesterday}|ETHUSDT": None}
    days = query(store_url, "SELECT day FROM binance.daily_liquidity FINAL")["day"].tolist()
    assert days == [before]

    assert materialize_range(instance, res, "ETHUSDT", yesterday.isoformat(), yesterday.isoformat()).success
    assert query(store_url, "SELECT count() AS n FROM binance.hl5s WHERE day = today() - 1")["n"].iloc[0] == 0


ETH_DAYS = [f"{day}|ETHUSDT" for day in ("2024-01-30", "2024-01-31", "2024-02-01", "2024-02-02")]
BARS_KEY, LIQUIDITY_KEY = (
    AssetKey(["binance", "um", "hl5s_bars"]),
    AssetKey(["binance", "um", "daily_liquidity"]),
)


@pytest.mark.parametrize("planned_events", ["per partition", "one per run"])
def test_a_corrupt_day_fails_alone_and_its_rerun_repairs_it(
    vision_server: VisionServer,
    mirror: dict[str, pd.DataFrame],
    instance: DagsterInstance,
    store_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    planned_events: str,
) -> None:
    """One corrupt day in a four-day run: the other three are written and materialised, only the bad day
    shows FAILED on both assets (also with the Helm values' one planned event per run), the run is not
    retried, and its one-line failure names the day and its archive. A run of that day alone repairs it."""
    monkeypatch.setenv(
        "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS", str(planned_events == "one per run")
    )
    archive = vision_server.root / UM.archive_key("trades", "ETHUSDT", "2024-02-01")
    good = archive.read_bytes()
    write_archive(
        vision_server.root, UM.archive_key("trades", "ETHUSDT", "2024-02-01"), good[: len(good) // 2]
    )
    res = resources(vision_server, store_url, tmp_path)
    retry = RetryPolicy(max_retries=2, delay=0.01)
    result = materialize_range(instance, res, "ETHUSDT", "2024-01-30", "2024-02-02", retry_policy=retry)

    assert not result.success
    (failure,) = result.get_step_failure_events()
    message = failure.step_failure_data.error.message
    assert "ETHUSDT 2024-02-01: ETHUSDT-trades-2024-02-01.zip: not a readable zip" in message
    assert "1 ticker-day(s) failed, 3 written" in message
    assert len(message.strip().splitlines()) == 1
    assert len([e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]) == 0
    for key in (BARS_KEY, LIQUIDITY_KEY):
        status = partition_status(instance, key, ETH_DAYS)
        assert status == dict.fromkeys(ETH_DAYS, "MATERIALIZED") | {ETH_DAYS[2]: "FAILED"}, key
    stored = query(store_url, "SELECT day, trade_count FROM binance.daily_liquidity FINAL ORDER BY day")
    expected = expected_day_stats(mirror["ETHUSDT"]).set_index("day")
    assert stored["day"].tolist() == [dt.date(2024, 1, 30), dt.date(2024, 1, 31), dt.date(2024, 2, 2)]
    assert stored["trade_count"].tolist() == [expected.loc[d, "trade_count"] for d in stored["day"]]
    bar_days = query(store_url, "SELECT DISTINCT day FROM binance.hl5s ORDER BY day")["day"].tolist()
    assert bar_days == stored["day"].tolist()

    write_archive(vision_server.root, UM.archive_key("trades", "ETHUSDT", "2024-02-01"), good)
    before = vision_server.requests
    assert run_range(instance, res, "ETHUSDT", "2024-02-01", "2024-02-01")
    assert not any("2024-01-3" in r or "2024-02-02" in r for r in vision_server.requests[len(before) :])
    for key in (BARS_KEY, LIQUIDITY_KEY):
        assert partition_status(instance, key, ETH_DAYS) == dict.fromkeys(ETH_DAYS, "MATERIALIZED")
    stats = query(store_url, "SELECT day, trade_count FROM binance.daily_liquidity FINAL ORDER BY day")
    assert stats["trade_count"].tolist() == [expected.loc[d, "trade_count"] for d in stats["day"]]


def test_a_retry_resumes_after_the_days_already_written(
    vision_server: VisionServer,
    mirror: dict[str, pd.DataFrame],
    instance: DagsterInstance,
    store_url: str,
    tmp_path: Path,
) -> None:
    """A day whose archive answers 500 through two step attempts: the third attempt downloads and writes
    that day alone, and every day is materialised once."""
    vision_server.fail("ETHUSDT-trades-2024-02-01.zip$", 500, times=2)
    res = resources(vision_server, store_url, tmp_path, download_retries=0)
    retry = RetryPolicy(max_retries=3, delay=0.01)
    result = materialize_range(instance, res, "ETHUSDT", "2024-01-30", "2024-02-02", retry_policy=retry)

    assert result.success
    assert len([e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]) == 2
    zips = [r for r in vision_server.requests if r.endswith(".zip")]
    for day in ("2024-01-30", "2024-01-31", "2024-02-02"):
        assert sum(f"ETHUSDT-trades-{day}.zip" in r for r in zips) == 1, day
    materialized = [m.partition for m in result.asset_materializations_for_node("um_trades_to_bars")]
    assert sorted(materialized) == sorted(ETH_DAYS * 2)
    stats = query(store_url, "SELECT day, trade_count FROM binance.daily_liquidity FINAL ORDER BY day")
    expected = expected_day_stats(mirror["ETHUSDT"]).set_index("day")
    assert stats["trade_count"].tolist() == [expected.loc[d, "trade_count"] for d in stats["day"]]
    assert len(stats) == 4
