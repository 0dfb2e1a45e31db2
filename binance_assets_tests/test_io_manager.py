"""ClickHouseIOManager through real Dagster runs on a real store.

Each test materialises small definitions with the real partitions shape (daily `date` x dynamic
`ticker`) on a fresh `instance_for_test()` and a fresh chDB store in tmp_path. The core write/replace
tests also run against a ClickHouse server when CLICKHOUSE_TEST_URL is set (in a throwaway database).
"""

import datetime as dt
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
import pytest

from binance_assets.clickhouse.client import open_client
from binance_assets.clickhouse.io_manager import ClickHouseIOManager
from binance_assets.clickhouse.resource import ClickHouseResource
from binance_assets.clickhouse.store import Store
from binance_assets.clickhouse.tables import BARS_TABLE, LIQUIDITY_TABLE
from binance_assets_tests.rows import bars_of_day as bars

TICKERS = "spot_tickers"
PARTITIONS = dg.MultiPartitionsDefinition(
    {
        "date": dg.DailyPartitionsDefinition(start_date="2024-01-01", end_date="2024-03-01"),
        "ticker": dg.DynamicPartitionsDefinition(name=TICKERS),
    }
)
PARTITION_EXPR = {"partition_expr": {"date": "day", "ticker": "ticker"}}
D1, D2, D3, D4, D5 = (dt.date(2024, 1, day) for day in range(1, 6))
Day = tuple[str, dt.date]  # (ticker, day) of one partition
Bars = Callable[[list[Day]], object]  # a run's (ticker, day)s -> the hl5s_bars output value


def liquidity(days: Sequence[Day]) -> pa.Table:
    n = len(days)
    columns: dict[str, list[Any]] = {
        "market": ["spot"] * n,
        "ticker": [ticker for ticker, _ in days],
        "day": [day for _, day in days],
        **{name: [1] * n for name in LIQUIDITY_TABLE.schema.names[3:11]},
        "source": ["daily"] * n,
        "archive_sha256": ["0" * 64] * n,
        "loaded_at": [dt.datetime(2024, 6, 1, tzinfo=dt.UTC)] * n,
        "duplicate_rows": [0] * n,
        "nonpositive_rows": [0] * n,
        "dataset": ["trades"] * n,
        "uncovered_trade_ids": [0] * n,
        "uncovered_id_ranges": [""] * n,
    }
    return pa.Table.from_pydict(columns, schema=LIQUIDITY_TABLE.schema)


def versioned(version: float, n: int = 6) -> Bars:
    """One Arrow table holding every (ticker, day) of the run."""
    return lambda days: pa.concat_tables([bars(ticker, day, n, version) for ticker, day in days])


def spot_asset(make_bars: Bars, metadata: dict[str, Any] | None = None) -> dg.AssetsDefinition:
    """The shape of the real per-market multi_asset: bars first, daily_liquidity last."""
    outs = {
        name: dg.AssetOut(
            key_prefix=["binance", "spot"],
            metadata=PARTITION_EXPR if metadata is None else metadata,
            io_manager_key="clickhouse_io_manager",
        )
        for name in ("hl5s_bars", "daily_liquidity")
    }

    @dg.multi_asset(outs=outs, partitions_def=PARTITIONS, backfill_policy=dg.BackfillPolicy.multi_run(31))
    def spot(context: dg.AssetExecutionContext) -> Iterator[dg.Output]:
        days = sorted(
            (key.split("|")[1], dt.date.fromisoformat(key.split("|")[0])) for key in context.partition_keys
        )
        yield dg.Output(make_bars(days), "hl5s_bars")
        yield dg.Output(liquidity(days), "daily_liquidity")

    return spot


def io_manager(url: str, **clickhouse: str) -> ClickHouseIOManager:
    return ClickHouseIOManager(clickhouse=ClickHouseResource(url=url, **clickhouse))


