"""Aggregating one verified local archive: in this process, or ahead of the run in a worker process.

`aggregate_archive` turns an archive of a dataset into its bars and day stats (pure: no Dagster, no store).
A run calls it for each archive it loads (pipeline.RunLoad), unless a worker made that aggregation ahead.

**The worker.** A `materialize` spends 3-4 s importing Dagster and opening its instance before its first
run starts, on one core (docs/performance.md, "Start-up"), while the warm-up (cli/warm_up.py) downloads
the first run's first archives. An `AheadWorker` aggregates them meanwhile in a child process, on the
other core and at a lower priority than the start-up, one at a time until the run asks for its first,
and writes each Aggregation to Arrow IPC files; the run takes them (`taken_ahead`) instead of
aggregating those archives itself. A process, not a thread: a thread's
Python steps wait for the GIL that the imports hold, and the start-up lost nearly what the run gained
(docs/performance.md, "Start-up"). The worker's results are a cache of `aggregate_archive`, keyed by the
archive's sha256: an archive the worker failed on, or never got to, the run aggregates itself, meets the
error again and reports it, as it would without a worker.

    python -m binance_assets.aggregate DIR   (the worker: jobs as JSON lines on stdin, replies on stdout)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path, PurePosixPath
from typing import IO, NamedTuple

import pyarrow as pa

from binance_assets.bars import Aggregation, aggregate_trades
from binance_assets.markets import MARKETS, DatasetName, Market
from binance_assets.prefetch import prefetch
from binance_assets.vision.agg_trades import AGG_TRADES
from binance_assets.vision.archive import Dataset, read_archive
from binance_assets.vision.errors import ArchiveFormatError
from binance_assets.vision.trades import TRADES

READERS: dict[DatasetName, Dataset] = {"trades": TRADES, "aggTrades": AGG_TRADES}
"""The reader of each dataset (markets.DATASETS)."""


def aggregate_archive(
    path: Path, market: Market, dataset: DatasetName, ticker: str, name: str
) -> Aggregation:
    """Bars and day stats of the `dataset` archive of `ticker` at `path`, read in a thread of its own while
    they are aggregated. Every problem with its rows is an ArchiveFormatError naming the archive `name`."""
    batches = read_archive(
        path, market, READERS[dataset], contract_size=market.contract_size(ticker), name=name
    )
    try:
        return aggregate_trades(prefetch(batches))
    except ArchiveFormatError:
        raise
    except ValueError as exc:  # rows the aggregator cannot take (an impossible id span)
        raise ArchiveFormatError(name, str(exc)) from None


NICENESS = 10
"""The worker's nice increment: the start-up it runs beside keeps a whole core (CFS weight 110 against
1024), and the worker takes what is left, all of it once this process waits for its result."""
_TABLES = ("bars", "days", "gaps")
"""Aggregation's tables, one IPC file each."""


class AheadKey(NamedTuple):
    """One archive of one ticker, as the run verified it."""

    market: str
    ticker: str
    key: str
    sha256: str


