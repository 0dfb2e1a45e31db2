"""Which failures heal by waiting and which do not: the retry decision of a run, as a pure function.

Transient faults (5xx, timeouts, connection resets, an archive not yet published, a busy store) keep
their retries: the downloader's own attempts, then the asset's RetryPolicy and the daemon's run retries.
A fault that the same bytes would raise again (an archive that no longer matches its ``.CHECKSUM`` after
the downloader's attempts, a corrupt zip, an unparsable row, an impossible layout, a full disk) fails the
run at once, with one line naming the archive and the reason: retrying it only costs minutes. So do a
load's results read before its stream was drained (`UnfinishedLoad`): they would be again.

A load's errors say which they are themselves (`LoadError.permanent_reason`: binance_assets/errors.py,
vision/errors.py); a full disk is the one fault of another kind this module knows.
"""

from __future__ import annotations

import errno

from binance_assets.errors import LoadError

_FULL_DISK = {errno.ENOSPC, errno.EDQUOT}


def permanent_failure(exc: BaseException) -> str | None:
    """One line saying why ``exc`` cannot heal by waiting, or None when trying again may help."""
    if isinstance(exc, LoadError):
        return exc.permanent_reason()
    if isinstance(exc, OSError) and exc.errno in _FULL_DISK:
        return f"{exc}: free space or lower BINANCE_CACHE_MAX_GB (the archives already verified are kept)"
    return None
