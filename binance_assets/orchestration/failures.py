"""Which failures heal by waiting and which do not: the retry decision of a run, as a pure function.

Transient faults (5xx, timeouts, connection resets, an archive not yet published, a busy store) keep
their retries: the downloader's own attempts, then the asset's RetryPolicy and the daemon's run retries.
A fault that the same bytes would raise again (an archive that no longer matches its ``.CHECKSUM`` after
the downloader's attempts, a corrupt zip, an unparsable row, an impossible layout, a full disk) fails the
run at once, with one line naming the archive and the reason: retrying it only costs minutes. So do a
load's results read before its stream was drained (pipeline.UnfinishedLoad): they would be again.
"""

from __future__ import annotations

import errno

from binance_assets.pipeline import UnfinishedLoad
from binance_assets.vision.download import ArchiveNotFound, ChecksumFileError, ChecksumMismatch
from binance_assets.vision.errors import VisionError
from binance_assets.vision.zip_member import ArchiveFormatError

_FULL_DISK = {errno.ENOSPC, errno.EDQUOT}


def permanent_failure(exc: BaseException) -> str | None:
    """One line saying why ``exc`` cannot heal by waiting, or None when trying again may help."""
    if isinstance(exc, ChecksumMismatch):
        return f"archive does not match its .CHECKSUM (after every download attempt): {exc}"
    if isinstance(exc, ChecksumFileError | ArchiveFormatError | UnfinishedLoad):
        return str(exc)
    if isinstance(exc, ArchiveNotFound):
        return None  # listed, yet 404: the CDN may still serve a cached 404 for a new archive
    if isinstance(exc, VisionError):
        return None if exc.retryable else str(exc)
    if isinstance(exc, OSError) and exc.errno in _FULL_DISK:
        return f"{exc}: free space or lower BINANCE_CACHE_MAX_GB (the archives already verified are kept)"
    return None
