"""HTTP plumbing shared by the Vision listing and download clients.

One session shape, one GET that turns every failure into a classified :class:`VisionHTTPError`, one
retry loop. Nothing here knows about listings or archives.
"""

from __future__ import annotations

import logging
import random
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse
from urllib.request import url2pathname

import requests
from requests.adapters import HTTPAdapter

from binance_assets.vision.errors import VisionError, VisionHTTPError

log = logging.getLogger(__name__)
T = TypeVar("T")


def _version() -> str:
    try:
        return metadata.version("binance-assets")
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


USER_AGENT = f"binance-assets/{_version()}"

# S3 codes worth another try. A public bucket answers AccessDenied during Vision outages
# (docs/vision-format.md section 2).
_TRANSIENT_S3_CODES = frozenset(
    {"AccessDenied", "InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout"}
)
# What requests raises for a dead connection, a timeout or a body cut short (urllib3 IncompleteRead).
_TRANSIENT_REQUEST_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)
_S3_ERROR_DOCUMENT = re.compile(rb"\s*(<\?xml[^>]*\?>)?\s*<Error>")


def make_session(pool_size: int) -> requests.Session:
    """A session with our User-Agent and room for ``pool_size`` concurrent connections per host."""
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    return session


def local_root(url: str) -> Path | None:
    """The directory of a ``file:///abs/mirror`` URL; None for an http(s) endpoint."""
    parsed = urlparse(url)
    if parsed.scheme in ("http", "https") and parsed.netloc:
        return None
    if parsed.scheme == "file" and parsed.path.startswith("/"):
        return Path(url2pathname(parsed.path))
    raise ValueError(f"unsupported Vision URL {url!r}: expected http(s)://host/... or file:///absolute/path")


def _s3_error_code(body: bytes) -> str | None:
    if not _S3_ERROR_DOCUMENT.match(body):
        return None
    try:
        return ET.fromstring(body).findtext("Code")
    except ET.ParseError:
        return None


def _failure(url: str, status: int, body: bytes) -> VisionHTTPError:
    code = _s3_error_code(body)
    retryable = status >= 500 or status == 429 or code in _TRANSIENT_S3_CODES
    reason = f"HTTP {status}" + (f" {code}" if code else "")
    return VisionHTTPError(url, reason, status=status, code=code, retryable=retryable)


def _transient(url: str, exc: Exception) -> VisionHTTPError:
    return VisionHTTPError(url, f"{type(exc).__name__}: {exc}", retryable=True)


def get(
    session: requests.Session,
    url: str,
    *,
    timeout: float,
    stream: bool = False,
    headers: Mapping[str, str] | None = None,
) -> requests.Response:
    """GET ``url``: a 200 response, or a :class:`VisionHTTPError` saying whether to try again.

    A 200 whose (non-streamed) body is an S3 ``<Error>`` document is a failure too.
    """
    try:
        response = session.get(url, timeout=timeout, stream=stream, headers=headers)
        if response.status_code != 200:
            with response:
                raise _failure(url, response.status_code, response.content)
        if stream:
            return response
        body = response.content
    except _TRANSIENT_REQUEST_ERRORS as exc:
        raise _transient(url, exc) from exc
    if _s3_error_code(body) is not None:
        raise _failure(url, 200, body)
    return response


def iter_body(response: requests.Response, url: str, chunk_bytes: int) -> Iterator[bytes]:
    """Stream a response body, raising a retryable :class:`VisionHTTPError` if it ends early, and a
    classified one if the body is an S3 ``<Error>`` document (a 200 that carries an error)."""
    expected = response.headers.get("Content-Length")
    received = 0
    with response:
        try:
            for chunk in response.iter_content(chunk_bytes):
                if received == 0 and _s3_error_code(chunk) is not None:
                    raise _failure(url, response.status_code, chunk)  # an S3 <Error> served with 200
                received += len(chunk)
                yield chunk
        except _TRANSIENT_REQUEST_ERRORS as exc:
            raise _transient(url, exc) from exc
    # urllib3 2 raises IncompleteRead on a short body itself; urllib3 1.x (requests allows it) does not.
    if expected is not None and received != int(expected):
        raise VisionHTTPError(
            url, f"body cut short: {received} of {expected} bytes", status=200, retryable=True
        )


@dataclass(frozen=True)
class HttpRetry:
    """Exponential backoff with jitter, capped; only errors marked ``retryable`` are tried again."""

    retries: int = 4
    backoff_seconds: float = 0.5
    max_backoff_seconds: float = 30.0

    def __post_init__(self) -> None:
        if self.retries < 0 or self.backoff_seconds < 0:
            raise ValueError(f"retries and backoff_seconds must be >= 0, got {self}")

    @property
    def attempts(self) -> int:
        return self.retries + 1

    def delay(self, attempt: int) -> float:
        """Pause after failed attempt number ``attempt`` (1-based): half fixed, half random."""
        ceiling = min(self.max_backoff_seconds, self.backoff_seconds * 2 ** (attempt - 1))
        return ceiling * random.uniform(0.5, 1.0)

    def call(self, operation: Callable[[], T], what: str) -> T:
        """Run ``operation`` until it returns; the last retryable error is re-raised once attempts run out."""
        attempt = 1
        while True:
            try:
                return operation()
            except VisionError as exc:
                if not exc.retryable or attempt >= self.attempts:
                    raise
                pause = self.delay(attempt)
                log.warning(
                    "%s: attempt %d/%d failed, retrying in %.2fs: %s",
                    what,
                    attempt,
                    self.attempts,
                    pause,
                    exc,
                )
                time.sleep(pause)
            attempt += 1
