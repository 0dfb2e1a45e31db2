"""Every use of Dagster's private API, behind one door (dagster 1.13.27; docs/design.md says why each exists).

When an upgrade moves what these reach into, tests fail: each partition's own figures
(test_assets.py::test_range_with_monthly_archive_matches_oracle), a failed day shown FAILED with one
planned event per run (test_assets.py::test_a_corrupt_day_fails_alone_and_its_rerun_repairs_it), the
laptop instance's event log and its run shards, the names Dagster does not export and the backfills we add
(test_dagster_internals.py), two runs of one process at once (test_cli.py::
test_materialize_runs_tickers_in_parallel).

The names imported ``as`` themselves are re-exported: Dagster does not export them. They are the tags that
name a run's partition and its backfill (stored with every run: the CLI reads them back), a backfill's
finished statuses, and the type of a step's failure.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import sqlalchemy
import yaml
from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    DagsterInstance,
    MultiPartitionKey,
)
from dagster._core.definitions.assets.graph.asset_graph import AssetGraph
from dagster._core.events import AssetMaterializationPlannedData, DagsterEvent, DagsterEventType
from dagster._core.events.log import EventLogEntry
from dagster._core.execution.backfill import BULK_ACTION_TERMINAL_STATUSES as BULK_ACTION_TERMINAL_STATUSES
from dagster._core.execution.backfill import PartitionBackfill
from dagster._core.execution.plan.objects import StepFailureData as StepFailureData
from dagster._core.instance.ref import InstanceRef
from dagster._core.storage.base_storage import DagsterStorage
from dagster._core.storage.event_log.schema import SqlEventLogStorageTable
from dagster._core.storage.event_log.sqlite.sqlite_event_log import INDEX_SHARD_NAME, SqliteEventLogStorage
from dagster._core.storage.runs.sqlite.sqlite_run_storage import SqliteRunStorage
from dagster._core.storage.schedules.sqlite.sqlite_schedule_storage import SqliteScheduleStorage
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
from dagster._core.storage.sqlite_storage import (
    DagsterSqliteStorage,
    SqliteStorageConfig,
    _event_logs_directory,
    _runs_directory,
    _schedule_directory,
)
from dagster._core.storage.tags import BACKFILL_ID_TAG as BACKFILL_ID_TAG
from dagster._core.storage.tags import PARTITION_NAME_TAG as PARTITION_NAME_TAG
from dagster._core.utils import make_new_backfill_id
from dagster._serdes import ConfigurableClassData
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool

_NO_CAPTURE = {
    "compute_logs": {
        "module": "dagster._core.storage.noop_compute_log_manager",
        "class": "NoOpComputeLogManager",
    }
}


def instance_from_dir(home: str, *, capture_logs: bool = True) -> DagsterInstance:
    """The instance of ``home``'s dagster.yaml, its runs' output captured or not. A run captures its
    process's stdout/stderr by redirecting file descriptors 1 and 2: the CLI's runs in parallel threads
    would swap each other's streams (and the CLI's own output), so those capture nothing (cli/common.py).
    `DagsterInstance.get()` takes no overrides."""
    overrides = None if capture_logs else _NO_CAPTURE
    return DagsterInstance.from_ref(InstanceRef.from_dir(home, overrides=overrides))


def new_backfill(
    instance: DagsterInstance,
    assets: AssetsDefinition,
    partition_names: Sequence[str],
    *,
    requested: float,
    tags: Mapping[str, str],
    title: str,
    description: str,
) -> str:
    """Add a backfill of ``partition_names`` of every asset of the multi-asset ``assets``, as the UI's
    partition dialog adds one; its id. Dagster's public API launches backfills only from the UI or
    GraphQL, and a whole market needs many at one ``requested`` time (orchestration/backfills.py)."""
    backfill = PartitionBackfill.from_asset_partitions(
        backfill_id=make_new_backfill_id(),
        asset_graph=AssetGraph.from_assets([assets]),
        partition_names=partition_names,
        asset_selection=list(assets.keys),
        backfill_timestamp=requested,
        tags=dict(tags),
        dynamic_partitions_store=instance,
        all_partitions=False,
        title=title,
        description=description,
        run_config=None,
    )
    instance.add_backfill(backfill)
    return backfill.backfill_id


def add_partition_metadata(
    context: AssetExecutionContext,
    key: AssetKey,
    metadata: Iterable[tuple[MultiPartitionKey, Mapping[str, Any]]],
) -> None:
    """Give each of the run's partitions its own metadata, as `context.add_asset_metadata(partition_key=)`
    does after it checks the key. That check lists every key of the run's range, with an instance query
    per dynamic key (StepExecutionContext.add_asset_metadata): quadratic in the run's days, about 13 ms a
    day in a 365-day run and 40 ms in a 1096-day one. Our keys are the run's own days
    (partition_range.py), so they go to the step's metadata accumulator directly."""
    step = context.op_execution_context._step_execution_context
    accumulator = step._metadata_accumulator
    for partition, figures in metadata:
        accumulator = accumulator.with_additional_asset_metadata(
            asset_key=key, partition_key=partition, metadata=figures
        )
    step._metadata_accumulator = accumulator


