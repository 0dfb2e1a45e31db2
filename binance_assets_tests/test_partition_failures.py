"""The ticker-day is the unit of success and failure (issue #22), through the real daemon on the laptop
instance (SQLite) and the production one (PostgreSQL, with the Dagster settings of deploy/helm-values.yaml).

One `binance-assets backfill --wait` of four tickers x the 60 days up to yesterday, one run per ticker, each
with its faults:

- CORRUPT: day 30's zip cut in half under a matching CHECKSUM; MISMATCH: day 45's CHECKSUM names another
  digest; UNPARSABLE: day 15's CSV holds an unparsable row. Each bad day fails alone: the other 59 days are
  written exact and materialised, the run fails naming the day and its archive, and is not retried.
- FLAKY: day 10's zip answers HTTP 500 until the downloader's attempts of two step attempts are spent, and
  yesterday is not yet published. The third step attempt loads day 10, and the days the first attempt
  wrote are neither downloaded nor written again; the run succeeds, yesterday stays missing (late).

Then, causes gone, the re-runs a user makes, together: the UI's backfill of CORRUPT's failed partitions
(GraphQL `launchPartitionBackfill`), `--only-failed` and `--only-missing`; each re-processes exactly its
ticker-days, and every ticker-day ends materialised and exact. Two daemon sessions in all (one per
instance): the late day shares FLAKY's run, each run costing the daemon seconds to submit and start.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import math
import os
import zipfile
from collections import Counter
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
import yaml
from dagster import (
    AssetKey,
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    MetadataValue,
    RunsFilter,
)
from dagster._core.storage.tags import PARENT_RUN_ID_TAG, PARTITION_NAME_TAG
from dagster._core.workspace.context import WorkspaceRequestContext
from dagster_graphql.client.query import LAUNCH_PARTITION_BACKFILL_MUTATION
from dagster_graphql.test.utils import define_out_of_process_context, execute_dagster_graphql

from binance_assets.markets import MARKETS
from binance_assets.orchestration.assets import BARS, LIQUIDITY, asset_key
from binance_assets.orchestration.definitions import build_resources
from binance_assets.settings import DAGSTER_INSTANCE_VARIABLES, Settings
from binance_assets_tests.archives import publish, write_archive, zip_archive
from binance_assets_tests.helpers import (
    BACKFILL_TAG,
    RANGE_END,
    RANGE_START,
    REPO,
    SETTINGS_PREFIXES,
    TODAY,
    Cli,
    assert_bars_match,
    backfills_done,
    partition_status,
    query,
    running_daemon,
    wait_for,
)
from binance_assets_tests.vision_server import VisionServer, put_archive

MARKET = MARKETS["um"]
YESTERDAY = TODAY - dt.timedelta(days=1)
DAYS = [YESTERDAY - dt.timedelta(days=59 - i) for i in range(60)]
SPAN = ("--market", "um", "--start", str(DAYS[0]), "--end", str(DAYS[-1]))
CORRUPT, MISMATCH, UNPARSABLE, FLAKY = "CORRUPTUSDT", "MISMATCHUSDT", "UNPARSABLEUSDT", "FLAKYUSDT"
TICKERS = (CORRUPT, MISMATCH, UNPARSABLE, FLAKY)
BAD = {CORRUPT: DAYS[29], MISMATCH: DAYS[44], UNPARSABLE: DAYS[14]}
"""The permanently bad day of each ticker that has one."""
FLAKY_DAY = DAYS[9]
LATE = (FLAKY, YESTERDAY)
"""Not yet published when the first backfill runs."""
WAIT_SECONDS = 420
"""A `backfill --wait` of this module, with room for a slow machine."""
ASSETS = (asset_key(MARKET, BARS), asset_key(MARKET, LIQUIDITY))
TickerDay = tuple[str, dt.date]


def archive_key(ticker: str, day: dt.date) -> str:
    return MARKET.archive_key("trades", ticker, day.isoformat())


def partition(ticker: str, day: dt.date) -> str:
    return f"{day}|{ticker}"


def production_tuning() -> dict[str, str]:
    """The Dagster settings deploy/helm-values.yaml gives the webserver, the daemon and the code server
    (planned events, event batches): the production instance runs with them."""
    values = yaml.safe_load((REPO / "deploy" / "helm-values.yaml").read_text())
    env = {**values["dagsterWebserver"].get("env", {}), **values["dagsterDaemon"].get("env", {})}
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    env |= {item["name"]: item["value"] for item in deployment["env"] if "value" in item}
    return {
        name: str(value)
        for name, value in env.items()
        if name.startswith("DAGSTER_") and name not in DAGSTER_INSTANCE_VARIABLES
    }


def spoil(root: Path) -> dict[str, bytes]:
    """Spoil each bad day's archive and hide the LATE one; return the good bytes of each key."""
    keys = [archive_key(ticker, day) for ticker, day in [*BAD.items(), LATE]]
    good = {key: (root / key).read_bytes() for key in keys}
    corrupt, mismatch, unparsable, late = keys
    write_archive(root, corrupt, good[corrupt][: len(good[corrupt]) // 2])
    put_archive(root, mismatch, good[mismatch], checksum_style="wrong")
    write_archive(root, unparsable, unparsable_archive(good[unparsable]))
    (root / late).unlink()
    (root / f"{late}.CHECKSUM").unlink()
    return good


def unparsable_archive(zip_bytes: bytes) -> bytes:
    """The archive with the price of its middle row replaced by ``abc``."""
    with zipfile.ZipFile(io.BytesIO(zip_bytes)) as archive:
        (name,) = archive.namelist()
        lines = archive.read(name).split(b"\n")
    fields = lines[len(lines) // 2].split(b",")
    lines[len(lines) // 2] = b",".join([fields[0], b"abc", *fields[2:]])
    return zip_archive(b"\n".join(lines), name)


def download_attempts(env: Mapping[str, str]) -> int:
    """Attempts of one archive download in one step attempt, as the code location configures them."""
    return int(build_resources(Settings.from_env(env))["vision"].download_retries) + 1


def statuses(instance: DagsterInstance, key: AssetKey) -> dict[str, str | None]:
    """Dagster's status of every ticker-day of TICKERS x DAYS on asset ``key``."""
    return partition_status(instance, key, [partition(ticker, day) for ticker in TICKERS for day in DAYS])


def expected_statuses(failed: set[TickerDay], missing: set[TickerDay]) -> dict[str, str | None]:
    def status(ticker_day: TickerDay) -> str | None:
        if ticker_day in failed:
            return "FAILED"
        return None if ticker_day in missing else "MATERIALIZED"

    return {partition(ticker, day): status((ticker, day)) for ticker in TICKERS for day in DAYS}


def days_of(trades: pd.DataFrame) -> pd.Series:
    return pd.to_datetime(trades["time_us"], unit="us").dt.date


def assert_store_holds(store_url: str, trades: Mapping[str, pd.DataFrame], absent: set[TickerDay]) -> None:
    """Every ticker-day but ``absent`` has its exact bars and one daily_liquidity row with its trade count;
    ``absent`` ones have neither."""
    kept = {
        ticker: frame[~days_of(frame).isin({day for t, day in absent if t == ticker})]
        for ticker, frame in trades.items()
    }
    assert_bars_match(store_url, kept, DAYS[0], DAYS[-1])
    rows = query(
        store_url,
        "SELECT ticker, day, count() AS n, max(trade_count) AS trades FROM binance.daily_liquidity "
        f"WHERE day BETWEEN '{DAYS[0]}' AND '{DAYS[-1]}' GROUP BY ticker, day",
    )
    got = {(row.ticker, row.day): (row.n, row.trades) for row in rows.itertuples()}
    want = {
        (ticker, day): (1, count)
        for ticker, frame in kept.items()
        for day, count in days_of(frame).value_counts().items()
    }
    assert got == want


def served(server: VisionServer, key: str) -> int:
    """How many times the server was asked for object ``key``."""
    return server.requests.count(f"/{key}")


def backfill_ids(instance: DagsterInstance, stdout: str) -> list[str]:
    """The backfills a `binance-assets backfill` printed."""
    return [word for word in stdout.split() if instance.get_backfill(word) is not None]


def targets(instance: DagsterInstance, backfill_ids: list[str]) -> set[tuple[AssetKey, str]]:
    """(asset, partition key) of every partition the backfills target."""
    found: set[tuple[AssetKey, str]] = set()
    for backfill_id in backfill_ids:
        data = instance.get_backfill(backfill_id).asset_backfill_data
        for key, subset in data.target_subset.partitions_subsets_by_asset_key.items():
            found |= {(key, partition_key) for partition_key in subset.get_partition_keys()}
    return found


def both_assets(ticker_days: set[TickerDay]) -> set[tuple[AssetKey, str]]:
    return {(key, partition(ticker, day)) for key in ASSETS for ticker, day in ticker_days}


def backfill_runs(instance: DagsterInstance, backfill_ids: list[str]) -> list[DagsterRun]:
    return [run for i in backfill_ids for run in instance.get_runs(RunsFilter(tags={BACKFILL_TAG: i}))]


def run_span(run: DagsterRun) -> tuple[str, str]:
    """First and last partition key of a run."""
    if RANGE_START in run.tags:
        return run.tags[RANGE_START], run.tags[RANGE_END]
    return run.tags[PARTITION_NAME_TAG], run.tags[PARTITION_NAME_TAG]


def one_day_runs(runs: list[DagsterRun]) -> set[TickerDay]:
    """The ticker-day of each run, every run over one ticker-day and successful."""
    found: set[TickerDay] = set()
    for run in runs:
        first, last = run_span(run)
        assert first == last and run.status == DagsterRunStatus.SUCCESS, (run.run_id, first, last, run.status)
        day, ticker = first.split("|")
        found.add((ticker, dt.date.fromisoformat(day)))
    assert len(found) == len(runs)
    return found


def event_times(instance: DagsterInstance, run_id: str, kind: DagsterEventType) -> list[float]:
    return [entry.timestamp for entry in instance.all_logs(run_id, of_type=kind)]


def failure_text(instance: DagsterInstance, run_id: str) -> str:
    """The messages of the run's step failures and of their causes."""
    messages = []
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.STEP_FAILURE):
        error = entry.dagster_event.step_failure_data.error
        while error is not None:
            messages.append(error.message)
            error = error.cause
    return "\n".join(messages)


Materialisations = dict[str, list[tuple[float, Mapping[str, MetadataValue]]]]


def materialisations(instance: DagsterInstance, run_id: str, key: AssetKey) -> Materialisations:
    """Per partition, the (timestamp, metadata) of each materialisation of ``key`` the run recorded."""
    found: Materialisations = {}
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION):
        event = entry.asset_materialization
        if event is not None and event.asset_key == key:
            found.setdefault(event.partition or "", []).append((entry.timestamp, event.metadata))
    return found


def names_bad_day(text: str, ticker: str, day: dt.date) -> bool:
    """A line of ``text`` names the ticker-day and its archive's file name."""
    file_name = archive_key(ticker, day).rsplit("/", 1)[1]
    return any(f"{ticker} {day}" in line and file_name in line for line in text.splitlines())


@contextmanager
def ui_workspace(
    instance: DagsterInstance, env: Mapping[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[WorkspaceRequestContext]:
    """The workspace as the webserver loads it (workspace.yaml, a code server with its environment)."""
    for name in [n for n in os.environ if n.startswith(SETTINGS_PREFIXES) and n not in env]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with define_out_of_process_context(str(REPO / "workspace.yaml"), None, instance) as context:
        yield context


def launch_from_ui(context: WorkspaceRequestContext, partition_keys: list[str]) -> str:
    """The UI's backfill of partitions of both assets: the GraphQL mutation it sends; the backfill id."""
    params = {
        "assetSelection": [{"path": list(key.path)} for key in ASSETS],
        "partitionNames": partition_keys,
        "fromFailure": False,
        "tags": [],
    }
    result = execute_dagster_graphql(context, LAUNCH_PARTITION_BACKFILL_MUTATION, {"backfillParams": params})
    launched = result.data["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    return launched["backfillId"]


def check_materialised_once(
    instance: DagsterInstance, run: DagsterRun, trades: pd.DataFrame, days: list[dt.date]
) -> dict[AssetKey, Materialisations]:
    """The run recorded one materialisation per asset for each of ``days`` of its ticker and none other,
    each of daily_liquidity with its own day's trade count; they are returned."""
    ticker = run_span(run)[0].split("|")[1]
    found = {key: materialisations(instance, run.run_id, key) for key in ASSETS}
    for key, events in found.items():
        assert sorted(events) == sorted(partition(ticker, day) for day in days), (ticker, key)
        assert all(len(each) == 1 for each in events.values()), (ticker, key)
    counts = days_of(trades).value_counts()
    for day in days:
        ((_, metadata),) = found[ASSETS[1]][partition(ticker, day)]
        assert metadata["trade_count"].value == counts[day], (ticker, day)
    return found


def check_bad_day_runs(
    instance: DagsterInstance, runs: Mapping[str, DagsterRun], trades: Mapping[str, pd.DataFrame]
) -> None:
    """Each bad day's run failed, unretried, naming the day and its archive; its 59 other days are
    materialised."""
    for ticker, day in BAD.items():
        run = runs[ticker]
        assert run.status == DagsterRunStatus.FAILURE, ticker
        assert not event_times(instance, run.run_id, DagsterEventType.STEP_UP_FOR_RETRY), ticker
        message = failure_text(instance, run.run_id)
        assert names_bad_day(message, ticker, day), message
        check_materialised_once(instance, run, trades[ticker], [d for d in DAYS if d != day])


def check_flaky_run(
    instance: DagsterInstance, run: DagsterRun, trades: pd.DataFrame, server: VisionServer, store_url: str
) -> None:
    """FLAKY's run failed two step attempts on FLAKY_DAY and loaded it in the third: the days before it were
    materialised and written by the first attempt only, and no other day's archive was downloaded twice.
    It succeeded without its LATE day, which its metadata names, and nothing it logged says that it will
    be retried."""
    assert run.status == DagsterRunStatus.SUCCESS
    retries = event_times(instance, run.run_id, DagsterEventType.STEP_UP_FOR_RETRY)
    assert len(retries) == 2
    published, before = DAYS[:-1], DAYS[: DAYS.index(FLAKY_DAY)]
    for day in published:
        if day != FLAKY_DAY:
            assert served(server, archive_key(FLAKY, day)) == 1, day
    for day in before:
        assert served(server, f"{archive_key(FLAKY, day)}.CHECKSUM") == 1, day
    events = check_materialised_once(instance, run, trades, published)
    for key in ASSETS:
        for day in before:
            ((timestamp, _),) = events[key][partition(FLAKY, day)]
            assert timestamp < retries[0], f"{key} {day} materialised after the first attempt"
    loaded = query(
        store_url,
        "SELECT day, toUnixTimestamp(loaded_at) AS at FROM binance.daily_liquidity "
        f"WHERE ticker = '{FLAKY}' AND day BETWEEN '{DAYS[0]}' AND '{DAYS[-1]}'",
    )
    loaded_at = dict(zip(loaded["day"], loaded["at"], strict=True))
    for day in published:  # written in the attempt that materialised it, whichever, and not again
        ((timestamp, _),) = events[ASSETS[1]][partition(FLAKY, day)]
        assert (loaded_at[day] < retries[0]) == (timestamp < retries[0]), f"{day} written again"
    assert loaded_at[FLAKY_DAY] >= math.floor(retries[-1])

    liquidity = events[ASSETS[1]].values()
    late = [metadata["late_days"].value for ((_, metadata),) in liquidity if "late_days" in metadata]
    assert late and all(len(days) == 1 and str(YESTERDAY) in json.dumps(days) for days in late), late
    said = [repr(entry) for entry in instance.all_logs(run.run_id)]
    assert not [line for line in said if "will be retried" in line]


@pytest.mark.slow
def test_each_bad_ticker_day_fails_alone_and_is_rerun_alone(
    instance_cli: Cli,
    vision_server: VisionServer,
    vision_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each fault costs its own ticker-day alone, and a re-run re-processes exactly those ticker-days."""
    cli = instance_cli
    if "DAGSTER_PG_HOST" in cli.env:
        cli.env.update(production_tuning())
    cli.env["BINANCE_RETRY_DELAY_SECONDS"] = "1"  # the asset's RetryPolicy: 1 s, 2 s, ...
    trades = {
        ticker: publish(vision_root, "um", ticker, DAYS, trades_per_day=200, seed=seed)
        for seed, ticker in enumerate(TICKERS, 1)
    }
    good = spoil(vision_root)
    attempts = download_attempts(cli.env)
    vision_server.fail(f"{archive_key(FLAKY, FLAKY_DAY)}$", 500, times=2 * attempts)
    bad = set(BAD.items())
    tickers = [arg for ticker in TICKERS for arg in ("--ticker", ticker)]

    with running_daemon(cli, tmp_path / "daemon"):
        first = cli("backfill", *SPAN, *tickers, "--wait", timeout=WAIT_SECONDS)
        log = (tmp_path / "daemon" / "daemon.log").read_text()
        assert first.returncode == 1, first.stdout + first.stderr + log
        with cli.instance() as instance:
            (first_id,) = backfill_ids(instance, first.stdout)
            runs = backfill_runs(instance, [first_id])
            by_ticker = {run_span(run)[0].split("|")[1]: run for run in runs}
            assert len(runs) == len(by_ticker) == len(TICKERS)
            assert {run_span(run) for run in runs} == {
                (partition(t, DAYS[0]), partition(t, DAYS[-1])) for t in TICKERS
            }
            assert not [r for r in instance.get_runs() if PARENT_RUN_ID_TAG in r.tags]  # no run retried
            for key in ASSETS:
                assert statuses(instance, key) == expected_statuses(bad, {LATE}), key
            assert_store_holds(cli.store_url, trades, bad | {LATE})
            check_bad_day_runs(instance, by_ticker, trades)
            output = first.stdout + first.stderr
            assert all(names_bad_day(output, ticker, day) for ticker, day in bad), output
            assert "will be retried" not in output
            assert served(vision_server, archive_key(FLAKY, FLAKY_DAY)) == 2 * attempts + 1
            check_flaky_run(instance, by_ticker[FLAKY], trades[FLAKY], vision_server, cli.store_url)

            # The causes gone, the re-runs together: CORRUPT's failed partitions from the UI; MISMATCH's
            # and FLAKY's failed days (the LATE day is missing, not failed); the missing days of UNPARSABLE
            # (failed) and FLAKY (the LATE day, never loaded).
            for key, data in good.items():
                write_archive(vision_root, key, data)
            since = len(vision_server.requests)
            failed = [k for k, s in statuses(instance, ASSETS[0]).items() if s == "FAILED"]
            commands = {
                "--only-failed": ("--ticker", MISMATCH, "--ticker", FLAKY),
                "--only-missing": ("--ticker", UNPARSABLE, "--ticker", FLAKY),
            }
            with ThreadPoolExecutor(len(commands)) as pool:
                futures = {
                    flag: pool.submit(cli, "backfill", *SPAN, *args, flag, "--wait", timeout=WAIT_SECONDS)
                    for flag, args in commands.items()
                }
                with ui_workspace(instance, cli.env, monkeypatch) as context:
                    ui_id = launch_from_ui(context, [k for k in failed if k.endswith(f"|{CORRUPT}")])
                reruns = {flag: future.result() for flag, future in futures.items()}
            for flag, result in reruns.items():
                assert result.returncode == 0, flag + result.stdout + result.stderr
            wait_for("the UI's backfill to end", lambda: backfills_done(instance, [ui_id]), WAIT_SECONDS, 2)

            wanted = {
                "ui": {(CORRUPT, BAD[CORRUPT])},
                "--only-failed": {(MISMATCH, BAD[MISMATCH])},
                "--only-missing": {(UNPARSABLE, BAD[UNPARSABLE]), LATE},
            }
            ids = {"ui": [ui_id]} | {flag: backfill_ids(instance, r.stdout) for flag, r in reruns.items()}
            for name, ticker_days in wanted.items():
                assert targets(instance, ids[name]) == both_assets(ticker_days), name
                assert one_day_runs(backfill_runs(instance, ids[name])) == ticker_days, name
            downloads = Counter(
                request
                for request in vision_server.requests[since:]
                if "/trades/" in request and "?" not in request
            )
            rerun = set().union(*wanted.values())
            assert downloads == Counter(
                f"/{archive_key(t, d)}{suffix}" for t, d in rerun for suffix in ("", ".CHECKSUM")
            )
            for key in ASSETS:
                assert statuses(instance, key) == expected_statuses(set(), set()), key
    assert_store_holds(cli.store_url, trades, set())
