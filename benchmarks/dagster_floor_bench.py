"""Dagster's own floor per ticker-day: the overhead case of e2e_bench.py (4 tickers x 62 days, one run per
ticker) with an op that does nothing but report, against the same case through `materialize`.

    python benchmarks/dagster_floor_bench.py [--repeat 3] [--instance sqlite|postgresql] [--workdir DIR]

The bare op has the market asset's shape, taken from the asset itself (`market_assets`): its two asset
specs, its check specs, partitions, pool and retry policy. Each run is `dagster.materialize` with the tags
and log level `binance-assets materialize` gives it (cli/runs.py InProcessRuns), on the same instance: a
fresh DAGSTER_HOME with the repo's dagster.yaml, or deploy/dagster.yaml on a throwaway PostgreSQL (fsync
on). The op yields what ours yields on success, lighter: per-partition metadata of each asset (the day's
figures, as many keys as ours), the two materialisations, and each check passed without metadata. No
download, no store, no checks' SQL: so this is a lower bound of what Dagster costs our runs.

Each measurement is a fresh process; "floor per ticker-day" is its wall time less that of a process that
imports what a `--dry-run` imports and stops (the interpreter, our package, pyarrow and pandas), over the
248 ticker-days. "inside the runs" is the runs' own seconds. e2e_bench.py's overhead case measures ours
the same way (`materialize` against `--dry-run`).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import e2e_bench

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing the package

FIRST_DAY = e2e_bench.FIRST_DAY
TICKERS, DAYS = e2e_bench.OVERHEAD_TICKERS, e2e_bench.OVERHEAD_DAYS
DAY_FIGURES: dict[str, Any] = {
    "trade_count": 2_000,
    "volume": 1234.5,
    "quote_volume": 98765.4,
    "bar_count": 1_900,
    "missing_trade_ids": 0,
    "uncovered_trade_ids": 0,
    "uncovered_id_ranges": "none",
    "source": "daily",
    "dataset": "trades",
    "archive": "AAAUSDT-trades-2024-01-01.zip",
    "archive_sha256": "0" * 64,
}
"""A day's figures, with the keys of run_metadata.day_figures."""


def baseline_child(report: Path) -> None:
    """What a `--dry-run` imports, then stop."""
    import pandas  # noqa: F401
    import pyarrow  # noqa: F401

    import binance_assets.cli  # noqa: F401

    report.write_text("{}")


def floor_child(report: Path) -> None:
    """Open the instance as `materialize` does, register the tickers, and run the bare op once per ticker
    over the 62 days; the runs' own seconds to ``report``."""
    from dagster import (
        AssetCheckResult,
        MaterializeResult,
        MultiPartitionKey,
        materialize,
        multi_asset,
    )

    from binance_assets.cli.common import open_instance, register_tickers
    from binance_assets.markets import MARKETS
    from binance_assets.orchestration.assets import BARS, LIQUIDITY, asset_key
    from binance_assets.orchestration.dagster_internals import add_partition_metadata
    from binance_assets.orchestration.definitions import market_assets
    from binance_assets.orchestration.partition_range import asset_run_days, range_tags
    from binance_assets.settings import Settings, apply_dagster_tuning

    apply_dagster_tuning()  # as `binance-assets` does (cli/main.py)
    market = MARKETS["um"]
    settings = Settings.from_env()
    real = market_assets(market, settings)
    bars_key, liquidity_key = asset_key(market, BARS), asset_key(market, LIQUIDITY)

    @multi_asset(
        name="bare_trades_to_bars",
        specs=list(real.specs),
        check_specs=list(real.check_specs),
        partitions_def=real.partitions_def,
        backfill_policy=real.backfill_policy,
        retry_policy=real.node_def.retry_policy,
        pool=real.node_def.pool,
    )
    def bare(context):
        partitions = [
            (MultiPartitionKey({"date": day.isoformat(), "ticker": ticker}), DAY_FIGURES)
            for ticker, days in asset_run_days(context).items()
            for day in days
        ]
        add_partition_metadata(context, bars_key, partitions)
        add_partition_metadata(context, liquidity_key, partitions)
        yield MaterializeResult(asset_key=bars_key)
        yield MaterializeResult(asset_key=liquidity_key, metadata={"days": len(partitions)})
        for spec in real.check_specs:
            yield AssetCheckResult(asset_key=spec.asset_key, check_name=spec.name, passed=True)

    instance = open_instance(settings)
    register_tickers(instance, market, TICKERS)
    last = FIRST_DAY + dt.timedelta(days=DAYS - 1)
    runs_s = 0.0
    for ticker in TICKERS:
        run_started = time.perf_counter()
        result = materialize(
            [bare],
            instance=instance,
            tags=range_tags(market, ticker, FIRST_DAY, last, "cli"),
            run_config={"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}},
            raise_on_error=True,
        )
        runs_s += time.perf_counter() - run_started
        assert len(result.asset_materializations_for_node(bare.node_def.name)) == 2 * DAYS
    report.write_text(json.dumps({"runs_s": runs_s}))


def measure(child: str, workdir: Path, postgres: Any) -> dict[str, Any]:
    """A child of this script in a fresh DAGSTER_HOME (e2e_bench.fresh_home); its wall time and report."""
    env = e2e_bench.fresh_home(workdir, postgres)
    report = workdir / "floor.json"
    report.unlink(missing_ok=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, __file__, f"--{child}", str(report)], env=env, cwd=workdir, check=True)
    return {"wall": time.perf_counter() - started, **json.loads(report.read_text())}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--instance", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--floor", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--baseline", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.floor:
        floor_child(args.floor)
        return
    if args.baseline:
        baseline_child(args.baseline)
        return

    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="floor-bench-"))
        )
        workdir.mkdir(parents=True, exist_ok=True)
        postgres = None
        if args.instance == "postgresql":
            from binance_assets_tests.postgres import postgres_server

            postgres = stack.enter_context(postgres_server(fsync=True))
        floors, baselines = [], []
        for _ in range(args.repeat):  # alternating, so that the machine's drift hits both
            floors.append(measure("floor", workdir, postgres))
            baselines.append(measure("baseline", workdir, postgres))
    ticker_days = len(TICKERS) * DAYS
    best, best_base = min(f["wall"] for f in floors), min(b["wall"] for b in baselines)
    runs = min(f["runs_s"] for f in floors)
    print(f"{len(TICKERS)} tickers x {DAYS} days, bare op, {args.instance} instance, best of {args.repeat}")
    walls = ", ".join(f"{f['wall']:.2f}" for f in floors)
    print(f"process {best:.2f} s (walls: {walls}); a dry run's imports alone {best_base:.2f} s")
    print(f"Dagster's floor per ticker-day: {(best - best_base) / ticker_days * 1000:.1f} ms")
    print(
        f"of which inside the runs: {runs / ticker_days * 1000:.1f} ms ({runs:.2f} s for {len(TICKERS)} runs)"
    )


if __name__ == "__main__":
    main()