@dataclass
class Runs:
    """A store, a Dagster instance with two tickers, and helpers to run and inspect."""

    io_manager: ClickHouseIOManager
    instance: dg.DagsterInstance

    def run(
        self, asset: dg.AssetsDefinition, ticker: str, first: dt.date, last: dt.date | None = None
    ) -> None:
        """Materialise one partition, or a range of days of one ticker in one run (a backfill chunk)."""
        start, end = f"{first}|{ticker}", f"{last or first}|{ticker}"
        tags = {"dagster/asset_partition_range_start": start, "dagster/asset_partition_range_end": end}
        result = dg.materialize(
            [asset], instance=self.instance, resources={"clickhouse_io_manager": self.io_manager}, tags=tags
        )
        assert result.success

    def fail(
        self,
        asset: dg.AssetsDefinition,
        ticker: str,
        first: dt.date,
        last: dt.date | None = None,
        error: type[Exception] = ValueError,
    ) -> str:
        """Materialise expecting the IO manager (or the stream) to raise error; return its message."""
        with pytest.raises(error) as failure:
            self.run(asset, ticker, first, last)
        return str(failure.value)

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        db = self.io_manager.clickhouse.database
        with open_client(self.io_manager.clickhouse.url) as client:
            return client.query(sql.replace("{db}", f"`{db}`")).result_rows

    def days(self, ticker: str) -> dict[dt.date, tuple[int, float]]:
        """Per day of ticker: (bar rows, version)."""
        rows = self.query(
            f"SELECT day, count(), max(open) FROM {{db}}.hl5s WHERE ticker = '{ticker}' GROUP BY day"
        )
        return {day: (count, version) for day, count, version in rows}

    def liquidity_days(self, ticker: str) -> list[dt.date]:
        rows = self.query(f"SELECT day FROM {{db}}.daily_liquidity WHERE ticker = '{ticker}' ORDER BY day")
        return [day for (day,) in rows]


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(TICKERS, ["BTCUSDT", "ETHUSDT"])
        yield instance


@pytest.fixture
def store(tmp_path: Path, instance: dg.DagsterInstance) -> Runs:
    return Runs(io_manager(f"chdb://{tmp_path / 'clickhouse'}"), instance)


@pytest.fixture(params=["chdb", "server"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path, instance: dg.DagsterInstance) -> Iterator[Runs]:
    """The chDB store, and a ClickHouse server when CLICKHOUSE_TEST_URL is set."""
    if request.param == "chdb":
        yield Runs(io_manager(f"chdb://{tmp_path / 'clickhouse'}"), instance)
        return
    url = os.environ.get("CLICKHOUSE_TEST_URL")
    if not url:
        pytest.skip(
            "CLICKHOUSE_TEST_URL is not set: no ClickHouse server to run the http(s):// tests against"
        )
    server = Runs(io_manager(url, database=f"binance_test_{uuid.uuid4().hex[:12]}"), instance)
    yield server
    server.query("DROP DATABASE IF EXISTS {db}")


def test_same_partition_twice_leaves_one_copy(any_store: Runs) -> None:
    for _ in range(2):
        any_store.run(spot_asset(versioned(1.0)), "BTCUSDT", D1)
    assert any_store.days("BTCUSDT") == {D1: (6, 1.0)}
    assert any_store.liquidity_days("BTCUSDT") == [D1]


def test_rerun_with_fewer_bars_leaves_no_stale_rows(any_store: Runs) -> None:
    any_store.run(spot_asset(versioned(1.0, n=6)), "BTCUSDT", D1)
    any_store.run(spot_asset(versioned(2.0, n=2)), "BTCUSDT", D1)
    assert any_store.days("BTCUSDT") == {D1: (2, 2.0)}


def test_neighbouring_tickers_and_days_are_untouched(any_store: Runs) -> None:
    first = spot_asset(versioned(1.0))
    for ticker, day in [("BTCUSDT", D1), ("BTCUSDT", D2), ("ETHUSDT", D1)]:
        any_store.run(first, ticker, day)
    any_store.run(spot_asset(versioned(2.0, n=3)), "BTCUSDT", D1)
    assert any_store.days("BTCUSDT") == {D1: (3, 2.0), D2: (6, 1.0)}
    assert any_store.days("ETHUSDT") == {D1: (6, 1.0)}


def test_a_multi_day_run_writes_one_slice(store: Runs) -> None:
    store.run(spot_asset(versioned(1.0)), "BTCUSDT", D1, D5)
    store.run(spot_asset(versioned(2.0, n=1)), "BTCUSDT", D2, D4)
    assert store.days("BTCUSDT") == {D1: (6, 1.0), D2: (1, 2.0), D3: (1, 2.0), D4: (1, 2.0), D5: (6, 1.0)}
    assert store.liquidity_days("BTCUSDT") == [D1, D2, D3, D4, D5]


def test_metadata_names_table_schema_rows_and_query(store: Runs) -> None:
    store.run(spot_asset(versioned(1.0, n=4)), "BTCUSDT", D2, D3)
    event = store.instance.get_latest_materialization_event(dg.AssetKey(["binance", "spot", "hl5s_bars"]))
    assert event is not None and event.asset_materialization is not None
    metadata = {key: value.value for key, value in event.asset_materialization.metadata.items()}
    assert metadata["dagster/row_count"] == 8
    assert metadata["dagster/table_name"] == "binance.hl5s"
    assert [column.name for column in metadata["dagster/column_schema"].columns] == BARS_TABLE.schema.names
    assert metadata["dagster/column_schema"].columns[3].type == "DateTime('UTC')"
    assert (metadata["tickers"], metadata["days"]) == ("BTCUSDT", 2)
    assert metadata["seconds"] >= 0
    assert metadata["Query"] == (
        "SELECT * FROM `binance`.`hl5s` WHERE market = 'spot' AND ticker = 'BTCUSDT'"
        " AND day >= '2024-01-02' AND day < '2024-01-04' ORDER BY `market`, `ticker`, `ts`"
    )


def test_a_bad_type_raises_and_leaves_previous_rows(store: Runs) -> None:
    store.run(spot_asset(versioned(1.0)), "BTCUSDT", D1, D2)

    def bad_open(days: list[Day]) -> pa.Table:
        table = versioned(2.0)(days)
        return table.set_column(4, "open", pa.array(["2.0"] * (table.num_rows - 1) + ["n/a"]))

    assert "column 'open': cannot cast string to double" in store.fail(
        spot_asset(bad_open), "BTCUSDT", D1, D2
    )
    assert store.days("BTCUSDT") == {D1: (6, 1.0), D2: (6, 1.0)}


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (lambda days: bars("ETHUSDT", D1, version=2.0), "day(s) of 'ETHUSDT' outside this run's partitions"),
        (
            lambda days: bars("BTCUSDT", D3, version=2.0),
            "1 day(s) of 'BTCUSDT' outside this run's partitions",
        ),
        (
            lambda days: bars("BTCUSDT", D1, version=2.0).set_column(0, "market", pa.array(["um"] * 6)),
            "rows of market ['um'] in an output of 'spot'",
        ),
    ],
    ids=["other ticker", "day outside the run", "other market"],
)
def test_rows_outside_the_run_raise_before_any_delete(store: Runs, rows: Bars, message: str) -> None:
    store.run(spot_asset(versioned(1.0)), "BTCUSDT", D1)
    store.run(spot_asset(versioned(1.0)), "ETHUSDT", D1)
    assert message in store.fail(spot_asset(rows), "BTCUSDT", D1, D2)
    assert store.days("BTCUSDT") == {D1: (6, 1.0)}
    assert store.days("ETHUSDT") == {D1: (6, 1.0)}


