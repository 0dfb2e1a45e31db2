"""Every use of Dagster's private API, behind one door (dagster 1.13.27; docs/design.md says why each exists).

When an upgrade moves what these reach into, tests fail: each partition's own figures
(test_assets.py::test_range_with_monthly_archive_matches_oracle), a failed day shown FAILED with one
planned event per run (test_assets.py::test_a_corrupt_day_fails_alone_and_its_rerun_repairs_it), and the
laptop instance's batched event writes (test_definitions.py, the `BatchedSqliteStorage` tests).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import yaml
from dagster import AssetExecutionContext, AssetKey, DagsterInstance, MultiPartitionKey
from dagster._core.events import AssetMaterializationPlannedData, DagsterEvent
from dagster._core.events.log import EventLogEntry
from dagster._core.instance.ref import InstanceRef
from dagster._core.storage.base_storage import DagsterStorage
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from dagster._core.storage.runs.sqlite.sqlite_run_storage import SqliteRunStorage
from dagster._core.storage.schedules.sqlite.sqlite_schedule_storage import SqliteScheduleStorage
from dagster._core.storage.sqlite_storage import (
    DagsterSqliteStorage,
    SqliteStorageConfig,
    _event_logs_directory,
    _runs_directory,
    _schedule_directory,
)
from dagster._serdes import ConfigurableClassData
from sqlalchemy.engine import Connection


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


class BatchedSqliteEventLogStorage(SqliteEventLogStorage):
    """Dagster's SQLite event log, with a batch of events written in one transaction per shard.

    Dagster hands a run's materialisations to `store_event_batch` where DAGSTER_EVENT_BATCH_SIZE is set
    (settings.DAGSTER_TUNING_DEFAULTS), but its SQLite event log stores a batch one event at a time, each
    opening its own connections to the run's shard and the index shard and committing both: about 20 ms
    an event, two events per ticker-day. Here a batch opens each shard once and commits once, all of it
    or, on an error, none of it (Dagster then stores the batch's events one by one). Other threads wait on
    the storage's lock for the batch, as they wait for one event."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None) -> None:
        self._batch: dict[str, Connection] | None = None
        self._batch_stack: ExitStack | None = None
        self._batch_thread: int | None = None
        super().__init__(base_dir, inst_data)
        self._db_lock = threading.RLock()  # type: ignore[assignment]  # the batch's thread opens two shards

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        with self._db_lock, ExitStack() as stack:
            self._batch, self._batch_stack, self._batch_thread = {}, stack, threading.get_ident()
            try:
                for event in events:
                    self.store_event(event)
            finally:
                self._batch = self._batch_stack = self._batch_thread = None

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        if self._batch is None or self._batch_stack is None or self._batch_thread != threading.get_ident():
            with super()._connect(shard) as conn:
                yield conn
        else:
            if shard not in self._batch:
                self._batch[shard] = self._batch_stack.enter_context(super()._connect(shard))
            yield self._batch[shard]


class BatchedSqliteStorage(DagsterSqliteStorage):
    """Dagster's SQLite storage (runs, event log, schedules under ``base_dir``) with the batched event log."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None) -> None:
        self.base_dir = base_dir
        self._run_storage = SqliteRunStorage.from_local(_runs_directory(base_dir))
        self._event_log_storage = BatchedSqliteEventLogStorage(_event_logs_directory(base_dir))
        self._schedule_storage = SqliteScheduleStorage.from_local(_schedule_directory(base_dir))
        self._inst_data = inst_data
        DagsterStorage.__init__(self)

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData, config_value: SqliteStorageConfig
    ) -> BatchedSqliteStorage:
        return cls.from_local(inst_data=inst_data, **config_value)


class LaptopInstance(DagsterInstance):
    """The laptop instance (dagster.yaml's `instance_class`): Dagster's default SQLite storage in the
    instance's directory, where the default puts it, as `BatchedSqliteStorage`.

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
            BatchedSqliteStorage.__name__,
            yaml.dump({"base_dir": base_dir}, default_flow_style=False),
        )
        return {**InstanceRef.config_defaults(base_dir), "storage": storage}
