"""What orchestration/dagster_internals.py reaches inside Dagster: the laptop's storage (dagster.yaml,
FastSqliteStorage) where Dagster's default SQLite storage keeps its data, a batch written in one
transaction, the production instance's pooled PostgreSQL connections (deploy/dagster.yaml,
PooledInstance), the names Dagster does not export, the backfills we add and the instance with
overrides. An upgrade that moves any of these fails here."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from dagster import AssetKey, AssetMaterialization, DagsterInstance
from dagster._check import CheckError
from dagster._core.events import DagsterEvent, DagsterEventType, StepMaterializationData
from dagster._core.events.log import EventLogEntry
from dagster._core.instance.ref import InstanceRef

from binance_assets.markets import MARKETS
from binance_assets.orchestration.assets import build_market_assets, tickers_partitions
from binance_assets.orchestration.dagster_internals import (
    BACKFILL_ID_TAG,
    BULK_ACTION_TERMINAL_STATUSES,
    PARTITION_NAME_TAG,
    FastSqliteEventLogStorage,
    PooledInstance,
    instance_from_dir,
    new_backfill,
)
from binance_assets_tests.helpers import REPO
from binance_assets_tests.postgres import PostgresServer

KEY = AssetKey(["binance", "um", "hl5s_bars"])


def materialization(run_id: str, partition: str) -> EventLogEntry:
    event = DagsterEvent(
        event_type_value=DagsterEventType.ASSET_MATERIALIZATION.value,
        job_name="um_trades_to_bars",
        event_specific_data=StepMaterializationData(AssetMaterialization(KEY, partition=partition)),
    )
    return EventLogEntry(
        error_info=None, level=20, user_message="", run_id=run_id, timestamp=time.time(), dagster_event=event
    )


def open_instance(home: Path, monkeypatch: pytest.MonkeyPatch) -> DagsterInstance:
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return DagsterInstance.get()


@pytest.fixture
def laptop_home(tmp_path: Path) -> Iterator[Path]:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    yield home


def test_a_batch_is_stored_whole_with_its_partitions(
    laptop_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In the run's shard and in the index, with the asset's entry naming the batch's last event."""
    instance = open_instance(laptop_home, monkeypatch)
    storage = instance.event_log_storage
    assert isinstance(storage, FastSqliteEventLogStorage)
    run_id = str(uuid.uuid4())
    partitions = [f"2024-01-{day:02d}|BTCUSDT" for day in range(1, 32)]
    storage.store_event_batch([materialization(run_id, p) for p in partitions])
    records = instance.fetch_materializations(KEY, limit=100).records
    assert sorted(r.partition_key for r in records) == partitions
    assert instance.get_materialized_partitions(KEY) == set(partitions)
    assert [e.dagster_event.partition for e in instance.all_logs(run_id)] == partitions  # the run's shard
    (record,) = instance.get_asset_records([KEY])
    last = record.asset_entry.last_materialization_record
    assert last is not None and last.partition_key == partitions[-1]


