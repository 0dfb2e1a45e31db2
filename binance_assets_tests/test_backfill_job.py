"""The shared backfill submission (orchestration/backfills.py) and the `<market>_backfill` job
(backfill_job.py): its config checks, what it submits on a real instance, and (slow) a launch through the
real webserver's GraphQL run by the real daemon."""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from dagster import (
    DagsterInstance,
    DagsterInvalidConfigError,
    DagsterRun,
    DagsterRunStatus,
    ExecuteInProcessResult,
    RunsFilter,
)
from dagster._core.execution.backfill import (
    BULK_ACTION_TERMINAL_STATUSES,
    BulkActionStatus,
    PartitionBackfill,
)

from binance_assets.markets import MARKETS
from binance_assets.orchestration.assets import BARS, LIQUIDITY, asset_key, build_market_assets
from binance_assets.orchestration.backfill_job import REASON, build_backfill_job
from binance_assets.orchestration.backfills import (
    BACKFILL_TICKER_DAYS,
    request_days,
    select_tickers,
    ticker_groups,
)
from binance_assets_tests.archives import publish, write_archive
from binance_assets_tests.helpers import (
    BACKFILL_TAG,
    LAUNCH_JOB,
    TODAY,
    Cli,
    assert_bars_match,
    launch_job_variables,
    materialize_range,
    resources,
    running_daemon,
    webserver,
)
from binance_assets_tests.vision_server import VisionServer

UM = MARKETS["um"]
JOB = build_backfill_job(UM, build_market_assets(UM, 31))


def run_job(instance: DagsterInstance, **config: Any) -> ExecuteInProcessResult:
    """The um backfill job in this process on ``instance``; failures returned, not raised."""
    return JOB.execute_in_process(
        run_config={"ops": {"um_submit_backfills": {"config": config}}},
        instance=instance,
        raise_on_error=False,
    )


def targets(backfill: PartitionBackfill) -> dict[str, set[str]]:
    """Each target asset's partition keys."""
    subsets = backfill.asset_backfill_data.target_subset.partitions_subsets_by_asset_key
    return {key.path[-1]: set(subset.get_partition_keys()) for key, subset in subsets.items()}


def test_ticker_groups_are_whole_tickers_within_the_limit_and_no_wider_than_the_days() -> None:
    long = {f"T{i:02d}": [f"d{j}" for j in range(3_000)] for i in range(40)}
    assert [len(group) for group in ticker_groups(long)] == [33, 7]  # 100,000 // 3,000
    assert [ticker for group in ticker_groups(long) for ticker in group] == list(long)
    short = {f"T{i}": ["a", "b", "c"] for i in range(5)}
    assert ticker_groups(short) == [["T0", "T1", "T2"], ["T3", "T4"]]  # no more tickers than days
    assert ticker_groups({"T": ["x"] * (BACKFILL_TICKER_DAYS + 1), "U": ["y"]}) == [["T"], ["U"]]
    assert ticker_groups({}) == []


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        ("2024-01-02", "2024-01-01", "end 2024-01-01 is before start 2024-01-02"),
        ("2019-09-07", "2019-09-08", "start 2019-09-07 is before um's first day 2019-09-08"),
        ("2024-01-01", str(TODAY), f"end {TODAY} is not before today ({TODAY} UTC)"),
    ],
)
def test_request_days_refuse_a_bad_range_in_one_line(start: str, end: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        request_days(UM, dt.date.fromisoformat(start), dt.date.fromisoformat(end), TODAY)
    assert request_days(UM, dt.date(2024, 1, 30), dt.date(2024, 2, 1), TODAY) == (
        dt.date(2024, 1, 30),
        dt.date(2024, 1, 31),
        dt.date(2024, 2, 1),
    )


def test_select_tickers_by_name_or_by_filter_over_the_registered_ones() -> None:
    registered = ["ETHUSDT", "BTCUSDT", "BTCUSDC", "SOLBTC"]
    assert select_tickers(UM, registered, ["ETHUSDT", "BTCUSDT", "ETHUSDT"], "") == ("ETHUSDT", "BTCUSDT")
    assert select_tickers(UM, registered, [], "*usdt, *USDC") == ("BTCUSDC", "BTCUSDT", "ETHUSDT")
    assert select_tickers(UM, registered, [], "*") == ("BTCUSDC", "BTCUSDT", "ETHUSDT", "SOLBTC")
    for tickers, pattern, message in [
        (["BTCUSDT", "FOO"], "", "not registered in um_tickers: FOO "),
        ([], "*EUR", "ticker_filter '*EUR' matches none of the 4 tickers registered in um_tickers"),
        ([], " , ", "give either tickers or ticker_filter, not neither"),
        (["BTCUSDT"], "*", "give either tickers or ticker_filter, not both"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            select_tickers(UM, registered, tickers, pattern)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"start": "2024-13-01", "end": "2024-01-02"}, "start '2024-13-01' is invalid: expected a date"),
        ({"start": "2024-01-01", "end": "yesterday"}, "end 'yesterday' is invalid: expected a date"),
        ({"start": "2024-01-02", "end": "2024-01-01"}, "end 2024-01-01 is before start 2024-01-02"),
        ({"start": "2024-01-01", "end": str(TODAY)}, f"end {TODAY} is not before today ({TODAY} UTC)"),
        ({"tickers": ["DOGEUSDT"]}, "not registered in um_tickers: DOGEUSDT "),
        ({"tickers": [], "ticker_filter": "XRP*"}, "ticker_filter 'XRP*' matches none of the 3 tickers"),
    ],
    ids=["bad start", "bad end", "end before start", "end today", "unknown ticker", "filter matches none"],
)
def test_a_bad_config_fails_the_run_with_one_line_and_submits_nothing(
    instance: DagsterInstance, config: dict[str, Any], message: str
) -> None:
    result = run_job(
        instance, **{"tickers": ["BTCUSDT"], "start": "2024-01-01", "end": "2024-01-02", **config}
    )
    assert not result.success
    (failure,) = result.get_step_failure_events()
    error = failure.step_failure_data.error
    assert error.cls_name == "Failure"
    assert error.message.startswith(f"dagster._core.definitions.events.Failure: {message}")
    assert len(error.message.strip().splitlines()) == 1
    assert instance.get_backfills() == []


