"""A synthetic market through the real daemon, SQLite and PostgreSQL, projected to a full market.

    python benchmarks/market_bench.py [--tickers 20] [--days 365] [--top-trades 4000] [--alpha 1.2]
                                      [--max-days-per-run N] [--instances sqlite,postgresql]
                                      [--planned-subset] [--event-batch-size N] [--workdir DIR]

The market (a local file:// mirror, UM layout, kept in --workdir between runs):
- sizes follow Zipf's law, as trading volume across a market's symbols does: the ticker of rank r
  trades ``max(--min-trades, --top-trades / r**alpha)`` times a day (alpha 1.2: the top ticker holds
  about a quarter of the market's trades, the median one 1-2%); the top quarter trades around the clock
  (24 windows a day), the rest in bursts with hours-long gaps;
- every third ticker is listed part-way through the period (earlier days have no archive, as for a
  symbol listed later: zero-row days in the partition space);
- each listed day has its daily archive and each whole month its monthly archive, as on Binance Vision,
  so runs read monthly archives for whole months and daily ones for the rest.

For each instance, on a fresh DAGSTER_HOME and embedded store: the sensors stopped, `dagster-daemon run`
started, `binance-assets backfill` of every ticker-day submitted, and the daemon followed until the
backfill completes. SQLite is the laptop dagster.yaml; PostgreSQL is deploy/dagster.yaml on a throwaway
local server with fsync on. Before them, the pure path (list, download, aggregate; no Dagster, no store)
over the same archives in this process is the floor.

Printed per instance: ticker-days per second (daemon start to backfill done), Dagster's overhead per
ticker-day above the pure path, runs per ticker-year, seconds from submission until the last run was
queued, peak RSS of the daemon, the code server and a run worker; then a projection to a full market
(600 tickers x 3,387 days) from these figures and the real sizes given by --real-top-trades and
--bytes-per-trade, naming the bound: the download at 100 MB/s or 1 Gbit/s, CPU, or orchestration.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from daemon_runs import (
    ROOT,
    backfill_runs,
    count_materialisations,
    dagster_home,
    mirror_env,
    peak_rss,
    pure_path,
    stop_sensors,
    submit_backfill,
    wait_for_backfills,
)

FIRST_DAY = dt.date(2023, 1, 1)
FULL_MARKET = (600, 3_387)
"""Tickers and days of a full market's partition space (UM since 2017-01)."""
CORES = 2


@dataclass(frozen=True)
class Ticker:
    name: str
    trades_per_day: int
    days: tuple[dt.date, ...]
    spread: int


@dataclass(frozen=True)
class Figures:
    wall_seconds: float
    runs: int
    queued_seconds: float
    run_seconds: float
    materialisations: int
    peak_mb: dict[str, float]


