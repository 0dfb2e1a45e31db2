"""Failures cost seconds, not minutes: what retries and what fails at once (orchestration/failures.py),
Vision faults in the middle of a run, a full cache disk, first use of a fresh DAGSTER_HOME, names that
are no ticker."""

from __future__ import annotations

import datetime as dt
import errno
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from dagster import (
    DagsterEventType,
    DagsterInstance,
    ExecuteInProcessResult,
    RetryPolicy,
)

from binance_assets.clickhouse.errors import StoreBusyError
from binance_assets.errors import UnfinishedLoad
from binance_assets.markets import MARKETS
from binance_assets.orchestration.failures import permanent_failure
from binance_assets.vision.errors import (
    ArchiveFormatError,
    ArchiveNotFound,
    ChecksumFileError,
    ChecksumMismatch,
    DownloadError,
    VisionHTTPError,
)
from binance_assets.vision.listing import VisionListing
from binance_assets_tests.archives import publish, write_archive, zip_archive
from binance_assets_tests.helpers import (
    REPO,
    Cli,
    assert_bars_match,
    cli_env,
    error_line,
    materialize_range,
    query,
    resources,
)
from binance_assets_tests.vision_server import VisionServer

UM = MARKETS["um"]
DAYS = [dt.date(2024, 1, 30) + dt.timedelta(days=i) for i in range(4)]
FIRST, LAST = str(DAYS[0]), str(DAYS[-1])
SPOILED = UM.archive_key("trades", "ETHUSDT", "2024-02-01")
RETRY_AT_ONCE = RetryPolicy(max_retries=2)
"""The asset's retries without the wait, so a test sees whether a failure is retried, not how long."""
PER_DAY = "SELECT day, count() AS n, sum(volume) AS v FROM binance.hl5s GROUP BY day ORDER BY day"


@pytest.mark.parametrize(
    ("error", "permanent"),
    [
        (ChecksumMismatch("k.zip", "a" * 64, "b" * 64), True),
        (ChecksumFileError("expected 64 hex digits"), True),
        (ArchiveFormatError("k.zip", "corrupt zip: member data ends early"), True),
        (VisionHTTPError("http://x/k", "HTTP 400", status=400, retryable=False), True),
        (OSError(errno.ENOSPC, "No space left on device", "/cache/k.zip"), True),
        (UnfinishedLoad("um: liquidity of the run read before its bars stream was drained"), True),
        (DownloadError("http://x/k", 5, ConnectionError("reset")), False),
        (VisionHTTPError("http://x/k", "HTTP 403 AccessDenied", status=403, retryable=True), False),
        (ArchiveNotFound("k.zip", "http://x/k.zip"), False),
        (StoreBusyError(Path("/store.lock"), 1), False),
        (ConnectionResetError("reset by peer"), False),
        (RuntimeError("anything else"), False),
    ],
)
def test_only_failures_that_waiting_cannot_heal_are_permanent(error: Exception, permanent: bool) -> None:
    reason = permanent_failure(error)
    assert (reason is not None) == permanent
    if reason is not None:
        assert "\n" not in reason and str(error).split(":")[0] in reason


@pytest.fixture
def eth(vision_server: VisionServer) -> pd.DataFrame:
    return publish(vision_server.root, "um", "ETHUSDT", DAYS, seed=2)


def retries(result: ExecuteInProcessResult) -> int:
    return sum(e.event_type == DagsterEventType.STEP_UP_FOR_RETRY for e in result.all_events)


def failure_message(result: ExecuteInProcessResult) -> str:
    """The step failure's message and those of its causes."""
    (event,) = result.get_step_failure_events()
    error, messages = event.step_failure_data.error, []
    while error is not None:
        messages.append(error.message)
        error = error.cause
    return "\n".join(messages)