def test_a_batch_that_fails_stores_none_of_its_events(
    laptop_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One transaction: the events before the bad one are rolled back with it (Dagster then stores the
    batch one event at a time, instance.handle_new_event), and the storage works on."""
    instance = open_instance(laptop_home, monkeypatch)
    run_id = str(uuid.uuid4())
    good = [materialization(run_id, f"2024-01-0{day}|BTCUSDT") for day in (1, 2)]
    log_line = EventLogEntry(
        error_info=None, level=20, user_message="x", run_id=run_id, timestamp=time.time(), dagster_event=None
    )
    not_an_event = SimpleNamespace(dagster_event_type=None, run_id=run_id)  # after two stored ones
    with pytest.raises(CheckError, match="event"):
        instance.event_log_storage.store_event_batch([*good, log_line, not_an_event])  # type: ignore[list-item]
    assert instance.fetch_materializations(KEY, limit=10).records == []
    assert instance.all_logs(run_id) == []
    instance.event_log_storage.store_event_batch([*good, log_line])
    assert len(instance.fetch_materializations(KEY, limit=10).records) == 2
    assert len(instance.all_logs(run_id)) == 3


def _schema(path: str) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]], list[tuple[str, ...]]]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return (
            sorted(db.execute("SELECT type, name, tbl_name, sql FROM sqlite_master")),
            db.execute("SELECT * FROM alembic_version").fetchall(),
            db.execute("PRAGMA journal_mode").fetchall(),
        )


def test_new_run_shards_are_copies_of_one_dagster_made(
    laptop_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first run's shard is Dagster's own; the later ones, copies of an empty one it made: the same
    tables, indexes, alembic stamp and WAL mode, and their events stored and read back. A shard that
    exists is not replaced."""
    instance = open_instance(laptop_home, monkeypatch)
    storage = instance.event_log_storage
    assert isinstance(storage, FastSqliteEventLogStorage)
    runs = [str(uuid.uuid4()) for _ in range(3)]
    for run_id in runs:
        storage.store_event_batch([materialization(run_id, f"2024-01-0{day}|BTCUSDT") for day in (1, 2)])
    dagster_made, *copies = (_schema(storage.path_for_shard(run_id)) for run_id in runs)
    assert len(dagster_made[0]) > 10 and dagster_made[2] == [("wal",)]
    assert copies == [dagster_made, dagster_made]
    assert storage._run_template is not None  # the copies were made from it
    for run_id in runs:
        assert [e.dagster_event.partition for e in instance.all_logs(run_id)] == [
            "2024-01-01|BTCUSDT", "2024-01-02|BTCUSDT"
        ]  # fmt: skip
    assert len(instance.fetch_materializations(KEY, limit=10).records) == 6

    existing = str(uuid.uuid4())  # a shard another process made first: kept, with its event
    with DagsterInstance.from_ref(InstanceRef.from_dir(str(laptop_home))) as other:
        other.event_log_storage.store_event(materialization(existing, "2024-01-03|BTCUSDT"))
    storage.store_event(materialization(existing, "2024-01-04|BTCUSDT"))
    assert [e.dagster_event.partition for e in instance.all_logs(existing)] == [
        "2024-01-03|BTCUSDT", "2024-01-04|BTCUSDT"
    ]  # fmt: skip


def test_a_home_made_with_the_default_storage_opens_with_the_same_data(
    tmp_path: Path, laptop_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A DAGSTER_HOME from before dagster.yaml named the storage keeps its runs and materialisations."""
    old_home = tmp_path / "old_home"
    old_home.mkdir()
    run_id = str(uuid.uuid4())
    with DagsterInstance.from_ref(InstanceRef.from_dir(str(old_home))) as old:  # no dagster.yaml
        old.event_log_storage.store_event(materialization(run_id, "2024-01-01|BTCUSDT"))
    shutil.copy(laptop_home / "dagster.yaml", old_home / "dagster.yaml")
    instance = open_instance(old_home, monkeypatch)
    assert isinstance(instance.event_log_storage, FastSqliteEventLogStorage)
    assert [r.partition_key for r in instance.fetch_materializations(KEY, limit=10).records] == [
        "2024-01-01|BTCUSDT"
    ]


def test_a_backfill_we_add_is_dagster_s_own(laptop_home: Path) -> None:
    """As the UI's partition dialog adds it: its partitions, title and tags; not finished; its runs (once
    the daemon launches them) tagged with its id and their partition under the names the CLI reads."""
    market = MARKETS["um"]
    assets = build_market_assets(market, 31)
    with instance_from_dir(str(laptop_home), capture_logs=False) as instance:
        assert type(instance.compute_log_manager).__name__ == "NoOpComputeLogManager"
        instance.add_dynamic_partitions(tickers_partitions(market).name, ["BTCUSDT"])
        keys = ["2024-01-01|BTCUSDT", "2024-01-02|BTCUSDT"]
        backfill_id = new_backfill(
            instance, assets, keys, requested=time.time(), tags={"binance/reason": "test"},
            title="t", description="d",
        )  # fmt: skip
        backfill = instance.get_backfill(backfill_id)
    assert backfill is not None and backfill.status not in BULK_ACTION_TERMINAL_STATUSES
    assert (backfill.title, backfill.description, backfill.tags) == ("t", "d", {"binance/reason": "test"})
    subset = backfill.asset_backfill_data.target_subset  # type: ignore[union-attr]
    assert {
        str(k) for k in subset.get_partitions_subset(next(iter(assets.keys))).get_partition_keys()
    } == set(keys)
    assert (PARTITION_NAME_TAG, BACKFILL_ID_TAG) == ("dagster/partition", "dagster/backfill")


def test_the_production_instance_keeps_its_postgres_connections_open(
    postgres: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """deploy/dagster.yaml's PooledInstance: one connection kept per storage (dagster-postgres's default
    opens one per event), and what it writes another process's instance reads."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "dagster.yaml", home / "dagster.yaml")
    for name, value in postgres.create_database("pooled").env.items():
        monkeypatch.setenv(name, value)
    instance = open_instance(home, monkeypatch)
    assert isinstance(instance, PooledInstance)
    storage = instance.event_log_storage
    assert type(storage._engine.pool).__name__ == "QueuePool"  # type: ignore[attr-defined]
    run_id = str(uuid.uuid4())
    storage.store_event_batch([materialization(run_id, f"2024-01-0{day}|BTCUSDT") for day in (1, 2)])
    with DagsterInstance.from_config(str(home)) as other:
        assert len(other.fetch_materializations(KEY, limit=10).records) == 2
