"""tables.py run on the embedded ClickHouse (chDB): the DDL makes the designed tables, the slice statements
act on the slice's rows and no others, bad identifiers are refused; `conform` casts to the Arrow schemas."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pyarrow as pa
import pytest
from clickhouse_connect.driver.client import Client

from binance_assets.clickhouse.store import OpenStore, Store
from binance_assets.clickhouse.tables import (
    ARCHIVES_TABLE,
    BARS_TABLE,
    LIQUIDITY_TABLE,
    Slice,
    TableSpec,
    conform,
    count_slice_sql,
    days_of_slice_sql,
    delete_slice_sql,
    qualified,
    render_sql,
    select_slice_sql,
)
from binance_assets_tests.rows import bars_of_day

BARS_SCHEMA = BARS_TABLE.schema

JAN = [dt.date(2024, 1, d) for d in range(1, 32)]
DEC_31 = dt.date(2023, 12, 31)

Key = tuple[str, str, dt.date]
"""(market, ticker, day) of bars."""


@pytest.fixture
def store(store_url: str) -> Iterator[OpenStore]:
    """A fresh embedded store with its tables (binance.hl5s, ...)."""
    with Store(store_url).open() as opened:
        yield opened


@pytest.fixture
def client(store_url: str) -> Iterator[Client]:
    """A fresh embedded store with an empty database `db`."""
    with Store(store_url).open(create_tables=False) as opened:
        opened.client.command("CREATE DATABASE db")
        yield opened.client


def fill(store: OpenStore, rows: list[Key]) -> None:
    """Two bars of each (market, ticker, day), in one INSERT."""
    store.insert(BARS_TABLE, pa.concat_tables([bars_of_day(t, d, 2, market=m) for m, t, d in rows]))


def stored(store: OpenStore) -> set[Key]:
    return set(store.client.query("SELECT DISTINCT market, ticker, day FROM binance.hl5s").result_rows)


def test_delete_of_consecutive_days_removes_them_and_not_the_days_around(store: OpenStore) -> None:
    around = [("spot", "BTCUSDT", DEC_31), ("spot", "BTCUSDT", JAN[3])]
    others = [("spot", "ETHUSDT", JAN[1]), ("um", "BTCUSDT", JAN[1])]
    fill(store, [*(("spot", "BTCUSDT", day) for day in JAN[:3]), *around, *others])
    sql, params = delete_slice_sql("binance", "hl5s", Slice("spot", "BTCUSDT", frozenset(JAN[:3])))
    store.client.command(sql, parameters=params)
    assert stored(store) == {*around, *others}


def test_delete_of_scattered_days_keeps_the_days_between(store: OpenStore) -> None:
    between = [("um", "ETHUSDT", day) for day in JAN[1:4]]
    fill(store, [("um", "ETHUSDT", JAN[0]), *between, ("um", "ETHUSDT", JAN[4]), ("spot", "ETHUSDT", JAN[0])])
    sql, params = delete_slice_sql("binance", "hl5s", Slice("um", "ETHUSDT", frozenset([JAN[4], JAN[0]])))
    store.client.command(sql, parameters=params)
    assert stored(store) == {*between, ("spot", "ETHUSDT", JAN[0])}


def test_select_count_and_days_read_the_slice_only(store: OpenStore) -> None:
    day = bars_of_day("BTCUSDT", JAN[9], 4)
    day = day.set_column(
        BARS_SCHEMA.get_field_index("open"), BARS_SCHEMA.field("open"), pa.array([2.0, 2.0, 1.0, 1.0])
    )
    others = [bars_of_day("BTCUSDT", JAN[10], 3), bars_of_day("ETHUSDT", JAN[9], 3)]
    store.insert(BARS_TABLE, pa.concat_tables([day, *others]))
    one_day = Slice("spot", "BTCUSDT", frozenset([JAN[9]]))
    sql, params = select_slice_sql("binance", "hl5s", one_day, ("open", "ts"))
    selected = conform(store.client.query_arrow(sql, parameters=params), BARS_SCHEMA)
    assert selected.to_pylist() == day.sort_by([("open", "ascending"), ("ts", "ascending")]).to_pylist()
    assert store.client.command(*count_slice_sql("binance", "hl5s", one_day)) == 4
    three_days = Slice("spot", "BTCUSDT", frozenset(JAN[8:11]))
    assert store.client.command(*count_slice_sql("binance", "hl5s", three_days)) == 7
    days = store.client.query(*days_of_slice_sql("binance", "hl5s", three_days)).result_columns[0]
    assert sorted(days) == JAN[9:11]


def test_rendered_sql_runs_as_the_bound_statement(store: OpenStore) -> None:
    """render_sql inlines the parameters as escaped literals: the ticker's quote stays in the string."""
    fill(store, [*(("spot", "A'B", day) for day in JAN[:3]), ("spot", "AB", JAN[0])])
    sql, params = select_slice_sql("binance", "hl5s", Slice("spot", "A'B", frozenset([JAN[0], JAN[2]])))
    bound = store.client.query(sql, parameters=params).result_rows
    assert sorted(store.client.query(render_sql(sql, params)).result_rows) == sorted(bound)
    assert {(row[1], row[2]) for row in bound} == {("A'B", JAN[0]), ("A'B", JAN[2])}


