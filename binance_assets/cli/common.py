"""What the commands share: the validated request, the Dagster instance, one-line output (their errors are
in errors.py)."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from binance_assets.cli.errors import CliError
from binance_assets.locks import file_lock
from binance_assets.markets import Market
from binance_assets.orchestration.backfills import Request, request_days
from binance_assets.orchestration.backfills import count_of as count_of  # the commands import it from here
from binance_assets.settings import Settings

if TYPE_CHECKING:  # Dagster and the Vision client (requests) are imported by the commands that use them
    from dagster import DagsterInstance

    from binance_assets.vision.listing import ArchiveInfo

PROG = "binance-assets"
REASON = "cli"


def enabled_market(market: Market, settings: Settings) -> Market:
    if market.key not in settings.markets:
        raise CliError(
            f"market {market.key!r} is not enabled: BINANCE_MARKETS={','.join(settings.markets)}", code=2
        )
    return market


def parse_request(args: argparse.Namespace, settings: Settings) -> Request:
    """The checked market, tickers and days of a materialize/backfill command."""
    market = enabled_market(args.market, settings)
    today = dt.datetime.now(dt.UTC).date()
    try:
        days = request_days(market, args.start, args.end or args.start, today, names=("--start", "--end"))
    except ValueError as error:
        raise CliError(str(error), code=2) from None
    return Request(market, tuple(dict.fromkeys(args.ticker)), days)


def open_instance(settings: Settings, *, capture_logs: bool = True) -> DagsterInstance:
    """The instance of $DAGSTER_HOME (unset: Settings' default, created); Dagster's own errors here are
    paragraphs, ours one line."""
    from binance_assets.orchestration.dagster_internals import instance_from_dir

    home = settings.process_variable("DAGSTER_HOME")
    path = str(settings.dagster_home)
    if home is None:
        settings.dagster_home.mkdir(parents=True, exist_ok=True)
        say(f"DAGSTER_HOME is unset: using {path}", progress=True)
    elif not (os.path.isabs(path) and os.path.isdir(path)):
        raise CliError(
            f"DAGSTER_HOME={home!r} is invalid: expected the absolute path of an existing directory", code=2
        )
    lock_file = Path(path) / INSTANCE_LOCK
    with file_lock(lock_file, INSTANCE_LOCK_SECONDS, lambda: _instance_busy(lock_file)):
        attempt = 1
        while True:
            try:
                return instance_from_dir(path, capture_logs=capture_logs)
            except Exception as error:  # a daemon or code server outside our lock creating it too
                if attempt >= SCHEMA_RACE_ATTEMPTS or type(error).__name__ not in _SCHEMA_RACE_ERRORS:
                    raise
                time.sleep(0.5 * attempt)
                attempt += 1


INSTANCE_LOCK = ".binance-assets-instance.lock"
"""Opening an instance creates its storage on first use: Dagster's SQLite schema creation races when
several processes open a fresh DAGSTER_HOME at once (alembic "more than one head" or a UNIQUE constraint
on alembic_version), so every command opens the instance under this lock in DAGSTER_HOME."""
INSTANCE_LOCK_SECONDS = 120.0
SCHEMA_RACE_ATTEMPTS = 5
_SCHEMA_RACE_ERRORS = frozenset({"CommandError", "IntegrityError", "OperationalError"})
"""What Dagster's SQLite storage raises while another process (a daemon, `dagster dev`, outside our lock)
creates the same schema: the next attempt finds it made."""


def _instance_busy(lock_file: Path) -> CliError:
    return CliError(
        f"the Dagster instance is busy: could not lock {lock_file} within {INSTANCE_LOCK_SECONDS:g} s"
    )


def register_tickers(instance: DagsterInstance, market: Market, tickers: Sequence[str]) -> list[str]:
    """Add the tickers missing from the market's dynamic partitions; return them."""
    known = set(instance.get_dynamic_partitions(market.tickers_partition_name))
    new = [t for t in tickers if t not in known]
    if new:
        instance.add_dynamic_partitions(market.tickers_partition_name, new)
    return new


Listed = Mapping[str, Sequence["ArchiveInfo"]]
"""Each requested ticker's trades archives, as listed on Vision."""


def list_archives(request: Request, settings: Settings) -> Listed:
    """List each ticker's archives of BINANCE_DATASET on Vision; fail on a ticker that has none."""
    listing = settings.vision_client.listing()
    market, dataset = request.market, settings.dataset
    listed = {
        ticker: listing.list_trades_archives(market, ticker, dataset=dataset) for ticker in request.tickers
    }
    for ticker, archives in listed.items():
        if not archives:
            raise CliError(
                f"{ticker} has no {dataset} archives on Binance Vision under {market.vision_path}/"
            )
    return listed


def prepare_instance(request: Request, settings: Settings, *, capture_logs: bool = True) -> DagsterInstance:
    """The instance, with the request's new tickers registered."""
    instance = open_instance(settings, capture_logs=capture_logs)
    new = register_tickers(instance, request.market, request.tickers)
    if new:
        say(f"registered {request.market.key} tickers: {', '.join(new)}", progress=True)
    return instance


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """An aligned text table and a row count; numbers right-aligned, everything else left-aligned."""
    footer = f"({len(rows)} row{'' if len(rows) == 1 else 's'})"
    if not header:  # an empty result may come without its columns (chDB)
        return footer
    cells = [[_cell(v) for v in row] for row in rows]
    numeric = [bool(rows) and all(isinstance(r[i], int | float) for r in rows) for i in range(len(header))]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(header)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if right else v.ljust(w) for v, w, right in zip(values, widths, numeric, strict=True)
        ).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in cells), footer])


def _cell(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ")
    return str(value)


def size_of(n: int) -> str:
    return f"{n / 1e6:,.1f} MB" if n >= 100_000 else f"{n:,} bytes"


_OUTPUT = threading.Lock()


def say(text: str, *, progress: bool = False) -> None:
    """Whole lines on stdout (results) or stderr (progress), whichever thread prints them."""
    if text:
        with _OUTPUT:
            print(text, file=sys.stderr if progress else sys.stdout, flush=True)


def one_line(message: str) -> str:
    """A server or library error as one line: the ClickHouse exception line when there is one."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    exception = next((line for line in lines if "DB::Exception" in line), None)
    return exception or (lines[0] if lines else "unknown error")
