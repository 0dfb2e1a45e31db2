"""The Dagster wiring: the one `Definitions` (`definitions.py`), the per-market assets and checks
(`assets.py`), sensors, resources, the `<market>_backfill` job and the backfill submission it shares with
`binance-assets backfill` (`backfill_job.py`, `backfills.py`), a run's days, tags and totals
(`partition_range.py`, `run_metadata.py`), which failures retry (`failures.py`) and the instance
subclasses `dagster.yaml` names (`dagster_internals.py`). The layers beneath (`pipeline`, `bars`,
`vision`, `trust`, the stores of `clickhouse`) and the read API do not import it: only the ClickHouse IO
manager takes a run's days from `partition_range.py`, and `settings` builds the Vision resource on demand.

Importing it asks OpenBLAS for one thread (processes.py): the processes that load the code location run
this first.
"""

from binance_assets.processes import one_blas_thread

one_blas_thread()
