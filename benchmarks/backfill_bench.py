"""Dagster's cost per ticker-day: chunked runs (BackfillPolicy ranges) against one run per partition.

    python benchmarks/backfill_bench.py [--tickers 2] [--days 62] [--trades-per-day 2000]

Builds a local mirror (file://) of small daily archives, then materialises every ticker-day through the
real Dagster path (`dagster.materialize` on a SQLite instance, the embedded store, the real assets,
checks and IO manager) three ways, each on a fresh instance and store:
- pure: the same download + aggregate work with no Dagster and no store (the floor);
- chunked: one run per ticker and BINANCE_MAX_DAYS_PER_RUN consecutive days (what backfills do);
- per partition: one run per ticker-day.
It prints seconds per ticker-day and the overhead per ticker-day above the pure path.
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from daemon_runs import pure_path

FIRST_DAY = dt.date(2024, 1, 1)
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickers", type=int, default=2)
    parser.add_argument("--days", type=int, default=62)
    parser.add_argument("--trades-per-day", type=int, default=2_000)
    parser.add_argument("--max-days-per-run", type=int, default=31)
    args = parser.parse_args()

    from dagster import instance_for_test, materialize

    from binance_assets.assets import build_market_assets
    from binance_assets.definitions import build_resources
    from binance_assets.markets import get_market
    from binance_assets.plan import run_ranges
    from binance_assets.settings import Settings
    from binance_assets_tests.archives import publish

    market = get_market("um")
    tickers = [f"T{i:03d}USDT" for i in range(args.tickers)]
    days = [FIRST_DAY + dt.timedelta(days=i) for i in range(args.days)]
    with tempfile.TemporaryDirectory(prefix="backfill-bench-") as tmp:
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
            name: str, ranges: Callable[[str], list[tuple[dt.date, dt.date]]]
        ) -> Callable[[], None]:
            def run() -> None:
                settings = settings_in(name)
                assets = build_market_assets(market, settings.max_days_per_run)
                with instance_for_test(temp_dir=str(settings.dagster_home)) as instance:
                    instance.add_dynamic_partitions(market.tickers_partition_name, tickers)
                    for ticker in tickers:
                        for first, last in ranges(ticker):
                            tags = {RANGE_START: f"{first}|{ticker}", RANGE_END: f"{last}|{ticker}"}
                            result = materialize(
                                [assets], instance=instance, resources=build_resources(settings), tags=tags
                            )
                            assert result.success

            return run

        measurements = {
            "pure (no Dagster, no store)": pure,
            f"chunked ({args.max_days_per_run} days per run)": through_dagster(
                "chunked", lambda ticker: run_ranges(days, args.max_days_per_run)
            ),
            "one run per partition": through_dagster("single", lambda ticker: [(d, d) for d in days]),
        }
        seconds = {}
        for label, work in measurements.items():
            started = time.perf_counter()
            work()
            seconds[label] = time.perf_counter() - started
        floor = next(iter(seconds.values())) / ticker_days
        print(f"{'path':36s} {'seconds':>8s} {'s / ticker-day':>15s} {'overhead / ticker-day':>22s}")
        for label, total in seconds.items():
            per_day = total / ticker_days
            print(f"{label:36s} {total:8.1f} {per_day:15.3f} {per_day - floor:22.3f}")


if __name__ == "__main__":
    main()
