"""End to end, as a user runs it: `binance-assets materialize` of 10 big UM days against pandas `read_csv`
+ `resample` on the same zips, of one monthly archive (wall time, CPU, peak RSS, trades/s, against the
pure path on the same archive), and Dagster's and the store's cost per ticker-day (4 tickers x 62 small
days, `materialize` against `--dry-run`).

    python benchmarks/e2e_bench.py [--days 10] [--trades-per-day 2000000] [--monthly-trades 24000000]
                                   [--repeat 3] [--only daily|monthly|overhead] [--instance sqlite|postgresql]
                                   [--mbps 0] [--workdir DIR]

A mirror laid out like the bucket is generated once and cached in the workdir: BTCUSDT's daily trades
archives (um_header, `--trades-per-day` trades each, trading every hour) with their daily 1m klines, and
ETHUSDT's monthly trades archive of March 2024 (`--monthly-trades` trades, written a day at a time) with
its monthly klines. A local Vision server on 127.0.0.1 (binance_assets_tests/vision_server.py) serves
it, at loopback speed or `--mbps` per archive (a real link). Each measurement is a fresh process:
- ours: `binance-assets materialize` with a fresh DAGSTER_HOME (the repo's dagster.yaml, the embedded
  store, an empty download cache) and the default settings (kline check, aggTrades fallback);
- pandas: `read_csv` of each zip + `resample("5s")` to the same bars, nothing stored.
Both are process wall times (imports included), run back to back `--repeat` times, best shown, with the
process's CPU seconds (user + system, its children's included) and its peak RSS (VmHWM, read at exit, or
the peak sum over its process tree, sampled, if higher: `materialize`'s worker). "run" is the part of our
wall time inside Dagster's run (the CLI's own progress line): the rest is imports and opening the
instance, a fixed cost per process.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import datetime as dt
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import bars_bench

if TYPE_CHECKING:
    from binance_assets_tests.postgres import PostgresServer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing the package

DAILY_TICKER, MONTHLY_TICKER = "BTCUSDT", "ETHUSDT"
FIRST_DAY = dt.date(2024, 1, 1)
MONTH = dt.date(2024, 3, 1)
HOURS = 24
"""Each day trades in every hour (publish(spread=24)): a liquid ticker has trades in nearly every bar."""
_PROGRESS = re.compile(r": \d+ days?, ([\d.]+) s, ([\d,]+) trades, ([\d,]+) bars")


def _day_trades(day: dt.date, trades: int, first_id: int, seed: int) -> Any:
    """`trades` UM trades over `day` (whole ms, ids from `first_id`), an hour's share at a time."""
    import pandas as pd

    from binance_assets_tests.archives import make_trades

    midnight = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
    frames, next_id = [], first_id
    for hour in range(HOURS):
        count = trades // HOURS + (hour < trades % HOURS)
        start = midnight + dt.timedelta(hours=hour)
        frames.append(
            make_trades(count, start, 3600, first_id=next_id, seed=seed * 100 + hour, price=42_000.0,
                        time_unit="ms")
        )  # fmt: skip
        next_id += count
    return pd.concat(frames, ignore_index=True)