def test_a_data_frame_output_is_refused_and_leaves_previous_rows(store: Runs) -> None:
    """A pandas DataFrame iterates over its column names: refused by name, not streamed."""
    store.run(spot_asset(versioned(1.0)), "ETHUSDT", D1)
    frame = spot_asset(lambda days: versioned(3.0)(days).to_pandas())
    message = store.fail(frame, "ETHUSDT", D1, error=TypeError)
    assert "cannot store <class 'pandas.DataFrame'>: return a pyarrow Table" in message
    assert "pyarrow.Table.from_pandas(frame, preserve_index=False)" in message
    assert store.days("ETHUSDT") == {D1: (6, 1.0)}


def test_stream_replaces_day_by_day_and_clears_days_without_rows(store: Runs) -> None:
    store.run(spot_asset(versioned(1.0)), "BTCUSDT", D1, D4)

    def per_day(days: list[Day]) -> Iterator[pa.Table]:
        yield pa.concat_tables([bars("BTCUSDT", D1, 2, 2.0), bars("BTCUSDT", D2, 3, 2.0)])  # several days
        yield bars("BTCUSDT", D4, 4, 2.0)  # D3 has no bars now

    store.run(spot_asset(per_day), "BTCUSDT", D1, D4)
    assert store.days("BTCUSDT") == {D1: (2, 2.0), D2: (3, 2.0), D4: (4, 2.0)}


def test_stream_failing_on_day_3_keeps_old_rows_from_day_3_on(store: Runs) -> None:
    store.run(spot_asset(versioned(1.0)), "BTCUSDT", D1, D5)

    def corrupt_day_3(days: list[Day]) -> Iterator[pa.Table]:
        for ticker, day in days:
            if day == D3:
                raise OSError(f"corrupt archive for {day}")
            yield bars(ticker, day, 2, 2.0)

    message = store.fail(spot_asset(corrupt_day_3), "BTCUSDT", D1, D5, error=OSError)
    assert message == "corrupt archive for 2024-01-03"
    assert store.days("BTCUSDT") == {D1: (2, 2.0), D2: (2, 2.0), D3: (6, 1.0), D4: (6, 1.0), D5: (6, 1.0)}