def plan_partitions(context: AssetExecutionContext, partitions: Mapping[AssetKey, Iterable[str]]) -> None:
    """Record a materialisation planned for each partition, in this run.

    Dagster shows a partition FAILED when its latest planned event belongs to a failed run that did not
    materialise it (partition_status_cache.build_failed_and_in_progress_partition_subset), and reads those
    events per partition. With DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS (the Helm values set it: one
    planned event per asset and run) the run's planned event names no partition, so a failed day would show
    MISSING. User code cannot log an AssetMaterializationFailure; this per-partition planned event, logged
    for the failed days only, has the same effect."""
    step = context.op_execution_context._step_execution_context
    for key, keys in partitions.items():
        for partition in keys:
            event = DagsterEvent.build_asset_materialization_planned_event(
                context.job_name, step.step.key, AssetMaterializationPlannedData(key, partition=partition)
            )
            context.instance.report_dagster_event(event, run_id=context.run.run_id)


KEPT_SHARDS = 8
"""SQLite files (the index and the latest runs' shards) whose connections a process keeps open."""


class FastSqliteEventLogStorage(SqliteEventLogStorage):
    """Dagster's SQLite event log, with its connections kept open and a batch written in one transaction.

    Dagster's own opens a new engine and connection for every event, to the run's shard and, for an asset
    event, to the index shard too, and closes them after one commit. Closing the last connection to a WAL
    database checkpoints it, with its fsyncs: about 15 ms an event on its own, 40 ms a materialisation.
    Here each process keeps a pool per shard (the index and the latest KEPT_SHARDS runs) with
    `synchronous=NORMAL`, WAL's own setting: a commit is durable once the OS has it, so an application
    crash loses nothing and a power cut may lose the last events, never the database.

    Dagster hands a run's materialisations to `store_event_batch` (DAGSTER_EVENT_BATCH_SIZE,
    settings.DAGSTER_TUNING_DEFAULTS); its SQLite event log stores them one at a time, 3 ms each even with
    the pools. Here a batch of materialisations is stored as dagster-postgres stores one (0.4 ms each),
    any batch in one transaction per shard: all of it or, on an error, none of it (Dagster then stores
    the batch's events one by one). Other threads wait on the storage's lock, as they wait for one event."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None) -> None:
        self._engines: OrderedDict[str, Engine] = OrderedDict()
        self._engines_pid = os.getpid()
        self._batch: dict[str, Connection] | None = None
        self._batch_stack: ExitStack | None = None
        self._run_template: tempfile.TemporaryDirectory[str] | None = None
        self._made_a_run_shard = False
        super().__init__(base_dir, inst_data)
        self._db_lock = threading.RLock()  # type: ignore[assignment]  # a batch opens two shards

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        with self._db_lock, ExitStack() as stack:
            self._batch, self._batch_stack = {}, stack
            try:
                if len({event.dagster_event_type for event in events}) == 1 and _asset_events(events):
                    self._store_asset_events(events)
                else:
                    for event in events:
                        self.store_event(event)
            finally:
                self._batch = self._batch_stack = None

    def _store_asset_events(self, events: Sequence[EventLogEntry]) -> None:
        """A batch of materialisations (or observations) as dagster-postgres stores one: one INSERT of
        the rows in each run's shard and in the index, their tags, and the asset's entry from the last."""
        rows = [self._event_to_row(event) for event in events]
        for run_id in dict.fromkeys(event.run_id for event in events):
            with self.run_connection(run_id) as conn:
                conn.execute(SqlEventLogStorageTable.insert(), [r for r in rows if r["run_id"] == run_id])
        with self.index_transaction() as conn:
            inserted = conn.execute(
                SqlEventLogStorageTable.insert().returning(
                    SqlEventLogStorageTable.c.id, sort_by_parameter_order=True
                ),
                rows,
            )
            ids = [int(row[0]) for row in inserted]
            self._store_asset_event_tags(conn, events, ids)
            self._store_asset_event(conn, events[-1], ids[-1])

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        with self._db_lock:
            if self._batch is None or self._batch_stack is None:
                with self._transaction(shard) as conn:
                    yield conn
            else:
                if shard not in self._batch:
                    self._batch[shard] = self._batch_stack.enter_context(self._transaction(shard))
                yield self._batch[shard]

    def has_table(self, table_name: str) -> bool:
        with self.index_connection() as conn:
            return bool(conn.dialect.has_table(conn, table_name))

    @contextmanager
    def _transaction(self, shard: str) -> Iterator[Connection]:
        engine = self._engine(shard)
        if shard not in self._initialized_dbs:
            if shard == INDEX_SHARD_NAME or not self._new_run_shard(shard):
                self._initdb(engine)
            self._initialized_dbs.add(shard)
        with engine.connect() as conn, conn.begin():
            yield conn

    def _new_run_shard(self, shard: str) -> bool:
        """Make a new run's shard by copying an empty one that Dagster made (`_initdb`) once in this
        process: Dagster makes each with a statement and a commit per table, index and its alembic stamp,
        about 80 ms a run, and a copy takes 2 ms. False (nothing done) for the process's first new shard,
        which Dagster makes (a process of one run pays for no copy), and where the shard exists."""
        path = self.path_for_shard(shard)
        if os.path.exists(path):
            return False
        if self._run_template is None:
            if not self._made_a_run_shard:
                self._made_a_run_shard = True
                return False
            self._run_template = tempfile.TemporaryDirectory(prefix="binance-assets-run-shard-")
            engine = create_engine(f"sqlite:///{self._run_template.name}/empty.db", poolclass=NullPool)
            self._initdb(engine)
            engine.dispose()
        partial = f"{path}.{os.getpid()}.{threading.get_ident()}.part"
        shutil.copyfile(f"{self._run_template.name}/empty.db", partial)
        try:
            os.link(partial, path)  # not over a shard another process made meanwhile
        except FileExistsError:
            return False
        finally:
            os.unlink(partial)
        return True

    def _engine(self, shard: str) -> Engine:
        if self._engines_pid != os.getpid():  # a forked child: the connections are its parent's
            self._engines, self._engines_pid = OrderedDict(), os.getpid()
        engine = self._engines.get(shard)
        if engine is None:
            engine = create_engine(
                self.conn_string_for_shard(shard), connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS}
            )
            sqlalchemy.event.listen(engine, "connect", _wal_synchronous_normal)
            self._engines[shard] = engine
            if len(self._engines) > KEPT_SHARDS:
                self._engines.popitem(last=False)[1].dispose()
        self._engines.move_to_end(shard)
        return engine

    def dispose(self) -> None:
        for engine in self._engines.values():
            engine.dispose()
        self._engines.clear()
        if self._run_template is not None:
            self._run_template.cleanup()
            self._run_template = None
        super().dispose()


def _asset_events(events: Sequence[EventLogEntry]) -> bool:
    kinds = {DagsterEventType.ASSET_MATERIALIZATION, DagsterEventType.ASSET_OBSERVATION}
    return all(event.dagster_event_type in kinds for event in events)


def _wal_synchronous_normal(connection: Any, _record: Any) -> None:
    connection.execute("PRAGMA synchronous=NORMAL")


class FastSqliteStorage(DagsterSqliteStorage):
    """Dagster's SQLite storage (runs, event log, schedules under ``base_dir``) with the faster event log."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None) -> None:
        self.base_dir = base_dir
        self._run_storage = SqliteRunStorage.from_local(_runs_directory(base_dir))
        self._event_log_storage = FastSqliteEventLogStorage(_event_logs_directory(base_dir))
        self._schedule_storage = SqliteScheduleStorage.from_local(_schedule_directory(base_dir))
        self._inst_data = inst_data
        DagsterStorage.__init__(self)

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData, config_value: SqliteStorageConfig
    ) -> FastSqliteStorage:
        return cls.from_local(inst_data=inst_data, **config_value)


