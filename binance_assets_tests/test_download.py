from __future__ import annotations

import hashlib
import io
import os
import re
import time
from pathlib import Path

import pytest
import requests

from binance_assets.markets import MARKETS
from binance_assets.vision import download, http
from binance_assets.vision.download import VisionDownloader, parse_checksum
from binance_assets.vision.errors import (
    ArchiveNotFound,
    ChecksumFileError,
    ChecksumMismatch,
    DownloadError,
    VisionError,
    VisionHTTPError,
)
from binance_assets_tests.archives import write_archive
from binance_assets_tests.helpers import REAL
from binance_assets_tests.vision_server import ChecksumStyle, VisionServer, put_archive

SPOT = MARKETS["spot"]
KEY = SPOT.archive_key("trades", "BTCUSDT", "2024-01-01")
DATA = b"PK fake zip bytes " * 1000


def downloader(base_url: str, cache: Path, **options: int) -> VisionDownloader:
    return VisionDownloader(base_url, cache, backoff_seconds=0.01, timeout=5, **options)


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def cache_files(cache: Path) -> list[Path]:
    return sorted(path for path in cache.rglob("*") if path.is_file())


def keys(count: int) -> list[str]:
    return [SPOT.archive_key("trades", "BTCUSDT", f"2024-01-{day:02d}") for day in range(1, count + 1)]


@pytest.mark.parametrize("style", ["newline", "no-newline"])
def test_fetch_verifies_both_checksum_styles(
    vision_root: Path, vision_server: VisionServer, cache: Path, style: ChecksumStyle
) -> None:
    put_archive(vision_root, KEY, DATA, checksum_style=style)

    archive = downloader(vision_server.url, cache).fetch(KEY)

    assert archive.key == KEY
    assert archive.sha256 == hashlib.sha256(DATA).hexdigest()
    assert archive.path == cache / KEY.removesuffix(".zip") / f"{archive.sha256}.zip"
    assert archive.path.read_bytes() == DATA
    assert archive.size == archive.downloaded_bytes == len(DATA)
    assert archive.seconds > 0
    assert vision_server.requests == [f"/{KEY}.CHECKSUM", f"/{KEY}"]
    assert cache_files(cache) == [archive.path]


def test_real_kline_archives_verify(vision_root: Path, vision_server: VisionServer, cache: Path) -> None:
    folder = vision_root / "data/spot/daily/klines/BTCUSDT/1m"
    folder.mkdir(parents=True)
    zips = sorted(REAL.glob("BTCUSDT-1m-2020-01-0?.zip"))
    assert len(zips) == 3
    for source in zips:
        for name in (source.name, f"{source.name}.CHECKSUM"):
            (folder / name).write_bytes((REAL / name).read_bytes())
    wanted = [SPOT.klines_key("BTCUSDT", f"2020-01-0{day}") for day in (1, 2, 3)]

    archives = list(downloader(vision_server.url, cache).iter_fetch(wanted))

    assert [a.key for a in archives] == wanted
    for archive, source in zip(archives, zips, strict=True):
        assert not (REAL / f"{source.name}.CHECKSUM").read_bytes().endswith(b"\n")  # the old style
        assert archive.sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
        assert archive.path.read_bytes() == source.read_bytes()
    assert archives[0].sha256 == "dd579c62368ded93d3f01a1904575b932279e32936e181c062763e605793c1c2"


def test_parse_checksum_on_every_real_checksum_file() -> None:
    files = sorted(REAL.glob("*.CHECKSUM"))
    endings = set()
    for path in files:
        text = path.read_text()
        endings.add(text.endswith("\n"))
        # Saved copies carry a source prefix (um_, spot_trades_, um_klines_) before the real zip name.
        zip_name = re.sub(r"^[a-z][a-z_]*_", "", path.name.removesuffix(".CHECKSUM"))
        digest = parse_checksum(text, expected_name=zip_name)
        assert digest == text.split()[0] and re.fullmatch("[0-9a-f]{64}", digest)
    assert len(files) >= 7 and endings == {True, False}  # both styles are among the real files
    assert parse_checksum((REAL / "spot_trades_BTCUSDT-trades-2020-01-01.zip.CHECKSUM").read_text()) == (
        "e710f3819a54c46a78188f67043b4de7d8914cfda8abb5f0075eb4a4d90bd042"
    )


