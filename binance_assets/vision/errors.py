"""The errors of Binance Vision: its listing, its downloads and the archives' bytes.

Each says whether a run's retry can heal it (`permanent_reason`, binance_assets/errors.py `LoadError`),
which orchestration/failures.py asks.
"""

from __future__ import annotations

from binance_assets.errors import LoadError


class VisionError(LoadError):
    """Base of every error the Vision client raises.

    ``retryable`` says whether the same request may succeed when tried again later (an outage, a cut
    transfer, an archive caught mid-republication). False means trying again cannot help by itself; the
    caller decides what a missing archive means (a recent day may simply not be published yet).
    """

    retryable: bool = False

    def permanent_reason(self) -> str | None:
        return None if self.retryable else str(self)


class VisionHTTPError(VisionError):
    """One request to Vision failed; ``status`` is None when no response arrived (connection error,
    timeout), ``code`` is the S3 ``<Error><Code>`` when the body carried one."""

    def __init__(
        self, url: str, reason: str, *, status: int | None = None, code: str | None = None, retryable: bool
    ) -> None:
        super().__init__(f"GET {url}: {reason}")
        self.url = url
        self.status = status
        self.code = code
        self.retryable = retryable


class VisionListingError(VisionError):
    """A listing could not be read; the message names the URL and, when there was one, the S3 error code."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class ArchiveNotFound(VisionError):
    """The archive or its ``.CHECKSUM`` does not exist (HTTP 404): not published yet, or never."""

    def __init__(self, key: str, url: str) -> None:
        super().__init__(f"{url} not found (404)")
        self.key = key
        self.url = url

    def permanent_reason(self) -> None:
        return None  # listed, yet 404: the CDN may still serve a cached 404 for a new archive


class ChecksumMismatch(VisionError):
    """The archive's sha256 differs from the one its ``.CHECKSUM`` names (raised once retries are spent)."""

    retryable = True  # a republication caught half-way settles later

    def __init__(self, key: str, expected: str, actual: str) -> None:
        super().__init__(f"{key}: sha256 {actual} does not match its .CHECKSUM ({expected})")
        self.key = key
        self.expected = expected
        self.actual = actual

    def permanent_reason(self) -> str:
        """The download's own attempts are spent: a run's retry would read the same bytes."""
        return f"archive does not match its .CHECKSUM (after every download attempt): {self}"


class DownloadError(VisionError):
    """Transient failures (5xx, timeouts, cut transfers) outlasted every attempt."""

    retryable = True

    def __init__(self, url: str, attempts: int, cause: Exception) -> None:
        super().__init__(f"{url}: failed after {attempts} attempts, last: {cause}")
        self.url = url
        self.attempts = attempts


class ChecksumFileError(VisionError, ValueError):
    """A ``.CHECKSUM`` file does not hold ``<64 hex>  <zip name>``."""


class ArchiveFormatError(LoadError, ValueError):
    """The archive is not a readable trades or aggTrades file; the message names it (and the line)."""

    def __init__(self, archive: str, problem: str, line: int | None = None) -> None:
        where = f"{archive}, line {line}" if line is not None else archive
        super().__init__(f"{where}: {problem}")
        self.archive = archive
        self.line = line


class KlinesFormatError(ArchiveFormatError):
    """The archive is not a readable klines file; the message names the archive."""


class BadRow(Exception):
    """Raised by a dataset's `build` for a row that parses but makes no sense; `row` counts in the batch
    (vision/archive.py turns it into an ArchiveFormatError naming the line)."""

    def __init__(self, row: int, problem: str) -> None:
        super().__init__(problem)
        self.row = row
        self.problem = problem
