"""The read API on a store the real pipeline filled: Binance's own 1m kline, bars of any size against
pandas over the stored 5 s bars, the three formats, liquidity, bad arguments, the store's lock."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest

from binance_assets import read_bars, read_liquidity
from binance_assets.clickhouse.client import lock_file_for
from binance_assets.clickhouse.errors import StoreBusyError
from binance_assets.read.errors import ArgumentError
from binance_assets.settings import SettingsWarning
from binance_assets_tests.helpers import REAL, query
from binance_assets_tests.loaded_store import DAYS, REAL_DAY, LoadedStore

COLUMNS = ["ts", "open", "high", "low", "close", "volume", "quote_volume", "taker_buy_volume", "trade_count"]
SUMS = ["volume", "quote_volume", "taker_buy_volume", "trade_count"]


def test_1m_bars_equal_binance_real_kline_every_field(reader_env: LoadedStore) -> None:
    """Spot BTCUSDT 2025-01-01 00:00: the real trades, loaded by the pipeline, read at 1m == Binance's row."""
    kline = (REAL / "spot_BTCUSDT_1m_kline_2025-01-01T00-00.csv").read_text().strip().split(",")
    bars = read_bars("spot", "BTCUSDT", REAL_DAY, REAL_DAY, interval="1m")
    assert list(bars.columns) == COLUMNS and len(bars) == 1
    (bar,) = bars.to_dict("records")

    def exact(value: float) -> Decimal:
        return Decimal(f"{value:.8f}")

    assert bar["ts"] == pd.Timestamp((int(kline[6]) + 1) // 10**6, unit="s", tz="UTC")  # close_time + 1 us
    for field, column in [("open", 1), ("high", 2), ("low", 3), ("close", 4), ("volume", 5)]:
        assert exact(bar[field]) == Decimal(kline[column]), field
    assert exact(bar["quote_volume"]) == Decimal(kline[7])
    assert bar["trade_count"] == int(kline[8])
    assert exact(bar["taker_buy_volume"]) == Decimal(kline[9])


def stored_5s(url: str, first: dt.date, last: dt.date) -> pd.DataFrame:
    """um BTCUSDT's 5 s bars of days first..last, read with SQL of this test, not the API's."""
    return query(
        url,
        "SELECT toUnixTimestamp(ts) AS t, open, high, low, close, volume, quote_volume, taker_buy_volume, "
        f"trade_count, day FROM binance.hl5s WHERE market = 'um' AND ticker = 'BTCUSDT' "
        f"AND day BETWEEN '{first}' AND '{last}' ORDER BY t",
    )


def resampled(bars: pd.DataFrame, seconds: int) -> pd.DataFrame:
    """pandas' bars of `seconds`: each 5 s bar (covering [t-5, t)) into the bar whose right edge is the
    first multiple of `seconds` at or after t."""
    t = bars["t"].astype(np.int64)
    edge = -(-t // seconds) * seconds
    grouped = bars.groupby(edge, sort=True)
    out = grouped.agg(
        open=("open", "first"), high=("high", "max"), low=("low", "min"), close=("close", "last")
    ).join(grouped[SUMS].sum())
    out.index = pd.to_datetime(out.index, unit="s", utc=True)
    return out.rename_axis("ts").reset_index()


@pytest.mark.parametrize("interval", ["1h", "1d", "15m", "7m"])
def test_bars_equal_pandas_over_the_5s_bars(reader_env: LoadedStore, interval: str) -> None:
    seconds = {"1h": 3600, "1d": 86_400, "15m": 900, "7m": 420}[interval]
    first, last = DAYS[1], DAYS[2]
    five = stored_5s(reader_env.url, first, last)
    # the range holds 5 s bars stamped on a bar edge (they close that bar) and others inside bars
    assert (five["t"] % seconds == 0).any() or seconds == 420
    assert (five["t"] % seconds != 0).any()
    want = resampled(five, seconds)
    ours = read_bars("um", "BTCUSDT", first.isoformat(), last.isoformat(), interval=interval)
    assert list(ours["ts"]) == list(want["ts"])
    for column in ("open", "high", "low", "close", "trade_count"):
        np.testing.assert_array_equal(ours[column].to_numpy(), want[column].to_numpy(), err_msg=column)
    for column in SUMS[:3]:
        np.testing.assert_allclose(
            ours[column].to_numpy(), want[column].to_numpy(), rtol=1e-12, err_msg=column
        )


def test_day_bars_hold_exactly_their_days(reader_env: LoadedStore) -> None:
    """The 1d bar stamped D + 1 00:00 is day D: its counts are daily_liquidity's row of D, which the pipeline
    computed from the trades, including the 5 s bar stamped D + 1 00:00:00."""
    five = stored_5s(reader_env.url, DAYS[0], DAYS[-1])
    assert (five["t"] % 86_400 == 0).any()  # a day-closing 5 s bar exists
    ours = read_bars("um", "BTCUSDT", DAYS[0], DAYS[-1], interval="1d")
    liquidity = read_liquidity("um", "BTCUSDT", DAYS[0], DAYS[-1])
    assert [ts.date() - dt.timedelta(days=1) for ts in ours["ts"]] == list(liquidity["day"]) == DAYS
    assert list(ours["trade_count"]) == list(liquidity["trade_count"])
    np.testing.assert_allclose(ours["volume"], liquidity["volume"], rtol=1e-12)


def test_5s_bars_are_the_stored_bars_of_the_range(reader_env: LoadedStore) -> None:
    five = stored_5s(reader_env.url, DAYS[1], DAYS[1])
    ours = read_bars("um", "BTCUSDT", DAYS[1], DAYS[1])
    assert list(ours.columns) == COLUMNS
    np.testing.assert_array_equal(ours["ts"].map(lambda t: int(t.timestamp())), five["t"])
    pd.testing.assert_frame_equal(ours[COLUMNS[1:]], five[COLUMNS[1:]], check_dtype=False)


def test_formats_hold_the_same_bars(reader_env: LoadedStore) -> None:
    args = ("um", "ETHUSDT", DAYS[1], DAYS[2], "1m")
    arrow = read_bars(*args, format="arrow")
    assert isinstance(arrow, pa.Table) and arrow.column_names == COLUMNS and arrow.num_rows > 0
    assert arrow.schema.field("ts").type == pa.timestamp("s", tz="UTC")
    polars = read_bars(*args, format="polars")
    assert isinstance(polars, pl.DataFrame) and polars.columns == COLUMNS
    pd.testing.assert_frame_equal(polars.to_pandas(), read_bars(*args), check_dtype=False)
    pd.testing.assert_frame_equal(arrow.to_pandas(), read_bars(*args))


def test_an_empty_range_is_an_empty_frame(reader_env: LoadedStore) -> None:
    empty = read_bars("um", "BTCUSDT", "2023-06-01", "2023-06-30", "1h", format="arrow")
    assert empty.num_rows == 0 and empty.column_names == COLUMNS


def test_liquidity_is_the_newest_row_of_each_day(reader_env: LoadedStore) -> None:
    want = query(reader_env.url, "SELECT * FROM binance.daily_liquidity FINAL WHERE market = 'um'")
    want = want.sort_values(["ticker", "day"], ignore_index=True)
    ours = read_liquidity("um")
    assert list(ours.columns) == list(want.columns)
    pd.testing.assert_frame_equal(
        ours.drop(columns="loaded_at"), want.drop(columns="loaded_at"), check_dtype=False
    )
    one = read_liquidity("um", "ETHUSDT", start=DAYS[2], format="polars")
    assert one["day"].to_list() == [DAYS[2]] and one["ticker"].to_list() == ["ETHUSDT"]
    assert read_liquidity("um", end=DAYS[0], format="arrow")["day"].to_pylist() == [DAYS[0]]


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda: read_bars("eu", "BTCUSDT", "2024-01-30", "2024-01-31"), "market"),
        (lambda: read_bars("um", "BTCUSDT", "2024-01-31", "2024-01-30"), "end"),
        (lambda: read_bars("um", "BTCUSDT", "2024-01-31", "2024-02-30"), "end"),
        (lambda: read_bars("um", "BTCUSDT", "31/01/2024", "2024-02-01"), "start"),
        (lambda: read_bars("um", "BTCUSDT", "2024-01-30", "2024-01-31", interval="7s"), "interval"),
        (lambda: read_bars("um", "BTCUSDT", "2024-01-30", "2024-01-31", interval="1w"), "interval"),
        (lambda: read_bars("um", "BTCUSDT", "2024-01-30", "2024-01-31", interval="0m"), "interval"),
        (lambda: read_bars("um", "DOGEUSDT", "2024-01-30", "2024-01-31"), "ticker"),
        (lambda: read_bars("um", ["BTCUSDT"], "2024-01-30", "2024-01-31"), "ticker"),
        (lambda: read_bars(["um"], "BTCUSDT", "2024-01-30", "2024-01-31"), "market"),
        (lambda: read_liquidity("um", ""), "ticker"),
        (lambda: read_bars("spot", "ETHUSDT", "2024-01-30", "2024-01-31"), "ticker"),
        (lambda: read_bars("um", "BTCUSDT", "2024-01-30", "2024-01-31", format="csv"), "format"),
        (lambda: read_liquidity("cm", "BTCUSDT"), "ticker"),
        (lambda: read_liquidity("um", start="2024-02-01", end="2024-01-01"), "end"),
    ],
)
def test_bad_arguments_raise_one_line_naming_them(
    reader_env: LoadedStore, call: object, argument: str
) -> None:
    with pytest.raises(ArgumentError) as error:
        call()  # type: ignore[operator]
    assert error.value.argument == argument
    assert str(error.value).startswith(f"{argument} ") and "\n" not in str(error.value)


