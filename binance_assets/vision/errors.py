"""Errors shared by the Vision listing and download clients."""

from __future__ import annotations


class VisionError(Exception):
    """Base of every error the Vision client raises.

    ``retryable`` says whether the same request may succeed when tried again later (an outage, a cut
    transfer, an archive caught mid-republication). False means trying again cannot help by itself; the
    caller decides what a missing archive means (a recent day may simply not be published yet).
    """

    retryable: bool = False


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
