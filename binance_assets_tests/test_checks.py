"""The WARN checks on partial and odd archives (trade_ids_continuous, day_coverage, sane_trades), through
real runs: fake Vision server -> Dagster -> chDB. They flag, never fail the run."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from dagster import AssetCheckEvaluation, AssetCheckSeverity, DagsterInstance, materialize

from binance_assets.clickhouse.store import Store
from binance_assets.clickhouse.tables import BARS_TABLE, LIQUIDITY_TABLE
from binance_assets.markets import MARKETS
from binance_assets.orchestration.assets import build_market_assets
from binance_assets.trust.checks import (
    AROUND_THE_CLOCK_SECONDS,
    LIMIT,
    QUIET_FLAG_SECONDS,
    CheckOutcome,
    RunSlice,
    bars_well_formed,
    sane_trades,
)
from binance_assets_tests.archives import drop_ids, publish, trades_csv, write_archive, zip_archive
from binance_assets_tests.helpers import RANGE_END, RANGE_START, resources
from binance_assets_tests.vision_server import VisionServer

UM = MARKETS["um"]
DAYS = [dt.date(2024, 5, 1) + dt.timedelta(days=i) for i in range(8)]
WARN_CHECKS = ("trade_ids_continuous", "day_coverage", "sane_trades")


def checks(
    server: VisionServer,
    instance: DagsterInstance,
    tmp_path: Path,
    ticker: str,
    first: dt.date,
    last: dt.date,
) -> dict[str, AssetCheckEvaluation]:
    result = materialize(
        [build_market_assets(UM, 31, retry_policy=None, kline_check=False)],
        instance=instance,
        resources=resources(server, f"chdb://{tmp_path / 'clickhouse'}", tmp_path),
        tags={RANGE_START: f"{first}|{ticker}", RANGE_END: f"{last}|{ticker}"},
        raise_on_error=False,
    )
    assert result.success
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def republish(root: Path, ticker: str, day: dt.date, trades: pd.DataFrame) -> None:
    """Replace a day's archive (and its CHECKSUM) with these trades."""
    on_day = trades[pd.to_datetime(trades["time_us"], unit="us").dt.date == day]
    data = zip_archive(trades_csv(on_day, "um_header"), f"{ticker}-trades-{day}.csv")
    write_archive(root, UM.archive_key("trades", ticker, str(day)), data)


def failing(check: AssetCheckEvaluation) -> dict[str, dict[str, object]]:
    return {row["day"]: row for row in check.metadata["failing_ticker_days"].value}


def test_liquid_days_pass_every_warn_check(
    vision_server: VisionServer, instance: DagsterInstance, tmp_path: Path
) -> None:
    publish(vision_server.root, "um", "ETHUSDT", DAYS, trades_per_day=2400, spread=24, seed=3)
    result = checks(vision_server, instance, tmp_path, "ETHUSDT", DAYS[0], DAYS[-1])
    for name in WARN_CHECKS:
        assert result[name].passed and result[name].severity == AssetCheckSeverity.WARN, name