def test_parse_checksum_rules() -> None:
    digest = "ab" * 32
    assert parse_checksum(f"{digest.upper()}  X.zip", "X.zip") == digest
    assert parse_checksum(f"{digest}\n", "X.zip") == digest  # no name: nothing to compare
    assert parse_checksum(f"{digest} *X.zip\n", "X.zip") == digest  # sha256sum binary-mode marker
    assert parse_checksum(f"{digest}  Y.zip", None) == digest
    for bad, expected_message in [
        ("", "one line"),
        (f"{digest}  X.zip\n{digest}  X.zip\n", "one line"),
        (f"{digest[:-1]}  X.zip", "64 hex"),
        (f"{digest[:-1]}g  X.zip", "64 hex"),
        ("<html>Error</html>", "64 hex"),
        (f"{digest}  Y.zip", "names 'Y.zip', expected 'X.zip'"),
    ]:
        with pytest.raises(ChecksumFileError, match=expected_message):
            parse_checksum(bad, "X.zip")


def test_wrong_checksum_is_retried_then_raised_leaving_nothing(
    vision_root: Path, vision_server: VisionServer, cache: Path
) -> None:
    put_archive(vision_root, KEY, DATA, checksum_style="wrong")
    expected = parse_checksum((vision_root / f"{KEY}.CHECKSUM").read_text())

    with pytest.raises(ChecksumMismatch) as caught:
        downloader(vision_server.url, cache, retries=2).fetch(KEY)

    assert caught.value.expected == expected and caught.value.actual == hashlib.sha256(DATA).hexdigest()
    assert (
        KEY in str(caught.value)
        and expected in str(caught.value)
        and caught.value.actual in str(caught.value)
    )
    # Each attempt reads the CHECKSUM again: the archive may have been republished meanwhile.
    assert vision_server.requests == [f"/{KEY}.CHECKSUM", f"/{KEY}"] * 3
    assert cache_files(cache) == []


@pytest.mark.parametrize(("status", "code"), [(503, "ServiceUnavailable"), (502, "NotAnS3Code")])
def test_server_errors_are_retried(
    vision_root: Path, vision_server: VisionServer, cache: Path, status: int, code: str
) -> None:
    put_archive(vision_root, KEY, DATA)
    vision_server.fail(f"/{KEY}", status=status, times=2, code=code)  # matches the zip and its CHECKSUM

    archive = downloader(vision_server.url, cache).fetch(KEY)

    assert archive.path.read_bytes() == DATA
    assert vision_server.requests == [f"/{KEY}.CHECKSUM"] * 3 + [f"/{KEY}"]


def test_zip_errors_are_retried(vision_root: Path, vision_server: VisionServer, cache: Path) -> None:
    put_archive(vision_root, KEY, DATA)
    vision_server.fail(f"{KEY}$", status=500, times=2)
    assert downloader(vision_server.url, cache).fetch(KEY).downloaded_bytes == len(DATA)
    assert vision_server.hits(f"/{KEY}.CHECKSUM") == 3 and vision_server.requests.count(f"/{KEY}") == 3


def test_truncated_body_once_then_success(
    vision_root: Path, vision_server: VisionServer, cache: Path
) -> None:
    put_archive(vision_root, KEY, DATA)
    vision_server.truncate(f"{KEY}$", times=1)

    archive = downloader(vision_server.url, cache).fetch(KEY)

    assert archive.path.read_bytes() == DATA and archive.downloaded_bytes == len(DATA)
    assert vision_server.requests.count(f"/{KEY}") == 2
    assert cache_files(cache) == [archive.path]


def test_truncated_always_is_a_download_error(
    vision_root: Path, vision_server: VisionServer, cache: Path
) -> None:
    put_archive(vision_root, KEY, DATA)
    vision_server.truncate(f"{KEY}$", times=None)

    with pytest.raises(DownloadError) as caught:
        downloader(vision_server.url, cache, retries=2).fetch(KEY)

    assert caught.value.attempts == 3 and caught.value.retryable
    assert f"{vision_server.url}/{KEY}: failed after 3 attempts" in str(caught.value)
    assert vision_server.requests.count(f"/{KEY}") == 3
    assert cache_files(cache) == []


