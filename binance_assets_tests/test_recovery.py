"""Faults from the daemon's side: a `binance-assets backfill` run by the real dagster-daemon, on the laptop
instance (SQLite) and the production one (PostgreSQL), while its run workers are SIGKILLed in the middle
of a write, the daemon is SIGKILLed and restarted, Vision cuts, stalls and refuses downloads, and one
archive is corrupt. The backfill finishes by itself, every ticker-day exact; the corrupt archive's run
fails once, unretried, and a re-run after repair fills its days."""

from __future__ import annotations

import datetime as dt
import os
import signal
import time
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._core.execution.backfill import BulkActionStatus
from dagster._core.storage.tags import PARENT_RUN_ID_TAG

from binance_assets.clickhouse.client import lock_file_for
from binance_assets_tests.archives import publish, write_archive
from binance_assets_tests.helpers import (
    BACKFILL_TAG,
    DAYS,
    RANGE_END,
    RANGE_START,
    Cli,
    assert_bars_match,
    backfills_done,
    query,
    running_daemon,
    wait_for,
)
from binance_assets_tests.vision_server import VisionServer

TICKERS = ("BTCUSDT", "ETHUSDT", "BNBUSDT")
CORRUPT = "XRPUSDT"
POOL = "binance_um"
DEADLINE_SECONDS = 420


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def run_workers(session: int) -> list[int]:
    """The run workers of a daemon's session: the code server spawns each as a multiprocessing child."""
    workers = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and "spawn_main" in _cmdline(int(entry.name)):
            try:
                if os.getsid(int(entry.name)) == session:
                    workers.append(int(entry.name))
            except ProcessLookupError:
                continue
    return workers


def store_lock_holder(lock_file: Path) -> int | None:
    """The pid holding the embedded store's flock (/proc/locks names it by inode), if any."""
    try:
        inode = lock_file.stat().st_ino
    except FileNotFoundError:
        return None
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" in fields or len(fields) < 6 or fields[1] != "FLOCK":
            continue
        if int(fields[5].rsplit(":", 1)[1]) == inode:
            return int(fields[4])
    return None