def test_polars_missing_says_how_to_install_it(
    reader_env: LoadedStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "polars", None)  # `import polars` raises ImportError
    with pytest.raises(ImportError, match=r'pip install "binance-assets\[polars\]"'):
        read_bars("um", "BTCUSDT", DAYS[1], DAYS[1], format="polars")


def test_settings_come_from_dotenv_as_for_the_cli(
    reader_env: LoadedStore, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("CLICKHOUSE_URL")
    (tmp_path / ".env").write_text(f"CLICKHOUSE_URL={reader_env.url}\n")
    assert read_liquidity("spot")["ticker"].tolist() == ["BTCUSDT"]


def test_a_setting_given_both_ways_warns_at_the_caller(
    reader_env: LoadedStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLICKHOUSE_BARS_TABLE", "hl5s")
    monkeypatch.setenv("DATA_TABLE_NAME", "bars")  # its run.py name
    with pytest.warns(SettingsWarning, match="using CLICKHOUSE_BARS_TABLE") as caught:
        bars = read_bars("spot", "BTCUSDT", REAL_DAY, REAL_DAY, "1m")
    assert len(bars) == 1 and caught[0].filename == __file__


def test_importing_the_api_imports_neither_dagster_nor_polars() -> None:
    code = (
        "import sys, binance_assets; binance_assets.read_bars; binance_assets.read_liquidity; "
        "from binance_assets.cli.main import build_parser; build_parser(); "
        "assert 'dagster' not in sys.modules and 'polars' not in sys.modules, 'imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


HOLD = """
import fcntl, pathlib, sys, time
with open(sys.argv[1], "a") as handle:
    fcntl.flock(handle, fcntl.LOCK_EX)
    print("locked", flush=True)
    time.sleep(float(sys.argv[3]))
    pathlib.Path(sys.argv[2]).touch()
    fcntl.flock(handle, fcntl.LOCK_UN)
"""
"""Another process (a backfill's write) holding the store's lock, then marking the release."""


def test_a_read_waits_for_a_writer_holding_the_store_then_succeeds(
    reader_env: LoadedStore, tmp_path: Path
) -> None:
    lock = lock_file_for(Path(reader_env.url.removeprefix("chdb://")))
    released = tmp_path / "released"
    before = read_bars("um", "BTCUSDT", DAYS[1], DAYS[1], "1m")
    with subprocess.Popen(
        [sys.executable, "-c", HOLD, str(lock), str(released), "2"], stdout=subprocess.PIPE, text=True
    ) as holder:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        after = read_bars("um", "BTCUSDT", DAYS[1], DAYS[1], "1m", lock_timeout=120)
        assert released.exists()  # the read finished only once the writer let go
    pd.testing.assert_frame_equal(after, before)
    # the read closed the store: another process (dagster dev) opens it at once
    opener = "import sys\nfrom binance_assets.clickhouse.client import open_client\n"
    opener += "with open_client(sys.argv[1], lock_timeout=0) as client: client.query('SELECT 1')"
    subprocess.run([sys.executable, "-c", opener, reader_env.url], check=True)


def test_a_read_gives_up_after_lock_timeout_naming_the_lock(reader_env: LoadedStore, tmp_path: Path) -> None:
    lock = lock_file_for(Path(reader_env.url.removeprefix("chdb://")))
    with subprocess.Popen(
        [sys.executable, "-c", HOLD, str(lock), str(tmp_path / "released"), "30"],
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        try:
            with pytest.raises(
                StoreBusyError, match=r"could not lock .*clickhouse\.lock within 0\.3 s.*lock_timeout"
            ):
                read_bars("um", "BTCUSDT", DAYS[1], DAYS[1], lock_timeout=0.3)
        finally:
            holder.kill()
