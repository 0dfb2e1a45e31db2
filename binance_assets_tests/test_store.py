"""store.py: the Store value, opening it (tables created once), and the slice statements, on chDB."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError

from binance_assets.clickhouse.store import ServerVersionError, Store, require_server_version
from binance_assets.clickhouse.tables import ARCHIVES_TABLE, BARS_TABLE, LIQUIDITY_TABLE, Slice
from binance_assets_tests.rows import bars_of_day as bars

JAN = [dt.date(2024, 1, d) for d in range(1, 32)]


def test_a_store_names_its_tables_and_validates_them() -> None:
    store = Store("chdb:///var/lib/store", database="db", bars_table="bars", archives_table="ledger")
    assert [name for _, name in store.tables] == ["bars", "daily_liquidity", "ledger"]
    assert store.qualified(BARS_TABLE) == "`db`.`bars`"
    assert store.label(ARCHIVES_TABLE) == "db.ledger"
    assert "store" not in repr(store) and "secret" not in repr(Store("http://u:secret@ch:8123"))
    with pytest.raises(ValueError, match="expected chdb:///abs/path or http"):
        Store("chdb://relative/path")
    with pytest.raises(ValueError, match="invalid ClickHouse identifier 'a-b'"):
        Store("chdb:///x", liquidity_table="a-b")
    with pytest.raises(ValueError, match="invalid ClickHouse identifier 'prod cluster'"):
        Store("http://ch:8123", cluster="prod cluster")


def test_count_delete_and_clear_act_on_the_slice_only(tmp_path: Path) -> None:
    mutations = "SELECT count() FROM system.mutations WHERE database = 'binance' AND table = 'hl5s'"
    with Store(f"chdb://{tmp_path / 'store'}").open() as store:
        store.insert(BARS_TABLE, pa.concat_tables([bars("BTCUSDT", day, 3) for day in JAN[:3]]))
        store.insert(BARS_TABLE, bars("ETHUSDT", JAN[0], 2))
        first_two = Slice("spot", "BTCUSDT", frozenset(JAN[:2]))
        assert store.count(BARS_TABLE, first_two) == 6
        store.clear(BARS_TABLE, Slice("spot", "BTCUSDT", frozenset(JAN[5:7])))
        assert store.client.command(mutations) == 0  # nothing there: no DELETE sent
        store.clear(BARS_TABLE, first_two)
        assert store.client.command(mutations) == 1
        assert store.count(BARS_TABLE, first_two) == 0
        assert store.count(BARS_TABLE, Slice("spot", "BTCUSDT", frozenset(JAN[:3]))) == 3
        assert store.count(BARS_TABLE, Slice("spot", "ETHUSDT", frozenset(JAN[:1]))) == 2
        store.delete(BARS_TABLE, Slice("spot", "ETHUSDT", frozenset(JAN[:1])))
        assert store.count(BARS_TABLE, Slice("spot", "ETHUSDT", frozenset(JAN[:1]))) == 0


def test_opening_without_tables_creates_nothing(tmp_path: Path) -> None:
    with Store(f"chdb://{tmp_path / 'store'}", database="fresh").open(create_tables=False) as store:
        assert store.client.command("EXISTS DATABASE fresh") == 0


def test_ensure_tables_is_idempotent_and_matches_the_arrow_schemas(tmp_path: Path) -> None:
    with Store(f"chdb://{tmp_path / 'store'}").open() as store:
        store.ensure_tables()  # memo: no statement
        client = store.client
        client.command(BARS_TABLE.ddl("binance", "hl5s"))  # the DDL itself is idempotent too
        client.command(LIQUIDITY_TABLE.ddl("binance", "daily_liquidity"))
        columns = client.query(
            "SELECT table, name, type FROM system.columns WHERE database = 'binance' ORDER BY table, position"
        ).result_rows
    assert [(name, kind) for table, name, kind in columns if table == "hl5s"] == [
        (c.name, c.type) for c in BARS_TABLE.columns
    ]
    assert [name for table, name, _ in columns if table == "daily_liquidity"] == LIQUIDITY_TABLE.schema.names


@pytest.mark.parametrize("version", ["23.3.1.1", "24.8.4.13", "26.9.2.1", "100.0"])
def test_supported_server_versions(version: str) -> None:
    require_server_version(version)


@pytest.mark.parametrize("version", ["23.2.7.32", "22.8.1", "1.1", "unknown"])
def test_too_old_server_version_is_named(version: str) -> None:
    with pytest.raises(ServerVersionError, match=rf"'{version}' is not supported: need 23.3 or later"):
        require_server_version(version)


def test_an_insert_is_all_or_nothing(tmp_path: Path) -> None:
    """A failure while the server reads the rows (here: a Date beyond ClickHouse's range in the last
    Arrow batch) leaves none of them; with small insert blocks the first blocks would stay."""
    good = pa.concat_tables(
        [bars("BTCUSDT", dt.date(2024, 1, 1) + dt.timedelta(days=i), 2000) for i in range(100)]
    )
    rows = pa.concat_tables([good, bars("BTCUSDT", dt.date(2200, 1, 1), 10)])
    small_blocks = {"async_insert": 0, "min_insert_block_size_rows": 1000, "max_insert_block_size": 1000}
    with Store(f"chdb://{tmp_path / 'clickhouse'}").open() as store:
        client = store.client
        with pytest.raises(DatabaseError, match="out of the allowed Date range"):
            client.insert_arrow("binance.hl5s", rows, settings=small_blocks)
        assert client.command("SELECT count() FROM binance.hl5s") > 0  # the hazard is real
        client.command("TRUNCATE TABLE binance.hl5s")
        with pytest.raises(DatabaseError, match="out of the allowed Date range"):
            store.insert(BARS_TABLE, rows)
        assert client.command("SELECT count() FROM binance.hl5s") == 0
        store.insert(BARS_TABLE, good)
        assert client.command("SELECT count() FROM binance.hl5s") == good.num_rows
        parts = client.query(
            "SELECT partition, rows FROM system.parts WHERE active AND table = 'hl5s'"
        ).result_rows
        assert sorted(parts) == [
            ("202401", 62000),
            ("202402", 58000),
            ("202403", 62000),
            ("202404", 18000),
        ], parts