def test_truncated_day_id_gaps_and_bad_rows_are_flagged_as_warnings(
    vision_server: VisionServer, instance: DagsterInstance, tmp_path: Path
) -> None:
    """Eight liquid days (every hour trades), then Binance-style damage: day 6 holds only its first 7
    hours (the archive was cut), day 4 lacks 5 ids, day 6 starts 3 ids after day 5 ended (loaded by an
    earlier run), day 2 has two zero-quantity trades and day 3 one row twice."""
    root = vision_server.root
    trades = publish(root, "um", "BTCUSDT", DAYS, trades_per_day=2400, spread=24, seed=1)
    day_of = pd.to_datetime(trades["time_us"], unit="us").dt.date
    ids = {day: trades.loc[day_of == day, "id"] for day in DAYS}
    damaged = drop_ids(trades, [*ids[DAYS[4]].iloc[1000:1005], *ids[DAYS[6]].iloc[:3]])
    seven_am = pd.Timestamp(DAYS[6], tz="UTC") + pd.Timedelta(hours=7)
    cut = (pd.to_datetime(damaged["time_us"], unit="us", utc=True) >= seven_am) & (
        pd.to_datetime(damaged["time_us"], unit="us").dt.date == DAYS[6]
    )
    damaged = damaged[~cut].reset_index(drop=True)
    zero = damaged.index[damaged["id"].isin(ids[DAYS[2]].iloc[[10, 20]])]
    damaged.loc[zero, "qty"] = 0.0
    twice = damaged[damaged["id"] == ids[DAYS[3]].iloc[50]]
    damaged = pd.concat([damaged, twice]).sort_values(["time_us", "id"], kind="stable", ignore_index=True)
    for day in DAYS[2:7]:
        republish(root, "BTCUSDT", day, damaged)

    early = checks(vision_server, instance, tmp_path, "BTCUSDT", DAYS[0], DAYS[5])
    late = checks(vision_server, instance, tmp_path, "BTCUSDT", DAYS[6], DAYS[7])
    for name in WARN_CHECKS:
        assert early[name].severity == late[name].severity == AssetCheckSeverity.WARN
    assert early["bars_well_formed"].passed and early["liquidity_matches_bars"].passed
    assert late["bars_well_formed"].passed and late["liquidity_matches_bars"].passed

    assert early["day_coverage"].passed  # every day of the first run traded around the clock
    (day6,) = failing(late["day_coverage"]).values()
    assert day6["day"] == str(DAYS[6]) and day6["reference_days"] == 6
    last_trade_us = damaged.loc[damaged["time_us"] < seven_am.value // 1000, "time_us"].max()
    midnight_us = (seven_am + pd.Timedelta(hours=17)).value // 1000
    assert day6["last_trade_before_end_seconds"] == pytest.approx((midnight_us - last_trade_us) / 1e6, abs=5)
    assert day6["longest_quiet_seconds"] >= QUIET_FLAG_SECONDS
    assert day6["reference_longest_quiet_seconds"] < AROUND_THE_CLOCK_SECONDS
    assert late["day_coverage"].metadata["first_failure"].value == f"BTCUSDT {DAYS[6]}"

    gaps = failing(early["trade_ids_continuous"])
    assert list(gaps) == [str(DAYS[4])] and gaps[str(DAYS[4])]["missing_ids"] == 5
    across = failing(late["trade_ids_continuous"])
    truncated = int(ids[DAYS[6]].max() - damaged.loc[damaged["time_us"] == last_trade_us, "id"].max())
    assert across[str(DAYS[6])]["ids_missing_after_previous_day"] == 3  # day 5 came from the earlier run
    assert across[str(DAYS[7])]["ids_missing_after_previous_day"] == truncated
    assert late["trade_ids_continuous"].metadata["ids_missing_after_previous_day"].value == 3 + truncated

    odd = failing(early["sane_trades"])
    assert {day: (row["nonpositive_rows"], row["duplicate_rows"]) for day, row in odd.items()} == {
        str(DAYS[2]): (2, 0),
        str(DAYS[3]): (0, 1),
    }
    assert late["sane_trades"].passed


def test_first_failure_names_the_minute_when_a_check_has_one() -> None:
    outcome = CheckOutcome(False, [{"ticker": "BTCUSDT", "day": "2024-05-01", "first_minute": "07:41"}])
    assert outcome.first_failure == "BTCUSDT 2024-05-01 07:41"
    assert (
        CheckOutcome(False, [{"ticker": "BTCUSDT", "day": "2024-05-01"}]).first_failure
        == "BTCUSDT 2024-05-01"
    )
    assert CheckOutcome(True).first_failure == ""


def test_bars_well_formed_flags_bad_bars(tmp_path: Path) -> None:
    """Regression: with `toString(day) AS day` in its SELECT, ClickHouse put the alias into the WHERE
    clause and the check matched no row, whatever the bars."""
    day = DAYS[0]
    midnight = dt.datetime.combine(day, dt.time(), dt.UTC)

    def bar(seconds: int, low: float = 1.0, count: int = 1) -> dict[str, object]:
        prices = {"open": 2.0, "high": 3.0, "low": low, "close": 2.0}
        volumes = {"volume": 1.0, "quote_volume": 2.0, "taker_buy_volume": 0.5}
        ts = midnight + dt.timedelta(seconds=seconds)
        return {
            "market": "um",
            "ticker": "BTCUSDT",
            "day": day,
            "ts": ts,
            **prices,
            **volumes,
            "trade_count": count,
        }

    rows = [bar(5), bar(10, low=2.5), bar(15), bar(15), bar(20, count=0), bar(86_405)]
    run = RunSlice("um", ("BTCUSDT",), (day,))
    with Store(f"chdb://{tmp_path / 'store'}").open() as store:
        assert bars_well_formed(store, run).passed
        store.client.insert_arrow("binance.hl5s", pa.Table.from_pylist(rows, schema=BARS_TABLE.schema))
        outcome = bars_well_formed(store, run)
    assert not outcome.passed and outcome.first_failure == f"BTCUSDT {day}"
    assert outcome.totals == {"bad_ohlc": 1, "ts_outside_day": 1, "duplicate_ts": 1, "empty_bars": 1}


def test_totals_add_up_every_failing_day_not_only_those_listed(tmp_path: Path) -> None:
    """A check lists its first 50 failing ticker-days; its totals count all of them."""
    days = tuple(dt.date(2024, 1, 1) + dt.timedelta(days=i) for i in range(LIMIT + 10))
    zeros = {name: 0 for name in LIQUIDITY_TABLE.schema.names if name not in ("market", "ticker", "day")}
    loaded = dt.datetime(2024, 6, 1, tzinfo=dt.UTC)
    rows = [
        {**zeros, "market": "um", "ticker": "BTCUSDT", "day": day, "source": "daily", "archive_sha256": "",
         "dataset": "trades", "uncovered_id_ranges": "", "loaded_at": loaded, "nonpositive_rows": 2,
         "duplicate_rows": 1}
        for day in days
    ]  # fmt: skip
    with Store(f"chdb://{tmp_path / 'store'}").open() as store:
        store.insert(LIQUIDITY_TABLE, pa.Table.from_pylist(rows, schema=LIQUIDITY_TABLE.schema))
        outcome = sane_trades(store, RunSlice("um", ("BTCUSDT",), days))
    assert len(outcome.failures) == LIMIT
    assert outcome.totals == {"nonpositive_rows": 2 * len(days), "duplicate_rows": len(days)}
