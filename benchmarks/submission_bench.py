"""Submitting a whole market's partition space to the real daemon: how soon the first run starts, how soon
every run is queued.

    python benchmarks/submission_bench.py [--tickers 600] [--days 3387] [--max-days-per-run N]
                                          [--instance sqlite|postgresql] [--planned-subset]
                                          [--backfill-workers N] [--submit-workers N]
                                          [--timeout-minutes 120] [--workdir DIR]

A local file:// mirror holds one small daily spot archive per ticker, on the last day: every other day of
the partition space has no archive and is written as zero rows, as the days before a symbol was listed
are. On a fresh DAGSTER_HOME (the laptop dagster.yaml, or deploy/dagster.yaml on a throwaway PostgreSQL
server with fsync on) with the sensors stopped, `dagster-daemon run` starts, then `binance-assets
backfill` submits every ticker-day of the range. The daemon is followed, runs executing under the
instance's run limits as they would, until every run of the backfill exists; then it is stopped.

Printed: the partitions and the runs expected (a ticker's days in chunks of --max-days-per-run), the
seconds the `backfill` command took, from its start until the first run started and until the last run
was queued, the queueing rate, and the peak RSS of the daemon, the code server and a run worker.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from daemon_runs import ROOT, backfill_runs, dagster_home, mirror_env, peak_rss, stop_sensors, submit_backfill

if TYPE_CHECKING:
    from dagster import DagsterInstance

GRACE_DAYS = 2
"""BINANCE_PUBLISH_GRACE_DAYS: the range ends before it, so a day without an archive is not 'late'."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickers", type=int, default=600)
    parser.add_argument("--days", type=int, default=3_387)
    parser.add_argument(
        "--max-days-per-run", type=int, help="BINANCE_MAX_DAYS_PER_RUN (default: the setting's default)"
    )
    parser.add_argument("--instance", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument(
        "--planned-subset",
        action="store_true",
        help="DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS: one planned event per asset and run",
    )
    parser.add_argument(
        "--submit-workers",
        type=int,
        default=0,
        help="dagster.yaml `backfills: num_submit_workers`: threads submitting a backfill's runs",
    )
    parser.add_argument(
        "--backfill-workers",
        type=int,
        default=0,
        help="dagster.yaml `backfills: num_workers`: backfills iterated at once (dagster.yaml's: 1)",
    )
    parser.add_argument("--timeout-minutes", type=float, default=120)
    parser.add_argument("--workdir", type=Path, help="keep the mirror, home and logs here")
    args = parser.parse_args()

    from dagster import DagsterInstance

    from binance_assets.settings import Settings
    from binance_assets_tests.archives import publish
    from binance_assets_tests.helpers import daemon
    from binance_assets_tests.postgres import postgres_server

    last = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=GRACE_DAYS + 1)
    days = [last - dt.timedelta(days=i) for i in reversed(range(args.days))]
    tickers = [f"T{index:03d}USDT" for index in range(args.tickers)]
    run_days = args.max_days_per_run or Settings.from_env({}).max_days_per_run
    runs = len(tickers) * math.ceil(len(days) / run_days)
    print(
        f"{len(tickers)} tickers x {len(days)} days ({days[0]} .. {last}) = {len(tickers) * len(days):,} "
        f"partitions per asset; {runs:,} runs of at most {run_days} days expected",
        flush=True,
    )
    with ExitStack() as stack:
        work = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="submission-")))
        mirror = work / "mirror"
        for seed, ticker in enumerate(tickers):
            if not (mirror / "data" / "spot" / "daily" / "trades" / ticker).exists():
                publish(mirror, "spot", ticker, [last], trades_per_day=20, seed=seed)
        env = mirror_env(
            mirror,
            BINANCE_MARKETS="spot",
            BINANCE_MAX_DAYS_PER_RUN=str(run_days),
            BINANCE_PUBLISH_GRACE_DAYS=str(GRACE_DAYS),
            BINANCE_KLINE_CHECK="false",
        )
        if args.planned_subset:
            env["DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS"] = "true"
        instance_yaml = ROOT / "dagster.yaml"
        if args.instance == "postgresql":
            server = stack.enter_context(postgres_server(fsync=True))
            env.update(server.create_database("dagster").env)
            instance_yaml = ROOT / "deploy" / "dagster.yaml"
        run_dir = work / f"{args.instance}-{time.strftime('%Y%m%d-%H%M%S')}"
        env = dagster_home(run_dir, instance_yaml, env)
        workers = {"num_workers": args.backfill_workers, "num_submit_workers": args.submit_workers}
        if any(workers.values()):
            instance_file = Path(env["DAGSTER_HOME"]) / "dagster.yaml"
            config = yaml.safe_load(instance_file.read_text())
            config["backfills"] = {"use_threads": True, **{k: v for k, v in workers.items() if v}}
            instance_file.write_text(yaml.safe_dump(config))
        stop_sensors(env, run_dir)
        with DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
            with daemon(env, run_dir) as process, peak_rss(process.pid) as peak:
                started = time.time()
                backfill_ids = submit_backfill(env, run_dir, "spot", tickers, days)
                submitted = time.time() - started
                print(f"backfill command: {submitted:.1f} s ({len(backfill_ids)} backfill)", flush=True)
                first_start, queued = follow(instance, backfill_ids, runs, started, args.timeout_minutes * 60)
            rss = peak()
    print(f"\n{'partitions per asset':44s}{len(tickers) * len(days):>12,}")
    print(f"{'runs queued / expected':44s}{queued[0]:>6,} / {runs:,}")
    print(f"{'backfill command s':44s}{submitted:>12.1f}")
    print(f"{'s until the first run started':44s}{first_start:>12.1f}")
    print(f"{'s until the last run was queued':44s}{queued[1]:>12.1f}")
    print(f"{'runs queued per minute':44s}{60 * queued[0] / max(queued[1] - submitted, 1e-9):>12.1f}")
    for role in ("daemon", "code server", "run worker"):
        print(f"{'peak RSS MB: ' + role:44s}{rss.get(role, 0):>12.0f}")


def follow(
    instance: DagsterInstance, backfill_ids: list[str], runs: int, started: float, timeout: float
) -> tuple[float, tuple[int, float]]:
    """Poll the instance until `runs` runs exist or `timeout` passes: seconds from `started` to the first
    run's start, and (runs seen, seconds to the newest run's creation)."""
    first_start, seen, last_created, reported = math.nan, 0, math.nan, 0.0
    while time.time() - started < timeout:
        records = backfill_runs(instance, backfill_ids)
        seen = len(records)
        if seen:
            last_created = max(r.create_timestamp.timestamp() for r in records) - started
            starts = [r.start_time for r in records if r.start_time]
            if starts and math.isnan(first_start):
                first_start = min(starts) - started
        if time.time() - reported > 60:
            reported = time.time()
            print(f"  {time.time() - started:6.0f} s: {seen:,} runs queued", flush=True)
        if seen >= runs and not math.isnan(first_start):
            break
        time.sleep(5)
    return first_start, (seen, last_created)


if __name__ == "__main__":
    main()