def kill_workers_mid_write(lock_file: Path, session: int) -> list[int]:
    """Wait until a run worker holds the store lock (it writes only under it), then SIGKILL every run
    worker of the session at once, as an out-of-memory kill of their pods would."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        holder = store_lock_holder(lock_file)
        workers = run_workers(session)
        if holder in workers:
            for pid in workers:
                os.kill(pid, signal.SIGKILL)
            return workers
        time.sleep(0.002)
    raise AssertionError("no run worker ever held the store lock")


def pool_free(instance: DagsterInstance) -> bool:
    """No run holds or waits for a slot of the market's pool: a dead run's steps would keep both."""
    info = instance.event_log_storage.get_concurrency_info(POOL)
    return not info.claimed_slots and not info.pending_steps


@pytest.mark.slow
def test_a_backfill_survives_killed_workers_a_killed_daemon_and_vision_faults(
    instance_cli: Cli, vision_server: VisionServer, vision_root: Path, tmp_path: Path
) -> None:
    cli = instance_cli
    cli.env["BINANCE_MAX_DAYS_PER_RUN"] = "31"  # a run per ticker-month: the corrupt month fails alone
    trades = {
        ticker: publish(
            vision_root, "um", ticker, DAYS, monthly=("2024-01",), trades_per_day=3000, spread=24, seed=seed
        )
        for seed, ticker in enumerate(TICKERS, 1)
    }
    corrupt = publish(vision_root, "um", CORRUPT, DAYS, monthly=("2024-01",), seed=9)
    bad_key = f"data/futures/um/daily/trades/{CORRUPT}/{CORRUPT}-trades-2024-02-02.zip"
    good = (vision_root / bad_key).read_bytes()
    write_archive(vision_root, bad_key, good[: len(good) // 2])  # cut, under a matching CHECKSUM

    # transient Vision faults, each healed by the downloader's own retries
    vision_server.reset("BTCUSDT-trades-2024-01.zip$")
    vision_server.access_denied("ETHUSDT-trades-2024-01.zip$")
    vision_server.fail("BNBUSDT-trades-2024-01.zip$", 200, code="SlowDown")
    vision_server.slow("BTCUSDT-trades-2024-02-02.zip$", 6.0)

    span = ("--start", str(DAYS[0]), "--end", str(DAYS[-1]))
    tickers = [arg for ticker in TICKERS for arg in ("--ticker", ticker)]
    env = {"BINANCE_PUBLISH_GRACE_DAYS": "1", "BINANCE_HTTP_TIMEOUT": "2"}
    lock_file = lock_file_for(Path(cli.store_url.removeprefix("chdb://")))
    with running_daemon(cli, tmp_path / "daemon", **env) as first:
        submitted = [
            cli("backfill", "--market", "um", *tickers, *span),
            cli("backfill", "--market", "um", "--ticker", CORRUPT, *span),
        ]
        assert all(s.returncode == 0 for s in submitted), [s.stderr for s in submitted]
        main_id, corrupt_id = (s.stdout.split()[0] for s in submitted)

        killed = kill_workers_mid_write(lock_file, first.pid)
        with cli.instance() as instance:
            wait_for(
                "the killed runs to be marked failed",
                lambda: instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.FAILURE])),
                120,
            )
        first.send_signal(signal.SIGKILL)  # the daemon alone: its code server and runs live on
        first.wait(timeout=10)
        with running_daemon(cli, tmp_path / "daemon", **env), cli.instance() as instance:
            wait_for(
                "both backfills to end",
                lambda: backfills_done(instance, [main_id, corrupt_id]),
                DEADLINE_SECONDS,
                2,
            )
            assert instance.get_backfill(main_id).status == BulkActionStatus.COMPLETED_SUCCESS
            wait_for("the pool slots of the killed runs to be freed", lambda: pool_free(instance), 150, 2)
            runs = instance.get_runs(RunsFilter(tags={BACKFILL_TAG: main_id}))
            failed = [r for r in runs if r.status == DagsterRunStatus.FAILURE]
            assert killed and failed, "the SIGKILLed workers' runs failed"
            for run in failed:  # each killed run was retried, and its retry succeeded
                (retry,) = [r for r in runs if r.tags.get(PARENT_RUN_ID_TAG) == run.run_id]
                assert retry.status == DagsterRunStatus.SUCCESS
            done = {
                (r.tags[RANGE_START], r.tags[RANGE_END]) for r in runs if r.status == DagsterRunStatus.SUCCESS
            }
            assert len(done) == 2 * len(TICKERS)

            # the corrupt archive's run failed once, not retried; the other month of that ticker loaded
            corrupt_runs = instance.get_runs(RunsFilter(tags={BACKFILL_TAG: corrupt_id}))
            statuses = sorted((r.tags[RANGE_START], r.status.value) for r in corrupt_runs)
            assert statuses == [(f"{DAYS[0]}|{CORRUPT}", "SUCCESS"), (f"2024-02-01|{CORRUPT}", "FAILURE")]

            # the documented re-run of failed partitions, once the archive is repaired
            write_archive(vision_root, bad_key, good)
            rerun = cli(
                "backfill",
                "--market",
                "um",
                "--ticker",
                CORRUPT,
                "--start",
                "2024-02-01",
                "--end",
                str(DAYS[-1]),
                "--wait",
            )
            assert rerun.returncode == 0, rerun.stderr

    assert_bars_match(cli.store_url, {**trades, CORRUPT: corrupt}, DAYS[0], DAYS[-1])
    per_day = query(
        cli.store_url,
        "SELECT ticker, count() AS days, uniqExact(day) AS unique_days FROM binance.daily_liquidity FINAL "
        f"WHERE day <= '{DAYS[-1]}' GROUP BY ticker ORDER BY ticker",
    )
    assert per_day.values.tolist() == [[t, len(DAYS), len(DAYS)] for t in sorted([*TICKERS, CORRUPT])]
    duplicates = query(cli.store_url, "SELECT count() - uniqExact(ticker, ts) AS n FROM binance.hl5s")
    assert duplicates["n"].iloc[0] == 0
    assert vision_server.hits("BTCUSDT-trades-2024-01.zip") >= 2  # the cut transfer was tried again
    assert dt.date(2024, 2, 2) in set(
        query(cli.store_url, f"SELECT day FROM binance.hl5s WHERE ticker = '{CORRUPT}'")["day"]
    )
