"""Downloading Vision archives into a local cache keyed by (key, sha256), verified against ``.CHECKSUM``.

Archives get republished under the same key (docs/vision-format.md section 1), so every fetch reads the key's
``.CHECKSUM`` first and the cache is addressed by the digest it names: a republished archive is a new
file, and a cached one is reused without downloading it again.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import os
import re
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Set
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, TypeVar

import requests

from binance_assets.vision import http
from binance_assets.vision.errors import (
    ArchiveNotFound,
    ChecksumFileError,
    ChecksumMismatch,
    DownloadError,
    VisionHTTPError,
)

T = TypeVar("T")
CHUNK_BYTES = 1 << 20
RESCAN_SECONDS = 60.0
"""How long `evict` trusts its own count of the cache's bytes (the last scan plus this downloader's writes)
before it lists the cache again: listing it for every archive read was quadratic in the files cached
(5.4 s of a 248-ticker-day materialize, docs/performance.md). Other processes' writes are seen within
this time."""
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def parse_checksum(text: str, expected_name: str | None = None) -> str:
    """The lowercase sha256 hex in a ``.CHECKSUM`` file: ``sha256sum`` output, final newline or not.

    When ``expected_name`` is given and the file names a file, the two must agree.
    """
    lines = text.strip().splitlines()
    if len(lines) != 1:
        raise ChecksumFileError(f"expected one line '<sha256>  <name>', got {text[:200]!r}")
    digest, _, name = lines[0].partition(" ")
    digest = digest.lower()
    if not _SHA256_HEX.fullmatch(digest):
        raise ChecksumFileError(f"expected 64 hex digits first, got {text[:200]!r}")
    name = name.strip().removeprefix("*")  # '*' marks binary mode in sha256sum output
    if expected_name is not None and name and name != expected_name:
        raise ChecksumFileError(f"checksum names {name!r}, expected {expected_name!r}")
    return digest


@dataclass(frozen=True)
class LocalArchive:
    key: str
    path: Path
    sha256: str
    size: int
    downloaded_bytes: int
    """0 on a cache hit."""
    seconds: float


class _HttpSource:
    def __init__(self, base_url: str, session: requests.Session, timeout: float) -> None:
        self._base_url = base_url
        self._session = session
        self._timeout = timeout

    def url(self, key: str) -> str:
        return f"{self._base_url}/{key}"

    def read(self, key: str) -> bytes:
        return self._get(key, stream=False).content

    def chunks(self, key: str) -> Iterator[bytes]:
        # identity: a transfer encoding would change the bytes we hash and count against Content-Length.
        response = self._get(key, stream=True, headers={"Accept-Encoding": "identity"})
        yield from http.iter_body(response, self.url(key), CHUNK_BYTES)

    def _get(self, key: str, stream: bool, headers: dict[str, str] | None = None) -> requests.Response:
        url = self.url(key)
        try:
            return http.get(self._session, url, timeout=self._timeout, stream=stream, headers=headers)
        except VisionHTTPError as exc:
            if exc.status == 404:
                raise ArchiveNotFound(key, url) from exc
            raise


class _MirrorSource:
    def __init__(self, root: Path) -> None:
        self._root = root

    def url(self, key: str) -> str:
        return (self._root / key).as_uri()

    def read(self, key: str) -> bytes:
        with self._open(key) as file:
            return file.read()

    def chunks(self, key: str) -> Iterator[bytes]:
        with self._open(key) as file:
            yield from iter(functools.partial(file.read, CHUNK_BYTES), b"")

    def _open(self, key: str) -> BinaryIO:
        try:
            return open(self._root / key, "rb")
        except FileNotFoundError:
            raise ArchiveNotFound(key, self.url(key)) from None


class _FolderLocks:
    """One lock per archive folder, held while a fetch looks in the cache and downloads: two fetches of one
    archive in a process (the CLI's warm-up and its run's, cli/warm_up.py) download it once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[Path, tuple[threading.Lock, list[int]]] = {}

    @contextlib.contextmanager
    def hold(self, folder: Path) -> Iterator[None]:
        with self._lock:
            lock, users = self._held.setdefault(folder, (threading.Lock(), [0]))
            users[0] += 1
        try:
            with lock:
                yield
        finally:
            with self._lock:
                users[0] -= 1
                if not users[0]:
                    del self._held[folder]