def synthetic_market(args: argparse.Namespace) -> list[Ticker]:
    days = [FIRST_DAY + dt.timedelta(days=i) for i in range(args.days)]
    tickers = []
    for index in range(args.tickers):
        rank = index + 1
        listed = (index * len(days)) // args.tickers if index % 3 == 2 else 0
        tickers.append(
            Ticker(
                f"T{index:03d}USDT",
                max(args.min_trades, int(args.top_trades / rank**args.alpha)),
                tuple(days[listed:]),
                24 if rank <= max(1, args.tickers // 4) else 1,
            )
        )
    return tickers


def publish_market(mirror: Path, tickers: list[Ticker]) -> None:
    """Write the mirror once; a stamp names what it holds."""
    from binance_assets_tests.archives import publish

    stamp = mirror / "market.txt"
    described = "\n".join(
        f"{t.name} {t.trades_per_day} {t.days[0]} {len(t.days)} {t.spread}" for t in tickers
    )
    if stamp.exists() and stamp.read_text() == described:
        return
    started = time.perf_counter()
    for seed, t in enumerate(tickers):
        months = sorted({d.strftime("%Y-%m") for d in t.days})
        whole = tuple(m for m in months if sum(d.strftime("%Y-%m") == m for d in t.days) == _month_days(m))
        publish(mirror, "um", t.name, list(t.days), trades_per_day=t.trades_per_day, monthly=whole,
                seed=seed, spread=t.spread)  # fmt: skip
    stamp.write_text(described)
    print(f"published the mirror in {time.perf_counter() - started:.0f} s", flush=True)


def _month_days(month: str) -> int:
    first = dt.date.fromisoformat(f"{month}-01")
    return ((first + dt.timedelta(days=32)).replace(day=1) - first).days


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickers", type=int, default=20)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--top-trades", type=int, default=4_000, help="trades a day of the top ticker")
    parser.add_argument("--min-trades", type=int, default=50, help="trades a day of the smallest tickers")
    parser.add_argument("--alpha", type=float, default=1.2, help="Zipf exponent of the sizes")
    parser.add_argument(
        "--max-days-per-run", type=int, help="BINANCE_MAX_DAYS_PER_RUN (default: the setting's default)"
    )
    parser.add_argument("--instances", default="sqlite,postgresql")
    parser.add_argument(
        "--planned-subset",
        action="store_true",
        help="DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS: one planned event per asset and run",
    )
    parser.add_argument("--event-batch-size", type=int, default=0, help="DAGSTER_EVENT_BATCH_SIZE")
    parser.add_argument("--real-top-trades", type=float, default=3e6, help="a real top ticker's trades a day")
    parser.add_argument(
        "--bytes-per-trade", type=float, default=17.6, help="zip bytes per trade (52.7 MB / 3M trades)"
    )
    parser.add_argument(
        "--cpu-us-per-trade", type=float, default=0.18, help="CPU per trade (0.54 CPU-s / 3M trades)"
    )
    parser.add_argument("--workdir", type=Path, help="keep the mirror, homes and logs here")
    args = parser.parse_args()

    from binance_assets_tests.postgres import postgres_server

    tickers = synthetic_market(args)
    ticker_days = len(tickers) * args.days
    trades = sum(t.trades_per_day * len(t.days) for t in tickers)
    print(
        f"{len(tickers)} tickers x {args.days} days = {ticker_days} ticker-days, {trades:,} trades",
        flush=True,
    )
    with ExitStack() as stack:
        work = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="market-bench-")))
        run_dir = work / f"run-{time.strftime('%Y%m%d-%H%M%S')}"
        mirror = work / "mirror"
        publish_market(mirror, tickers)
        days = [FIRST_DAY + dt.timedelta(days=i) for i in range(args.days)]
        names = [t.name for t in tickers]
        started, cpu = time.perf_counter(), time.process_time()
        pure_path(mirror, run_dir / "pure-cache", "um", names, days)
        pure = (time.perf_counter() - started, time.process_time() - cpu)
        print(f"pure path: {pure[0]:.1f} s, {pure[1]:.1f} CPU-s", flush=True)
        env = mirror_env(mirror, BINANCE_MARKETS="um")
        if args.max_days_per_run:
            env["BINANCE_MAX_DAYS_PER_RUN"] = str(args.max_days_per_run)
        if args.planned_subset:
            env["DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS"] = "true"
        if args.event_batch_size:
            env["DAGSTER_EVENT_BATCH_SIZE"] = str(args.event_batch_size)
        results = {}
        for name in args.instances.split(","):
            instance_env = {}
            instance_yaml = ROOT / "dagster.yaml"
            if name == "postgresql":
                server = stack.enter_context(postgres_server(fsync=True))
                instance_env, instance_yaml = (
                    server.create_database("dagster").env,
                    ROOT / "deploy" / "dagster.yaml",
                )
            print(f"{name}: backfill through the daemon ...", flush=True)
            results[name] = measure(run_dir / name, instance_yaml, {**env, **instance_env}, names, days)
    report(results, ticker_days, pure[0])
    project(args, results, ticker_days, trades, pure, tickers)


def measure(
    workdir: Path, instance_yaml: Path, env: dict[str, str], tickers: list[str], days: list[dt.date]
) -> Figures:
    from dagster import AssetKey, DagsterInstance

    from binance_assets_tests.helpers import daemon

    env = dagster_home(workdir, instance_yaml, env)
    stop_sensors(env, workdir)
    with DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        with daemon(env, workdir) as daemon_process, peak_rss(daemon_process.pid) as peak:
            started, submitted_at = time.monotonic(), time.time()
            backfill_ids = submit_backfill(env, workdir, "um", tickers, days)
            wait_for_backfills(instance, backfill_ids, daemon_process, workdir)
            wall = time.monotonic() - started
        records = backfill_runs(instance, backfill_ids)
        queued = max(r.create_timestamp.timestamp() for r in records) - submitted_at
        run_seconds = sum((r.end_time or 0) - (r.start_time or 0) for r in records)
        keys = [AssetKey(["binance", "um", name]) for name in ("hl5s_bars", "daily_liquidity")]
        materialisations = sum(count_materialisations(instance, key) for key in keys)
    return Figures(wall, len(records), queued, run_seconds, materialisations, peak())


