"""Dagster's cost per ticker-day: chunked runs (BackfillPolicy ranges) against one run per partition.

    python benchmarks/backfill_bench.py [--tickers 2] [--days 62] [--trades-per-day 2000]
                                        [--max-days-per-run 31] [--instance sqlite|consolidated|postgresql]
                                        [--levers] [--no-per-partition]

Builds a local mirror (file://) of small daily archives, then materialises every ticker-day through the
real Dagster path (`dagster.materialize` on a SQLite instance, the embedded store, the real assets,
checks and IO manager) three ways, each on a fresh instance and store:
- pure: the same download + aggregate work with no Dagster and no store (the floor);
- chunked: one run per ticker and BINANCE_MAX_DAYS_PER_RUN consecutive days (what backfills do);
- per partition: one run per ticker-day.
It prints seconds (wall and this process's CPU) per ticker-day and the overhead per ticker-day above the
pure path. --instance: the default SQLite storage (a database per run plus an index), the consolidated
SQLite event log (one database), or PostgreSQL (a local throwaway server, fsync on). --levers adds chunked
runs with Dagster's event-count settings: DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS (one planned
event per asset and run instead of one per partition) and, on PostgreSQL, DAGSTER_EVENT_BATCH_SIZE (a
run's materialisations written in one batch).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from daemon_runs import pure_path

FIRST_DAY = dt.date(2024, 1, 1)
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"
PLANNED_SUBSET = {"DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS": "true"}
EVENT_BATCH = {"DAGSTER_EVENT_BATCH_SIZE": "1000"}


def instance_overrides(kind: str, stack: ExitStack, home: Path) -> dict[str, Any]:
    """`instance_for_test` overrides of the event log (and, for PostgreSQL, every storage)."""
    if kind == "consolidated":
        return {
            "event_log_storage": {
                "module": "dagster._core.storage.event_log",
                "class": "ConsolidatedSqliteEventLogStorage",
                "config": {"base_dir": str(home / "event_log")},
            }
        }
    if kind == "postgresql":
        from binance_assets_tests.postgres import postgres_server

        server = stack.enter_context(postgres_server(fsync=True))
        db = server.create_database(f"dagster_{home.name.replace('-', '_')}")
        return {
            "storage": {
                "postgres": {
                    "postgres_db": {"hostname": db.host, "port": db.port, "username": db.user,
                                    "password": db.password, "db_name": db.database,
                                    "scheme": "postgresql+psycopg2"},
                }
            }
        }  # fmt: skip
    return {}


@contextmanager
def environment(variables: Mapping[str, str]) -> Iterator[None]:
    """Dagster reads these settings from the environment at each use."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickers", type=int, default=2)
    parser.add_argument("--days", type=int, default=62)
    parser.add_argument("--trades-per-day", type=int, default=2_000)
    parser.add_argument("--max-days-per-run", type=int, default=31)
    parser.add_argument("--instance", choices=("sqlite", "consolidated", "postgresql"), default="sqlite")
    parser.add_argument("--levers", action="store_true", help="also chunked runs with fewer events")
    parser.add_argument("--no-per-partition", action="store_true", help="skip one run per partition")
    args = parser.parse_args()

    from dagster import instance_for_test, materialize

    from binance_assets.markets import MARKETS
    from binance_assets.orchestration.assets import build_market_assets
    from binance_assets.orchestration.definitions import build_resources
    from binance_assets.plan import run_ranges
    from binance_assets.settings import Settings
    from binance_assets_tests.archives import publish

    market = MARKETS["um"]
    tickers = [f"T{i:03d}USDT" for i in range(args.tickers)]
    days = [FIRST_DAY + dt.timedelta(days=i) for i in range(args.days)]
    with tempfile.TemporaryDirectory(prefix="backfill-bench-") as tmp, ExitStack() as stack:
        mirror = Path(tmp) / "mirror"
        for seed, ticker in enumerate(tickers):
            publish(mirror, "um", ticker, days, trades_per_day=args.trades_per_day, seed=seed)
        ticker_days = len(tickers) * len(days)
        print(f"{len(tickers)} tickers x {len(days)} days = {ticker_days} ticker-days")

        def settings_in(name: str) -> Settings:
            home = Path(tmp) / name
            home.mkdir()
            return Settings.from_env(
                {
                    "DAGSTER_HOME": str(home),
                    "BINANCE_VISION_URL": f"file://{mirror}",
                    "BINANCE_VISION_LISTING_URL": f"file://{mirror}",
                    "BINANCE_MARKETS": "um",
                    "BINANCE_MAX_DAYS_PER_RUN": str(args.max_days_per_run),
                }
            )

        def pure() -> None:
            pure_path(mirror, Path(tmp) / "pure-cache", "um", tickers, days)

        def through_dagster(
            name: str, ranges: Callable[[str], list[tuple[dt.date, dt.date]]], env: Mapping[str, str] = {}
        ) -> Callable[[], None]:
            def run() -> None:
                settings = settings_in(name)
                assets = build_market_assets(market, settings.max_days_per_run)
                home = settings.dagster_home
                overrides = instance_overrides(args.instance, stack, home)
                with environment(env), instance_for_test(temp_dir=str(home), overrides=overrides) as instance:
                    instance.add_dynamic_partitions(market.tickers_partition_name, tickers)
                    for ticker in tickers:
                        for first, last in ranges(ticker):
                            tags = {RANGE_START: f"{first}|{ticker}", RANGE_END: f"{last}|{ticker}"}
                            result = materialize(
                                [assets], instance=instance, resources=build_resources(settings), tags=tags
                            )
                            assert result.success

            return run

        chunks = run_ranges(days, args.max_days_per_run)
        chunked = f"chunked ({args.max_days_per_run} days per run)"
        measurements = {
            "pure (no Dagster, no store)": pure,
            chunked: through_dagster("chunked", lambda ticker: chunks),
        }
        if args.levers:
            measurements[f"{chunked}, planned subset"] = through_dagster(
                "subset", lambda t: chunks, PLANNED_SUBSET
            )
            if args.instance == "postgresql":
                measurements[f"{chunked}, event batch"] = through_dagster(
                    "batch", lambda t: chunks, EVENT_BATCH
                )
                measurements[f"{chunked}, both"] = through_dagster(
                    "both", lambda t: chunks, {**PLANNED_SUBSET, **EVENT_BATCH}
                )
        if not args.no_per_partition:
            measurements["one run per partition"] = through_dagster(
                "single", lambda ticker: [(d, d) for d in days]
            )
        seconds = {}
        for label, work in measurements.items():
            started, cpu = time.perf_counter(), time.process_time()
            work()
            seconds[label] = (time.perf_counter() - started, time.process_time() - cpu)
        floor = next(iter(seconds.values()))[0] / ticker_days
        print(f"instance: {args.instance}")
        print(f"{'path':52s} {'seconds':>8s} {'ms / ticker-day':>16s} {'CPU ms':>7s} {'overhead ms':>12s}")
        for label, (total, cpu) in seconds.items():
            per_day = total / ticker_days
            print(
                f"{label:52s} {total:8.1f} {1000 * per_day:16.1f} {1000 * cpu / ticker_days:7.1f} "
                f"{1000 * (per_day - floor):12.1f}"
            )


if __name__ == "__main__":
    main()
