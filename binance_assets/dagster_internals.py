"""Every use of Dagster's private API, behind one door (dagster 1.13.27; docs/design.md says why each exists).

When an upgrade moves what these functions reach into, test_assets.py fails: each partition's own figures
(test_range_with_monthly_archive_matches_oracle) and a failed day shown FAILED with one planned event per
run (test_a_corrupt_day_fails_alone_and_its_rerun_repairs_it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from dagster import AssetExecutionContext, AssetKey, MultiPartitionKey
from dagster._core.events import AssetMaterializationPlannedData, DagsterEvent


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