class _Instance(DagsterInstance):
    """What both instance classes change in Dagster's own."""

    def get_yaml_python_handlers(self) -> Sequence[logging.Handler]:
        """The `python_logs` handlers, as Dagster makes them; none without any.

        Dagster runs `logging.config.dictConfig` at each run's start even with none configured. That closes
        every logging handler of the process, and it takes logging's lock and then each handler's, while a
        handler that is storing an event holds its own and then waits for logging's (SQLAlchemy's logger
        checks). Two runs of one process, as `materialize` runs with BINANCE_PARALLEL_TICKERS, then
        deadlock."""
        if not self.get_python_log_dagster_handler_config():
            return []
        return super().get_yaml_python_handlers()


class LaptopInstance(_Instance):
    """The laptop instance (dagster.yaml's `instance_class`): Dagster's default SQLite storage in the
    instance's directory, where the default puts it, as `FastSqliteStorage`.

    A `storage:` entry would have to name that directory (as `env: DAGSTER_HOME`), which an instance
    opened by path (`DagsterInstance.from_config`, `dagster dev` without DAGSTER_HOME) does not set; the
    instance class's defaults are given the directory."""

    @classmethod
    def config_schema(cls) -> dict[str, Any]:
        return {}

    @staticmethod
    def config_defaults(base_dir: str) -> Mapping[str, ConfigurableClassData | None]:
        storage = ConfigurableClassData(
            __name__,
            FastSqliteStorage.__name__,
            yaml.dump({"base_dir": base_dir}, default_flow_style=False),
        )
        return {**InstanceRef.config_defaults(base_dir), "storage": storage}


POOL_RECYCLE_SECONDS = 3600
POOL_OVERFLOW = 8
"""Connections a process opens beyond its one kept per storage when threads need them at once."""


class PooledInstance(_Instance):
    """The production instance (deploy/dagster.yaml's `instance_class`): dagster-postgres with one
    connection kept open per storage in every process, as Dagster does for its webserver only
    (`optimize_for_webserver`). Elsewhere dagster-postgres opens a connection for each event, and each
    opening pays a TCP connect and a SCRAM authentication: about 20 ms an event, more than the event."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.optimize_for_webserver(
            statement_timeout=0, pool_recycle=POOL_RECYCLE_SECONDS, max_overflow=POOL_OVERFLOW
        )

    @classmethod
    def config_schema(cls) -> dict[str, Any]:
        return {}

    @staticmethod
    def config_defaults(base_dir: str) -> Mapping[str, ConfigurableClassData | None]:
        return InstanceRef.config_defaults(base_dir)
