"""`init`, `status` and `sql`: the store's tables, what was loaded, any query."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import re
from collections.abc import Iterator, Sequence
from typing import Any

from clickhouse_connect.driver.exceptions import ClickHouseError, OperationalError

from binance_assets.cli.common import PROG, format_table, one_line
from binance_assets.cli.errors import CliError
from binance_assets.clickhouse.client import describe_url
from binance_assets.clickhouse.errors import ServerVersionError
from binance_assets.clickhouse.store import OpenStore, Store
from binance_assets.clickhouse.tables import LIQUIDITY_TABLE, TableSpec, quote
from binance_assets.settings import Settings

_OS_ERROR = re.compile(r"\[Errno -?\d+\] ([^\"')]+)")
"""The reason inside a driver's connection error: ``[Errno 111] Connection refused``."""


@contextlib.contextmanager
def _store(settings: Settings) -> Iterator[OpenStore]:
    """The store of the settings, open, its tables not created; a server that cannot be reached or used
    is one error line."""
    try:
        with settings.store.open(create_tables=False) as store:
            yield store
    except OperationalError as error:
        reason = _OS_ERROR.search(str(error))
        raise CliError(
            f"ClickHouse at {describe_url(settings.clickhouse_url)} is unreachable: "
            f"{reason[1] if reason else one_line(str(error))}"
        ) from None
    except (ClickHouseError, ServerVersionError) as error:
        raise CliError(
            f"ClickHouse at {describe_url(settings.clickhouse_url)}: {one_line(str(error))}"
        ) from None


def cmd_init(args: argparse.Namespace, settings: Settings) -> int:
    """Create the database and tables where missing and add the columns this version added (on a cluster
    ON CLUSTER, every statement IF NOT EXISTS: idempotent); print what was created or found. The only DDL
    sent to a server: its runs, sensors and reads check the tables (`OpenStore.check_tables`). A table
    found under one of our names must be ours (key columns present, our columns' types)."""
    with _store(settings) as store:
        store.check_server_version()
        database = store.store.database
        found = {f"database {database}": _exists(store, "DATABASE", quote(database))}
        for spec, _ in store.store.tables:
            label = f"table {store.store.label(spec)}"
            found[label] = _exists(store, "TABLE", store.qualified(spec))
            if found[label]:
                _refuse_foreign(store, spec)
        store.ensure_tables()
        print(f"ClickHouse {describe_url(settings.clickhouse_url)}, server {store.client.server_version}")
    for what, existed in found.items():
        print(f"{what}: {'found' if existed else 'created'}")
    return 0


def _exists(store: OpenStore, kind: str, name: str) -> bool:
    return bool(int(store.client.command(f"EXISTS {kind} {name}")))


def _refuse_foreign(store: OpenStore, spec: TableSpec) -> None:
    """Fail, before any DDL touches it, on an existing table that cannot be ours (run.py's, say)."""
    problems = _foreign_columns(store, spec)
    if problems:
        raise CliError(
            f"table {store.store.label(spec)} exists but was not made by {PROG} ({'; '.join(problems)}): "
            "pick another name (CLICKHOUSE_*_TABLE, or run.py's DATA_TABLE_NAME / CONTROL_TABLE_NAME)"
        )


def _foreign_columns(store: OpenStore, spec: TableSpec) -> list[str]:
    """Why an existing table cannot be ours: a key column missing, or a column of ours with another type."""
    result = store.client.query(
        "SELECT name, type FROM system.columns WHERE database = {database:String} AND table = {table:String}",
        parameters={"database": store.store.database, "table": store.store.name(spec)},
    )
    types = dict(result.result_rows)
    missing = [name for name in spec.order_by if name not in types]
    retyped = [f"{c.name} is {types[c.name]}" for c in spec.columns if types.get(c.name, c.type) != c.type]
    return ([f"no column {', '.join(missing)}"] if missing else []) + retyped


STATUS_SQL = """
WITH arraySort(groupArray(day)) AS loaded,
  ifNull({start:Nullable(Date)}, loaded[1]) AS range_start,
  ifNull({end:Nullable(Date)}, loaded[-1]) AS range_end,
  arrayFilter(d -> d BETWEEN range_start AND range_end, loaded) AS in_range,
  arrayConcat([range_start - 1], in_range, [range_end + 1]) AS days
SELECT market, ticker, min(day) AS first_day, max(day) AS last_day, count() AS days_loaded,
  countIf(source = 'none') AS without_archive, countIf(dataset = 'aggTrades') AS from_aggtrades,
  if(without_archive = days_loaded, NULL, minIf(day, source != 'none')) AS data_from,
  if(without_archive = days_loaded, NULL, maxIf(day, source != 'none')) AS data_to,
  dateDiff('day', range_start, range_end) + 3 - length(days) AS days_missing,
  arrayStringConcat(arrayMap(
    i -> if(dateDiff('day', days[i - 1], days[i]) = 2, toString(days[i - 1] + 1),
            concat(toString(days[i - 1] + 1), '..', toString(days[i] - 1))),
    arrayFilter(i -> i > 1 AND dateDiff('day', days[i - 1], days[i]) > 1, arrayEnumerate(days))), ', ')
    AS missing_ranges,
  sum(trade_count) AS trades, max(loaded_at) AS last_loaded
FROM {table} FINAL
WHERE {where}
GROUP BY market, ticker
ORDER BY market, ticker
"""
"""One query for a whole market: per ticker, its loaded span, how many of its loaded days had no archive
(zero rows, `source = 'none'`: before listing, after delisting, a hole) and how many were built from
aggTrades, the span of the days with data, and the days not loaded (failed, late or never run) over the
range asked (`--start`, `--end`; by default the loaded span), as a count and as ranges."""


def status_sql(
    store: Store,
    market: str | None,
    tickers: Sequence[str],
    start: dt.date | None = None,
    end: dt.date | None = None,
) -> tuple[str, dict[str, Any]]:
    where, params = ["1"], {"start": start, "end": end}
    if market:
        where.append("market = {market:String}")
        params["market"] = market
    if tickers:
        where.append("ticker IN {tickers:Array(String)}")
        params["tickers"] = list(tickers)
    table = store.qualified(LIQUIDITY_TABLE)
    sql = STATUS_SQL.replace("{table}", table).replace("{where}", " AND ".join(where))
    return sql.strip(), params


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    """Per ticker: what the liquidity table says was loaded, gaps included."""
    with _store(settings) as store:
        market = args.market.key if args.market else None
        sql, params = status_sql(store.store, market, args.ticker or (), args.start, args.end)
        if not _exists(store, "TABLE", store.qualified(LIQUIDITY_TABLE)):
            label = store.store.label(LIQUIDITY_TABLE)
            raise CliError(f"table {label} does not exist: nothing loaded yet (see {PROG} init)")
        result = store.client.query(sql, parameters=params)
    print(format_table(result.column_names, result.result_rows))
    return 0


def cmd_sql(args: argparse.Namespace, settings: Settings) -> int:
    """Run a query on the store (chdb:// tables created if missing, a server's checked) and print it."""
    try:
        with settings.store.open() as store:
            store.client.database = store.store.database
            result = store.client.query(args.query)
    except ClickHouseError as error:
        raise CliError(one_line(str(error))) from None
    print(format_table(result.column_names, result.result_rows))
    return 0
