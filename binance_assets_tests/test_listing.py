from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import math
from collections.abc import Sequence
from pathlib import Path

import pytest
import requests

from binance_assets.markets import MARKETS
from binance_assets.vision.errors import VisionError, VisionListingError
from binance_assets.vision.listing import ArchiveInfo, ObjectInfo, VisionListing
from binance_assets_tests.helpers import REAL as REAL_FILES
from binance_assets_tests.vision_server import VisionServer, put_archive

SPOT = MARKETS["spot"]
UM = MARKETS["um"]
LISTING = "/?prefix="


def listing(
    server: VisionServer, *, max_keys: int | None = None, retries: int = 4, timeout: float = 30.0
) -> VisionListing:
    return VisionListing(
        server.url, max_keys=max_keys, retries=retries, timeout=timeout, backoff_seconds=0.01
    )


def put_trades(root: Path, market_key: str, ticker: str, *periods: str) -> None:
    for period in periods:
        put_archive(
            root, MARKETS[market_key].archive_key("trades", ticker, period), f"{ticker} {period}".encode()
        )


def test_ticker_listing_pages_past_1000_entries(vision_root: Path, vision_server: VisionServer) -> None:
    tickers = [f"T{i:04d}USDT" for i in range(2500)]
    for ticker in tickers:  # one object per folder is enough to make it a common prefix
        folder = vision_root / SPOT.trades_prefix("daily", ticker)
        folder.mkdir(parents=True)
        (folder / f"{ticker}-trades-2024-01-01.zip").write_bytes(b"")
    put_trades(vision_root, "spot", "ZZZMONTHLYONLY", "2024-01")

    found = listing(vision_server).list_tickers(SPOT)

    assert found == [*tickers, "ZZZMONTHLYONLY"]
    daily_pages = vision_server.hits(f"{LISTING}{SPOT.trades_prefix('daily')}&")
    assert daily_pages == 3  # 1000 + 1000 + 500 common prefixes
    assert vision_server.hits(f"{LISTING}{SPOT.trades_prefix('monthly')}&") == 1
    assert all(request.startswith(LISTING) for request in vision_server.requests)


@pytest.mark.parametrize("omit_next_marker", [False, True], ids=["NextMarker", "last-key-fallback"])
def test_small_pages_list_the_same_entries(
    vision_root: Path, vision_server: VisionServer, omit_next_marker: bool
) -> None:
    days = [f"2024-01-{day:02d}" for day in range(1, 24)]
    put_trades(vision_root, "um", "BTCUSDT", *days)
    (vision_root / UM.trades_prefix("daily", "BTCUSDT") / "sub" / "x").mkdir(parents=True)
    (vision_root / UM.trades_prefix("daily", "BTCUSDT") / "sub" / "x" / "f").write_text("")
    prefix = UM.trades_prefix("daily", "BTCUSDT")
    whole = listing(vision_server).list_prefix(prefix)
    vision_server.omit_next_marker = omit_next_marker
    before = len(vision_server.requests)

    paged = listing(vision_server, max_keys=7).list_prefix(prefix)

    assert paged == whole
    assert [o.key.rsplit("/", 1)[1] for o in whole.objects[:2]] == [
        "BTCUSDT-trades-2024-01-01.zip",
        "BTCUSDT-trades-2024-01-01.zip.CHECKSUM",
    ]
    assert len(whole.objects) == 46 and whole.prefixes == [f"{prefix}sub/"]
    pages = vision_server.requests[before:]
    assert len(pages) == math.ceil(47 / 7)
    assert all("max-keys=7" in page for page in pages)
    # Every page after the first continues from the last entry of the page before.
    assert f"marker={whole.objects[6].key}&" in pages[1]