def test_timeouts_are_retried(vision_root: Path, vision_server: VisionServer, cache: Path) -> None:
    put_archive(vision_root, KEY, DATA)
    vision_server.slow(f"{KEY}$", seconds=1.0, times=1)
    client = VisionDownloader(vision_server.url, cache, backoff_seconds=0.01, timeout=0.2)
    assert client.fetch(KEY).path.read_bytes() == DATA
    assert vision_server.requests.count(f"/{KEY}") == 2


def test_missing_checksum_is_not_found_without_retries(
    vision_root: Path, vision_server: VisionServer, cache: Path
) -> None:
    put_archive(vision_root, KEY, DATA)
    (vision_root / f"{KEY}.CHECKSUM").unlink()

    with pytest.raises(ArchiveNotFound) as caught:
        downloader(vision_server.url, cache).fetch(KEY)

    url = f"{vision_server.url}/{KEY}.CHECKSUM"
    assert (caught.value.key, caught.value.url) == (f"{KEY}.CHECKSUM", url)
    assert url in str(caught.value) and not caught.value.retryable
    assert vision_server.requests == [f"/{KEY}.CHECKSUM"]


def test_missing_zip_is_not_found_without_retries(
    vision_root: Path, vision_server: VisionServer, cache: Path
) -> None:
    put_archive(vision_root, KEY, DATA)
    vision_server.not_found(f"{KEY}$")

    with pytest.raises(ArchiveNotFound, match=re.escape(f"{vision_server.url}/{KEY} not found")):
        downloader(vision_server.url, cache).fetch(KEY)

    assert vision_server.requests == [f"/{KEY}.CHECKSUM", f"/{KEY}"]
    assert cache_files(cache) == []


def test_cache_hit_downloads_nothing(vision_root: Path, vision_server: VisionServer, cache: Path) -> None:
    put_archive(vision_root, KEY, DATA)
    client = downloader(vision_server.url, cache)
    first = client.fetch(KEY)

    again = client.fetch(KEY)

    assert again.path == first.path and again.sha256 == first.sha256 and again.size == len(DATA)
    assert again.downloaded_bytes == 0
    assert vision_server.requests == [f"/{KEY}.CHECKSUM", f"/{KEY}", f"/{KEY}.CHECKSUM"]
    # A fresh downloader on the same cache directory hits too.
    assert downloader(vision_server.url, cache).fetch(KEY).downloaded_bytes == 0
    assert vision_server.requests.count(f"/{KEY}") == 1


def test_republished_archive_is_fetched_again_and_kept_apart(
    vision_root: Path, vision_server: VisionServer, cache: Path
) -> None:
    put_archive(vision_root, KEY, DATA)
    client = downloader(vision_server.url, cache)
    old = client.fetch(KEY)
    new_data = DATA + b"republished"
    put_archive(vision_root, KEY, new_data, checksum_style="no-newline")

    new = client.fetch(KEY)

    assert new.sha256 == hashlib.sha256(new_data).hexdigest() != old.sha256
    assert new.downloaded_bytes == len(new_data)
    assert new.path != old.path and new.path.parent == old.path.parent
    assert old.path.read_bytes() == DATA and new.path.read_bytes() == new_data
    assert vision_server.requests.count(f"/{KEY}") == 2
    assert client.fetch(KEY).downloaded_bytes == 0


def test_iter_fetch_keeps_order_and_bounds_concurrency(
    vision_root: Path, vision_server: VisionServer, cache: Path
) -> None:
    wanted = keys(9)
    for key in wanted:
        put_archive(vision_root, key, key.encode() * 100)
    vision_server.slow(".zip", seconds=0.1, times=None)

    archives = list(downloader(vision_server.url, cache, concurrency=3).iter_fetch(reversed(wanted)))

    assert [a.key for a in archives] == list(reversed(wanted))
    assert all(a.path.read_bytes() == a.key.encode() * 100 for a in archives)
    assert vision_server.max_concurrent == 3


def test_iter_fetch_yields_the_first_archive_while_later_ones_download(
    vision_root: Path, vision_server: VisionServer, cache: Path
) -> None:
    wanted = keys(4)
    for key in wanted:
        put_archive(vision_root, key, key.encode())
    vision_server.slow(f"{wanted[-1]}$", seconds=0.8, times=1)
    started = time.monotonic()

    fetched = downloader(vision_server.url, cache, concurrency=2).iter_fetch(wanted)
    first = next(fetched)

    assert first.key == wanted[0] and time.monotonic() - started < 0.5
    assert [a.key for a in fetched] == wanted[1:]


