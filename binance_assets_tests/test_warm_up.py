"""`materialize` downloads its first archives while it imports Dagster (cli/warm_up.py), and an archive two
fetches want at once is downloaded once (vision/download.py)."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from binance_assets import aggregate
from binance_assets.aggregate import AheadKey, taken_ahead
from binance_assets.cli import warm_up as warm_up_module
from binance_assets.cli.common import list_archives
from binance_assets.cli.warm_up import warm_up
from binance_assets.markets import MARKETS
from binance_assets.orchestration.backfills import Request
from binance_assets.settings import Settings
from binance_assets.vision.download import VisionDownloader
from binance_assets_tests.archives import publish, write_archive
from binance_assets_tests.helpers import DAYS, Cli
from binance_assets_tests.vision_server import VisionServer

UM = MARKETS["um"]

_FIRST_IMPORT_OF_DAGSTER = """
import sys, time
from pathlib import Path
from binance_assets.cli.main import main

folder, seen = Path(sys.argv[1]), []

class Watch:
    def find_spec(self, name, path=None, target=None):
        if name == "dagster" and not seen:  # wait (a while) for the first archive's download to begin
            seen.append(True)
            deadline = time.monotonic() + 20
            while not (folder.is_dir() and any(folder.iterdir())) and time.monotonic() < deadline:
                time.sleep(0.01)
            print("DOWNLOADING" if folder.is_dir() and any(folder.iterdir()) else "NOT YET", file=sys.stderr)
        return None

