"""What several test modules share: the real Vision files, the resources and runs of the assets, the CLI as
a user runs it, the real daemon, and the oracle comparison of stored bars. Test modules import from here,
never from each other; fixtures live in conftest.py."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from dagster import AssetKey, DagsterInstance, ExecuteInProcessResult, RetryPolicy, materialize
from dagster._core.execution.backfill import BULK_ACTION_TERMINAL_STATUSES

from binance_assets.bars import DAY_BARS_SCHEMA, DAYS_SCHEMA, Aggregation
from binance_assets.clickhouse.client import open_client
from binance_assets.clickhouse.io_manager import ClickHouseIOManager
from binance_assets.clickhouse.resource import ClickHouseResource
from binance_assets.markets import MARKETS
from binance_assets.orchestration.assets import build_market_assets, market_partitions
from binance_assets.orchestration.resources import VisionResource
from binance_assets_tests.archives import expected_bars, expected_day_stats
from binance_assets_tests.vision_server import VisionServer

REPO = Path(__file__).resolve().parents[1]
REAL = Path(__file__).parent / "real"
"""Real Binance Vision files (see real/PROVENANCE.md)."""
DAEMON = [sys.executable, "-m", "binance_assets_tests.daemon_main"]
"""`dagster-daemon`, its backfill loop ticking faster (daemon_main.py)."""
WEBSERVER = Path(sys.executable).with_name("dagster-webserver")
TODAY = dt.datetime.now(dt.UTC).date()
DAYS = [dt.date(2024, 1, 1) + dt.timedelta(days=i) for i in range(35)]
"""2024-01-01..2024-02-04: a whole month (with its monthly archive) and the next month's first days."""
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"
BACKFILL_TAG = "dagster/backfill"
SETTINGS_PREFIXES = ("BINANCE_", "CLICKHOUSE_", "TICKER", "DOWNLOAD_", "LOG_LEVEL", "DAGSTER_")
RUN_PY_SETTINGS = ("SOURCE_TO_SYNC", "DATA_TABLE_NAME", "CONTROL_TABLE_NAME", "NUM_PROCESSES", "DRY_RUN_MODE")


def query(store_url: str, sql: str) -> pd.DataFrame:
    """A query's result as a DataFrame, `day` as datetime.date."""
    with open_client(store_url) as client:
        frame = client.query_df(sql)
    if "day" in frame:
        frame["day"] = pd.to_datetime(frame["day"]).dt.date
    return frame


def partition_status(
    instance: DagsterInstance, key: AssetKey, partitions: list[str]
) -> dict[str, str | None]:
    """Dagster's status of each UM partition of asset ``key`` (MATERIALIZED, FAILED, ...; None: missing)."""
    partitions_def = market_partitions(MARKETS["um"])
    statuses = instance.get_status_by_partition(key, partitions, partitions_def) or {}
    return {p: status.value if (status := statuses.get(p)) else None for p in partitions}


def resources(server: VisionServer, store_url: str, tmp_path: Path, **vision: object) -> dict[str, object]:
    """The assets' resources on the fake Vision server and an embedded store; fast download retries."""
    clickhouse = ClickHouseResource(url=store_url, database="binance")
    options: dict[str, object] = {"backoff_seconds": 0.01, "cache_dir": str(tmp_path / "cache"), **vision}
    return {
        "clickhouse_io_manager": ClickHouseIOManager(clickhouse=clickhouse),
        "clickhouse": clickhouse,
        "vision": VisionResource(vision_url=server.url, listing_url=server.url, **options),
    }


def materialize_range(
    instance: DagsterInstance,
    res: dict[str, object],
    ticker: str,
    first: str,
    last: str,
    retry_policy: RetryPolicy | None = None,
    market: str = "um",
    **options: Any,
) -> ExecuteInProcessResult:
    """One run of ``market`` (UM by default) over [first, last] of one ticker, as a backfill chunk;
    failures returned, not raised. ``options`` go to build_market_assets (dataset, fallback, kline_check)."""
    return materialize(
        [build_market_assets(MARKETS[market], 31, retry_policy=retry_policy, **options)],
        instance=instance,
        resources=res,
        tags={RANGE_START: f"{first}|{ticker}", RANGE_END: f"{last}|{ticker}"},
        raise_on_error=False,
    )


@dataclass(frozen=True)
class Cli:
    """Runs ``python -m binance_assets.cli`` with the test's environment."""

    env: dict[str, str]
    home: Path
    store_url: str

    def __call__(self, *args: str, timeout: float = 180, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "binance_assets.cli", *args],
            env={**self.env, **env},
            cwd=self.home.parent,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def instance(self) -> DagsterInstance:
        return DagsterInstance.from_config(str(self.home))