def test_first_error_stops_the_rest(vision_root: Path, vision_server: VisionServer, cache: Path) -> None:
    wanted = keys(6)
    for key in wanted[1:]:
        put_archive(vision_root, key, key.encode())

    with pytest.raises(ArchiveNotFound, match=re.escape(wanted[0])):
        list(downloader(vision_server.url, cache, concurrency=1).iter_fetch(wanted))

    # One worker, two keys in flight at most: the keys after the second were never requested.
    assert not any(key in request for key in wanted[2:] for request in vision_server.requests)


def test_downloads_run_a_bounded_distance_ahead_of_the_consumer(
    vision_root: Path, vision_server: VisionServer, cache: Path
) -> None:
    wanted = keys(8)
    for key in wanted:
        put_archive(vision_root, key, key.encode())

    fetched = downloader(vision_server.url, cache, concurrency=1).iter_fetch(wanted)
    assert next(fetched).key == wanted[0]
    time.sleep(0.3)  # a slow consumer: downloads must not run through the whole list meanwhile
    fetched.close()

    requested = {
        key for key in wanted if any(request.startswith(f"/{key}") for request in vision_server.requests)
    }
    assert wanted[0] in requested and requested <= set(wanted[:3])


def test_body_shorter_than_content_length_is_retryable() -> None:
    """The explicit length check, for urllib3 versions that do not enforce Content-Length themselves."""
    response = requests.Response()
    response.status_code = 200
    response.headers["Content-Length"] = "10"
    response.raw = io.BytesIO(b"12345")
    received = []
    with pytest.raises(VisionHTTPError, match="body cut short: 5 of 10 bytes") as caught:
        received.extend(http.iter_body(response, "http://x/k.zip", chunk_bytes=2))
    assert caught.value.retryable and received == [b"12", b"34", b"5"]


def test_file_mirror_fetches_with_the_same_checks(vision_root: Path, cache: Path) -> None:
    put_archive(vision_root, KEY, DATA, checksum_style="no-newline")
    wrong = SPOT.archive_key("trades", "BTCUSDT", "2024-01-02")
    put_archive(vision_root, wrong, DATA, checksum_style="wrong")
    client = downloader(vision_root.as_uri(), cache, retries=1)

    archive = client.fetch(KEY)
    assert archive.path.read_bytes() == DATA and archive.downloaded_bytes == len(DATA)
    assert client.fetch(KEY).downloaded_bytes == 0
    with pytest.raises(ChecksumMismatch):
        client.fetch(wrong)
    missing = SPOT.archive_key("trades", "BTCUSDT", "2024-01-03")
    with pytest.raises(ArchiveNotFound, match=re.escape(f"{vision_root.as_uri()}/{missing}.CHECKSUM")):
        client.fetch(missing)
    assert cache_files(cache) == [archive.path]


def test_eviction_removes_least_recently_used_first(
    vision_root: Path, vision_server: VisionServer, cache: Path
) -> None:
    a, b, c, d = keys(4)
    for key in (a, b, c, d):
        put_archive(vision_root, key, key.encode().ljust(1000, b"."))
    client = downloader(vision_server.url, cache, cache_max_bytes=2500)
    archives = {key: client.fetch(key) for key in (a, b, c, d)}
    for seconds, key in enumerate((a, b, c, d), start=1):
        os.utime(archives[key].path, (seconds, seconds))
    client.fetch(a)  # a cache hit makes a the most recently used

    deleted = client.evict(keep={archives[b].path})

    # 4000 bytes, limit 2500: b is oldest but kept, so c then d go (a was just used).
    assert deleted == [archives[c].path, archives[d].path]
    assert cache_files(cache) == sorted([archives[a].path, archives[b].path])
    assert client.evict() == []  # 2000 bytes: under the limit


