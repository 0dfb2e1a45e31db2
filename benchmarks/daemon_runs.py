"""What the benchmarks that drive the real daemon share: the environment, the CLI backfill, waiting for
it, its runs, the peak RSS of the daemon's processes, and the pure path (no Dagster, no store) that
their Dagster overhead is measured against. Imported by `instance_bench.py` and `market_bench.py`
(run as scripts, so this directory is on sys.path)."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dagster import AssetKey, DagsterInstance
    from dagster._core.storage.dagster_run import RunRecord

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing the package

DAGSTER = Path(sys.executable).with_name("dagster")
_DROPPED_PREFIXES = ("BINANCE_", "CLICKHOUSE_", "TICKER", "DOWNLOAD_", "LOG_LEVEL", "DAGSTER_")
ROLES = {b"spawn_main": "run worker", b"dagster-daemon": "daemon", b"api grpc": "code server"}
"""A daemon-session process's role, by a piece of its command line (run workers are the code server's
multiprocessing children)."""


def mirror_env(mirror: Path, **settings: str) -> dict[str, str]:
    """This process's environment without any setting of ours, reading Vision from a local mirror."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_DROPPED_PREFIXES)}
    env.update(
        BINANCE_VISION_URL=f"file://{mirror}", BINANCE_VISION_LISTING_URL=f"file://{mirror}", **settings
    )
    return env


def dagster_home(workdir: Path, instance_yaml: Path, env: dict[str, str]) -> dict[str, str]:
    """A fresh DAGSTER_HOME (with ``instance_yaml``) and embedded store under workdir; the env using them.

    The instance's DAGSTER_PG_* variables are also set in this process, which opens the same instance.
    """
    home = workdir / "dagster_home"
    home.mkdir(parents=True)
    shutil.copy(instance_yaml, home / "dagster.yaml")
    os.environ.update({k: v for k, v in env.items() if k.startswith("DAGSTER_PG_")})
    return {**env, "DAGSTER_HOME": str(home), "CLICKHOUSE_URL": f"chdb://{workdir / 'clickhouse'}"}


def run(command: list[str], env: dict[str, str], cwd: Path) -> str:
    result = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command[:4])} ... exited {result.returncode}:\n{result.stderr}")
    return result.stdout


def submit_backfill(
    env: dict[str, str], workdir: Path, market: str, tickers: Sequence[str], days: Sequence[dt.date]
) -> list[str]:
    """`binance-assets backfill` of every ticker-day; the backfill ids."""
    ticker_args = [arg for ticker in tickers for arg in ("--ticker", ticker)]
    submitted = run(
        [sys.executable, "-m", "binance_assets.cli", "backfill", "--market", market, *ticker_args,
         "--start", str(days[0]), "--end", str(days[-1])], env, workdir,
    )  # fmt: skip
    return submitted.split()


def stop_sensors(env: dict[str, str], workdir: Path) -> None:
    """Stop every sensor (the daily sensor would add runs of its own to the measured ones)."""
    from binance_assets.orchestration.definitions import build_definitions
    from binance_assets.settings import Settings

    for sensor in build_definitions(Settings.from_env(env)).sensors:
        run([str(DAGSTER), "sensor", "stop", sensor.name, "-w", str(ROOT / "workspace.yaml")], env, workdir)


def wait_for_backfills(
    instance: DagsterInstance, backfill_ids: Sequence[str], daemon: subprocess.Popen[bytes], workdir: Path
) -> None:
    """Poll until every backfill is done; raise unless all succeeded."""
    from dagster._core.execution.backfill import BULK_ACTION_TERMINAL_STATUSES, BulkActionStatus

    while True:
        statuses = [_backfill_status(instance, b) for b in backfill_ids]
        if all(s in BULK_ACTION_TERMINAL_STATUSES for s in statuses):
            break
        if daemon.poll() is not None:
            raise RuntimeError(f"dagster-daemon exited; see {workdir / 'daemon.log'}")
        time.sleep(0.5)
    if any(s != BulkActionStatus.COMPLETED_SUCCESS for s in statuses):
        raise RuntimeError(f"backfill ended {statuses}; see {workdir / 'daemon.log'}")


def _backfill_status(instance: DagsterInstance, backfill_id: str) -> object:
    backfill = instance.get_backfill(backfill_id)
    if backfill is None:
        raise RuntimeError(f"backfill {backfill_id} is not in the instance")
    return backfill.status


def backfill_runs(instance: DagsterInstance, backfill_ids: Sequence[str]) -> list[RunRecord]:
    from dagster import RunsFilter

    return [
        r for b in backfill_ids for r in instance.get_run_records(RunsFilter(tags={"dagster/backfill": b}))
    ]


def count_materialisations(instance: DagsterInstance, key: AssetKey) -> int:
    count, cursor = 0, None
    while True:
        page = instance.fetch_materializations(key, limit=1_000, cursor=cursor)
        count += len(page.records)
        if not page.has_more:
            return count
        cursor = page.cursor


@contextmanager
def peak_rss(session: int, roles: Mapping[bytes, str] = ROLES) -> Iterator[Callable[[], dict[str, float]]]:
    """Sample (every 0.1 s) the RSS of each process in a process session; yield the peak (MB) of one
    process per role (``roles``: a piece of its command line -> its role)."""
    peak: dict[str, int] = {}
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.1):
            for proc in Path("/proc").glob("[0-9]*"):
                with suppress(OSError, ValueError):
                    stat = (proc / "stat").read_text()
                    if int(stat.rsplit(")", 1)[1].split()[3]) != session:
                        continue
                    command = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
                    role = next((r for part, r in roles.items() if part in command), "other")
                    for line in (proc / "status").read_text().splitlines():
                        if line.startswith("VmRSS:"):  # absent once the process is a zombie
                            peak[role] = max(peak.get(role, 0), int(line.split()[1]))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield lambda: {role: kb / 1024 for role, kb in peak.items()}
    finally:
        stop.set()
        thread.join()


def pure_path(
    mirror: Path, cache: Path, market_key: str, tickers: Sequence[str], days: Sequence[dt.date]
) -> float:
    """Seconds to list, download (from the mirror) and aggregate every ticker-day with no Dagster and no
    store, in this process: the floor the Dagster paths are compared with."""
    from binance_assets.markets import MARKETS
    from binance_assets.pipeline import RunLoad
    from binance_assets.plan import plan_ticker
    from binance_assets.vision.download import VisionDownloader
    from binance_assets.vision.listing import VisionListing

    market = MARKETS[market_key]
    started = time.perf_counter()
    listing = VisionListing(f"file://{mirror}")
    today = dt.datetime.now(dt.UTC).date()
    plans = [plan_ticker(t, list(days), listing.list_trades_archives(market, t), today) for t in tickers]
    for _ in RunLoad(market, plans, VisionDownloader(f"file://{mirror}", cache)):
        pass
    return time.perf_counter() - started
