"""aggTrades as the second source, end to end (trust/fallback.py, BINANCE_DATASET, BINANCE_FALLBACK): a day
without a trades archive, a partial one and a broken one (every row is_buyer_maker=true, #476 / #492)
are built from aggTrades, exactly; the table, the ledger, the checks, the CLI summary, the daemon and
the republished sensor say so."""

from __future__ import annotations

import datetime as dt
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from dagster import AssetKey, DagsterInstance, ExecuteInProcessResult, SensorResult, build_sensor_context

from binance_assets.markets import MARKETS
from binance_assets.orchestration.sensors import ARCHIVE_TAG, build_republished_sensor
from binance_assets.settings import Settings
from binance_assets_tests.archives import (
    DAY_US,
    daily_klines,
    expected_klines,
    publish,
    publish_uncovered,
    trades_csv,
    uncovered_ids,
    write_archive,
    write_klines,
    zip_archive,
)
from binance_assets_tests.helpers import (
    RANGE_END,
    RANGE_START,
    Cli,
    assert_bars_match,
    materialize_range,
    query,
    resources,
    running_daemon,
)
from binance_assets_tests.vision_server import VisionServer

UM, CM = MARKETS["um"], MARKETS["cm"]
MISSING, PARTIAL, BROKEN, HEALTHY = (dt.date(2024, 1, 30) + dt.timedelta(days=i) for i in range(4))
DAYS = [MISSING, PARTIAL, BROKEN, HEALTHY]
FIRST, LAST = str(DAYS[0]), str(DAYS[-1])
LIQUIDITY_KEY = AssetKey(["binance", "um", "daily_liquidity"])


def day_rows(trades: pd.DataFrame, day: dt.date) -> pd.Series:
    return pd.to_datetime(trades["time_us"], unit="us").dt.date == day


