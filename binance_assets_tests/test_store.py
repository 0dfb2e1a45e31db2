"""store.py: the Store value, opening it (tables created once), and the slice statements, on chDB."""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError
from dagster import DagsterInstance

from binance_assets.clickhouse.errors import ServerVersionError
from binance_assets.clickhouse.store import Store, require_server_version
from binance_assets.clickhouse.tables import ARCHIVES_TABLE, BARS_TABLE, LIQUIDITY_TABLE, Slice
from binance_assets_tests.archives import publish
from binance_assets_tests.helpers import REPO, assert_bars_match, materialize_range, resources
from binance_assets_tests.rows import bars_of_day as bars
from binance_assets_tests.vision_server import VisionServer

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
        parts = client.query(  # one block per month; an empty part the TRUNCATE left is no block of rows
            "SELECT partition, rows FROM system.parts WHERE active AND rows > 0 AND table = 'hl5s'"
        ).result_rows
        assert sorted(parts) == [
            ("202401", 62000),
            ("202402", 58000),
            ("202403", 62000),
            ("202404", 18000),
        ], parts


# Insert deduplication. Replicated tables drop an INSERT whose block matches a recent one; chDB has no
# Keeper, and `non_replicated_deduplication_window` gives its plain MergeTree tables the same behaviour.

DEDUPLICATING = ("hl5s", "daily_liquidity")
KILLED_ROWS = 3_000_000


def deduplicate(client: Client) -> None:
    """Make the bars and liquidity tables deduplicate inserts as Replicated tables do."""
    for table in DEDUPLICATING:
        client.command(
            f"ALTER TABLE binance.{table} MODIFY SETTING non_replicated_deduplication_window = 1000"
        )


def liquidity_of(days: list[dt.date]) -> pa.Table:
    rows = [
        {
            **{c.name: 1 for c in LIQUIDITY_TABLE.columns[3:11]},
            "market": "spot",
            "ticker": "BTCUSDT",
            "day": day,
            "source": "daily",
            "archive_sha256": "0" * 64,
            "loaded_at": dt.datetime(2024, 6, 1, tzinfo=dt.UTC),
            "duplicate_rows": 0,
            "nonpositive_rows": 0,
            "dataset": "trades",
            "uncovered_trade_ids": 0,
            "uncovered_id_ranges": "",
        }
        for day in days
    ]
    return pa.Table.from_pylist(rows, schema=LIQUIDITY_TABLE.schema)


def test_a_rerun_on_deduplicating_tables_keeps_its_bars(
    vision_server: VisionServer, instance: DagsterInstance, store_url: str, tmp_path: Path
) -> None:
    """Materialising the same 2 days twice: the second run's bars are written again (issue #23's repro:
    without a token of its own the re-insert is dropped and `liquidity_matches_bars` fails)."""
    days = [dt.date(2024, 1, 1), dt.date(2024, 1, 2)]
    trades = publish(vision_server.root, "um", "ETHUSDT", days, seed=2)
    with Store(store_url).open() as store:
        deduplicate(store.client)
    res = resources(vision_server, store_url, tmp_path)
    for _ in range(2):
        result = materialize_range(instance, res, "ETHUSDT", str(days[0]), str(days[-1]))
        assert result.success
        assert all(e.passed for e in result.get_asset_check_evaluations())
        assert_bars_match(store_url, {"ETHUSDT": trades}, days[0], days[-1])


def test_a_rewritten_slice_keeps_its_rows_on_deduplicating_tables(tmp_path: Path) -> None:
    """A re-run deletes the slice, then inserts the same bytes: without a token of its own the insert is
    taken for a retry and dropped."""
    days = Slice("spot", "BTCUSDT", frozenset(JAN[:2]))
    rows = {
        BARS_TABLE: pa.concat_tables([bars("BTCUSDT", day, 5) for day in JAN[:2]]),
        LIQUIDITY_TABLE: liquidity_of(JAN[:2]),
    }
    with Store(f"chdb://{tmp_path / 'store'}").open() as store:
        deduplicate(store.client)
        for _ in range(3):
            for spec, table in rows.items():
                store.clear(spec, days)
                store.insert(spec, table)
                assert store.count(spec, days) == table.num_rows