def build_mirror(workdir: Path, days: int, per_day: int, monthly: int) -> Path:
    """The mirror of both tickers (written once; a `.done` file marks each part complete)."""
    import pandas as pd

    from binance_assets.markets import MARKETS
    from binance_assets_tests.archives import (
        expected_klines,
        trades_csv,
        write_archive,
        write_klines,
        zip_archive,
    )

    market = MARKETS["um"]
    root = workdir / "e2e-mirror"
    root.mkdir(parents=True, exist_ok=True)
    daily_done = root / f".daily-{days}x{per_day}-monthly-klines.done"
    if days and not daily_done.exists():
        started = time.perf_counter()
        shutil.rmtree(root / "data/futures/um/daily/trades" / DAILY_TICKER, ignore_errors=True)
        month_klines = []
        for index in range(days):
            day = FIRST_DAY + dt.timedelta(days=index)
            trades = _day_trades(day, per_day, 1 + index * per_day, seed=index)
            key = market.archive_key("trades", DAILY_TICKER, day.isoformat())
            name = f"{DAILY_TICKER}-trades-{day}.csv"
            write_archive(root, key, zip_archive(trades_csv(trades, "um_header"), name))
            klines = expected_klines(trades, [day])
            write_klines(root, "um", DAILY_TICKER, day.isoformat(), klines)
            month_klines.append(klines)
        # the month's file, as Vision has it: every minute of the month (idle after the last day)
        idle = klines.assign(
            open=klines["close"].iloc[-1], high=klines["close"].iloc[-1], low=klines["close"].iloc[-1],
            close=klines["close"].iloc[-1], volume=0.0, quote_volume=0.0, count=0, taker_buy_volume=0.0,
            taker_buy_quote_volume=0.0,
        )  # fmt: skip
        later = day + dt.timedelta(days=1)
        while later.month == day.month:
            month_klines.append(idle.assign(open_time=idle["open_time"] + (later - day).days * 86_400_000))
            later += dt.timedelta(days=1)
        month = day.strftime("%Y-%m")
        write_klines(root, "um", DAILY_TICKER, month, pd.concat(month_klines, ignore_index=True))
        daily_done.write_text("")
        print(f"generated {days} daily archives in {time.perf_counter() - started:.0f} s", flush=True)
    monthly_done = root / f".monthly-{monthly}.done"
    if monthly and not monthly_done.exists():
        started = time.perf_counter()
        month = MONTH.strftime("%Y-%m")
        month_days = [MONTH + dt.timedelta(days=i) for i in range(31)]
        key = market.archive_key("trades", MONTHLY_TICKER, month)
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        klines, next_id = [], 1
        with (
            zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive,
            archive.open(f"{MONTHLY_TICKER}-trades-{month}.csv", "w", force_zip64=True) as member,
        ):
            for index, day in enumerate(month_days):
                count = monthly // len(month_days) + (index < monthly % len(month_days))
                trades = _day_trades(day, count, next_id, seed=1000 + index)
                text = trades_csv(trades, "um_header")
                member.write(text if index == 0 else text[text.index(b"\n") + 1 :])  # one header
                klines.append(expected_klines(trades, [day]))
                next_id += count
        write_archive(root, key, path.read_bytes())  # its .CHECKSUM
        write_klines(root, "um", MONTHLY_TICKER, month, pd.concat(klines, ignore_index=True))
        monthly_done.write_text("")
        print(f"generated the monthly archive in {time.perf_counter() - started:.0f} s", flush=True)
    return root


OVERHEAD_TICKERS = ("AAAUSDT", "BBBUSDT", "CCCUSDT", "DDDUSDT")
OVERHEAD_DAYS, OVERHEAD_TRADES = 62, 2_000


def build_overhead_mirror(root: Path) -> None:
    """4 tickers x 62 daily archives of 2,000 trades, with their 1m klines, daily and monthly, as Vision
    has them (written once)."""
    from binance_assets_tests.archives import expected_klines, publish, write_klines

    done = root / f".overhead-{len(OVERHEAD_TICKERS)}x{OVERHEAD_DAYS}x{OVERHEAD_TRADES}-monthly-klines.done"
    if done.exists():
        return
    days = [FIRST_DAY + dt.timedelta(days=i) for i in range(OVERHEAD_DAYS)]
    for seed, ticker in enumerate(OVERHEAD_TICKERS):
        trades = publish(root, "um", ticker, days, trades_per_day=OVERHEAD_TRADES, spread=24, seed=seed)
        for day in days:
            write_klines(root, "um", ticker, day.isoformat(), expected_klines(trades, [day]))
        for month in sorted({day.strftime("%Y-%m") for day in days}):
            in_month = [day for day in days if day.strftime("%Y-%m") == month]
            write_klines(root, "um", ticker, month, expected_klines(trades, in_month))
    done.write_text("")


def _report_at_exit(path: Path, extra: dict[str, Any]) -> None:
    atexit.register(lambda: path.write_text(json.dumps({**extra, "rss_mb": bars_bench._peak_rss_mb()})))


def cli_child(report: Path, argv: list[str]) -> None:
    """`binance-assets ARGV` in this process (the console script's entry point), its peak RSS to `report`."""
    _report_at_exit(report, {})
    from binance_assets.cli import console

    sys.argv = ["binance-assets", *argv]
    console()


def pandas_child(report: Path, zips: list[Path]) -> None:
    """bars_bench's pandas baseline (`read_csv` + `resample`) on each zip, the bars counted."""
    run = bars_bench._pandas_path()
    started = time.perf_counter()
    bars = sum(run(path) for path in zips)
    _report_at_exit(report, {"work_s": time.perf_counter() - started, "bars": bars})


