"""Downloading a `materialize`'s first archives while the process imports Dagster and opens the instance.

Those take 2-4 s before the first run starts (docs/performance.md, "Start-up"), and the run then waits for
its first archive: a monthly one is verified whole before it is read. The warm-up fetches the first run's
first archives into the cache meanwhile, those the run itself would download first
(`VisionDownloader.keys_ahead`), and the run finds them there: a fetch of an archive the warm-up is still
downloading waits for it instead of downloading it again (vision/download.py). A warm-up's error is not
reported: the run meets it again, and reports it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

from binance_assets.cli.common import Listed, Request
from binance_assets.cli.preview import Planner
from binance_assets.cli.runner import Totals
from binance_assets.plan import run_ranges
from binance_assets.settings import Settings
from binance_assets.vision.download import LocalArchive


class WarmUp:
    """The warm-up's downloads, running or done."""

    def __init__(self, fetches: list[Future[LocalArchive]]) -> None:
        self._fetches = fetches

    def totals(self) -> Totals:
        """The bytes it downloaded (the runs found those archives in the cache), once it is over."""
        done = [f.result() for f in self._fetches if f.done() and not f.cancelled() and not f.exception()]
        return Totals(downloaded_bytes=sum(archive.downloaded_bytes for archive in done))


@contextmanager
def warm_up(request: Request, listed: Listed, settings: Settings) -> Iterator[WarmUp]:
    """Download the archives the first run downloads first, in the background for the block; at its end,
    the downloads not started are dropped and the running ones finish."""
    first, last = run_ranges(request.days, settings.max_days_per_run)[0]
    today = dt.datetime.now(dt.UTC).date()
    plan = Planner(request.market, listed, today, settings.publish_grace_days)(
        request.tickers[0], first, last
    )
    # One attempt per archive: a failing one is retried (and reported) by the run, not twice.
    downloader = dataclasses.replace(settings.vision_client, download_retries=0).downloader()
    keys = downloader.keys_ahead([a.key for a in plan.serves], {a.key: a.size for a in plan.serves})
    pool = ThreadPoolExecutor(max_workers=downloader.concurrency, thread_name_prefix="vision-warm-up")
    try:
        yield WarmUp([pool.submit(downloader.fetch, key) for key in keys])
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