_FETCHING = _FolderLocks()


class VisionDownloader:
    """Fetches archives from ``base_url`` (``https://data.binance.vision`` or ``file:///abs/mirror``) into
    ``cache_dir/<key without .zip>/<sha256>.zip``.

    Transient failures (5xx, connection errors, timeouts, cut bodies, checksum mismatches) are retried
    ``retries`` times with capped exponential backoff; a 404 raises :class:`ArchiveNotFound` at once.
    """

    def __init__(
        self,
        base_url: str,
        cache_dir: Path,
        *,
        retries: int = 4,
        backoff_seconds: float = 0.5,
        timeout: float = 60.0,
        concurrency: int = 4,
        cache_max_bytes: int | None = None,
        session: requests.Session | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        base_url = base_url.rstrip("/")
        root = http.local_root(base_url)
        self._source: _HttpSource | _MirrorSource
        if root is None:
            session = session if session is not None else http.make_session(pool_size=concurrency)
            self._source = _HttpSource(base_url, session, timeout)
        else:
            self._source = _MirrorSource(root)
        self.cache_dir = Path(cache_dir).absolute()
        self.concurrency = concurrency
        self.cache_max_bytes = cache_max_bytes
        self._retry = http.HttpRetry(retries=retries, backoff_seconds=backoff_seconds)
        self._cached_bytes: int | None = None
        """The cache's size at the last scan (evict), plus what this downloader wrote since."""
        self._scanned_at = 0.0
        self._size_lock = threading.Lock()

    def fetch(self, key: str) -> LocalArchive:
        """The verified archive of ``key``, from the cache when it holds the current version."""
        started = time.monotonic()
        folder = self._archive_dir(key)
        return self._retrying(key, lambda: self._fetch_once(key, folder, started))

    def iter_fetch(
        self,
        keys: Iterable[str],
        sizes: Mapping[str, int] | None = None,
        *,
        errors: type[Exception] | tuple[type[Exception], ...] = (),
    ) -> Iterator[LocalArchive | Exception]:
        """Fetch ``keys`` concurrently, yielding archives in key order as soon as each is ready; an error of
        a type in ``errors`` is yielded in its key's place (the other keys go on), any other one raised.

        Downloads run at most ``2 * concurrency`` keys ahead of the consumer, so archive 1 can be
        processed while the next ones download; with a cache limit and the archives' listed ``sizes``, the
        archives ahead also hold at most half the limit (or one archive, if bigger). On an error (or when
        the consumer stops early) the downloads not yet started are cancelled and the running ones finish
        before this returns.

        Once the consumer asks for the next archive, the previous one is done with: the cache is evicted
        down to ``cache_max_bytes`` then, sparing the archives ahead, so a long run never holds more disk
        than the limit plus the archives ahead.
        """
        sizes = sizes or {}
        waiting = deque(keys)
        pending: deque[tuple[str, Future[LocalArchive]]] = deque()
        executor = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="vision-download")

        def fill() -> None:
            while waiting and self._room_ahead([key for key, _ in pending], waiting[0], sizes):
                key = waiting.popleft()
                pending.append((key, executor.submit(self.fetch, key)))

        try:
            fill()
            while pending:
                future = pending.popleft()[1]
                error = future.exception()
                if error is not None and not isinstance(error, errors):
                    raise error
                fill()
                yield error if error is not None else future.result()
                self.evict(keep_keys=[key for key, _ in pending])
        finally:
            executor.shutdown(wait=True, cancel_futures=True)

    def keys_ahead(self, keys: Iterable[str], sizes: Mapping[str, int]) -> list[str]:
        """The first of ``keys`` that `iter_fetch` downloads before its consumer has read any."""
        ahead: list[str] = []
        for key in keys:
            if not self._room_ahead(ahead, key, sizes):
                break
            ahead.append(key)
        return ahead

    def _room_ahead(self, ahead: Sequence[str], key: str, sizes: Mapping[str, int]) -> bool:
        """Whether ``key`` may download beside the archives ``ahead`` of the consumer: at most
        ``2 * concurrency`` of them, holding at most half the cache limit (or one archive, if bigger)."""
        if len(ahead) >= 2 * self.concurrency:
            return False
        if not ahead or self.cache_max_bytes is None:
            return True
        return sum(sizes.get(k, 0) for k in ahead) + sizes.get(key, 0) <= self.cache_max_bytes // 2

    def evict(self, keep: Set[Path] = frozenset(), keep_keys: Iterable[str] = ()) -> list[Path]:
        """Delete least-recently-used archives until the cache holds at most ``cache_max_bytes``.

        Recency is the file's mtime, refreshed on every cache hit. Paths in ``keep`` (``LocalArchive.path``
        of archives still in use) and every cached version of ``keep_keys`` (archives downloading or
        downloaded but not yet read) stay even if the cache remains over its limit. Returns the deleted
        paths.
        """
        if self.cache_max_bytes is None:
            return []
        with self._size_lock:
            fresh = time.monotonic() - self._scanned_at < RESCAN_SECONDS
            if fresh and self._cached_bytes is not None and self._cached_bytes <= self.cache_max_bytes:
                return []
        folders = {self._archive_dir(key) for key in keep_keys}
        archives = []
        for path in self.cache_dir.rglob("*.zip"):
            with contextlib.suppress(FileNotFoundError):  # evicted or replaced meanwhile
                stat = path.stat()
                archives.append((stat.st_mtime_ns, stat.st_size, path))
        total = sum(size for _, size, _ in archives)
        deleted = []
        for _, size, path in sorted(archives):
            if total <= self.cache_max_bytes:
                break
            if path not in keep and path.parent not in folders:
                path.unlink(missing_ok=True)
                total -= size
                deleted.append(path)
        with self._size_lock:
            self._cached_bytes, self._scanned_at = total, time.monotonic()
        return deleted

    def _archive_dir(self, key: str) -> Path:
        """``cache_dir/<key without .zip>``, the folder holding one file per sha256 of ``key``."""
        parts = PurePosixPath(key).parts
        if not key.endswith(".zip") or key.startswith("/") or ".." in parts:
            raise ValueError(f"not an archive key: {key!r}")
        return self.cache_dir.joinpath(*parts).with_suffix("")

    def _retrying(self, key: str, operation: Callable[[], T]) -> T:
        try:
            return self._retry.call(operation, what=key)
        except VisionHTTPError as exc:
            if not exc.retryable:
                raise
            raise DownloadError(exc.url, self._retry.attempts, exc) from exc

    def _checksum_once(self, key: str) -> str:
        text = self._source.read(f"{key}.CHECKSUM").decode("utf-8", errors="replace")
        return parse_checksum(text, expected_name=PurePosixPath(key).name)

    def _fetch_once(self, key: str, folder: Path, started: float) -> LocalArchive:
        # The CHECKSUM is read again on every attempt: after a mismatch the archive may have been republished.
        sha256 = self._checksum_once(key)
        with _FETCHING.hold(folder):
            return self._cached_or_downloaded(key, folder, sha256, started)

    def _cached_or_downloaded(self, key: str, folder: Path, sha256: str, started: float) -> LocalArchive:
        target = folder / f"{sha256}.zip"
        try:
            os.utime(target)  # a hit: mark it recently used
            return LocalArchive(key, target, sha256, target.stat().st_size, 0, time.monotonic() - started)
        except FileNotFoundError:
            pass
        part = ""
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, part = tempfile.mkstemp(dir=folder, prefix=".", suffix=".part")
            digest = hashlib.sha256()
            size = 0
            with os.fdopen(fd, "wb") as out:
                for chunk in self._source.chunks(key):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            actual = digest.hexdigest()
            if actual != sha256:
                raise ChecksumMismatch(key, sha256, actual)
            os.replace(part, target)
            with self._size_lock:
                if self._cached_bytes is not None:
                    self._cached_bytes += size
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or exc.filename:
                raise
            raise OSError(exc.errno, f"{exc.strerror} (archive cache {self.cache_dir})", str(target)) from exc
        finally:
            if part:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(part)
        return LocalArchive(key, target, sha256, size, size, time.monotonic() - started)