def test_empty_name_folder_is_skipped(vision_root: Path, vision_server: VisionServer) -> None:
    klines = "data/futures/um/daily/klines/BTCUSDT/"
    put_archive(vision_root, f"{klines}1m/BTCUSDT-1m-2024-01-01.zip", b"k")
    vision_server.add_phantom_key(f"{klines}/BTCUSDT-1m-2024-01-01.zip")
    put_trades(vision_root, "um", "BTCUSDT", "2024-01-01")
    vision_server.add_phantom_key(f"{UM.trades_prefix('daily')}/junk.zip")
    client = listing(vision_server)

    assert client.list_prefix(klines).prefixes == [f"{klines}1m/"]
    assert client.list_tickers(UM) == ["BTCUSDT"]
    # The trap is there on the wire: the raw listing does show the empty-name folder.
    raw = requests.get(f"{vision_server.url}{LISTING}{klines}&delimiter=/", timeout=5).text
    assert f"<CommonPrefixes><Prefix>{klines}/</Prefix></CommonPrefixes>" in raw


def test_root_prefix_is_not_a_child(vision_root: Path, vision_server: VisionServer) -> None:
    put_trades(vision_root, "spot", "BTCUSDT", "2024-01-01")
    result = listing(vision_server).list_prefix(SPOT.trades_prefix("daily"))
    assert result.prefixes == [SPOT.trades_prefix("daily", "BTCUSDT")]
    assert result.objects == []


def test_trades_archives_filter_checksums_and_odd_names(
    vision_root: Path, vision_server: VisionServer
) -> None:
    put_trades(vision_root, "spot", "BTCUSDT", "2024-01-02", "2024-01-01", "2023-12", "2024-02")
    folder = vision_root / SPOT.trades_prefix("daily", "BTCUSDT")
    for odd in (
        "BTCUSDT-trades-2020-8-01.zip",
        "BTCUSDT-aggTrades-2024-01-01.zip",
        "ETHUSDT-trades-2024-01-01.zip",
    ):
        (folder / odd).write_bytes(b"odd")
    (folder / "BTCUSDT-trades-2024-13-01.zip").write_bytes(b"impossible date")
    client = listing(vision_server)

    archives = client.list_trades_archives(SPOT, "BTCUSDT")

    assert [(a.freq, a.period) for a in archives] == [
        ("monthly", "2023-12"),
        ("daily", "2024-01-01"),
        ("daily", "2024-01-02"),
        ("monthly", "2024-02"),
    ]
    assert all(a.ticker == "BTCUSDT" and a.key.endswith(f"BTCUSDT-trades-{a.period}.zip") for a in archives)
    assert len(client.list_prefix(SPOT.trades_prefix("daily", "BTCUSDT")).objects) == 8  # zips + CHECKSUMs
    assert len(client.list_archives(SPOT.trades_prefix("daily", "BTCUSDT"))) == 6


def test_trades_archives_of_one_freq_list_one_folder(vision_root: Path, vision_server: VisionServer) -> None:
    put_trades(vision_root, "um", "ETHUSDT", "2024-01-01", "2024-01")
    archives = listing(vision_server).list_trades_archives(UM, "ETHUSDT", freq="monthly")
    assert [a.period for a in archives] == ["2024-01"]
    assert vision_server.requests == [f"{LISTING}{UM.trades_prefix('monthly', 'ETHUSDT')}&delimiter=/"]
    with pytest.raises(ValueError, match="freq"):
        listing(vision_server).list_trades_archives(UM, "ETHUSDT", freq="weekly")


def test_single_entry(vision_root: Path, vision_server: VisionServer) -> None:
    data = b"only one"
    put_archive(
        vision_root, SPOT.archive_key("trades", "ONEUSDT", "2024-03-04"), data, checksum_style="no-newline"
    )
    client = listing(vision_server)

    assert client.list_tickers(SPOT) == ["ONEUSDT"]
    [archive] = client.list_trades_archives(SPOT, "ONEUSDT")

    assert archive.key == SPOT.archive_key("trades", "ONEUSDT", "2024-03-04")
    assert archive.size == len(data)
    assert archive.etag == hashlib.md5(data).hexdigest()
    assert archive.last_modified.tzinfo is not None and archive.last_modified.utcoffset() == dt.timedelta(0)
    mtime = (vision_root / archive.key).stat().st_mtime
    assert abs(archive.last_modified.timestamp() - mtime) < 0.001


