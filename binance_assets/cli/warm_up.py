"""Downloading a `materialize`'s first archives while the process imports Dagster and opens the instance.

Those take 2-4 s before the first run starts (docs/performance.md, "Start-up"), and the run then waits for
its first archive: a monthly one is verified whole before it is read. The warm-up fetches the first run's
first archives into the cache meanwhile, those the run itself would download first
(`VisionDownloader.keys_ahead`), and the run finds them there: a fetch of an archive the warm-up is still
downloading waits for it instead of downloading it again (vision/download.py). A warm-up's error is not
reported: the run meets it again, and reports it.

A worker process aggregates those archives as they arrive, until the run begins (aggregate.py), and the
run takes what it made.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import ExitStack, contextmanager

from binance_assets.aggregate import AheadKey, AheadWorker, aggregating_ahead
from binance_assets.cli.common import Listed, Request
from binance_assets.cli.preview import Planner
from binance_assets.cli.runner import Totals
from binance_assets.markets import DatasetName
from binance_assets.plan import run_ranges
from binance_assets.settings import Settings
from binance_assets.vision.download import LocalArchive

AHEAD_MIN_BYTES = 32 << 20
"""The warm-up's archives that repay a worker process: its start (a second interpreter's imports) costs
about 0.5 CPU-s, what aggregating some 1.5M trades (32 MB of zips) takes (docs/performance.md)."""


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
    """Download the archives the first run downloads first, and aggregate them, in the background for the
    block; at its end, the downloads not started are dropped, the running ones finish and the worker
    is stopped."""
    first, last = run_ranges(request.days, settings.max_days_per_run)[0]
    today = dt.datetime.now(dt.UTC).date()
    plan = Planner(request.market, listed, today, settings.publish_grace_days)(
        request.tickers[0], first, last
    )
    # One attempt per archive: a failing one is retried (and reported) by the run, not twice.
    downloader = dataclasses.replace(settings.vision_client, download_retries=0).downloader()
    sizes = {archive.key: archive.size for archive in plan.serves}
    keys = downloader.keys_ahead(list(sizes), sizes)
    datasets = {archive.key: archive.dataset for archive in plan.serves}
    with ExitStack() as stack:
        # first: its interpreter starts while the first archive downloads
        worker = _worker(stack) if sum(sizes[key] for key in keys) >= AHEAD_MIN_BYTES else None
        pool = ThreadPoolExecutor(max_workers=downloader.concurrency, thread_name_prefix="vision-warm-up")
        fetches = [pool.submit(downloader.fetch, key) for key in keys]
        feeder = None
        if worker is not None:
            args = (worker, request.market.key, plan.ticker, fetches, datasets)
            feeder = threading.Thread(target=_feed, args=args, name="warm-up-feed", daemon=True)
            feeder.start()
        try:
            yield WarmUp(fetches)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            if feeder is not None:
                feeder.join()


def _worker(stack: ExitStack) -> AheadWorker | None:
    """The worker that aggregates the downloaded archives, stopped with `stack`; None where no process can
    start (the run then aggregates every archive itself)."""
    try:
        return stack.enter_context(aggregating_ahead())
    except OSError:
        return None


def _feed(
    worker: AheadWorker,
    market: str,
    ticker: str,
    fetches: list[Future[LocalArchive]],
    datasets: dict[str, DatasetName],
) -> None:
    """Submit each downloaded archive to the worker, in the run's order, one at a time until the run begins
    (a failed download is skipped); then let the worker exit. So the worker aggregates beside the
    start-up, never beside the run's writes, whose memory would add to its own."""
    for fetch in fetches:
        wait([fetch])
        if worker.run_began.is_set():
            break
        if fetch.cancelled() or fetch.exception() is not None:
            continue
        local = fetch.result()
        key = AheadKey(market, ticker, local.key, local.sha256)
        job = worker.submit(key, local.path, datasets[local.key])
        if job is not None:
            wait([job])
    worker.finish()
