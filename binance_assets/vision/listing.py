"""Listing Binance Vision: S3 ListObjects v1 over http(s), or a ``file://`` mirror laid out like the bucket.

The protocol and its traps are in ``docs/vision-format.md`` section 2: pages of at most 1000 entries counting
keys and common prefixes together, ``NextMarker`` only when a delimiter was sent, the root ``<Prefix>``
echoing the request, an empty-name folder (``.../BTCUSDT//``), ``.CHECKSUM`` files beside the zips.
"""

from __future__ import annotations

import calendar
import datetime as dt
import logging
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import Literal, cast
from urllib.parse import urlencode

import requests

from binance_assets.markets import TICKER_PATTERN, DatasetName, Market
from binance_assets.vision import http
from binance_assets.vision.errors import VisionHTTPError, VisionListingError

Freq = Literal["daily", "monthly"]
FREQS: tuple[Freq, ...] = ("daily", "monthly")
log = logging.getLogger(__name__)
_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
_PERIOD = {"daily": re.compile(r"\d{4}-\d{2}-\d{2}"), "monthly": re.compile(r"\d{4}-\d{2}")}


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    last_modified: dt.datetime
    """UTC-aware."""
    etag: str
    """Without quotes: the S3 ETag (MD5 of a single-part upload), or ``<size hex>-<mtime_ns hex>`` on a
    file mirror, where hashing every archive to list a folder would cost far more than the listing."""


@dataclass(frozen=True)
class ArchiveInfo(ObjectInfo):
    """A trades or aggTrades archive: one day (daily) or one calendar month (monthly) of one ticker."""

    ticker: str
    freq: Freq
    period: str
    """``YYYY-MM-DD`` for daily archives, ``YYYY-MM`` for monthly ones."""
    dataset: DatasetName = "trades"

    @property
    def first_day(self) -> dt.date:
        return dt.date.fromisoformat(self.period if self.freq == "daily" else f"{self.period}-01")

    @property
    def last_day(self) -> dt.date:
        """Inclusive: the day itself, or the last day of the month."""
        first = self.first_day
        if self.freq == "daily":
            return first
        return first.replace(day=calendar.monthrange(first.year, first.month)[1])

    def days(self) -> list[dt.date]:
        first = self.first_day
        return [first + dt.timedelta(days=i) for i in range((self.last_day - first).days + 1)]


@dataclass(frozen=True)
class Listing:
    """One folder: its child folders (each ending in ``/``) and its objects, both sorted by key."""

    prefixes: list[str]
    objects: list[ObjectInfo]


@dataclass(frozen=True)
class _Page:
    prefixes: list[str]
    objects: list[ObjectInfo]
    truncated: bool
    next_marker: str | None


class VisionListing:
    """Lists folders of the Vision bucket through ``listing_url``.

    ``listing_url`` is the S3 endpoint (``https://s3-ap-northeast-1.amazonaws.com/data.binance.vision``)
    or ``file:///abs/mirror``. ``max_keys`` is sent as ``max-keys`` when set (S3 caps pages at 1000).
    Each page request is retried on transient failures (5xx, timeouts, AccessDenied outages).
    """

    def __init__(
        self,
        listing_url: str,
        *,
        session: requests.Session | None = None,
        timeout: float = 30.0,
        max_keys: int | None = None,
        retries: int = 4,
        backoff_seconds: float = 0.5,
    ) -> None:
        if max_keys is not None and max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, got {max_keys}")
        self.listing_url = listing_url.rstrip("/")
        self._root = http.local_root(self.listing_url)
        self._session = session if session is not None else http.make_session(pool_size=1)
        self._timeout = timeout
        self._max_keys = max_keys
        self._retry = http.HttpRetry(retries=retries, backoff_seconds=backoff_seconds)

    def list_prefix(self, prefix: str) -> Listing:
        """The direct children of folder ``prefix`` ("" or ending in "/"), all pages concatenated."""
        if prefix and not prefix.endswith("/"):
            raise ValueError(f"prefix must be empty or end with '/': {prefix!r}")
        if self._root is not None:
            return _list_mirror(self._root, prefix)
        prefixes: list[str] = []
        objects: list[ObjectInfo] = []
        marker = ""
        while True:
            page = self._page(prefix, marker)
            # The bucket holds empty-name folders such as data/futures/um/daily/klines/BTCUSDT//.
            prefixes += [p for p in page.prefixes if p != f"{prefix}/"]
            objects += page.objects
            if not page.truncated:
                return Listing(prefixes, objects)
            # Without NextMarker, S3 continues after the page's last entry (key or prefix).
            last = max([*page.prefixes, *(o.key for o in page.objects)], default="")
            next_marker = page.next_marker or last
            if next_marker <= marker:
                raise VisionListingError(
                    f"listing {self._url(prefix, marker)} is truncated but its marker does not advance "
                    f"past {marker!r} (next: {next_marker!r})"
                )
            marker = next_marker

    def list_archives(self, prefix: str) -> list[ObjectInfo]:
        """The ``.zip`` objects directly under folder ``prefix`` (``.CHECKSUM`` files left out)."""
        return [o for o in self.list_prefix(prefix).objects if o.key.endswith(".zip")]

    def list_tickers(self, market: Market, warn: Callable[[str], object] = log.warning) -> list[str]:
        """Tickers with a daily or a monthly trades folder, sorted; delisted ones included.

        A folder whose name is no ticker (markets.TICKER_PATTERN: say ``BAD|NAME``, whose ``|`` would split
        a partition key) is skipped, with one ``warn`` line per name.
        """
        names: set[str] = set()
        for freq in FREQS:
            base = market.trades_prefix(freq)
            names.update(p[len(base) : -1] for p in self.list_prefix(base).prefixes)
        for name in sorted(n for n in names if not TICKER_PATTERN.fullmatch(n)):
            warn(f"{market.key}: skipping listed folder {name!r}: not a ticker (expected A-Z, 0-9 and _)")
        return sorted(n for n in names if TICKER_PATTERN.fullmatch(n))

    def list_trades_archives(
        self, market: Market, ticker: str, freq: str | None = None, *, dataset: DatasetName = "trades"
    ) -> list[ArchiveInfo]:
        """The trades (or aggTrades) archives of ``ticker``, daily and monthly when ``freq`` is None,
        sorted by period.

        Only ``<ticker>-<dataset>-<period>.zip`` with a valid date counts; oddities such as the unpadded
        ``2020-8`` of docs/vision-format.md section 1 are skipped.
        """
        if freq is not None and freq not in FREQS:
            raise ValueError(f"freq must be one of {FREQS} or None, got {freq!r}")
        freqs = FREQS if freq is None else (cast(Freq, freq),)
        archives = [
            archive
            for f in freqs
            for obj in self.list_archives(market.archive_prefix(dataset, f, ticker))
            if (archive := _archive(obj, ticker, f, dataset)) is not None
        ]
        return sorted(archives, key=attrgetter("period"))

    def _url(self, prefix: str, marker: str) -> str:
        params = {"prefix": prefix, "delimiter": "/"}
        if marker:
            params["marker"] = marker
        if self._max_keys is not None:
            params["max-keys"] = str(self._max_keys)
        return f"{self.listing_url}?{urlencode(params, safe='/')}"

    def _page(self, prefix: str, marker: str) -> _Page:
        url = self._url(prefix, marker)

        def attempt() -> _Page:
            return _parse_page(url, http.get(self._session, url, timeout=self._timeout).content)

        try:
            return self._retry.call(attempt, what=f"listing {url}")
        except VisionHTTPError as exc:
            after = f" after {self._retry.attempts} attempts" if exc.retryable else ""
            raise VisionListingError(f"listing failed{after}: {exc}", retryable=exc.retryable) from exc