def test_eviction_lists_the_cache_only_when_its_count_says_it_is_over_the_limit(
    vision_root: Path, vision_server: VisionServer, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Listing the cache for every archive read was quadratic in the files cached: `evict` trusts its own
    count (its last listing plus its writes) for RESCAN_SECONDS, then sees other processes' files too."""
    a, b, c = keys(3)
    for key in (a, b, c):
        put_archive(vision_root, key, key.encode().ljust(1000, b"."))
    client = downloader(vision_server.url, cache, cache_max_bytes=2500)
    client.fetch(a)
    assert client.evict() == []  # the first call lists the cache: 1000 bytes
    listings: list[str] = []
    rglob = Path.rglob
    monkeypatch.setattr(Path, "rglob", lambda path, pattern: listings.append(pattern) or rglob(path, pattern))
    client.fetch(b)
    assert client.evict() == [] and listings == []  # 2000 bytes by its count: not listed
    client.fetch(c)
    assert len(client.evict()) == 1 and listings == ["*.zip"]  # 3000 bytes by its count: listed, one goes
    other = cache / "from-another-process" / f"{'0' * 64}.zip"
    other.parent.mkdir()
    other.write_bytes(b"." * 1000)
    assert client.evict() == [] and len(listings) == 1  # its own count says 2000 bytes
    monkeypatch.setattr(download, "RESCAN_SECONDS", 0.0)
    assert len(client.evict()) == 1 and len(listings) == 2  # listed again: 3000 bytes, one goes


def test_a_long_fetch_keeps_the_cache_within_its_limit_and_spares_archives_ahead(
    vision_root: Path, vision_server: VisionServer, cache: Path
) -> None:
    """A run of many archives: each is evicted once read, so the cache never holds more than the limit plus
    the archives downloading ahead (2 x concurrency), and no archive is deleted before it is read."""
    names = keys(12)
    for key in names:
        put_archive(vision_root, key, key.encode().ljust(1000, b"."))
    client = downloader(vision_server.url, cache, cache_max_bytes=1500, concurrency=1)
    sizes = []
    for key, archive in zip(names, client.iter_fetch(names), strict=True):
        assert archive.path.read_bytes().startswith(key.encode())  # still there when its turn comes
        sizes.append(sum(path.stat().st_size for path in cache.rglob("*.zip")))
    assert max(sizes) <= 1500 + 2 * 1000
    assert sum(path.stat().st_size for path in cache.rglob("*.zip")) <= 1500


def test_archives_ahead_hold_at_most_half_the_cache_limit(
    vision_root: Path, vision_server: VisionServer, cache: Path
) -> None:
    """With their listed sizes, big archives (a top ticker's monthly ones) are not downloaded 2 x
    concurrency ahead: the window shrinks to half the cache limit, at least one archive."""
    names = keys(12)
    for key in names:
        put_archive(vision_root, key, key.encode().ljust(1000, b"."))
    client = downloader(vision_server.url, cache, cache_max_bytes=2000, concurrency=4)
    peak = 0
    for key, archive in zip(names, client.iter_fetch(names, dict.fromkeys(names, 1000)), strict=True):
        assert archive.path.read_bytes().startswith(key.encode())
        peak = max(peak, sum(path.stat().st_size for path in cache.rglob("*.zip")))
    assert peak <= 2000 + 1000 + 1000  # the limit, the archive being read, one ahead (not 8)


def test_no_eviction_without_a_limit(vision_root: Path, vision_server: VisionServer, cache: Path) -> None:
    put_archive(vision_root, KEY, DATA)
    client = downloader(vision_server.url, cache)
    archive = client.fetch(KEY)
    assert client.evict() == [] and archive.path.exists()


def test_keys_outside_the_cache_are_refused(vision_server: VisionServer, cache: Path) -> None:
    client = downloader(vision_server.url, cache)
    for key in ("../escape.zip", "/abs/x.zip", "data/spot/x.csv"):
        with pytest.raises(ValueError, match="not an archive key"):
            client.fetch(key)
    assert vision_server.requests == []


def test_errors_share_one_base() -> None:
    assert all(issubclass(error, VisionError) for error in (ArchiveNotFound, ChecksumMismatch, DownloadError))
    assert ChecksumMismatch.retryable and DownloadError.retryable and not ArchiveNotFound.retryable
    assert not ChecksumFileError.retryable and issubclass(ChecksumFileError, ValueError)


def test_the_fake_vision_paces_objects_at_its_rate(vision_root: Path, vision_server: VisionServer) -> None:
    """Benchmarks emulate a real link with `bytes_per_second`; the bytes arrive whole, no sooner."""
    data = bytes(range(256)) * 8192  # 2 MB
    write_archive(vision_root, "data/x.zip", data)
    vision_server.bytes_per_second = 10e6
    started = time.monotonic()
    got = VisionDownloader(vision_server.url, vision_root.parent / "cache").fetch("data/x.zip")
    assert time.monotonic() - started >= 0.19
    assert got.path.read_bytes() == data