def spoil(root: Path, how: str) -> None:
    """Republish SPOILED so that it fails the same way however often it is read."""
    archive = root / SPOILED
    good = archive.read_bytes()
    if how == "cut zip, matching checksum":
        write_archive(root, SPOILED, good[: len(good) // 2])
    elif how == "checksum wrong":
        archive.with_name(archive.name + ".CHECKSUM").write_text(f"{'0' * 64}  {archive.name}\n")
    elif how == "unparsable row":
        header = b"id,price,qty,quote_qty,time,is_buyer_maker\n"
        csv = header + b"1,100.5,0.1,10.05,1706745600000,true\n2,abc,1,1,1706745600001,true\n"
        write_archive(root, SPOILED, zip_archive(csv, archive.with_suffix(".csv").name))
    else:
        raise ValueError(how)


@pytest.mark.parametrize("how", ["cut zip, matching checksum", "checksum wrong", "unparsable row"])
def test_a_bad_archive_fails_at_once_naming_it_and_keeps_the_rows(
    vision_server: VisionServer,
    eth: pd.DataFrame,
    instance: DagsterInstance,
    store_url: str,
    tmp_path: Path,
    how: str,
) -> None:
    res = resources(vision_server, store_url, tmp_path)
    assert materialize_range(instance, res, "ETHUSDT", FIRST, LAST, RETRY_AT_ONCE).success
    before = query(store_url, PER_DAY)
    archive, checksum = vision_server.root / SPOILED, vision_server.root / f"{SPOILED}.CHECKSUM"
    good = archive.read_bytes(), checksum.read_text()
    spoil(vision_server.root, how)
    downloads = vision_server.hits(f"{SPOILED}")

    result = materialize_range(instance, res, "ETHUSDT", FIRST, LAST, RETRY_AT_ONCE)

    assert not result.success and retries(result) == 0
    message = failure_message(result)
    assert "ETHUSDT-trades-2024-02-01.zip" in message
    # the downloader's own five attempts, or one download of a verified (but unreadable) archive
    expected = 5 if how == "checksum wrong" else 1
    assert vision_server.hits(f"{SPOILED}") - downloads == 2 * expected  # each: .CHECKSUM, then the zip
    pd.testing.assert_frame_equal(before, query(store_url, PER_DAY))

    archive.write_bytes(good[0])
    checksum.write_text(good[1])
    assert materialize_range(instance, res, "ETHUSDT", FIRST, LAST, RETRY_AT_ONCE).success
    assert_bars_match(store_url, {"ETHUSDT": eth}, DAYS[0], DAYS[-1])


def test_a_transient_fault_outlasting_the_downloads_is_retried_by_the_run(
    vision_server: VisionServer, eth: pd.DataFrame, instance: DagsterInstance, store_url: str, tmp_path: Path
) -> None:
    vision_server.fail(f"{SPOILED}$", 503, times=None)
    res = resources(vision_server, store_url, tmp_path, download_retries=1)
    result = materialize_range(instance, res, "ETHUSDT", FIRST, LAST, RETRY_AT_ONCE)
    assert not result.success and retries(result) == 2
    assert "503 ServiceUnavailable" in failure_message(result)


def part_files(cache: Path) -> list[Path]:
    return list(cache.rglob("*.part")) if cache.exists() else []


FAULTS = {
    "connection reset mid-body": lambda server, times: server.reset(f"{SPOILED}$", times),
    "stalled server": lambda server, times: server.slow(f"{SPOILED}$", 3.0, times),
    "200 carrying an S3 error": lambda server, times: server.fail(f"{SPOILED}$", 200, times, "InternalError"),
    "403 AccessDenied": lambda server, times: server.access_denied(f"{SPOILED}$", times),
}
REASONS = {
    "connection reset mid-body": "Connection",
    "stalled server": "timed out",
    "200 carrying an S3 error": "HTTP 200 InternalError",
    "403 AccessDenied": "HTTP 403 AccessDenied",
}


@pytest.mark.parametrize("fault", FAULTS)
def test_vision_faults_mid_run_heal_by_retrying_or_fail_clearly_losing_nothing(
    vision_server: VisionServer,
    eth: pd.DataFrame,
    instance: DagsterInstance,
    store_url: str,
    tmp_path: Path,
    fault: str,
) -> None:
    res = resources(vision_server, store_url, tmp_path, download_retries=2, timeout_seconds=1.0)
    FAULTS[fault](vision_server, 1)  # once: the downloader's next attempt succeeds
    assert materialize_range(instance, res, "ETHUSDT", FIRST, LAST).success
    assert_bars_match(store_url, {"ETHUSDT": eth}, DAYS[0], DAYS[-1])
    before = query(store_url, PER_DAY)

    shutil.rmtree(tmp_path / "cache")  # so that the archive is downloaded again
    vision_server.clear_faults()
    FAULTS[fault](vision_server, None)  # for good: every attempt fails
    result = materialize_range(instance, res, "ETHUSDT", FIRST, LAST)
    assert not result.success
    message = failure_message(result)
    assert SPOILED in message and REASONS[fault] in message and "after 3 attempts" in message
    pd.testing.assert_frame_equal(before, query(store_url, PER_DAY))
    assert part_files(tmp_path / "cache") == []

    vision_server.clear_faults()
    assert materialize_range(instance, res, "ETHUSDT", FIRST, LAST).success
    assert_bars_match(store_url, {"ETHUSDT": eth}, DAYS[0], DAYS[-1])


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs: a real filesystem that fills up (needs root, as CI and the dev machines are)."""
    mount = tmp_path / "small_disk"
    mount.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_full_cache_disk_fails_at_once_and_a_roomier_cache_succeeds(
    vision_server: VisionServer,
    instance: DagsterInstance,
    store_url: str,
    tmp_path: Path,
    small_disk: Path,
) -> None:
    trades = publish(vision_server.root, "um", "ETHUSDT", DAYS, trades_per_day=8000, seed=3)
    assert (vision_server.root / SPOILED).stat().st_size > 64 * 1024
    roomy = resources(vision_server, store_url, tmp_path)
    assert materialize_range(instance, roomy, "ETHUSDT", FIRST, LAST, RETRY_AT_ONCE).success
    before = query(store_url, PER_DAY)

    cramped = resources(vision_server, store_url, tmp_path, cache_dir=str(small_disk))
    result = materialize_range(instance, cramped, "ETHUSDT", FIRST, LAST, RETRY_AT_ONCE)
    assert not result.success and retries(result) == 0
    message = failure_message(result)
    assert "No space left on device" in message and str(small_disk) in message
    assert part_files(small_disk) == []
    pd.testing.assert_frame_equal(before, query(store_url, PER_DAY))

    assert materialize_range(instance, roomy, "ETHUSDT", FIRST, LAST, RETRY_AT_ONCE).success
    assert_bars_match(store_url, {"ETHUSDT": trades}, DAYS[0], DAYS[-1])


def test_the_cli_fails_in_seconds_on_a_corrupt_archive_naming_it(
    vision_server: VisionServer, eth: pd.DataFrame, tmp_path: Path
) -> None:
    """With the asset's real RetryPolicy (30 s, 60 s, 120 s): the failure is not retried."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home)
    cli = Cli(cli_env(home, vision_server, f"chdb://{tmp_path / 'clickhouse'}"), home, "")
    spoil(vision_server.root, "cut zip, matching checksum")
    result = cli("materialize", "--market", "um", "--ticker", "ETHUSDT", "--start", FIRST, "--end", LAST)
    assert result.returncode == 1
    line = error_line(result)
    assert "ETHUSDT-trades-2024-02-01.zip: not a readable zip archive" in line
    with cli.instance() as instance:
        (run,) = instance.get_runs()
        events = instance.all_logs(run.run_id, of_type=DagsterEventType.STEP_UP_FOR_RETRY)
        assert events == []


def test_three_processes_on_a_fresh_home_all_succeed(vision_server: VisionServer, tmp_path: Path) -> None:
    """Opening a fresh instance races in Dagster's SQLite schema creation; the CLI serialises it."""
    tickers = ("BTCUSDT", "ETHUSDT", "BNBUSDT")
    trades = {t: publish(vision_server.root, "um", t, DAYS[:2], seed=i) for i, t in enumerate(tickers)}
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home)
    store_url = f"chdb://{tmp_path / 'clickhouse'}"
    env = cli_env(home, vision_server, store_url)
    command = [sys.executable, "-m", "binance_assets.cli", "materialize", "--market", "um", "--start", FIRST]
    processes = [
        subprocess.Popen(
            [*command, "--end", str(DAYS[1]), "--ticker", ticker],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for ticker in tickers
    ]
    outcomes = [(p.wait(timeout=180), p.stderr.read() if p.stderr else "") for p in processes]
    assert [code for code, _ in outcomes] == [0, 0, 0], outcomes
    assert_bars_match(store_url, trades, DAYS[0], DAYS[1])
    with DagsterInstance.from_config(str(home)) as instance:
        assert sorted(instance.get_dynamic_partitions("um_tickers")) == sorted(tickers)


def test_listed_folders_that_are_no_ticker_are_skipped_with_one_warning_each(
    vision_server: VisionServer,
) -> None:
    root = vision_server.root
    for name in ("BTCUSDT", "BTCUSD_PERP", "BAD|NAME", "ethusdt", "ETH-USDT"):
        folder = root / UM.trades_prefix("daily", name)
        folder.mkdir(parents=True)
        (folder / f"{name}-trades-2024-01-01.zip").write_bytes(b"")
    warnings: list[str] = []
    listing = VisionListing(vision_server.url)
    assert listing.list_tickers(UM, warnings.append) == ["BTCUSDT", "BTCUSD_PERP"]
    assert len(warnings) == 3
    for name, warning in zip(("BAD|NAME", "ETH-USDT", "ethusdt"), warnings, strict=True):
        assert repr(name) in warning and "not a ticker" in warning