sys.meta_path.insert(0, Watch())
main(sys.argv[2:])
"""


def test_materialize_starts_its_first_download_before_it_imports_dagster(
    cli: Cli, vision_root: Path, vision_server: VisionServer
) -> None:
    days = DAYS[:4]
    publish(vision_root, "um", "BTCUSDT", days)
    first = UM.archive_key("trades", "BTCUSDT", str(days[0]))
    folder = cli.home / "vision-cache" / first.removesuffix(".zip")  # where its .part, then its zip, land
    vision_server.bytes_per_second = 200_000  # a download that lasts: the run must wait for the warm-up's

    result = subprocess.run(
        [sys.executable, "-c", _FIRST_IMPORT_OF_DAGSTER, str(folder), "materialize", "--market", "um",
         "--ticker", "BTCUSDT", "--start", str(days[0]), "--end", str(days[-1]), "--no-retries"],
        env=cli.env, cwd=cli.home.parent, capture_output=True, text=True, timeout=180,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert "DOWNLOADING" in result.stderr
    zips = [UM.archive_key("trades", "BTCUSDT", str(day)) for day in days]
    gets = [request for request in vision_server.requests if request.endswith(".zip")]
    assert sorted(gets) == sorted(f"/{key}" for key in zips)  # each downloaded once, by one of the two
    size = sum((vision_root / key).stat().st_size for key in zips)
    assert re.search(rf"ticker-days: 4 done .* {size:,} bytes downloaded", result.stdout), result.stdout


def test_the_warm_up_fetches_the_first_run_s_first_archives_within_half_the_cache(
    tmp_path: Path, vision_root: Path, vision_server: VisionServer
) -> None:
    (tmp_path / "home").mkdir()
    days = DAYS[:6]
    for ticker in ("BTCUSDT", "ETHUSDT"):
        publish(vision_root, "um", ticker, days)
    keys = [UM.archive_key("trades", "BTCUSDT", str(day)) for day in days]
    sizes = [(vision_root / key).stat().st_size for key in keys]
    request = Request(UM, ("BTCUSDT", "ETHUSDT"), tuple(days))

    def warmed(**fields: object) -> tuple[list[str], int]:
        url = vision_server.url
        settings = Settings(vision_url=url, listing_url=url, dagster_home=tmp_path / "home", **fields)
        listed = list_archives(request, settings)
        start = len(vision_server.requests)
        with warm_up(request, listed, settings) as warm:
            time.sleep(0.5)  # its downloads start (those not started when the block ends are dropped)
        gets = [r for r in vision_server.requests[start:] if r.endswith(".zip")]
        return gets, warm.totals().downloaded_bytes

    # one ticker-day per run, two archives ahead per download: the first run's one archive
    gets, downloaded = warmed(max_days_per_run=1, download_concurrency=1, cache_dir=tmp_path / "a")
    assert gets == [f"/{keys[0]}"] and downloaded == sizes[0]
    # a cache whose half holds two archives: the first two of the first ticker's run, never ETHUSDT's
    cache_gb = (sizes[0] + sizes[1]) * 2 / 1024**3
    gets, downloaded = warmed(cache_max_gb=cache_gb, download_concurrency=2, cache_dir=tmp_path / "b")
    assert sorted(gets) == [f"/{keys[0]}", f"/{keys[1]}"] and downloaded == sizes[0] + sizes[1]


def test_two_fetches_of_one_archive_download_it_once(
    tmp_path: Path, vision_root: Path, vision_server: VisionServer
) -> None:
    data = bytes(range(256)) * 4096  # 1 MB
    write_archive(vision_root, "data/x.zip", data)
    vision_server.bytes_per_second = 5e6  # 0.2 s: the second fetch starts while the first downloads
    results = []

    def fetch() -> None:
        results.append(VisionDownloader(vision_server.url, tmp_path / "cache").fetch("data/x.zip"))

    threads = [threading.Thread(target=fetch) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert vision_server.requests.count("/data/x.zip") == 1
    assert sorted(archive.downloaded_bytes for archive in results) == [0, len(data)]
    assert results[0].path == results[1].path and results[0].path.read_bytes() == data


def test_materialize_plan_and_dry_run_import_no_dagster(cli: Cli, vision_root: Path) -> None:
    """A preview lists, plans (and, dry, downloads and aggregates) without Dagster's 1-2 s of imports."""
    publish(vision_root, "um", "BTCUSDT", DAYS[:2])
    script = (
        "import sys\nfrom binance_assets.cli.main import main\ntry:\n    main(sys.argv[1:])\n"
        "except SystemExit as done:\n    print('EXIT', done.code)\nprint('IMPORTED', *sorted(sys.modules))"
    )
    request = ["--market", "um", "--ticker", "BTCUSDT", "--start", str(DAYS[0]), "--end", str(DAYS[1])]
    for preview in ("--plan", "--dry-run"):
        result = subprocess.run(
            [sys.executable, "-c", script, "materialize", *request, preview],
            env=cli.env, cwd=cli.home.parent, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert "EXIT" not in result.stdout and "BTCUSDT" in result.stdout + result.stderr, result.stderr
        imported = set(result.stdout.rsplit("IMPORTED", 1)[-1].split())
        assert "binance_assets.cli.preview" in imported
        assert not {name for name in imported if name.split(".")[0] == "dagster"}, preview


@pytest.mark.parametrize("why", ["no process starts", "too little to aggregate"])
def test_the_warm_up_goes_on_without_a_worker(
    tmp_path: Path, vision_root: Path, vision_server: VisionServer, monkeypatch: pytest.MonkeyPatch, why: str
) -> None:
    """No aggregation ahead (aggregate.py) where no process starts, or where the archives would not repay
    its start: the downloads go on all the same."""
    days = DAYS[:2]
    publish(vision_root, "um", "BTCUSDT", days)
    url = vision_server.url
    settings = Settings(vision_url=url, listing_url=url, dagster_home=tmp_path, cache_dir=tmp_path / "cache")
    request = Request(UM, ("BTCUSDT",), tuple(days))
    listed = list_archives(request, settings)
    if why == "no process starts":
        monkeypatch.setattr(warm_up_module, "AHEAD_MIN_BYTES", 0)
        monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python"))

    keys = [UM.archive_key("trades", "BTCUSDT", str(day)) for day in days]
    sha256 = hashlib.sha256((vision_root / keys[0]).read_bytes()).hexdigest()

    with warm_up(request, listed, settings) as warm:
        time.sleep(0.5)  # with a worker, the first archive would be downloaded and on its way
        assert taken_ahead(AheadKey("um", "BTCUSDT", keys[0], sha256)) is None

    assert warm.totals().downloaded_bytes == sum((vision_root / key).stat().st_size for key in keys)


def test_the_worker_aggregates_until_the_run_begins(
    tmp_path: Path, vision_root: Path, vision_server: VisionServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beside the start-up, not beside the run's writes: once the run has asked for an archive, the worker
    takes no archive it has not begun."""
    days = DAYS[:4]
    publish(vision_root, "um", "BTCUSDT", days, trades_per_day=20_000)
    monkeypatch.setattr(warm_up_module, "AHEAD_MIN_BYTES", 0)  # small archives: a worker all the same
    url = vision_server.url
    settings = Settings(vision_url=url, listing_url=url, dagster_home=tmp_path, cache_dir=tmp_path / "cache")
    request = Request(UM, ("BTCUSDT",), tuple(days))
    keys = [UM.archive_key("trades", "BTCUSDT", str(day)) for day in days]
    ahead = [
        AheadKey("um", "BTCUSDT", k, hashlib.sha256((vision_root / k).read_bytes()).hexdigest()) for k in keys
    ]

    with warm_up(request, list_archives(request, settings), settings):
        deadline = time.monotonic() + 60
        while ahead[0] not in aggregate._current._jobs and time.monotonic() < deadline:  # type: ignore[union-attr]
            time.sleep(0.01)  # its download done, the first archive goes to the worker
        first = taken_ahead(ahead[0])  # the run begins: it waits for the worker's first archive
        time.sleep(1)  # every download done; the worker ends the archive it was on, if any
        last = taken_ahead(ahead[-1])

    assert first is not None and first.days.num_rows == 1
    assert last is None