def test_a_retried_insert_with_its_token_is_dropped_and_other_tokens_are_kept(tmp_path: Path) -> None:
    day = Slice("spot", "BTCUSDT", frozenset(JAN[:1]))
    rows = bars("BTCUSDT", JAN[0], 7)
    with Store(f"chdb://{tmp_path / 'store'}").open() as store:
        deduplicate(store.client)
        store.insert(BARS_TABLE, rows, token="run-1/1/hl5s/BTCUSDT/2024-01-01..2024-01-01/0")
        store.insert(BARS_TABLE, rows, token="run-1/1/hl5s/BTCUSDT/2024-01-01..2024-01-01/0")  # the retry
        assert store.count(BARS_TABLE, day) == 7
        store.insert(BARS_TABLE, rows, token="run-2/1/hl5s/BTCUSDT/2024-01-01..2024-01-01/0")
        assert store.count(BARS_TABLE, day) == 14  # another write: kept, even byte-identical
        with pytest.raises(ValueError, match="empty insert token"):
            store.insert(BARS_TABLE, rows, token="")


def test_an_insert_that_failed_midway_is_retried_with_its_token(tmp_path: Path) -> None:
    """The failed insert left no rows and no deduplication entry: its retry, same token, goes in once."""
    token = "run-1/1/hl5s/BTCUSDT/2024-01-01..2024-01-03/0"
    good = pa.concat_tables([bars("BTCUSDT", day, 2000) for day in JAN[:3]])
    with Store(f"chdb://{tmp_path / 'store'}").open() as store:
        deduplicate(store.client)
        with pytest.raises(DatabaseError, match="out of the allowed Date range"):
            store.insert(
                BARS_TABLE, pa.concat_tables([good, bars("BTCUSDT", dt.date(2200, 1, 1), 3)]), token=token
            )
        assert store.client.command("SELECT count() FROM binance.hl5s") == 0
        for _ in range(2):
            store.insert(BARS_TABLE, good, token=token)
            assert store.client.command("SELECT count() FROM binance.hl5s") == good.num_rows


_KILLED_INSERT = """
import datetime as dt
import sys
import pyarrow as pa
from binance_assets.clickhouse.store import Store
from binance_assets.clickhouse.tables import BARS_TABLE
from binance_assets_tests.rows import bars_of_day
days = [dt.date(2024, 1, 1) + dt.timedelta(days=d) for d in range(10)]
rows = pa.concat_tables([bars_of_day("BTCUSDT", day, {n}) for day in days])
with Store(sys.argv[1]).open() as store:
    print("inserting", flush=True)
    store.insert(BARS_TABLE, rows, token=sys.argv[2])
    print("inserted", flush=True)
"""


def test_an_insert_killed_midway_leaves_all_or_nothing_and_its_retry_goes_in_once(tmp_path: Path) -> None:
    """A run worker SIGKILLed during its INSERT: whenever the kill lands, the table holds the whole block
    or none of it, and the retry with the write's token makes it exactly one copy."""
    url, token, per_day = (
        f"chdb://{tmp_path / 'store'}",
        "run-1/1/hl5s/BTCUSDT/2024-01-01..2024-01-10/0",
        KILLED_ROWS // 10,
    )
    with Store(url).open() as store:
        deduplicate(store.client)
    code = _KILLED_INSERT.replace("{n}", str(per_day))
    worker = subprocess.Popen(
        [sys.executable, "-c", code, url, token], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    assert worker.stdout is not None and worker.stdout.readline() == "inserting\n"
    time.sleep(0.5)
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=60)
    rows = pa.concat_tables([bars("BTCUSDT", JAN[0] + dt.timedelta(days=d), per_day) for d in range(10)])
    with Store(url).open() as store:
        assert store.client.command("SELECT count() FROM binance.hl5s") in (0, KILLED_ROWS)
        store.insert(BARS_TABLE, rows, token=token)
        assert store.client.command("SELECT count() FROM binance.hl5s") == KILLED_ROWS
