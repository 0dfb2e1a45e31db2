"""tables.py: SQL builders as strings, the DDL and the schemas."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest

from binance_assets.clickhouse.tables import (
    BARS_COLUMNS,
    BARS_TABLE,
    LIQUIDITY_TABLE,
    Slice,
    conform,
    count_slice_sql,
    delete_slice_sql,
    qualified,
    render_sql,
    select_slice_sql,
)

BARS_SCHEMA = BARS_TABLE.schema

JAN = [dt.date(2024, 1, d) for d in range(1, 32)]


def test_delete_of_consecutive_days_is_a_half_open_range() -> None:
    sql, params = delete_slice_sql("binance", "hl5s", Slice("spot", "BTCUSDT", frozenset(JAN[:3])))
    assert sql == (
        "DELETE FROM `binance`.`hl5s` WHERE market = {market:String} AND ticker = {ticker:String}"
        " AND day >= {first:Date} AND day < {stop:Date}"
    )
    assert params == {"market": "spot", "ticker": "BTCUSDT", "first": JAN[0], "stop": JAN[3]}


def test_delete_of_scattered_days_is_a_set() -> None:
    sql, params = delete_slice_sql("binance", "hl5s", Slice("um", "ETHUSDT", frozenset([JAN[4], JAN[0]])))
    assert sql.endswith("AND ticker = {ticker:String} AND day IN {days:Array(Date)}")
    assert params == {"market": "um", "ticker": "ETHUSDT", "days": [JAN[0], JAN[4]]}


def test_select_and_count_share_the_slice_predicate() -> None:
    one_day = Slice("spot", "BTCUSDT", frozenset([JAN[9]]))
    select, params = select_slice_sql("db", "bars", one_day, ("ticker", "ts"))
    count, count_params = count_slice_sql("db", "bars", one_day)
    assert select.startswith("SELECT * FROM `db`.`bars` WHERE market = {market:String}")
    assert select.endswith("day < {stop:Date} ORDER BY `ticker`, `ts`")
    assert count.startswith("SELECT count() FROM `db`.`bars` WHERE market = {market:String}")
    assert params == count_params == {"market": "spot", "ticker": "BTCUSDT", "first": JAN[9], "stop": JAN[10]}


def test_render_sql_inlines_escaped_literals_for_display() -> None:
    sql, params = select_slice_sql("binance", "hl5s", Slice("spot", "A'B", frozenset([JAN[0], JAN[2]])))
    assert render_sql(sql, params) == (
        "SELECT * FROM `binance`.`hl5s` WHERE market = 'spot' AND ticker = 'A\\'B'"
        " AND day IN ['2024-01-01', '2024-01-03']"
    )


@pytest.mark.parametrize("name", ["", "1abc", "a-b", "a`b", "db.table", "x y"])
def test_identifiers_are_validated(name: str) -> None:
    with pytest.raises(ValueError, match="invalid ClickHouse identifier"):
        qualified("binance", name)


def test_a_slice_needs_days() -> None:
    with pytest.raises(ValueError, match="no days"):
        Slice("spot", "BTCUSDT", frozenset())


def test_ddl_follows_the_design() -> None:
    bars = BARS_TABLE.ddl("binance", "hl5s")
    assert bars.startswith("CREATE TABLE IF NOT EXISTS `binance`.`hl5s` (\n  `market` LowCardinality(String)")
    assert bars.endswith(") ENGINE = MergeTree PARTITION BY toYYYYMM(day) ORDER BY (market, ticker, ts)")
    assert "`ts` DateTime('UTC') COMMENT 'Bar close (right edge)" in bars
    liquidity = LIQUIDITY_TABLE.ddl("db", "liq")
    assert liquidity.endswith(") ENGINE = ReplacingMergeTree(loaded_at) ORDER BY (market, ticker, day)")
    assert [c.name for c in BARS_COLUMNS] == BARS_SCHEMA.names


def _bars(day: dt.date, n: int, *, ticker: str = "BTCUSDT") -> pa.Table:
    start = int(dt.datetime.combine(day, dt.time(), dt.UTC).timestamp())
    floats = {
        c: [1.0] * n for c in ("open", "high", "low", "close", "volume", "quote_volume", "taker_buy_volume")
    }
    return pa.table(
        {
            "market": ["spot"] * n,
            "ticker": [ticker] * n,
            "day": pa.array([day] * n, pa.date32()),
            "ts": pa.array([start + 5 * (i + 1) for i in range(n)], pa.timestamp("s", tz="UTC")),
            **floats,
            "trade_count": pa.array([1] * n, pa.uint32()),
        }
    )


def test_conform_casts_reorders_and_reads_clickhouse_integer_times() -> None:
    table = _bars(JAN[0], 3)
    loose = table.select(list(reversed(table.column_names)))
    loose = loose.set_column(
        loose.column_names.index("ts"), "ts", table["ts"].cast(pa.int64()).cast(pa.uint32())
    )
    loose = loose.set_column(loose.column_names.index("trade_count"), "trade_count", pa.array([1, 2, 3]))
    conformed = conform(loose, BARS_SCHEMA)
    assert conformed.schema == BARS_SCHEMA
    assert conformed.to_pylist() == table.set_column(11, "trade_count", pa.array([1, 2, 3])).to_pylist()


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
    table = _bars(JAN[0], 3)
    with pytest.raises(ValueError, match=message):
        conform(table.set_column(table.column_names.index(column), column, values), BARS_SCHEMA)


def test_conform_rejects_missing_and_extra_columns() -> None:
    table = _bars(JAN[0], 1).drop_columns(["low"]).append_column("vwap", pa.array([1.0]))
    with pytest.raises(ValueError, match=r"missing \['low'\], unexpected \['vwap'\]"):
        conform(table, BARS_SCHEMA)