def test_stream_holds_the_store_only_while_writing(store: Runs) -> None:
    """Between two tables another user (a sensor, the CLI, another run) can open the embedded store."""
    other = Store(store.io_manager.clickhouse.url)
    seen: list[int] = []

    def reading_between_days(days: list[Day]) -> Iterator[pa.Table]:
        for ticker, day in days:
            with other.open(lock_timeout=2) as opened:  # StoreBusyError if the IO manager held it
                seen.append(int(opened.client.command("SELECT count() FROM binance.hl5s")))
            yield bars(ticker, day, 2, 2.0)

    store.run(spot_asset(reading_between_days), "BTCUSDT", D1, D3)
    assert seen == [0, 0, 0]  # opened each time; the three days are written together, once
    assert store.days("BTCUSDT") == {D1: (2, 2.0), D2: (2, 2.0), D3: (2, 2.0)}


def test_stream_with_a_day_in_two_tables_is_refused(store: Runs) -> None:
    twice = spot_asset(lambda days: iter([bars("BTCUSDT", D1, 2), bars("BTCUSDT", D1, 2)]))
    assert "BTCUSDT 2024-01-01 came in two tables" in store.fail(twice, "BTCUSDT", D1)


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"partition_expr": "day"}, "'partition_expr' must map each dimension to a column"),
        ({"partition_expr": {"date": "day"}}, "maps dimension 'ticker' to None"),
        ({"partition_expr": {"date": "day", "ticker": "symbol"}}, "maps dimension 'ticker' to 'symbol'"),
        (
            {"partition_expr": {"date": "ticker", "ticker": "day"}},
            "(column day) must be daily time partitions",
        ),
    ],
)
def test_partition_expr_must_map_each_dimension(store: Runs, metadata: dict[str, Any], message: str) -> None:
    assert message in store.fail(spot_asset(versioned(1.0), metadata), "BTCUSDT", D1)


def test_partition_expr_defaults_to_the_assets_dimensions(store: Runs) -> None:
    store.run(spot_asset(versioned(1.0), metadata={}), "BTCUSDT", D1, D2)
    assert store.days("BTCUSDT") == {D1: (6, 1.0), D2: (6, 1.0)}


def test_unknown_asset_name_is_refused(store: Runs) -> None:
    @dg.asset(key=["binance", "spot", "klines"], partitions_def=PARTITIONS, metadata=PARTITION_EXPR)
    def klines() -> pa.Table:
        return bars("BTCUSDT", D1)

    result = dg.materialize(
        [klines],
        instance=store.instance,
        resources={"io_manager": store.io_manager},
        partition_key="2024-01-01|BTCUSDT",
        raise_on_error=False,
    )
    assert not result.success
    assert "no table for asset binance/spot/klines" in str(
        result.get_step_failure_events()[0].step_failure_data
    )


def test_load_input_is_refused_naming_the_read_api(store: Runs) -> None:
    """No asset reads the tables as an input: research reads them through read_bars (read/api.py)."""
    store.run(spot_asset(versioned(1.0)), "BTCUSDT", D1)

    @dg.asset(partitions_def=PARTITIONS, ins={"hl5s_bars": dg.AssetIn(key=["binance", "spot", "hl5s_bars"])})
    def consumer(hl5s_bars: pa.Table) -> None:
        raise AssertionError("the input was loaded")

    result = dg.materialize(
        [spot_asset(versioned(1.0)), consumer],
        selection=[dg.AssetKey("consumer")],
        instance=store.instance,
        resources={"clickhouse_io_manager": store.io_manager},
        partition_key="2024-01-01|BTCUSDT",
        raise_on_error=False,
    )
    assert not result.success
    message = str(result.get_step_failure_events()[0].step_failure_data)
    assert "ClickHouseIOManager loads no inputs (binance/spot/hl5s_bars)" in message
    assert "binance_assets.read.api.read_bars" in message


def test_a_new_slice_is_written_without_a_delete(store: Runs) -> None:
    mutations = "SELECT count() FROM system.mutations WHERE database = 'binance' AND table = 'hl5s'"
    store.run(spot_asset(versioned(1.0)), "BTCUSDT", D1, D2)
    assert store.query(mutations) == [(0,)]  # count() found the slice empty: no DELETE sent
    store.run(spot_asset(versioned(2.0)), "BTCUSDT", D1, D2)
    assert store.query(mutations) == [(1,)]  # one lightweight DELETE for the whole slice
