"""What a big backfill launched from the UI costs the webserver: the `<market>_backfill` job from the
Launchpad against the partition dialog's launchPartitionBackfill.

    python benchmarks/ui_launch_bench.py [--market spot] [--tickers 600] [--dialog-market] [--workdir DIR]

A fresh DAGSTER_HOME (the laptop dagster.yaml without its run queue and limits, so that a launched run
starts at once: no daemon runs, so the backfills the runs submit are only recorded) has --tickers
tickers registered in the market: 600 spot tickers are 2,039,400 partitions per asset. Each launch goes
to a freshly started `dagster-webserver` (binance_assets_tests/helpers.py `webserver`) as the UI sends
it, over GraphQL:
1. the job for one ticker's whole history (tickers: [T000USDT], the market's first day to yesterday);
2. the job for the whole market (ticker_filter: '*');
3. the partition dialog for that one ticker's history: launchPartitionBackfill with its partition keys
   on both assets;
4. with --dialog-market, the dialog for every partition (allPartitions).

Printed per launch: the mutation's latency, the webserver's RSS before and after it and its peak; for the
job, the run's own time (the submission, in the run worker), the peak RSS of the run worker and the
backfills and ticker-days it submitted. The load average before and after, for the shared machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from daemon_runs import ROOT, peak_rss

LAUNCH_BACKFILL = """
mutation LaunchPartitionBackfill($backfillParams: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $backfillParams) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}
"""
ROLES = {b"dagster-webserver": "webserver", b"api grpc": "code server", b"spawn_main": "run worker"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--market", default="spot")
    parser.add_argument("--tickers", type=int, default=600)
    parser.add_argument("--dialog-market", action="store_true", help="also the dialog over every partition")
    parser.add_argument("--workdir", type=Path, help="keep the home and the logs here")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the webservers are stopped

    from binance_assets.markets import MARKETS
    from binance_assets_tests.helpers import LAUNCH_JOB, launch_job_variables

    market = MARKETS[args.market]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ui_launch_bench_"))
    env, home = _home(workdir, args.market)
    tickers = [f"T{index:03d}USDT" for index in range(args.tickers)]
    yesterday = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    days = (yesterday - market.first_day).days + 1
    from dagster import DagsterInstance

    with DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions(market.tickers_partition_name, tickers)
    partitions = len(tickers) * days
    print(f"{args.market}: {len(tickers)} tickers x {days:,} days = {partitions:,} partitions per asset")
    print(f"load average before: {_load()}")

    span = {"start": str(market.first_day), "end": str(yesterday)}
    job = f"{args.market}_backfill"
    launches: list[tuple[str, str, dict[str, Any]]] = [
        (
            "job, one ticker's history",
            LAUNCH_JOB,
            launch_job_variables(job, {"tickers": tickers[:1], **span}),
        ),
        ("job, whole market", LAUNCH_JOB, launch_job_variables(job, {"ticker_filter": "*", **span})),
    ]
    assets = [{"path": ["binance", args.market, name]} for name in ("hl5s_bars", "daily_liquidity")]
    one_ticker = [f"{market.first_day + dt.timedelta(days=i)}|{tickers[0]}" for i in range(days)]
    dialog = {"assetSelection": assets, "fromFailure": False, "tags": []}
    launches.append(
        (
            "dialog, one ticker's history",
            LAUNCH_BACKFILL,
            {"backfillParams": {**dialog, "partitionNames": one_ticker}},
        )
    )
    if args.dialog_market:
        launches.append(
            ("dialog, whole market", LAUNCH_BACKFILL, {"backfillParams": {**dialog, "allPartitions": True}})
        )
    for name, document, variables in launches:
        _measure(name, document, variables, env, home, workdir / name.replace(" ", "_").replace(",", ""))
    print(f"load average after: {_load()}")


def _home(workdir: Path, market: str) -> tuple[dict[str, str], Path]:
    """A DAGSTER_HOME with the laptop dagster.yaml less its run queue; the environment using it."""
    home = workdir / "dagster_home"
    home.mkdir(parents=True)
    config = yaml.safe_load((ROOT / "dagster.yaml").read_text())
    config.pop("concurrency")
    config["run_coordinator"] = {"module": "dagster._core.run_coordinator", "class": "DefaultRunCoordinator"}
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    dropped = ("BINANCE_", "CLICKHOUSE_", "TICKER", "DOWNLOAD_", "LOG_LEVEL", "DAGSTER_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    env.update(
        DAGSTER_HOME=str(home),
        BINANCE_MARKETS=market,
        CLICKHOUSE_URL=f"chdb://{workdir / 'clickhouse'}",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")])),
    )
    return env, home


def _measure(
    name: str, document: str, variables: dict[str, Any], env: dict[str, str], home: Path, logs: Path
) -> None:
    """One launch on a fresh webserver; print its figures."""
    from dagster import DagsterInstance

    from binance_assets_tests.helpers import webserver

    with webserver(env, logs) as server, peak_rss(server.process.pid, ROLES) as peak:
        before = _rss_mb(server.process.pid)
        started = time.monotonic()
        answer = next(iter(server.graphql(document, variables).values()))
        latency = time.monotonic() - started
        after = _rss_mb(server.process.pid)
        if answer["__typename"] not in ("LaunchRunSuccess", "LaunchBackfillSuccess"):
            raise RuntimeError(f"{name}: {answer}")
        line = f"{name}: launch {latency:.1f} s, webserver {before:,.0f} -> {after:,.0f} MB"
        if answer["__typename"] == "LaunchRunSuccess":
            line += _run_figures(DagsterInstance.from_config(str(home)), answer["run"]["runId"], logs)
        time.sleep(1)
        peaks = peak()
        line += f"; peak RSS webserver {peaks.get('webserver', 0):,.0f} MB"
        if "run worker" in peaks:
            line += f", run worker {peaks['run worker']:,.0f} MB"
    print(line, flush=True)


def _run_figures(instance: Any, run_id: str, logs: Path) -> str:
    """The job run's own time and what it submitted, once it is done."""
    while not (run := instance.get_run_by_id(run_id)).is_finished:
        time.sleep(0.5)
    if not run.is_success:
        raise RuntimeError(f"run {run_id} failed; see the run's logs in {logs}")
    stats = instance.get_run_stats(run_id)
    submitted = [r.user_message for r in instance.all_logs(run_id) if r.user_message.startswith("submitted")]
    run_seconds, op_seconds = stats.end_time - stats.launch_time, stats.end_time - stats.start_time
    return f"; the run {run_seconds:.1f} s (started to done {op_seconds:.1f} s): {submitted[0]}"


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _load() -> str:
    return " ".join(f"{value:.1f}" for value in os.getloadavg()) + f" on {os.cpu_count()} cores"


if __name__ == "__main__":
    main()
