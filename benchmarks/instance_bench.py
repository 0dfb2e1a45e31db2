"""Dagster instance cost, SQLite against PostgreSQL: a chunked backfill through the real daemon on each.

    python benchmarks/instance_bench.py [--tickers 4] [--days 62] [--trades-per-day 500] [--events 500]
                                        [--workdir DIR]

Builds a local mirror (file://) of small daily UM archives, then for each instance, on a fresh
DAGSTER_HOME and embedded store: `binance-assets backfill` of every ticker-day, the sensors stopped (the
daily sensor would add runs of its own), `dagster-daemon run` on the repository's workspace.yaml until
the backfill completes. SQLite is the laptop dagster.yaml; PostgreSQL is deploy/dagster.yaml on a
throwaway local server (binance_assets_tests/postgres.py) with fsync on, as a production server runs,
and again with fsync off (what the commits' disk flushes cost on this disk). All use the same run limits
(at most 2 runs at once: the `dagster/backfill` tag limit).

Printed per instance: wall seconds from daemon start to completion and per ticker-day, seconds per
ticker-day from the first run's start to the last run's end, materialisation events per second over
that span, the peak RSS of a run worker (sampled), and the instance's raw write rate: seconds to record
--events partitioned materialisation events with `report_runless_asset_event`, one at a time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from daemon_runs import (
    ROOT,
    backfill_runs,
    count_materialisations,
    dagster_home,
    mirror_env,
    peak_rss,
    stop_sensors,
    submit_backfill,
    wait_for_backfills,
)

if TYPE_CHECKING:
    from dagster import DagsterInstance

FIRST_DAY = dt.date(2024, 1, 1)


@dataclass(frozen=True)
class Figures:
    wall_seconds: float
    run_span_seconds: float
    runs: int
    materialisations: int
    peak_run_rss_mb: float
    event_write_seconds: float


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickers", type=int, default=4)
    parser.add_argument("--days", type=int, default=62)
    parser.add_argument("--trades-per-day", type=int, default=500)
    parser.add_argument("--events", type=int, default=500, help="materialisation events written directly")
    parser.add_argument(
        "--workdir", type=Path, help="keep the homes and daemon logs here (default: a temp dir)"
    )
    args = parser.parse_args()

    from binance_assets_tests.archives import publish
    from binance_assets_tests.postgres import postgres_server

    tickers = [f"T{i:03d}USDT" for i in range(args.tickers)]
    days = [FIRST_DAY + dt.timedelta(days=i) for i in range(args.days)]
    ticker_days = len(tickers) * len(days)
    with ExitStack() as stack:
        work = args.workdir or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="instance-bench-"))
        )
        mirror = work / "mirror"
        for seed, ticker in enumerate(tickers):
            publish(mirror, "um", ticker, days, trades_per_day=args.trades_per_day, seed=seed)
        print(f"{len(tickers)} tickers x {len(days)} days = {ticker_days} ticker-days", flush=True)
        env = mirror_env(mirror, BINANCE_MARKETS="um")
        durable = stack.enter_context(postgres_server(fsync=True)).create_database("dagster")
        no_fsync = stack.enter_context(postgres_server(fsync=False)).create_database("dagster")
        instances = {
            "sqlite": (ROOT / "dagster.yaml", {}),
            "postgresql": (ROOT / "deploy" / "dagster.yaml", durable.env),
            "pg no fsync": (ROOT / "deploy" / "dagster.yaml", no_fsync.env),
        }
        results = {}
        for name, (instance_yaml, instance_env) in instances.items():
            print(f"{name}: backfill through the daemon ...", flush=True)
            results[name] = measure(
                work / name.replace(" ", "-"),
                instance_yaml,
                {**env, **instance_env},
                tickers,
                days,
                args.events,
            )
    report(results, ticker_days, args.events)


def measure(
    workdir: Path,
    instance_yaml: Path,
    env: dict[str, str],
    tickers: list[str],
    days: list[dt.date],
    events: int,
) -> Figures:
    from dagster import AssetKey, DagsterInstance

    from binance_assets_tests.helpers import daemon

    env = dagster_home(workdir, instance_yaml, env)
    backfill_ids = submit_backfill(env, workdir, "um", tickers, days)
    stop_sensors(env, workdir)
    with DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        with daemon(env, workdir) as daemon_process, peak_rss(daemon_process.pid) as peak:
            started = time.monotonic()
            wait_for_backfills(instance, backfill_ids, daemon_process, workdir)
            wall = time.monotonic() - started
        records = backfill_runs(instance, backfill_ids)
        span = max(r.end_time or 0 for r in records) - min(r.start_time or 0 for r in records)
        keys = [AssetKey(["binance", "um", name]) for name in ("hl5s_bars", "daily_liquidity")]
        materialisations = sum(count_materialisations(instance, key) for key in keys)
        event_write = _write_events(instance, events)
    return Figures(wall, span, len(records), materialisations, peak().get("run worker", 0.0), event_write)


def _write_events(instance: DagsterInstance, events: int) -> float:
    """Seconds to record `events` materialisations of a partitioned asset, one call each."""
    from dagster import AssetKey, AssetMaterialization

    key = AssetKey(["bench", "events"])
    started = time.perf_counter()
    for i in range(events):
        day = FIRST_DAY + dt.timedelta(days=i)
        instance.report_runless_asset_event(
            AssetMaterialization(key, partition=f"{day}|BENCHUSDT", metadata={"dagster/row_count": i})
        )
    return time.perf_counter() - started


def report(results: dict[str, Figures], ticker_days: int, events: int) -> None:
    rows = [
        ("runs", lambda f: f"{f.runs}"),
        ("materialisation events", lambda f: f"{f.materialisations}"),
        ("wall s (daemon start -> done)", lambda f: f"{f.wall_seconds:.1f}"),
        ("wall s / ticker-day", lambda f: f"{f.wall_seconds / ticker_days:.3f}"),
        (
            "runs s / ticker-day (first start -> last end)",
            lambda f: f"{f.run_span_seconds / ticker_days:.3f}",
        ),
        (
            "materialisation events / s (runs span)",
            lambda f: f"{f.materialisations / f.run_span_seconds:.1f}",
        ),
        ("peak run worker RSS MB", lambda f: f"{f.peak_run_rss_mb:.0f}"),
        (f"direct event writes / s ({events} events)", lambda f: f"{events / f.event_write_seconds:.0f}"),
        ("ms per direct event write", lambda f: f"{1000 * f.event_write_seconds / events:.1f}"),
    ]
    names = list(results)
    print(f"\n{'':48s}" + "".join(f"{n:>12s}" for n in names))
    for label, cell in rows:
        print(f"{label:48s}" + "".join(f"{cell(results[n]):>12s}" for n in names))


if __name__ == "__main__":
    main()