def pure_child(report: Path, zip_path: Path) -> None:
    """The pure path of a run's archive, as `pipeline.RunLoad` reads one (the reader in a thread of its own,
    the aggregation, the per-day split), without Dagster, the store or the download."""
    from binance_assets.bars import aggregate_trades
    from binance_assets.markets import MARKETS
    from binance_assets.prefetch import prefetch
    from binance_assets.vision.archive import read_archive
    from binance_assets.vision.trades import TRADES

    started = time.perf_counter()
    aggregated = aggregate_trades(prefetch(read_archive(zip_path, MARKETS["um"], TRADES)))
    days = sum(1 for _ in aggregated.by_day())
    _report_at_exit(report, {"work_s": time.perf_counter() - started, "days": days})


def _run(command: list[str], env: dict[str, str], workdir: Path) -> dict[str, Any]:
    """Run a child of this script; its wall and CPU seconds (its own processes' included), its report and
    its stderr. Its peak RSS is the higher of its own peak and the peak sum over its process tree (the
    `materialize` worker, aggregate.py, included), sampled every 10 ms."""
    report = workdir / "report.json"
    report.unlink(missing_ok=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, __file__, "--report", str(report), *command],
        env=env, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    tree_peak = _TreePeak(child.pid)
    _, stderr = child.communicate()
    wall = time.perf_counter() - started
    tree_mb = tree_peak.stop()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if child.returncode:
        raise RuntimeError(f"{' '.join(command[:3])} exited {child.returncode}:\n{stderr[-3000:]}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    result = {"wall": wall, "cpu": cpu, **json.loads(report.read_text()), "stderr": stderr}
    return {**result, "rss_mb": max(result["rss_mb"], tree_mb)}


class _TreePeak:
    """The highest sum of VmRSS over a process and its descendants, sampled in a thread."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self._peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self._peak_kb / 1024

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self._peak_kb = max(self._peak_kb, sum(_rss_kb(pid) for pid in _tree(self._pid)))


def _tree(pid: int) -> list[int]:
    pids, found = [pid], []
    while pids:
        pid = pids.pop()
        found.append(pid)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{pid}/task").iterdir():
                pids += [int(child) for child in (task / "children").read_text().split()]
    return found


def _rss_kb(pid: int) -> int:
    """0 for a process gone meanwhile, or one without memory of its own (a zombie)."""
    with contextlib.suppress(OSError, ValueError):
        return bars_bench.status_kb("VmRSS", pid)
    return 0


def fresh_home(workdir: Path, postgres: PostgresServer | None) -> dict[str, str]:
    """The environment of a process on a fresh DAGSTER_HOME in ``workdir``, with no setting of ours but the
    UM market: the laptop's dagster.yaml, or with ``postgres`` the production instance (deploy/dagster.yaml)
    on a fresh database of that server."""
    home = workdir / "dagster_home"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BINANCE_", "CLICKHOUSE_", "DAGSTER_"))}
    if postgres is None:
        shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    else:
        shutil.copy(ROOT / "deploy" / "dagster.yaml", home / "dagster.yaml")
        env.update(postgres.create_database(f"bench_{time.monotonic_ns()}").env)
    return env | {"DAGSTER_HOME": str(home), "BINANCE_MARKETS": "um"}


def materialize(
    url: str,
    workdir: Path,
    ticker: str,
    first: dt.date,
    last: dt.date,
    *options: str,
    postgres: PostgresServer | None = None,
) -> dict[str, Any]:
    """`binance-assets materialize` (of ``ticker``, comma-separated for several) in a fresh DAGSTER_HOME
    (`fresh_home`) reading Vision from `url`, with the shipped settings."""
    env = fresh_home(workdir, postgres)
    env.update(BINANCE_VISION_URL=url, BINANCE_VISION_LISTING_URL=url)
    tickers = [arg for name in ticker.split(",") for arg in ("--ticker", name)]
    argv = ["materialize", "--market", "um", *tickers, "--start", str(first), "--end", str(last), *options]
    result = _run(["--cli", *argv], env, workdir)
    progress = _PROGRESS.findall(result["stderr"])  # one line per run
    if not progress:
        raise RuntimeError(f"no progress line in:\n{result['stderr'][-2000:]}")
    return {
        **result,
        "run": sum(float(run_s) for run_s, _, _ in progress),
        "trades": sum(int(trades.replace(",", "")) for _, trades, _ in progress),
        "bars": sum(int(bars.replace(",", "")) for _, _, bars in progress),
    }


def _line(label: str, result: dict[str, Any], trades: int) -> str:
    run = f"{result['run']:>6.2f}" if "run" in result else f"{'':>6}"
    return (
        f"{label:<34} {result['wall']:>7.2f} {run} {result['cpu']:>7.2f} "
        f"{trades / result['wall'] / 1e6:>11.2f} {result['rss_mb']:>8.0f}"
    )


HEADER = f"{'':<34} {'wall s':>7} {'run s':>6} {'CPU s':>7} {'M trades/s':>11} {'peak MB':>8}"


def daily(url: str, mirror: Path, workdir: Path, days: int, per_day: int, repeat: int) -> None:
    from binance_assets.markets import MARKETS

    last = FIRST_DAY + dt.timedelta(days=days - 1)
    zips = [
        mirror
        / MARKETS["um"].archive_key("trades", DAILY_TICKER, (FIRST_DAY + dt.timedelta(days=i)).isoformat())
        for i in range(days)
    ]
    ours, pandas = [], []
    for _ in range(repeat):  # back to back, so both see the same machine load
        ours.append(materialize(url, workdir, DAILY_TICKER, FIRST_DAY, last))
        pandas.append(_run(["--pandas", *map(str, zips)], dict(os.environ), workdir))
    best_ours, best_pandas = (min(runs, key=lambda r: r["wall"]) for runs in (ours, pandas))
    trades = days * per_day
    walls = {
        name: ", ".join(f"{r['wall']:.2f}" for r in runs)
        for name, runs in (("ours", ours), ("pandas", pandas))
    }
    print(f"\n{days} UM days x {per_day:,} trades ({trades:,}), best of {repeat} "
          f"(walls: ours {walls['ours']}; pandas {walls['pandas']})")  # fmt: skip
    print(HEADER)
    print(_line("binance-assets materialize", best_ours, trades))
    print(_line("pandas read_csv + resample", best_pandas, trades))
    print(f"pandas work alone (no imports): {best_pandas['work_s']:.2f} s")
    ratio = best_pandas["wall"] / best_ours["wall"]
    cpu_ratio = best_pandas["cpu"] / best_ours["cpu"]
    print(f"ours vs pandas: {ratio:.2f}x faster (target >= 1.5x); CPU {cpu_ratio:.2f}x")
    if best_ours["trades"] != trades:
        print(f"WARNING: materialize counted {best_ours['trades']:,} trades, expected {trades:,}")
    if best_ours["bars"] != best_pandas["bars"]:
        print(f"WARNING: ours made {best_ours['bars']:,} bars, pandas {best_pandas['bars']:,}")


def monthly(url: str, mirror: Path, workdir: Path, trades: int, repeat: int) -> None:
    from binance_assets.markets import MARKETS

    last = MONTH + dt.timedelta(days=30)
    zip_path = mirror / MARKETS["um"].archive_key("trades", MONTHLY_TICKER, MONTH.strftime("%Y-%m"))
    runs, pure = [], []
    for _ in range(repeat):  # back to back, so both see the same machine load
        runs.append(materialize(url, workdir, MONTHLY_TICKER, MONTH, last))
        pure.append(_run(["--pure", str(zip_path)], dict(os.environ), workdir))
    best = min(runs, key=lambda r: r["wall"])
    best_pure = min(pure, key=lambda r: r["work_s"])
    print(f"\nmonthly archive, {trades:,} trades over 31 days, best of {repeat}")
    print(HEADER)
    print(_line("binance-assets materialize", best, trades))
    peak = max(r["rss_mb"] for r in runs)
    print(f"inside the run: {trades / best['run'] / 1e6:.2f} M trades/s; whole process "
          f"{trades / best['wall'] / 1e6:.2f} M trades/s (target >= 3.5); "
          f"highest peak RSS {peak:.0f} MB (target < 700 MB)")  # fmt: skip
    print(
        f"pure path on the same archive (no Dagster, store or download): {best_pure['work_s']:.2f} s, "
        f"process CPU {best_pure['cpu']:.2f} s; the run takes {best['run'] / best_pure['work_s']:.2f}x it "
        "(target <= 1.3)"
    )
    if best["trades"] != trades:
        print(f"WARNING: materialize counted {best['trades']:,} trades, expected {trades:,}")


def overhead(url: str, workdir: Path, repeat: int, instance: str) -> None:
    """Dagster's and the store's cost per ticker-day: `materialize` against `--dry-run` of the same days
    (both download, verify and aggregate; the dry run creates no run and writes nothing), on the laptop
    instance or the production one (a throwaway PostgreSQL server, fsync on, as a server runs)."""
    last = FIRST_DAY + dt.timedelta(days=OVERHEAD_DAYS - 1)
    tickers = ",".join(OVERHEAD_TICKERS)
    runs, dry = [], []
    with contextlib.ExitStack() as stack:
        postgres = None
        if instance == "postgresql":
            from binance_assets_tests.postgres import postgres_server

            postgres = stack.enter_context(postgres_server(fsync=True))
        for _ in range(repeat):
            runs.append(materialize(url, workdir, tickers, FIRST_DAY, last, postgres=postgres))
            dry.append(materialize(url, workdir, tickers, FIRST_DAY, last, "--dry-run", postgres=postgres))
    ticker_days = len(OVERHEAD_TICKERS) * OVERHEAD_DAYS
    best, best_dry = (min(r["wall"] for r in side) for side in (runs, dry))
    walls = "; ".join(", ".join(f"{r['wall']:.2f}" for r in side) for side in (runs, dry))
    size = f"{len(OVERHEAD_TICKERS)} tickers x {OVERHEAD_DAYS} days x {OVERHEAD_TRADES:,} trades"
    print(f"\n{size}, {instance} instance, best of {repeat}")
    print(f"materialize {best:.2f} s, --dry-run {best_dry:.2f} s (walls: {walls})")
    per_day = (best - best_dry) / ticker_days * 1000
    target = 30 if instance == "sqlite" else 15
    print(f"Dagster + store per ticker-day: {per_day:.1f} ms (target <= {target} on {instance})")
    best_runs, best_dry_runs = (min(r["run"] for r in side) for side in (runs, dry))
    print(
        f"of which inside the runs: {(best_runs - best_dry_runs) / ticker_days * 1000:.1f} ms "
        f"({best_runs:.2f} s of runs against {best_dry_runs:.2f} s of dry runs); the rest is the process "
        "start the dry run does not pay (Dagster's imports, the instance)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--days", type=int, default=10)
    parser.add_argument("--trades-per-day", type=int, default=2_000_000)
    parser.add_argument("--monthly-trades", type=int, default=24_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", choices=("daily", "monthly", "overhead"))
    parser.add_argument(
        "--instance", choices=("sqlite", "postgresql"), default="sqlite", help="the overhead case's instance"
    )
    parser.add_argument(
        "--mbps", type=float, default=0.0, help="serve each archive at this many MB/s (0: loopback speed)"
    )
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "binance-assets-bench")
    parser.add_argument("--report", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cli", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parser.add_argument("--pandas", nargs="+", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--pure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cli is not None:
        cli_child(args.report, args.cli)
    if args.pandas:
        pandas_child(args.report, args.pandas)
        return
    if args.pure:
        pure_child(args.report, args.pure)
        return

    from binance_assets_tests.vision_server import VisionServer

    args.workdir.mkdir(parents=True, exist_ok=True)
    monthly_trades = args.monthly_trades if args.only in (None, "monthly") else 0
    mirror = build_mirror(
        args.workdir, args.days if args.only != "overhead" else 0, args.trades_per_day, monthly_trades
    )
    if args.only in (None, "overhead"):
        build_overhead_mirror(mirror)
    with tempfile.TemporaryDirectory(prefix="e2e-bench-") as tmp, VisionServer(mirror) as server:
        server.bytes_per_second = args.mbps * 1e6
        if args.mbps:
            print(f"archives served at {args.mbps:g} MB/s each")
        if args.only in (None, "daily"):
            daily(server.url, mirror, Path(tmp), args.days, args.trades_per_day, args.repeat)
        if args.only in (None, "monthly"):
            monthly(server.url, mirror, Path(tmp), args.monthly_trades, args.repeat)
        if args.only in (None, "overhead"):
            overhead(server.url, Path(tmp), args.repeat, args.instance)


if __name__ == "__main__":
    main()