def cli_env(home: Path, server: VisionServer, store_url: str) -> dict[str, str]:
    """This process's environment without any setting of ours, pointed at the fake Vision and the store."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(SETTINGS_PREFIXES + RUN_PY_SETTINGS)}
    env.update(
        DAGSTER_HOME=str(home),
        BINANCE_VISION_URL=server.url,
        BINANCE_VISION_LISTING_URL=server.url,
        CLICKHOUSE_URL=store_url,
        BINANCE_MARKETS="um",
    )
    return env


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one-line error a failing command ends with; no traceback before it."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("binance-assets: error: "), result.stderr
    return lines[-1]


@contextmanager
def daemon(env: dict[str, str], workdir: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`dagster-daemon run` on the repository's workspace.yaml, logging to ``workdir/daemon.log``; its whole
    process group is killed after. The instance is created first: the daemon and its code server open it
    outside the CLI's lock, and Dagster's SQLite schema creation races between processes."""
    with _process_group([*DAEMON, "run", "-w", str(REPO / "workspace.yaml")], env, workdir, "daemon") as p:
        yield p


@contextmanager
def _process_group(
    command: list[str], env: dict[str, str], workdir: Path, name: str
) -> Iterator[subprocess.Popen[bytes]]:
    """``command`` in its own session, logging to ``workdir/<name>.log``, its process group killed after."""
    if "DAGSTER_HOME" in env:
        DagsterInstance.from_config(env["DAGSTER_HOME"]).dispose()
    workdir.mkdir(exist_ok=True)
    with (workdir / f"{name}.log").open("ab") as log:
        process = subprocess.Popen(
            command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            yield process
        finally:
            # The daemon's code server and run workers share its process group and outlive a SIGTERM.
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(process.pid, sig)
                except ProcessLookupError:
                    break
                with suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=10)