class AheadWorker:
    """A worker process and the archives submitted to it, in order. Close it when done
    (`aggregating_ahead` does)."""

    def __init__(self) -> None:
        self._directory = Path(tempfile.mkdtemp(prefix="binance-assets-ahead-"))
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "binance_assets.aggregate", str(self._directory)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,  # its failures are the run's to report: the run redoes the archive
                text=True,
            )
        except OSError:  # no process can start: the warm-up goes without (cli/warm_up.py)
            shutil.rmtree(self._directory, ignore_errors=True)
            raise
        self._lock = threading.Lock()
        self._jobs: dict[AheadKey, Future[Path | None]] = {}
        self._replies: list[Future[Path | None]] = []
        """Per job id, its result: the stem of its IPC files, or None if the worker did not make them."""
        self._closed = False
        self.run_began = threading.Event()
        """Set once the run asks for its first archive."""
        self._reader = threading.Thread(target=self._read_replies, name="aggregate-ahead", daemon=True)
        self._reader.start()

    def submit(self, key: AheadKey, path: Path, dataset: DatasetName) -> Future[Path | None] | None:
        """Queue the verified archive at `path` (after those submitted before); its job's result, or None if
        the worker takes no more jobs."""
        future: Future[Path | None] = Future()
        with self._lock:
            if self._closed or key in self._jobs:
                return None
            job = {
                "id": len(self._replies),
                "path": str(path),
                "market": key.market,
                "ticker": key.ticker,
                "dataset": dataset,
                "name": PurePosixPath(key.key).name,
            }
            self._jobs[key] = future
            self._replies.append(future)
            try:
                stdin: IO[str] = self._process.stdin  # type: ignore[assignment]
                stdin.write(json.dumps(job) + "\n")
                stdin.flush()
            except (OSError, ValueError):  # the worker is gone
                future.set_result(None)
        return future

    def finish(self) -> None:
        """No more jobs: the worker exits once it has done those it has (and frees its memory)."""
        with self._lock:
            self._closed = True
            with contextlib.suppress(OSError):
                self._process.stdin.close()  # type: ignore[union-attr]

    def take(self, key: AheadKey) -> Aggregation | None:
        """The aggregation of a submitted archive, once the worker has made it; None when `key` was not
        submitted or the worker failed on it. The first call says the run has begun (`run_began`)."""
        self.run_began.set()
        with self._lock:
            future = self._jobs.pop(key, None)
        stem = future.result() if future is not None else None
        return _read_aggregation(stem) if stem is not None else None

    def close(self) -> None:
        """Stop the worker, whatever it is doing, and delete what it wrote."""
        self.finish()
        self._process.kill()
        self._process.wait()
        self._reader.join()
        shutil.rmtree(self._directory, ignore_errors=True)

    def _read_replies(self) -> None:
        stdout: IO[str] = self._process.stdout  # type: ignore[assignment]
        try:
            for line in stdout:
                try:
                    reply = json.loads(line)
                    future, ok = self._replies[reply["id"]], reply["ok"] is True
                except (ValueError, LookupError, TypeError):  # not a reply: a library's print, say
                    continue
                future.set_result(self._directory / str(reply["id"]) if ok else None)
        finally:  # the worker exited: what it did not reply to, the run does itself
            with self._lock:
                for future in self._replies:
                    if not future.done():
                        future.set_result(None)


_current: AheadWorker | None = None


@contextlib.contextmanager
def aggregating_ahead() -> Iterator[AheadWorker]:
    """A worker that the runs of this process take aggregations from (`taken_ahead`) until the block ends."""
    global _current
    worker = AheadWorker()
    _current = worker
    try:
        yield worker
    finally:
        _current = None
        worker.close()


def taken_ahead(key: AheadKey) -> Aggregation | None:
    """The aggregation of `key` made ahead by this process's worker, or None: aggregate it yourself."""
    worker = _current
    return worker.take(key) if worker is not None else None


def _write_aggregation(aggregation: Aggregation, stem: Path) -> None:
    for name in _TABLES:
        table: pa.Table = getattr(aggregation, name)
        with pa.ipc.new_file(f"{stem}.{name}.arrow", table.schema) as writer:
            writer.write_table(table)


def _read_aggregation(stem: Path) -> Aggregation:
    """Memory-mapped, then unlinked: the mapping keeps the data, the directory holds nothing more."""
    tables = {}
    for name in _TABLES:
        path = f"{stem}.{name}.arrow"
        with pa.memory_map(path) as source:
            tables[name] = pa.ipc.open_file(source).read_all()
        os.unlink(path)
    return Aggregation(**tables)


def main(argv: list[str]) -> int:
    """The worker: aggregate each job's archive into DIR/<id>.<table>.arrow, reply, until stdin ends."""
    directory = Path(argv[0])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops this worker
    replies = os.fdopen(os.dup(1), "w")  # the replies' own channel: whatever else writes to stdout
    os.dup2(2, 1)  # goes where stderr does
    with contextlib.suppress(OSError):
        os.nice(NICENESS)
    for line in sys.stdin:
        job = json.loads(line)
        try:
            aggregation = aggregate_archive(
                Path(job["path"]), MARKETS[job["market"]], job["dataset"], job["ticker"], job["name"]
            )
            _write_aggregation(aggregation, directory / str(job["id"]))
            ok = True
        except Exception:  # whatever failed, the run redoes this archive and reports it
            ok = False
        print(json.dumps({"id": job["id"], "ok": ok}), file=replies, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