def test_only_is_checked_by_the_config_schema_at_launch(instance: DagsterInstance) -> None:
    config = {"tickers": ["BTCUSDT"], "start": "2024-01-01", "end": "2024-01-01", "only": "late"}
    with pytest.raises(DagsterInvalidConfigError, match="only"):
        JOB.execute_in_process(
            run_config={"ops": {"um_submit_backfills": {"config": config}}}, instance=instance
        )


def test_the_job_submits_whole_ticker_backfills_of_both_assets_with_one_timestamp(
    instance: DagsterInstance,
) -> None:
    """A filter over the registered tickers x every USD-M day: split as `binance-assets backfill` splits
    (shared code, backfills.py), its runs tagged with the market and the job as reason."""
    first, last = UM.first_day, TODAY - dt.timedelta(days=1)
    days = (last - first).days + 1
    tickers = [f"T{index:02d}USDT" for index in range(40)]
    instance.add_dynamic_partitions(UM.tickers_partition_name, tickers)

    result = run_job(instance, ticker_filter="T*", start=str(first), end=str(last))
    assert result.success
    backfills = sorted(instance.get_backfills(), key=lambda b: b.title or "")
    per_backfill = BACKFILL_TICKER_DAYS // days
    assert [b.title for b in backfills] == [
        f"um 40 tickers x {days:,} days ({first}..{last}) [1/2]",
        f"um 40 tickers x {days:,} days ({first}..{last}) [2/2]",
    ]
    assert len({b.backfill_timestamp for b in backfills}) == 1
    for backfill, group in zip(backfills, [tickers[:per_backfill], tickers[per_backfill:]], strict=True):
        assert backfill.tags == {"binance/market": "um", "binance/reason": REASON}
        assert backfill.description == f"um_backfill run {result.run_id}: {', '.join(group)}"
        keys = {f"{first + dt.timedelta(days=i)}|{t}" for t in group for i in range(days)}
        assert targets(backfill) == {BARS: keys, LIQUIDITY: keys}
    logged = [record.user_message for record in instance.all_logs(result.run_id)]
    for backfill, group in zip(backfills, [tickers[:per_backfill], tickers[per_backfill:]], strict=True):
        assert (
            f"backfill {backfill.backfill_id}: {len(group)} tickers, {len(group) * days:,} ticker-days"
            in logged
        )
    assert (
        f"submitted 2 backfills of um 40 tickers x {days:,} days ({first}..{last}), {40 * days:,} "
        "ticker-days: dagster-daemon runs them" in logged
    )