@dataclass(frozen=True)
class Webserver:
    """A running `dagster-webserver` and its GraphQL endpoint, spoken to as the UI speaks to it."""

    process: subprocess.Popen[bytes]
    url: str

    def graphql(self, document: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """The ``data`` of a GraphQL request; GraphQL errors raise."""
        body = json.dumps({"query": document, "variables": variables or {}}).encode()
        request = urllib.request.Request(
            f"{self.url}/graphql", body, {"Content-Type": "application/json"}, method="POST"
        )
        with urllib.request.urlopen(request, timeout=600) as response:
            answer = json.load(response)
        if answer.get("errors"):
            raise RuntimeError(f"GraphQL errors: {answer['errors']}")
        data: dict[str, Any] = answer["data"]
        return data


LOCATION = "binance_assets"
"""workspace.yaml's code location; a Definitions' repository is ``__repository__``."""
_LOCATION_STATUS = (
    "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus "
    "locationOrLoadError { __typename ... on PythonError { message } } } } } }"
)


LAUNCH_JOB = """
mutation LaunchPipelineExecution($executionParams: ExecutionParams!) {
  launchPipelineExecution(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on PythonError { message }
  }
}
"""
"""The Launchpad's mutation (the UI still sends launchPipelineExecution; launchRun is its newer name)."""


def launch_job_variables(job: str, config: dict[str, Any]) -> dict[str, Any]:
    """LAUNCH_JOB's variables as the Launchpad sends them for a `<market>_backfill` job and its config."""
    op = f"{job.removesuffix('_backfill')}_submit_backfills"
    return {
        "executionParams": {
            "selector": {
                "repositoryLocationName": LOCATION,
                "repositoryName": "__repository__",
                "jobName": job,
            },
            "runConfigData": {"ops": {op: {"config": config}}},
            "mode": "default",
            "executionMetadata": {"tags": []},
        }
    }


@contextmanager
def webserver(env: dict[str, str], workdir: Path, timeout: float = 300) -> Iterator[Webserver]:
    """`dagster-webserver` on the repository's workspace.yaml and a free port, logging to
    ``workdir/webserver.log``, once its code location has loaded; its process group is killed after."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [str(WEBSERVER), "-w", str(REPO / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)]
    with _process_group(command, env, workdir, "webserver") as process:
        server = Webserver(process, f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dagster-webserver did not load; see {workdir / 'webserver.log'}")
            with suppress(OSError):
                entries = server.graphql(_LOCATION_STATUS)["workspaceOrError"]["locationEntries"]
                (entry,) = [e for e in entries if e["name"] == LOCATION]
                if entry["loadStatus"] == "LOADED":
                    if entry["locationOrLoadError"]["__typename"] != "RepositoryLocation":
                        raise RuntimeError(f"code location failed to load: {entry['locationOrLoadError']}")
                    break
            time.sleep(0.5)
        yield server


def running_daemon(cli: Cli, workdir: Path, **env: str) -> AbstractContextManager[subprocess.Popen[bytes]]:
    """The daemon with the CLI's environment (and ``env``)."""
    return daemon({**cli.env, **env}, workdir)


def wait_for(what: str, condition: Callable[[], object], seconds: float, poll: float = 0.5) -> object:
    """``condition()``'s first true value, polled every ``poll`` seconds for at most ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}")


def backfills_done(instance: DagsterInstance, ids: list[str]) -> bool:
    return all(instance.get_backfill(i).status in BULK_ACTION_TERMINAL_STATUSES for i in ids)


def assert_bars_match(store_url: str, trades: dict[str, pd.DataFrame], first: dt.date, last: dt.date) -> None:
    """hl5s rows of each ticker on [first, last] are exactly the oracle's bars of its trades on those days."""
    bars = query(
        store_url,
        f"SELECT * FROM binance.hl5s WHERE day BETWEEN '{first}' AND '{last}' ORDER BY ticker, ts",
    )
    assert set(bars["ticker"]) == set(trades)
    for ticker, ticker_trades in trades.items():
        days = pd.to_datetime(ticker_trades["time_us"], unit="us").dt.date
        want = expected_bars(ticker_trades[(days >= first) & (days <= last)])
        ours = bars[bars["ticker"] == ticker].reset_index(drop=True)
        assert len(ours) == len(want) > 0
        np.testing.assert_array_equal(
            ours["ts"].map(lambda t: int(t.timestamp())).to_numpy(), want["ts"].to_numpy() // 10**6
        )
        for column in ("open", "high", "low", "close", "trade_count"):
            np.testing.assert_array_equal(ours[column].to_numpy(), want[column].to_numpy(), err_msg=column)
        for column in ("volume", "quote_volume"):
            np.testing.assert_allclose(ours[column].to_numpy(), want[column].to_numpy(), rtol=1e-12)


def partitions_materialised(instance: DagsterInstance, name: str, year: str) -> list[str]:
    records = instance.fetch_materializations(AssetKey(["binance", "um", name]), limit=10_000).records
    return [r.partition_key for r in records if r.partition_key and r.partition_key.startswith(year)]


def assert_aggregation_matches(
    result: Aggregation, trades: pd.DataFrame, quote_col: str | None = None, quote_atol_per_trade: float = 0.0
) -> None:
    """Bars and day stats of `result` equal the oracle's for `trades`: timestamps, counts, ids and OHLC
    exactly, volumes within 1e-9 relative; quote volumes also within `quote_atol_per_trade` per trade."""
    bars = result.bars.to_pandas()
    want = expected_bars(trades, quote_col)
    assert result.bars.schema == DAY_BARS_SCHEMA
    assert len(bars) == len(want)
    assert list(bars["day"]) == list(want["day"])
    ts_us = result.bars["ts"].cast(pa.int64()).to_numpy() * 1_000_000
    np.testing.assert_array_equal(ts_us, want["ts"].to_numpy())
    for column in ("open", "high", "low", "close"):
        np.testing.assert_array_equal(bars[column].to_numpy(), want[column].to_numpy(), err_msg=column)
    np.testing.assert_array_equal(bars["trade_count"].to_numpy(), want["trade_count"].to_numpy())
    assert_volumes(bars, want, quote_atol_per_trade)

    days = result.days.to_pandas()
    stats = expected_day_stats(trades, quote_col)
    assert result.days.schema == DAYS_SCHEMA
    assert list(days["day"]) == list(stats["day"])
    for column in ("trade_count", "bar_count", "first_trade_id", "last_trade_id", "missing_trade_ids"):
        np.testing.assert_array_equal(days[column].to_numpy(), stats[column].to_numpy(), err_msg=column)
    assert_volumes(days, stats, quote_atol_per_trade)
    first_us = days["first_time"].astype("int64").to_numpy()
    np.testing.assert_array_equal(first_us, stats["first_time_us"].to_numpy())
    np.testing.assert_array_equal(
        days["last_time"].astype("int64").to_numpy(), stats["last_time_us"].to_numpy()
    )


def assert_volumes(got: pd.DataFrame, want: pd.DataFrame, quote_atol_per_trade: float = 0.0) -> None:
    for column in ("volume", "quote_volume", "taker_buy_volume"):
        atol = quote_atol_per_trade * want["trade_count"].to_numpy() if column == "quote_volume" else 0.0
        error = np.abs(got[column].to_numpy() - want[column].to_numpy())
        limit = 1e-9 * np.abs(want[column].to_numpy()) + atol
        assert (error <= limit).all(), f"{column}: worst excess {np.max(error - limit):.3g}"