def spoil_trades(root: Path, trades: pd.DataFrame) -> None:
    """The three ways a trades archive fails its day; the aggTrades and klines archives stay whole."""
    missing = root / UM.archive_key("trades", "ETHUSDT", MISSING.isoformat())
    missing.unlink()
    missing.with_name(missing.name + ".CHECKSUM").unlink()
    partial = trades[day_rows(trades, PARTIAL)]
    write_archive(
        root,
        UM.archive_key("trades", "ETHUSDT", PARTIAL.isoformat()),
        _zipped(partial.head(len(partial) // 3)),
    )
    broken = trades[day_rows(trades, BROKEN)].assign(is_buyer_maker=True)
    write_archive(root, UM.archive_key("trades", "ETHUSDT", BROKEN.isoformat()), _zipped(broken))


def _zipped(trades: pd.DataFrame) -> bytes:
    return zip_archive(trades_csv(trades, "um_header"), "trades.csv")


@pytest.fixture
def trades(vision_server: VisionServer) -> pd.DataFrame:
    root = vision_server.root
    published = publish(
        root, "um", "ETHUSDT", DAYS, trades_per_day=3000, spread=24, seed=4, klines=True,
        datasets=("trades", "aggTrades"),
    )  # fmt: skip
    spoil_trades(root, published)
    return published


@pytest.fixture
def res(vision_server: VisionServer, store_url: str, tmp_path: Path) -> dict[str, object]:
    return resources(vision_server, store_url, tmp_path)


def check(result: ExecuteInProcessResult, name: str) -> tuple[bool, dict[str, object]]:
    (evaluation,) = [e for e in result.get_asset_check_evaluations() if e.check_name == name]
    return evaluation.passed, {k: v.value for k, v in evaluation.metadata.items()}


def test_missing_partial_and_broken_days_are_rebuilt_from_aggtrades(
    trades: pd.DataFrame, instance: DagsterInstance, store_url: str, res: dict[str, object]
) -> None:
    result = materialize_range(instance, res, "ETHUSDT", FIRST, LAST)
    assert result.success
    assert_bars_match(store_url, {"ETHUSDT": trades}, DAYS[0], DAYS[-1])
    assert check(result, "matches_binance_klines")[0]

    liquidity = query(
        store_url, "SELECT day, source, dataset FROM binance.daily_liquidity FINAL ORDER BY day"
    )
    assert liquidity.values.tolist() == [
        [MISSING, "daily", "aggTrades"],
        [PARTIAL, "daily", "aggTrades"],
        [BROKEN, "daily", "aggTrades"],
        [HEALTHY, "daily", "trades"],
    ]
    ledger = query(
        store_url,
        "SELECT dataset, count() AS n FROM binance.archives FINAL GROUP BY dataset ORDER BY dataset",
    )
    assert ledger.values.tolist() == [["aggTrades", 3], ["trades", 3]]  # the spoilt trades archives were read

    passed, metadata = check(result, "built_from_fallback")
    assert not passed and metadata["days_from_fallback"] == 3
    reasons = {row["day"]: row["reason"] for row in metadata["failing_ticker_days"]}
    assert reasons[str(MISSING)] == "no trades archive"
    partial_count = int(day_rows(trades, PARTIAL).sum())
    assert reasons[str(PARTIAL)] == (
        f"partial trades archive: {partial_count // 3:,} trades against {partial_count:,} in Binance's klines"
    )
    assert "is_buyer_maker=true" in reasons[str(BROKEN)]
    materialization = next(
        m for m in result.asset_materializations_for_node("um_trades_to_bars")
        if m.asset_key == LIQUIDITY_KEY and m.partition == f"{BROKEN}|ETHUSDT"
    )  # fmt: skip
    assert materialization.metadata["dataset"].value == "aggTrades"
    assert materialization.metadata["run_days_from_fallback"].value == 3


def test_without_fallback_the_trades_archives_are_taken_as_they_are(
    trades: pd.DataFrame, instance: DagsterInstance, store_url: str, res: dict[str, object]
) -> None:
    result = materialize_range(instance, res, "ETHUSDT", FIRST, LAST, fallback=None)
    assert result.success and check(result, "built_from_fallback")[0]
    assert not check(result, "matches_binance_klines")[0]  # the partial and broken days differ
    liquidity = query(
        store_url, "SELECT day, source, dataset FROM binance.daily_liquidity FINAL ORDER BY day"
    )
    assert liquidity["dataset"].tolist() == ["trades"] * 4 and liquidity["source"].iloc[0] == "none"


def test_without_the_kline_check_the_partial_day_is_found_from_the_1d_klines(
    trades: pd.DataFrame,
    vision_server: VisionServer,
    instance: DagsterInstance,
    store_url: str,
    res: dict[str, object],
) -> None:
    """One number a day: January's monthly 1d file, and February's daily 1d files (its monthly file is
    not published); the 1m klines are not read."""
    root = vision_server.root
    for path in root.rglob("*-1m-*"):
        path.unlink()
    one_day = daily_klines(expected_klines(trades, DAYS))
    stamps = pd.to_datetime(one_day["open_time"], unit="ms").dt
    write_klines(root, "um", "ETHUSDT", "2024-01", one_day[stamps.month == 1], interval="1d")
    for day in DAYS[2:]:
        write_klines(root, "um", "ETHUSDT", str(day), one_day[stamps.date == day], interval="1d")

    result = materialize_range(instance, res, "ETHUSDT", FIRST, LAST, kline_check=False)
    assert result.success
    assert_bars_match(store_url, {"ETHUSDT": trades}, DAYS[0], DAYS[-1])
    _, metadata = check(result, "built_from_fallback")
    reasons = {row["day"]: row["reason"] for row in metadata["failing_ticker_days"]}
    partial_count = int(day_rows(trades, PARTIAL).sum())
    assert reasons[str(PARTIAL)] == (
        f"partial trades archive: {partial_count // 3:,} trades against {partial_count:,} in Binance's klines"
    )
    hits = vision_server.hits
    assert hits("-1m-") == 0 and hits("ETHUSDT-1d-2024-01.zip") >= 1
    assert hits("ETHUSDT-1d-2024-02.zip") >= 1 and hits("ETHUSDT-1d-2024-02-01.zip") >= 1


def test_aggtrades_as_the_primary_dataset_gives_the_same_bars(
    vision_server: VisionServer, instance: DagsterInstance, store_url: str, res: dict[str, object]
) -> None:
    trades = publish(
        vision_server.root, "um", "BTCUSDT", DAYS, monthly=(), trades_per_day=2000, seed=8, klines=True,
        datasets=("aggTrades",),
    )  # fmt: skip
    result = materialize_range(instance, res, "BTCUSDT", FIRST, LAST, dataset="aggTrades")
    assert result.success and check(result, "matches_binance_klines")[0]
    assert check(result, "built_from_fallback")[0]  # the primary dataset is no fallback
    assert_bars_match(store_url, {"BTCUSDT": trades}, DAYS[0], DAYS[-1])
    stored = query(
        store_url, "SELECT dataset, trade_count, missing_trade_ids FROM binance.daily_liquidity FINAL"
    )
    assert set(stored["dataset"]) == {"aggTrades"} and (stored["missing_trade_ids"] == 0).all()
    assert stored["trade_count"].sum() == len(trades)


def test_a_republished_aggtrades_archive_reruns_its_day(
    vision_server: VisionServer, instance: DagsterInstance, res: dict[str, object]
) -> None:
    """With aggTrades as the primary dataset the ledger holds aggTrades archives, and the
    republished-archives sensor lists the aggTrades folders to compare them."""
    publish(vision_server.root, "um", "BTCUSDT", DAYS, trades_per_day=500, seed=8, datasets=("aggTrades",))
    assert materialize_range(instance, res, "BTCUSDT", FIRST, LAST, dataset="aggTrades").success
    sensor = build_republished_sensor(UM, Settings(dataset="aggTrades"))
    resources_ = {"vision": res["vision"], "clickhouse": res["clickhouse"]}
    assert sensor(build_sensor_context(instance=instance, resources=resources_)).run_requests == []

    key = UM.archive_key("aggTrades", "BTCUSDT", HEALTHY.isoformat())
    with zipfile.ZipFile(vision_server.root / key) as archive:
        (member,) = archive.infolist()
        rows = archive.read(member)
    # republished: the same rows in another zip (a second, non-CSV member)
    write_archive(vision_server.root, key, zip_archive(rows, member.filename, extra_members={"NOTE": b"v2"}))
    result = sensor(build_sensor_context(instance=instance, resources=resources_))
    assert isinstance(result, SensorResult)
    assert [(r.tags[RANGE_START], r.tags[ARCHIVE_TAG]) for r in result.run_requests] == [
        (f"{HEALTHY}|BTCUSDT", key)
    ]


def test_days_loaded_from_a_broken_archive_are_requested_again(
    trades: pd.DataFrame, instance: DagsterInstance, store_url: str, res: dict[str, object]
) -> None:
    loaded = materialize_range(instance, res, "ETHUSDT", FIRST, LAST, fallback=None)
    assert loaded.success
    sensor = build_republished_sensor(UM, Settings())
    context = build_sensor_context(
        instance=instance, resources={"vision": res["vision"], "clickhouse": res["clickhouse"]}
    )
    result = sensor(context)
    assert isinstance(result, SensorResult)
    requested = [
        (r.tags[RANGE_START], r.tags[RANGE_END], r.tags["binance/reason"]) for r in result.run_requests
    ]
    assert requested == [(f"{BROKEN}|ETHUSDT", f"{BROKEN}|ETHUSDT", "broken_trades")]

    assert materialize_range(instance, res, "ETHUSDT", str(BROKEN), str(BROKEN)).success
    again = sensor(
        build_sensor_context(
            instance=instance, resources={"vision": res["vision"], "clickhouse": res["clickhouse"]}
        )
    )
    assert isinstance(again, SensorResult) and again.run_requests == []


@pytest.mark.parametrize(
    ("count_offset", "dataset"), [(0, "aggTrades"), (1, "trades")], ids=["matching", "neither"]
)
def test_a_partial_coin_m_day_is_replaced_only_when_a_count_matches(
    vision_server: VisionServer,
    instance: DagsterInstance,
    store_url: str,
    res: dict[str, object],
    count_offset: int,
    dataset: str,
) -> None:
    """COIN-M trades files since July 2026 stop after about two hours (#492). The day's aggregates skip
    ids and Binance's klines count them: the aggTrades day (covered trades + uncovered ids = the klines'
    count) replaces the cut one. With one more trade in the klines neither count matches: the cut day
    stays, reported partial."""
    root, ticker, whole = vision_server.root, "BTCUSD_PERP", PARTIAL + dt.timedelta(days=1)
    trades = publish(
        root, "cm", ticker, [PARTIAL, whole], trades_per_day=20_000, spread=24, seed=9, klines=True,
        datasets=("trades", "aggTrades"),
    )  # fmt: skip
    uncovered = uncovered_ids(trades, PARTIAL)
    covered = publish_uncovered(
        root, "cm", ticker, PARTIAL, trades, uncovered, count_uncovered=True, count_offset=count_offset
    )
    day = trades[day_rows(trades, PARTIAL)]
    cut = day[day["time_us"] < day["time_us"].iloc[0] // DAY_US * DAY_US + 2 * 3_600_000_000]
    write_archive(
        root, CM.archive_key("trades", ticker, str(PARTIAL)), zip_archive(trades_csv(cut, "cm"), "trades.csv")
    )

    result = materialize_range(instance, res, ticker, str(PARTIAL), str(whole), market="cm")
    assert result.success
    stored = query(store_url, "SELECT dataset, trade_count FROM binance.daily_liquidity FINAL ORDER BY day")
    replaced = dataset == "aggTrades"
    healthy = int(day_rows(trades, whole).sum())
    assert stored.values.tolist() == [[dataset, len(covered) if replaced else len(cut)], ["trades", healthy]]

    passed, metadata = check(result, "built_from_fallback")
    assert not passed and (metadata["days_from_fallback"], metadata["partial_days_kept"]) == (
        (1, 0) if replaced else (0, 1)
    )
    (row,) = metadata["failing_ticker_days"]
    klines_count = len(covered) + len(uncovered) + count_offset
    assert row["reason"].startswith(f"partial trades archive: {len(cut):,} trades against {klines_count:,}")
    partition = next(
        m for m in result.asset_materializations_for_node("cm_trades_to_bars")
        if m.asset_key.path[-1] == "daily_liquidity" and m.partition == f"{PARTIAL}|{ticker}"
    )  # fmt: skip
    fallback_rows, partial_rows = (partition.metadata[k].value for k in ("fallback_days", "partial_days"))
    klines = check(result, "matches_binance_klines")
    if replaced:
        assert [r["count_rule"] for r in fallback_rows] == ["covered+gaps"] and partial_rows == []
        assert klines[0] and klines[1]["count_rule"] == {f"{ticker} {PARTIAL}": "covered+gaps"}
    else:
        assert fallback_rows == [] and [r["reason"] for r in partial_rows] == [row["reason"]]
        assert row["reason"].endswith(
            f"kept: aggTrades covers {len(covered):,} trades and {len(uncovered):,} uncovered ids; neither "
            f"{len(covered):,} nor {len(covered) + len(uncovered):,} is the klines' {klines_count:,}"
        )
        assert row["archive"] == CM.archive_key("trades", ticker, str(PARTIAL)) and not klines[0]


def summary_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("  from aggTrades: ")]


def test_materialize_lists_the_days_built_from_aggtrades(cli: Cli, trades: pd.DataFrame) -> None:
    result = cli("materialize", "--market", "um", "--ticker", "ETHUSDT", "--start", FIRST, "--end", LAST)
    assert result.returncode == 0, result.stderr
    assert "(0 without archive, 3 built from aggTrades)" in result.stdout
    lines = summary_lines(result.stdout)
    assert [line.split(":")[1].strip() for line in lines] == [f"um ETHUSDT {day}" for day in DAYS[:3]]
    assert_bars_match(cli.store_url, {"ETHUSDT": trades}, DAYS[0], DAYS[-1])


@pytest.mark.slow
def test_the_daemon_rebuilds_missing_partial_and_broken_days(
    cli: Cli, trades: pd.DataFrame, tmp_path: Path
) -> None:
    with running_daemon(cli, tmp_path / "daemon"):
        result = cli(
            "backfill", "--market", "um", "--ticker", "ETHUSDT", "--start", FIRST, "--end", LAST, "--wait"
        )
    assert result.returncode == 0, result.stderr
    assert len(summary_lines(result.stdout)) == 3
    assert_bars_match(cli.store_url, {"ETHUSDT": trades}, DAYS[0], DAYS[-1])
    datasets = query(cli.store_url, "SELECT dataset FROM binance.daily_liquidity FINAL ORDER BY day")[
        "dataset"
    ]
    assert datasets.tolist() == ["aggTrades", "aggTrades", "aggTrades", "trades"]
