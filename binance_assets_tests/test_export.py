"""`binance-assets export` on a store the real pipeline filled: the Hive layout, DuckDB, polars and pyarrow
reading it back as `read_bars`, re-exports replacing files, the summary, bad arguments."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pandas as pd
import polars as pl
import pyarrow.dataset as ds
import pytest

from binance_assets import read_bars
from binance_assets.read.export import Part, month_parts
from binance_assets_tests.loaded_store import DAYS, LoadedStore

FIRST, LAST = DAYS[0].isoformat(), DAYS[-1].isoformat()
RUN = """
import sys
from binance_assets.cli.main import main
code = main(sys.argv[1:])
assert "dagster" not in sys.modules, "export imported Dagster"
sys.exit(code)
"""


def export(store: LoadedStore, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a process of its own, on the loaded store; it must not import Dagster."""
    env = {**os.environ, "CLICKHOUSE_URL": store.url}
    command = [sys.executable, "-c", RUN, "export", "--market", "um", "--out", str(out), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=out.parent)


def files(out: Path) -> list[str]:
    return sorted(str(path.relative_to(out)) for path in out.rglob("*") if path.is_file())


def read_back(out: Path, ticker: str) -> dict[str, pd.DataFrame]:
    """The dataset's bars of one ticker as DuckDB, polars and pyarrow read them, by ts."""
    glob = f"{out}/**/*.parquet"
    frames = {
        "duckdb": duckdb.sql(
            f"SELECT * FROM read_parquet('{glob}', hive_partitioning = true) WHERE ticker = '{ticker}'"
        ).df(),
        "polars": pl.scan_parquet(glob, hive_partitioning=True)
        .filter(pl.col("ticker") == ticker)
        .collect()
        .to_pandas(),
        "pyarrow": ds.dataset(out, partitioning="hive")
        .to_table(filter=ds.field("ticker") == ticker)
        .to_pandas(),
    }
    return {name: frame.sort_values("ts", ignore_index=True) for name, frame in frames.items()}


def assert_reads_back(out: Path, ticker: str, first: str, last: str, interval: str) -> None:
    want = read_bars("um", ticker, first, last, interval)
    for reader, frame in read_back(out, ticker).items():
        assert set(frame["interval"].astype(str)) == {interval}, reader
        assert set(frame["market"].astype(str)) == {"um"}, reader
        got = frame[list(want.columns)]
        got = got.assign(ts=pd.to_datetime(got["ts"], utc=True).astype(want["ts"].dtype))
        pd.testing.assert_frame_equal(got, want, check_dtype=False, obj=reader)


def test_export_writes_hive_parquet_that_reads_back_as_read_bars(
    reader_env: LoadedStore, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = export(reader_env, out, "--start", FIRST, "--end", LAST, "--interval", "1m")
    assert result.returncode == 0, result.stderr
    month = "interval=1m/market=um/ticker={}/year=2024/month={}/{}.parquet"
    assert files(out) == [
        month.format(ticker, number, span)
        for ticker in ("BTCUSDT", "ETHUSDT")  # every ticker loaded in um
        for number, span in (("01", "2024-01-30_2024-01-31"), ("02", "2024-02-01_2024-02-02"))
    ]
    for ticker in ("BTCUSDT", "ETHUSDT"):
        assert_reads_back(out, ticker, FIRST, LAST, "1m")
    # the summary: rows, files and bytes of what is on disk
    rows = sum(read_bars("um", t, FIRST, LAST, "1m").shape[0] for t in ("BTCUSDT", "ETHUSDT"))
    written = list(out.rglob("*.parquet"))
    size = sum(path.stat().st_size for path in written)
    summary = result.stdout.strip()
    assert summary.startswith(f"exported {rows:,} rows in {len(written)} files, ") and str(out) in summary
    assert f"{size / 1e6:,.1f} MB" in summary or f"{size:,} bytes" in summary
    progress = result.stderr.strip().splitlines()
    assert len(progress) == len(written) and progress[0].startswith(f"1/{len(written)} BTCUSDT 2024-01-30..")


def test_exporting_again_replaces_files_never_duplicating_bars(
    reader_env: LoadedStore, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    for first, last in [(DAYS[1], DAYS[1]), (DAYS[0], DAYS[1]), (DAYS[0], DAYS[-1]), (DAYS[1], DAYS[2])]:
        result = export(reader_env, out, "--ticker", "BTCUSDT", "--start", str(first), "--end", str(last))
        assert result.returncode == 0, result.stderr
    # the later, wider files took over the narrower ones they overlapped; the last export, inside them,
    # rewrote each month's file whole
    base = "interval=5s/market=um/ticker=BTCUSDT/year=2024"
    assert files(out) == [
        f"{base}/month=01/2024-01-30_2024-01-31.parquet",
        f"{base}/month=02/2024-02-01_2024-02-02.parquet",
    ]
    assert_reads_back(out, "BTCUSDT", FIRST, LAST, "5s")
    # another interval is another partition: readers filter on it, nothing double-counts
    assert (
        export(reader_env, out, "--ticker", "BTCUSDT", "--start", FIRST, "--interval", "1h").returncode == 0
    )
    assert len(files(out)) == 3
    hourly = ds.dataset(out, partitioning="hive").to_table(filter=ds.field("interval") == "1h")
    assert hourly.num_rows == read_bars("um", "BTCUSDT", FIRST, FIRST, "1h").shape[0]


def test_month_parts_cut_the_range_at_month_ends() -> None:
    parts = month_parts(["X"], dt.date(2023, 12, 30), dt.date(2024, 3, 1))
    assert parts == [
        Part("X", dt.date(2023, 12, 30), dt.date(2023, 12, 31)),
        Part("X", dt.date(2024, 1, 1), dt.date(2024, 1, 31)),
        Part("X", dt.date(2024, 2, 1), dt.date(2024, 2, 29)),
        Part("X", dt.date(2024, 3, 1), dt.date(2024, 3, 1)),
    ]


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--start", LAST, "--end", FIRST], "end"),
        (["--start", FIRST, "--interval", "7m"], "interval"),  # does not divide a day
        (["--start", FIRST, "--interval", "3s"], "interval"),
        (["--start", FIRST, "--ticker", "DOGEUSDT"], "ticker"),
        (["--start", "2024-1-30"], "date"),
        (["--start", FIRST, "--market", "eu"], "market"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    reader_env: LoadedStore, tmp_path: Path, args: list[str], named: str
) -> None:
    result = export(reader_env, tmp_path / "out", *args)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("binance-assets: error: ") and named in line
    assert not (tmp_path / "out").exists()