def _parse_page(url: str, body: bytes) -> _Page:
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise VisionHTTPError(url, f"unreadable listing XML: {exc}", status=200, retryable=True) from exc
    if root.tag != f"{_NS}ListBucketResult":
        raise VisionListingError(f"listing {url}: expected an S3 ListBucketResult, got <{root.tag}>")
    try:
        return _Page(
            # Children come only from CommonPrefixes/Prefix: the root <Prefix> echoes the request.
            prefixes=[_text(node, "Prefix") for node in root.iterfind(f"{_NS}CommonPrefixes")],
            objects=[
                ObjectInfo(
                    key=_text(node, "Key"),
                    size=int(_text(node, "Size")),
                    last_modified=dt.datetime.fromisoformat(_text(node, "LastModified")),
                    etag=_text(node, "ETag").strip('"'),
                )
                for node in root.iterfind(f"{_NS}Contents")
            ],
            truncated=root.findtext(f"{_NS}IsTruncated") == "true",
            next_marker=root.findtext(f"{_NS}NextMarker") or None,
        )
    except ValueError as exc:
        raise VisionListingError(f"listing {url}: malformed ListBucketResult: {exc}") from exc


def _text(node: ET.Element, name: str) -> str:
    text = node.findtext(f"{_NS}{name}")
    if text is None:
        raise ValueError(f"missing <{name}>")
    return text


def _list_mirror(root: Path, prefix: str) -> Listing:
    """Same shape as the bucket's listing; folders holding no file are left out, as S3 has no such folders."""
    folder = root / prefix
    if not folder.is_dir():
        return Listing([], [])
    with os.scandir(folder) as entries:
        ordered = sorted(entries, key=attrgetter("name"))
    prefixes = [f"{prefix}{e.name}/" for e in ordered if e.is_dir() and _holds_files(e.path)]
    objects = []
    for entry in ordered:
        if entry.is_file():
            stat = entry.stat()
            seconds, nanos = divmod(stat.st_mtime_ns, 1_000_000_000)
            modified = dt.datetime.fromtimestamp(seconds, dt.UTC).replace(microsecond=nanos // 1000)
            etag = f"{stat.st_size:x}-{stat.st_mtime_ns:x}"
            objects.append(ObjectInfo(f"{prefix}{entry.name}", stat.st_size, modified, etag))
    return Listing(prefixes, objects)


def _holds_files(path: str) -> bool:
    return any(files for _, _, files in os.walk(path))


def _archive(obj: ObjectInfo, ticker: str, freq: Freq, dataset: DatasetName) -> ArchiveInfo | None:
    name = obj.key.rsplit("/", 1)[-1]
    head, tail = f"{ticker}-{dataset}-", ".zip"
    period = name[len(head) : -len(tail)]
    if not (name.startswith(head) and name.endswith(tail) and _PERIOD[freq].fullmatch(period)):
        return None
    archive = ArchiveInfo(obj.key, obj.size, obj.last_modified, obj.etag, ticker, freq, period, dataset)
    try:
        archive.first_day  # noqa: B018 - rejects impossible dates such as 2024-13
    except ValueError:
        return None
    return archive