@pytest.mark.parametrize("name", ["", "1abc", "a-b", "a`b", "db.table", "x y"])
def test_identifiers_are_validated(name: str) -> None:
    one_day = Slice("spot", "BTCUSDT", frozenset([JAN[0]]))
    for build in (
        lambda: qualified("binance", name),
        lambda: BARS_TABLE.ddl(name, "hl5s"),
        lambda: delete_slice_sql("binance", name, one_day),
        lambda: select_slice_sql("binance", "hl5s", one_day, (name,)),
    ):
        with pytest.raises(ValueError, match="invalid ClickHouse identifier"):
            build()


def test_a_slice_needs_days() -> None:
    with pytest.raises(ValueError, match="no days"):
        Slice("spot", "BTCUSDT", frozenset())


def columns_of(client: Client, table: str) -> list[tuple[str, str, str, str]]:
    """(name, type, DEFAULT expression, comment) of each column of db.`table`, in table order."""
    return client.query(
        "SELECT name, type, default_expression, comment FROM system.columns "
        "WHERE database = 'db' AND table = {table:String} ORDER BY position",
        parameters={"table": table},
    ).result_rows


def designed(spec: TableSpec) -> list[tuple[str, str, str, str]]:
    return [(c.name, c.type, c.default, c.description) for c in spec.columns]


@pytest.mark.parametrize(
    ("spec", "engine", "partition_key", "sorting_key"),
    [
        (BARS_TABLE, "MergeTree", "toYYYYMM(day)", "market, ticker, ts"),
        (LIQUIDITY_TABLE, "ReplacingMergeTree(loaded_at)", "", "market, ticker, day"),
        (ARCHIVES_TABLE, "ReplacingMergeTree(loaded_at)", "", "market, ticker, key"),
    ],
)
def test_ddl_creates_the_designed_table(
    client: Client, spec: TableSpec, engine: str, partition_key: str, sorting_key: str
) -> None:
    """Engine (with a ReplacingMergeTree's version column), partition and order keys, and every column
    with its type, DEFAULT and comment."""
    client.command(spec.ddl("db", "t"))
    client.command(spec.ddl("db", "t"))  # IF NOT EXISTS: a second time changes nothing
    engine_full, partition, sorting = client.query(
        "SELECT engine_full, partition_key, sorting_key FROM system.tables "
        "WHERE database = 'db' AND name = 't'"
    ).first_row
    assert engine_full.startswith(f"{engine} ")
    assert (partition, sorting) == (partition_key, sorting_key)
    assert columns_of(client, "t") == designed(spec)
    assert [c.name for c in spec.columns] == spec.schema.names


def test_missing_columns_are_added_with_their_defaults(client: Client) -> None:
    """A daily_liquidity of an older version, without the columns added since, gets them (again: no-op)."""
    older = TableSpec(LIQUIDITY_TABLE.columns[:-3], LIQUIDITY_TABLE.engine, LIQUIDITY_TABLE.order_by)
    client.command(older.ddl("db", "liq"))
    for _ in range(2):
        client.command(LIQUIDITY_TABLE.add_missing_columns("db", "liq"))
    assert columns_of(client, "liq") == designed(LIQUIDITY_TABLE)


def test_conform_casts_reorders_and_reads_clickhouse_integer_times() -> None:
    table = bars_of_day("BTCUSDT", JAN[0], 3)
    loose = table.select(list(reversed(table.column_names)))
    loose = loose.set_column(
        loose.column_names.index("ts"), "ts", table["ts"].cast(pa.int64()).cast(pa.uint32())
    )
    loose = loose.set_column(loose.column_names.index("trade_count"), "trade_count", pa.array([1, 2, 3]))
    conformed = conform(loose, BARS_SCHEMA)
    assert conformed.schema == BARS_SCHEMA
    assert conformed.to_pylist() == table.to_pylist()


@pytest.mark.parametrize(
    ("column", "values", "message"),
    [
        ("open", pa.array(["x", "1", "2"]), "column 'open': cannot cast string to double"),
        ("trade_count", pa.array([-1, 1, 1]), "column 'trade_count': cannot cast int64 to uint32"),
        ("ts", pa.array(["2024-01-01"] * 3), "column 'ts': cannot cast string to timestamp"),
        ("ticker", pa.array(["A", None, "B"]), "column 'ticker' has 1 nulls"),
    ],
)
def test_conform_rejects_bad_values(column: str, values: pa.Array, message: str) -> None:
    table = bars_of_day("BTCUSDT", JAN[0], 3)
    with pytest.raises(ValueError, match=message):
        conform(table.set_column(table.column_names.index(column), column, values), BARS_SCHEMA)


def test_conform_rejects_missing_and_extra_columns() -> None:
    table = bars_of_day("BTCUSDT", JAN[0], 1).drop_columns(["low"]).append_column("vwap", pa.array([1.0]))
    with pytest.raises(ValueError, match=r"missing \['low'\], unexpected \['vwap'\]"):
        conform(table, BARS_SCHEMA)