def test_file_mirror_lists_like_http(vision_root: Path, vision_server: VisionServer) -> None:
    put_trades(vision_root, "spot", "BTCUSDT", "2024-01-01", "2024-01-02", "2023-12")
    put_trades(vision_root, "spot", "ETHUSDT", "2024-01-01")
    put_trades(vision_root, "um", "BTCUSDT", "2024-01")
    (vision_root / SPOT.trades_prefix("daily") / "EMPTYDIR").mkdir()  # no object: S3 has no such folder
    http_client = listing(vision_server, max_keys=2)
    file_client = VisionListing(vision_root.as_uri())

    def comparable(objects: Sequence[ObjectInfo]) -> list[tuple[str, int, dt.datetime]]:
        return [(o.key, o.size, o.last_modified.replace(microsecond=0)) for o in objects]

    for market in (SPOT, UM):
        assert file_client.list_tickers(market) == http_client.list_tickers(market)
        for ticker in ("BTCUSDT", "ETHUSDT"):
            for freq in ("daily", "monthly"):
                prefix = market.trades_prefix(freq, ticker)
                from_file, from_http = file_client.list_prefix(prefix), http_client.list_prefix(prefix)
                assert from_file.prefixes == from_http.prefixes
                assert comparable(from_file.objects) == comparable(from_http.objects)
            from_file_archives = file_client.list_trades_archives(market, ticker)
            assert comparable(from_file_archives) == comparable(
                http_client.list_trades_archives(market, ticker)
            )
            assert [(a.freq, a.period) for a in from_file_archives] == [
                (a.freq, a.period) for a in http_client.list_trades_archives(market, ticker)
            ]
    assert file_client.list_tickers(SPOT) == ["BTCUSDT", "ETHUSDT"]
    assert len(file_client.list_trades_archives(SPOT, "BTCUSDT")) == 3
    [archive] = file_client.list_trades_archives(UM, "BTCUSDT")
    stat = (vision_root / archive.key).stat()
    assert archive.etag == f"{stat.st_size:x}-{stat.st_mtime_ns:x}"
    assert file_client.list_prefix("data/nothing/here/") == http_client.list_prefix("data/nothing/here/")


def test_prefix_must_be_a_folder(vision_server: VisionServer) -> None:
    with pytest.raises(ValueError, match="end with '/'"):
        listing(vision_server).list_prefix("data/spot/daily/trades/BTC")
    assert vision_server.requests == []


def test_access_denied_is_retried_then_succeeds(vision_root: Path, vision_server: VisionServer) -> None:
    put_trades(vision_root, "spot", "BTCUSDT", "2024-01-01")
    vision_server.access_denied(LISTING, times=2)
    assert listing(vision_server, retries=2).list_tickers(SPOT) == ["BTCUSDT"]
    assert vision_server.hits(LISTING) == 4  # daily: 2 denied + 1 good; monthly: 1


def test_access_denied_outlasting_retries_is_a_clear_error(vision_server: VisionServer) -> None:
    vision_server.access_denied(LISTING, times=None)
    with pytest.raises(VisionListingError) as caught:
        listing(vision_server, retries=3).list_tickers(SPOT)
    message = str(caught.value)
    assert "AccessDenied" in message and "HTTP 403" in message and "after 4 attempts" in message
    assert f"{vision_server.url}?prefix=data/spot/daily/trades/&delimiter=/" in message
    assert caught.value.retryable and isinstance(caught.value, VisionError)
    assert vision_server.hits(LISTING) == 4


@pytest.mark.parametrize("status", [500, 503])
def test_server_errors_are_retried(vision_root: Path, vision_server: VisionServer, status: int) -> None:
    put_trades(vision_root, "spot", "BTCUSDT", "2024-01-01")
    vision_server.fail("trades/BTCUSDT/", status=status, times=2)
    assert len(listing(vision_server).list_trades_archives(SPOT, "BTCUSDT", "daily")) == 1
    assert vision_server.hits(LISTING) == 3

    vision_server.fail("trades/BTCUSDT/", status=status, times=None)
    with pytest.raises(VisionListingError, match=f"after 2 attempts: GET .* HTTP {status}"):
        listing(vision_server, retries=1).list_trades_archives(SPOT, "BTCUSDT", "daily")


