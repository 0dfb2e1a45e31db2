"""clickhouse/day_writer.py on the real engine (chDB): a day's bars and liquidity row go in together, batch
by batch; a write killed between the two leaves bars that `discard_incomplete` removes from a failed day."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pyarrow as pa
import pytest

from binance_assets.clickhouse.day_writer import DayWriter
from binance_assets.clickhouse.store import OpenStore, Store
from binance_assets.clickhouse.tables import LIQUIDITY_TABLE, TableSpec
from binance_assets_tests.helpers import query
from binance_assets_tests.rows import bars_of_day

DAYS = [dt.date(2024, 1, 1) + dt.timedelta(days=i) for i in range(4)]


def row(ticker: str, day: dt.date, trades: int = 6) -> dict[str, Any]:
    """A daily_liquidity row (its other columns zero or empty)."""
    numbers = [
        f for f in LIQUIDITY_TABLE.schema if pa.types.is_integer(f.type) or pa.types.is_floating(f.type)
    ]
    values: dict[str, Any] = {f.name: pa.scalar(0, f.type).as_py() for f in numbers}
    values.update(market="spot", ticker=ticker, day=day, trade_count=trades, source="daily", dataset="trades")
    values.update(archive_sha256="", uncovered_id_ranges="", loaded_at=dt.datetime(2024, 6, 1, tzinfo=dt.UTC))
    return values


def stored(url: str) -> tuple[list[tuple[str, dt.date, int]], list[tuple[str, dt.date]]]:
    """(ticker, day, bars) and the (ticker, day)s with a liquidity row, of what the store holds, sorted."""
    bars = query(
        url, "SELECT ticker, day, count() AS n, any(open) AS v FROM binance.hl5s GROUP BY ticker, day"
    )
    days = query(url, "SELECT ticker, day FROM binance.daily_liquidity FINAL")
    return (
        sorted((t, d, int(n)) for t, d, n in zip(bars["ticker"], bars["day"], bars["n"], strict=True)),
        sorted(zip(days["ticker"], days["day"], strict=True)),
    )


def test_days_are_written_in_batches_with_their_liquidity_rows(store_url: str) -> None:
    store = Store(store_url)
    writer = DayWriter(store.open, "spot", token="run/0", flush_rows=10)
    for day in DAYS:
        writer.add("BTCUSDT", day, bars_of_day("BTCUSDT", day, n=6), row("BTCUSDT", day))
        if day == DAYS[1]:  # 12 bars buffered: the first batch is in
            assert writer.written == [("BTCUSDT", DAYS[0]), ("BTCUSDT", DAYS[1])]
            assert stored(store_url)[1] == [("BTCUSDT", d) for d in DAYS[:2]]
    assert writer.written == [("BTCUSDT", d) for d in DAYS]  # the second batch filled up too
    quiet = DAYS[3] + dt.timedelta(days=1)  # a day without trades: a liquidity row and no bars
    writer.add("BTCUSDT", quiet, bars_of_day("BTCUSDT", quiet, n=0), row("BTCUSDT", quiet, 0))
    assert writer.flush() == [("BTCUSDT", quiet)]
    bars, days = stored(store_url)
    assert bars == [("BTCUSDT", d, 6) for d in DAYS]
    assert days == [("BTCUSDT", d) for d in [*DAYS, quiet]]

    again = DayWriter(store.open, "spot", token="run/1")  # a re-run replaces, never adds
    again.add(
        "BTCUSDT", DAYS[0], bars_of_day("BTCUSDT", DAYS[0], n=3, version=2.0), row("BTCUSDT", DAYS[0], 3)
    )
    again.flush()
    assert stored(store_url)[0][0] == ("BTCUSDT", DAYS[0], 3)
    assert query(store_url, "SELECT count() AS n FROM binance.daily_liquidity FINAL")["n"].iloc[0] == 5


def test_a_row_of_another_day_is_refused(store_url: str) -> None:
    writer = DayWriter(Store(store_url).open, "spot", token="run/0")
    with pytest.raises(
        ValueError, match="spot BTCUSDT 2024-01-01: the liquidity row is of another ticker-day"
    ):
        writer.add("BTCUSDT", DAYS[0], bars_of_day("BTCUSDT", DAYS[0]), row("BTCUSDT", DAYS[1]))


class Killed(Exception):
    """Stands for the process dying between the bars INSERT and the liquidity INSERT."""


def test_a_write_killed_between_its_inserts_leaves_bars_that_a_failed_day_discards(store_url: str) -> None:
    store = Store(store_url)
    complete = DayWriter(store.open, "spot", token="run/0")
    complete.add("ETHUSDT", DAYS[0], bars_of_day("ETHUSDT", DAYS[0]), row("ETHUSDT", DAYS[0]))
    complete.flush()

    @contextmanager
    def dying() -> Iterator[OpenStore]:
        with store.open() as opened:
            insert = opened.insert

            def insert_then_die(spec: TableSpec, rows: pa.Table, **kwargs: Any) -> None:
                if spec is LIQUIDITY_TABLE:
                    raise Killed
                insert(spec, rows, **kwargs)

            object.__setattr__(opened, "insert", insert_then_die)
            yield opened

    killed = DayWriter(dying, "spot", token="run/1")
    killed.add("BTCUSDT", DAYS[1], bars_of_day("BTCUSDT", DAYS[1]), row("BTCUSDT", DAYS[1]))
    with pytest.raises(Killed):
        killed.flush()
    assert killed.written == []
    bars, days = stored(store_url)
    assert ("BTCUSDT", DAYS[1], 6) in bars and ("BTCUSDT", DAYS[1]) not in days  # the window

    retry = DayWriter(store.open, "spot", token="run/2")
    discarded = retry.discard_incomplete([("BTCUSDT", DAYS[1]), ("ETHUSDT", DAYS[0]), ("BTCUSDT", DAYS[2])])
    assert discarded == [("BTCUSDT", DAYS[1])]
    assert stored(store_url) == ([("ETHUSDT", DAYS[0], 6)], [("ETHUSDT", DAYS[0])])