def report(results: dict[str, Figures], ticker_days: int, pure_wall: float) -> None:
    """One column per instance: the figures the issue asks for."""
    rows = [
        ("runs", lambda f: f"{f.runs}"),
        ("materialisation events", lambda f: f"{f.materialisations}"),
        ("wall s (submission -> backfill done)", lambda f: f"{f.wall_seconds:.1f}"),
        ("ticker-days / s", lambda f: f"{ticker_days / f.wall_seconds:.1f}"),
        ("pure path ms / ticker-day (same archives)", lambda f: f"{1000 * pure_wall / ticker_days:.1f}"),
        ("Dagster overhead ms / ticker-day (wall)", lambda f: f"{_overhead(f, pure_wall, ticker_days):.1f}"),
        ("run-seconds / ticker-day (sum of runs) ms", lambda f: f"{1000 * f.run_seconds / ticker_days:.1f}"),
        ("runs per ticker-year", lambda f: f"{f.runs / (ticker_days / 365):.1f}"),
        ("s from submission until last run queued", lambda f: f"{f.queued_seconds:.1f}"),
        ("peak RSS MB: daemon", lambda f: f"{f.peak_mb.get('daemon', 0):.0f}"),
        ("peak RSS MB: code server", lambda f: f"{f.peak_mb.get('code server', 0):.0f}"),
        ("peak RSS MB: run worker", lambda f: f"{f.peak_mb.get('run worker', 0):.0f}"),
    ]
    names = list(results)
    print(f"\n{'':44s}" + "".join(f"{n:>12s}" for n in names))
    for label, cell in rows:
        print(f"{label:44s}" + "".join(f"{cell(results[n]):>12s}" for n in names))


def _run_days(args: argparse.Namespace) -> int:
    """The run length the backfills used: --max-days-per-run, else the setting's default."""
    from binance_assets.settings import Settings

    return args.max_days_per_run or Settings.from_env({}).max_days_per_run


def _overhead(figures: Figures, pure_wall: float, ticker_days: int) -> float:
    return 1000 * (figures.wall_seconds - pure_wall) / ticker_days


def project(
    args: argparse.Namespace,
    results: dict[str, Figures],
    ticker_days: int,
    trades: int,
    pure: tuple[float, float],
    tickers: list[Ticker],
) -> None:
    """Hours for a full market by each bound; the largest is the bound."""
    pure_wall, pure_cpu = pure
    full_tickers, full_days = FULL_MARKET
    full_ticker_days = full_tickers * full_days
    listed = sum(len(t.days) for t in tickers) / ticker_days
    real_per_day = sum(max(1000.0, args.real_top_trades / r**args.alpha) for r in range(1, full_tickers + 1))
    real_trades = real_per_day * full_days * listed
    download_bytes = real_trades * args.bytes_per_trade
    fixed_cpu = max(0.0, pure_cpu - trades * args.cpu_us_per_trade / 1e6) / ticker_days
    cpu_hours = (real_trades * args.cpu_us_per_trade / 1e6 + full_ticker_days * fixed_cpu) / CORES / 3600
    print(
        f"\nprojection to {full_tickers} tickers x {full_days} days ({full_ticker_days:,} ticker-days; "
        f"{listed:.0%} listed as here; {real_trades / 1e9:.1f}G trades, "
        f"{download_bytes / 1e12:.2f} TB of zips):"
    )
    bounds = {
        "download at 100 MB/s": download_bytes / 100e6 / 3600,
        "download at 1 Gbit/s": download_bytes / 125e6 / 3600,
        f"CPU on {CORES} cores": cpu_hours,
    }
    orchestration = {}
    runs_full = full_tickers * math.ceil(full_days / _run_days(args))
    for name, figures in results.items():
        submission = figures.queued_seconds / figures.runs * runs_full / 3600
        overhead = _overhead(figures, pure_wall, ticker_days) * full_ticker_days / 3.6e6
        label = f"orchestration, {name} ({runs_full:,.0f} runs; queueing them {submission:.1f} h)"
        orchestration[name] = (label, max(submission, overhead))
    for label, hours in [*bounds.items(), *orchestration.values()]:
        print(f"  {label:78s} {hours:8.1f} h")
    local = [(h, b) for b, h in bounds.items() if not b.startswith("download at 1")]
    for name, (label, hours) in orchestration.items():
        bound = max([*local, (hours, label)])
        print(f"bound with {name}, downloading at 100 MB/s: {bound[1]} ({bound[0]:.1f} h)")
    print("On one 2-core machine CPU and orchestration share the cores (their sum is the time there);")
    print("more run machines divide both, not the queueing, which is the backfill daemon's alone.")


if __name__ == "__main__":
    main()