def test_timeouts_are_retried(vision_root: Path, vision_server: VisionServer) -> None:
    put_trades(vision_root, "spot", "BTCUSDT", "2024-01-01")
    vision_server.slow(LISTING, seconds=1.0, times=1)
    assert listing(vision_server, timeout=0.2).list_prefix(SPOT.trades_prefix("daily")).prefixes == [
        SPOT.trades_prefix("daily", "BTCUSDT")
    ]
    assert vision_server.hits(LISTING) == 2


def test_truncated_listing_is_retried(vision_root: Path, vision_server: VisionServer) -> None:
    put_trades(vision_root, "spot", "BTCUSDT", "2024-01-01", "2024-01-02")
    vision_server.truncate(LISTING, times=1)
    assert len(listing(vision_server).list_trades_archives(SPOT, "BTCUSDT")) == 2
    assert vision_server.hits(LISTING) == 3  # daily twice, monthly once


def test_error_document_with_200_names_the_code(vision_server: VisionServer) -> None:
    vision_server.fail(LISTING, status=200, code="NoSuchBucket", times=None)
    with pytest.raises(
        VisionListingError, match=r"GET http://127\.0\.0\.1:\d+\?prefix=.*HTTP 200 NoSuchBucket"
    ):
        listing(vision_server).list_tickers(SPOT)
    assert vision_server.hits(LISTING) == 1  # not a transient code: no retry


def test_not_a_listing_is_an_error(vision_server: VisionServer) -> None:
    client = VisionListing(f"{vision_server.url}/data/spot/daily/trades/X/x.zip", backoff_seconds=0.01)
    with pytest.raises(VisionListingError, match="HTTP 404 NoSuchKey"):
        client.list_prefix("")
    assert len(vision_server.requests) == 1


def test_stuck_marker_is_detected(vision_root: Path, vision_server: VisionServer) -> None:
    put_trades(vision_root, "spot", "BTCUSDT", *[f"2024-01-{day:02d}" for day in range(1, 6)])
    vision_server.ignore_marker = True
    with pytest.raises(VisionListingError, match="marker does not advance"):
        listing(vision_server, max_keys=3).list_prefix(SPOT.trades_prefix("daily", "BTCUSDT"))
    assert vision_server.hits(LISTING) == 2


def test_real_kline_archives_are_listed(vision_root: Path, vision_server: VisionServer) -> None:
    real = REAL_FILES
    folder = "data/spot/daily/klines/BTCUSDT/1m/"
    (vision_root / folder).mkdir(parents=True)
    for source in sorted(real.glob("BTCUSDT-1m-2020-01-0*.zip*")):
        (vision_root / folder / source.name).write_bytes(source.read_bytes())

    archives = listing(vision_server).list_archives(folder)

    assert [a.key for a in archives] == [f"{folder}BTCUSDT-1m-2020-01-0{day}.zip" for day in (1, 2, 3)]
    assert [a.size for a in archives] == [69497, 70593, 72881]
    assert [a.etag for a in archives] == [
        hashlib.md5((real / Path(a.key).name).read_bytes()).hexdigest() for a in archives
    ]


@pytest.mark.parametrize(
    ("freq", "period", "first", "last", "count"),
    [
        ("daily", "2024-02-29", dt.date(2024, 2, 29), dt.date(2024, 2, 29), 1),
        ("monthly", "2024-02", dt.date(2024, 2, 1), dt.date(2024, 2, 29), 29),
        ("monthly", "2023-02", dt.date(2023, 2, 1), dt.date(2023, 2, 28), 28),
        ("monthly", "2023-12", dt.date(2023, 12, 1), dt.date(2023, 12, 31), 31),
    ],
)
def test_archive_days(freq: str, period: str, first: dt.date, last: dt.date, count: int) -> None:
    archive = ArchiveInfo("k", 1, dt.datetime(2024, 1, 1, tzinfo=dt.UTC), "e", "BTCUSDT", freq, period)  # type: ignore[arg-type]
    assert (archive.first_day, archive.last_day) == (first, last)
    days = archive.days()
    assert len(days) == count and days[0] == first and days[-1] == last
    assert all((b - a).days == 1 for a, b in itertools.pairwise(days))