def test_only_missing_and_only_failed_pick_what_dagster_shows(
    instance: DagsterInstance, vision_server: VisionServer, store_url: str, tmp_path: Path
) -> None:
    """ETHUSDT 2024-01-30..2024-02-02: a run wrote the first two days and failed 2024-02-01 (corrupt
    archive); 2024-02-02 was never run. `failed` backfills 2024-02-01, `missing` both unloaded days, and
    `failed` on loaded days submits nothing."""
    days = [dt.date(2024, 1, 30) + dt.timedelta(days=i) for i in range(4)]
    publish(vision_server.root, "um", "ETHUSDT", days, trades_per_day=20, seed=3)
    write_archive(vision_server.root, UM.archive_key("trades", "ETHUSDT", "2024-02-01"), b"not a zip")
    res = resources(vision_server, store_url, tmp_path)
    assert not materialize_range(instance, res, "ETHUSDT", "2024-01-30", "2024-02-01").success

    span = {"tickers": ["ETHUSDT"], "start": "2024-01-30", "end": "2024-02-02"}
    chosen = {}
    for only in ("failed", "missing"):
        before = {b.backfill_id for b in instance.get_backfills()}
        assert run_job(instance, only=only, **span).success
        (backfill,) = [b for b in instance.get_backfills() if b.backfill_id not in before]
        chosen[only] = targets(backfill)[BARS]
        assert targets(backfill)[LIQUIDITY] == chosen[only]
    assert chosen == {
        "failed": {"2024-02-01|ETHUSDT"},
        "missing": {"2024-02-01|ETHUSDT", "2024-02-02|ETHUSDT"},
    }
    count = len(instance.get_backfills())
    assert run_job(instance, only="failed", tickers=["ETHUSDT"], start="2024-01-30", end="2024-01-31").success
    assert len(instance.get_backfills()) == count


def test_the_job_targets_only_the_assets_of_its_market() -> None:
    assert JOB.name == "um_backfill"
    assert asset_key(UM, BARS) not in JOB.asset_layer.selected_asset_keys
    assert JOB.tags["dagster/priority"] == "10"


def wait_for(what: str, found: Callable[[], Any], timeout: float, log: Path) -> Any:
    """Poll ``found`` until it returns something true; fail naming ``what`` and the log after timeout."""
    deadline = time.monotonic() + timeout
    while not (value := found()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}; see {log}")
        time.sleep(1)
    return value


@pytest.mark.slow
def test_a_launchpad_launch_through_the_webserver_is_run_by_the_daemon_and_loads_exact_bars(
    cli: Cli, vision_root: Path, tmp_path: Path
) -> None:
    """The UI path: the `um_backfill` job launched by the real webserver's GraphQL, as the Launchpad
    does, queued and run by the real daemon; its run submits the backfill, the daemon runs that, and the
    stored bars are exactly the trades'. A config the schema refuses is refused at launch."""
    days = [dt.date(2024, 1, 1) + dt.timedelta(days=i) for i in range(3)]
    trades = {"ETHUSDT": publish(vision_root, "um", "ETHUSDT", days, trades_per_day=200, seed=7)}
    with cli.instance() as instance:
        instance.add_dynamic_partitions(UM.tickers_partition_name, ["ETHUSDT"])
    config = {"tickers": ["ETHUSDT"], "start": str(days[0]), "end": str(days[-1])}
    logs = tmp_path / "processes"

    with webserver(cli.env, logs) as server, running_daemon(cli, logs):
        refused = server.graphql(LAUNCH_JOB, launch_job_variables("um_backfill", {**config, "only": "x"}))
        assert refused["launchPipelineExecution"]["__typename"] == "RunConfigValidationInvalid"
        launched = server.graphql(LAUNCH_JOB, launch_job_variables("um_backfill", config))
        outcome = launched["launchPipelineExecution"]
        assert outcome["__typename"] == "LaunchRunSuccess", outcome
        run_id = outcome["run"]["runId"]
        with cli.instance() as instance:

            def finished() -> DagsterRun | None:
                run = instance.get_run_by_id(run_id)
                return run if run and run.is_finished else None

            assert wait_for("the job's run", finished, 300, logs / "daemon.log").is_success
            (backfill,) = instance.get_backfills()

            def backfill_done() -> bool:
                return instance.get_backfill(backfill.backfill_id).status in BULK_ACTION_TERMINAL_STATUSES

            wait_for("the backfill", backfill_done, 400, logs / "daemon.log")
            assert instance.get_backfill(backfill.backfill_id).status == BulkActionStatus.COMPLETED_SUCCESS
            keys = {f"{day}|ETHUSDT" for day in days}
            assert targets(backfill) == {BARS: keys, LIQUIDITY: keys}
            (run,) = instance.get_runs(RunsFilter(tags={BACKFILL_TAG: backfill.backfill_id}))
            assert run.status == DagsterRunStatus.SUCCESS
            assert run.tags["binance/reason"] == REASON
            logged = [record.user_message for record in instance.all_logs(run_id)]
            assert f"backfill {backfill.backfill_id}: 1 ticker, 3 ticker-days" in logged
    assert_bars_match(cli.store_url, trades, days[0], days[-1])
