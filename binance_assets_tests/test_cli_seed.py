"""What run.py (+ .env, create_table.py) let its users do, through `binance-assets` in this process:
--plan and --dry-run previews, init, status, the run.py settings. Subprocess runs (a seed-style .env
driving a materialisation, a dry run leaving everything unchanged) are in test_cli.py."""

from __future__ import annotations

import datetime as dt
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import EnvVar
from dagster._core.remote_representation.external_data import RepositorySnap

from binance_assets.cli import main
from binance_assets.cli.common import format_table
from binance_assets.clickhouse.client import open_client
from binance_assets.clickhouse.store import Store
from binance_assets.markets import MARKETS
from binance_assets.orchestration.definitions import build_definitions, build_resources
from binance_assets.settings import load_settings
from binance_assets_tests.archives import publish, write_archive
from binance_assets_tests.vision_server import VisionServer

_SETTINGS = ("BINANCE_", "CLICKHOUSE_", "TICKER", "DOWNLOAD_", "LOG_LEVEL", "DAGSTER_")
_RUN_PY = ("SOURCE_TO_SYNC", "DATA_TABLE_NAME", "CONTROL_TABLE_NAME", "NUM_PROCESSES", "DRY_RUN_MODE")
JAN_30 = dt.date(2024, 1, 30)
TODAY = dt.datetime.now(dt.UTC).date()
UM = MARKETS["um"]


@pytest.fixture
def store_url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, vision_server: VisionServer) -> Iterator[str]:
    """A clean environment for `main`: the fake Vision server, an embedded store, no .env, market um."""
    for name in os.environ:
        if name.startswith(_SETTINGS + _RUN_PY):
            monkeypatch.delenv(name)
    workdir, home = tmp_path / "work", tmp_path / "dagster_home"
    workdir.mkdir()
    home.mkdir()
    monkeypatch.chdir(workdir)
    url = f"chdb://{tmp_path / 'clickhouse'}"
    for name, value in {
        "DAGSTER_HOME": str(home),
        "BINANCE_VISION_URL": vision_server.url,
        "BINANCE_VISION_LISTING_URL": vision_server.url,
        "BINANCE_CACHE_DIR": str(tmp_path / "cache"),
        "CLICKHOUSE_URL": url,
        "BINANCE_MARKETS": "um",
    }.items():
        monkeypatch.setenv(name, value)
    yield url
    assert not any(home.iterdir()), "the Dagster instance was touched"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str], list[str]]:
    """main(args): exit code, stdout lines, stderr lines."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out.splitlines(), err.splitlines()


def size(root: Path, ticker: str, *periods: str) -> int:
    return sum((root / UM.archive_key("trades", ticker, period)).stat().st_size for period in periods)


def test_plan_prints_what_runs_would_download_from_the_listing_alone(
    store_url: str, vision_root: Path, vision_server: VisionServer, capsys: pytest.CaptureFixture[str]
) -> None:
    days = [dt.date(2024, 1, 1) + dt.timedelta(days=i) for i in range(35)]  # January and 4 days of February
    publish(vision_root, "um", "BTCUSDT", days, monthly=("2024-01",), trades_per_day=10, seed=1)
    holes = {dt.date(2024, 1, 10), dt.date(2024, 1, 11)}
    publish(vision_root, "um", "ETHUSDT", [d for d in days if d not in holes], trades_per_day=10, seed=2)
    newest = TODAY - dt.timedelta(days=3)  # then two days not yet published
    publish(vision_root, "um", "XRPUSDT", [newest], trades_per_day=10, seed=3)

    code, out, _ = run(
        capsys, "materialize", "--plan", "--market", "um", "--ticker", "BTCUSDT", "--ticker", "ETHUSDT",
        "--start", "2024-01-01", "--end", "2024-02-04",
    )  # fmt: skip
    assert code == 0
    february = [f"2024-02-0{i}" for i in range(1, 5)]
    eth_days = [d.isoformat() for d in days if d not in holes]
    assert [line.split() for line in out[2:4]] == [
        ["BTCUSDT", "2024-01", "31", "4", "0", "0", str(size(vision_root, "BTCUSDT", "2024-01", *february))],
        ["ETHUSDT", "-", "0", "33", "2", "0", str(size(vision_root, "ETHUSDT", *eth_days))],
    ]
    assert out[0].split() == [
        "ticker", "monthly_archives", "days_monthly", "days_daily", "days_no_archive", "days_unpublished",
        "download_bytes",
    ]  # fmt: skip
    assert out[-1].startswith(
        "plan of um 2 tickers x 35 days (2024-01-01..2024-02-04): 1 monthly and 37 daily"
    )

    code, out, _ = run(
        capsys, "backfill", "--plan", "--market", "um", "--ticker", "XRPUSDT",
        "--start", str(newest), "--end", str(TODAY - dt.timedelta(days=1)),
    )  # fmt: skip
    assert code == 0
    xrp_bytes = size(vision_root, "XRPUSDT", str(newest))
    assert out[2].split() == ["XRPUSDT", "-", "0", "1", "0", "2", str(xrp_bytes)]
    assert vision_server.requests and all(r.startswith("/?") for r in vision_server.requests)  # listings only


def test_dry_run_prints_each_ticker_day_and_waits_for_late_days_as_the_run_would(
    store_url: str, vision_root: Path, vision_server: VisionServer, capsys: pytest.CaptureFixture[str]
) -> None:
    days = [JAN_30 + dt.timedelta(days=i) for i in range(3)]
    trades = publish(vision_root, "um", "BTCUSDT", days, trades_per_day=50, seed=4)
    per_day = trades.groupby(trades["time_us"] // 86_400_000_000).size().tolist()

    code, out, err = run(
        capsys, "materialize", "--dry-run", "--market", "um", "--ticker", "BTCUSDT",
        "--start", "2024-01-29", "--end", "2024-02-01",
    )  # fmt: skip
    assert code == 0, err
    assert [line.split(", ")[0] for line in out[:-1]] == [
        "um BTCUSDT 2024-01-29: 0 trades",
        *(f"um BTCUSDT {day}: {n} trades" for day, n in zip(days, per_day, strict=True)),
    ]
    assert out[0].endswith("archive none")
    assert out[1].endswith("archive BTCUSDT-trades-2024-01-30.zip (daily)")
    assert out[-1].startswith(
        "dry run of um: 1 ticker; ticker-days: 4 done (1 without archive), 0 failed, 0 skipped;"
    )
    assert f"{sum(per_day):,} trades" in out[-1]
    assert err[0] == "dry run: nothing is written to ClickHouse or the Dagster instance"
    assert vision_server.hits(".zip") == 2 * len(days)  # each archive and its .CHECKSUM, as a run reads them
    assert not Path(store_url.removeprefix("chdb://")).exists()

    newest, yesterday = TODAY - dt.timedelta(days=3), TODAY - dt.timedelta(days=1)
    publish(vision_root, "um", "ETHUSDT", [newest], trades_per_day=10, seed=5)
    publish(vision_root, "um", "BTCUSDT", [newest], trades_per_day=10, seed=6)
    code, out, err = run(
        capsys, "materialize", "--dry-run", "--market", "um", "--ticker", "ETHUSDT", "--ticker", "BTCUSDT",
        "--start", str(newest), "--end", str(yesterday),
    )  # fmt: skip
    assert code == 0, err  # the days not yet published wait; the published one of each ticker is read
    assert out[-1].startswith(
        "dry run of um: 2 tickers; ticker-days: 2 done (0 without archive), 0 failed, 4 not yet published, "
        "0 skipped;"
    )


def test_dry_run_of_a_corrupt_archive_fails_as_the_run_would(
    store_url: str, vision_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_archive(
        vision_root, UM.archive_key("trades", "BTCUSDT", str(JAN_30)), b"not a zip"
    )  # its checksum matches
    code, out, err = run(
        capsys, "materialize", "--dry-run", "--market", "um", "--ticker", "BTCUSDT", "--start", str(JAN_30)
    )
    assert code == 1
    assert len(out) == 2
    assert out[0].startswith(
        "dry run of um: 1 ticker; ticker-days: 0 done (0 without archive), 1 failed, 0 skipped;"
    )
    assert out[1].startswith(
        f"  failed: um BTCUSDT {JAN_30}: BTCUSDT-trades-{JAN_30}.zip: not a readable zip"
    )
    assert err[-1].startswith(f"binance-assets: error: um BTCUSDT {JAN_30}..{JAN_30}: the run would fail: ")
    assert "not a readable zip archive" in err[-1]


def test_init_creates_then_finds_the_database_and_tables(
    store_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATA_TABLE_NAME", "custom_bars")
    monkeypatch.setenv("CONTROL_TABLE_NAME", "custom_daily")
    names = [
        "database binance",
        "table binance.custom_bars",
        "table binance.custom_daily",
        "table binance.archives",
    ]
    code, out, _ = run(capsys, "init")
    assert code == 0
    assert out[0].startswith(f"ClickHouse {store_url}, server ")
    assert out[1:] == [f"{name}: created" for name in names]
    code, out, _ = run(capsys, "init")
    assert code == 0 and out[1:] == [f"{name}: found" for name in names]


def test_init_refuses_a_table_it_did_not_make(
    store_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seed_table = (
        "CREATE TABLE binance.hl5s (symbol String, ts DateTime, open Float64) ENGINE = MergeTree ORDER BY ts"
    )
    with open_client(store_url) as client:
        client.command("CREATE DATABASE binance")
        client.command(seed_table)
    code, out, err = run(capsys, "init")
    assert (code, out) == (1, [])
    assert err == [
        "binance-assets: error: table binance.hl5s exists but was not made by binance-assets "
        "(no column market, ticker; ts is DateTime): pick another name (CLICKHOUSE_*_TABLE, or run.py's "
        "DATA_TABLE_NAME / CONTROL_TABLE_NAME)"
    ]
    with open_client(store_url) as client:
        assert client.query("SELECT name FROM system.tables WHERE database = 'binance'").result_rows == [
            ("hl5s",)
        ]
        assert client.command("SELECT count() FROM system.columns WHERE table = 'hl5s'") == 3


def test_init_on_an_unreachable_server_is_one_line_without_the_password(
    store_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed once the block ends: nothing listens there
    monkeypatch.delenv("CLICKHOUSE_URL")
    monkeypatch.setenv("CLICKHOUSE_HOST", "127.0.0.1")
    monkeypatch.setenv("CLICKHOUSE_PORT", str(port))
    monkeypatch.setenv("CLICKHOUSE_PASSWORD", "s3cret")
    code, _, err = run(capsys, "init")
    assert code == 1
    assert err == [
        f"binance-assets: error: ClickHouse at http://default:***@127.0.0.1:{port} is unreachable: "
        "Connection refused"
    ]


def test_status_reports_each_tickers_span_and_exactly_its_gaps(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "status")
    assert code == 1
    assert err == [
        "binance-assets: error: table binance.daily_liquidity does not exist: nothing loaded yet "
        "(see binance-assets init)"
    ]
    jan = [dt.date(2024, 1, day) for day in range(1, 11)]
    ticker_days = [("um", "BTCUSDT", day) for day in jan[:3]] + [("spot", "BTCUSDT", day) for day in jan]
    ticker_days += [("um", "ETHUSDT", day) for day in jan if day.day not in (4, 7, 8)]
    loaded_at = dt.datetime(2024, 2, 1, 12, tzinfo=dt.UTC)
    # ETHUSDT's first two days and BTCUSDT's last day had no archive (zero rows, source 'none')
    none = {("um", "ETHUSDT", jan[0]), ("um", "ETHUSDT", jan[1]), ("um", "BTCUSDT", jan[2])}
    rows = [
        (
            m,
            t,
            d,
            0 if (m, t, d) in none else 100,
            "none" if (m, t, d) in none else "daily",
            "aggTrades" if (m, t, d) == ("um", "ETHUSDT", jan[9]) else "trades",
            loaded_at + dt.timedelta(hours=d.day),
        )
        for m, t, d in ticker_days
    ]
    rows.append(
        ("um", "ETHUSDT", jan[0], 999, "daily", "trades", loaded_at - dt.timedelta(days=1))
    )  # replaced by the later load
    with Store(store_url).open() as store:
        store.client.insert(
            "daily_liquidity",
            rows,
            database="binance",
            column_names=["market", "ticker", "day", "trade_count", "source", "dataset", "loaded_at"],
        )

    code, out, _ = run(capsys, "status", "--market", "um")
    assert code == 0
    header = [
        "market", "ticker", "first_day", "last_day", "days_loaded", "without_archive", "from_aggtrades",
        "data_from", "data_to", "days_missing", "missing_ranges", "trades", "last_loaded",
    ]  # fmt: skip
    expected = [
        ["um", "BTCUSDT", jan[0], jan[2], 3, 1, 0, jan[0], jan[1], 0, "", 200, dt.datetime(2024, 2, 1, 15)],
        [
            "um", "ETHUSDT", jan[0], jan[9], 7, 2, 1, jan[2], jan[9], 3, "2024-01-04, 2024-01-07..2024-01-08",
            500, dt.datetime(2024, 2, 1, 22),
        ],
    ]  # fmt: skip
    assert out == format_table(header, expected).splitlines()
    code, out, _ = run(capsys, "status", "--ticker", "BTCUSDT")
    assert code == 0 and [line.split()[:2] for line in out[2:-1]] == [["spot", "BTCUSDT"], ["um", "BTCUSDT"]]
    # over a requested range, the days not loaded before the first and after the last loaded day count too
    code, out, _ = run(capsys, "status", "--market", "um", "--start", "2023-12-31", "--end", "2024-01-12")
    assert code == 0
    btc, eth = (line.split()[:11] for line in out[2:-1])
    assert btc[9:] == ["10", "2023-12-31,"] and "2024-01-04..2024-01-12" in out[2]
    assert eth[9] == "6" and out[3].count("2024-01-11..2024-01-12") == 1


def test_run_py_settings_errors_and_warnings_are_one_line_each(
    store_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SOURCE_TO_SYNC", "BINANCE-COIN")
    code, _, err = run(capsys, "status")
    assert code == 2
    assert err == [
        "binance-assets: error: SOURCE_TO_SYNC='BINANCE-COIN' is invalid: "
        "expected one of BINANCE-SPOT, BINANCE-FUT"
    ]
    monkeypatch.setenv("SOURCE_TO_SYNC", "BINANCE-FUT")
    monkeypatch.setenv("DATA_TABLE_NAME", "custom-bars")
    code, _, err = run(capsys, "init")
    assert code == 2 and err[0].startswith("binance-assets: error: DATA_TABLE_NAME='custom-bars' is invalid")

    monkeypatch.setenv("DATA_TABLE_NAME", "custom_bars")
    monkeypatch.setenv("CLICKHOUSE_BARS_TABLE", "bars")
    code, out, err = run(capsys, "init")
    assert code == 0
    assert err == [
        "binance-assets: warning: CLICKHOUSE_BARS_TABLE and its run.py name DATA_TABLE_NAME are set to "
        "different values: using CLICKHOUSE_BARS_TABLE; unset DATA_TABLE_NAME to silence this"
    ]
    assert "table binance.bars: created" in out


def test_a_run_py_password_reaches_dagster_as_an_env_var_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """CLICKHOUSE_URL is handed to Dagster as EnvVar("CLICKHOUSE_URL"); a URL built from run.py's settings
    goes without its password, which goes as EnvVar("CLICKHOUSE_PASSWORD"): no config shows it."""
    monkeypatch.delenv("CLICKHOUSE_URL", raising=False)
    monkeypatch.setenv("CLICKHOUSE_HOST", "ch.example.com")
    monkeypatch.setenv("CLICKHOUSE_SECURE", "true")
    monkeypatch.setenv("CLICKHOUSE_PASSWORD", "s3cr@t")
    settings = load_settings()
    assert settings.clickhouse_url == "https://default:s3cr%40t@ch.example.com:8443"
    resources = build_resources(settings)
    for resource in (resources["clickhouse"], resources["clickhouse_io_manager"].clickhouse):
        assert resource.url == "https://default@ch.example.com:8443"
        assert isinstance(resource.password, EnvVar) and resource.password == "CLICKHOUSE_PASSWORD"
    snapshot = RepositorySnap.from_def(build_definitions(settings).get_repository_def())
    configured = {r.name: r.configured_values for r in snapshot.resources if r.name.startswith("clickhouse")}
    assert len(configured) == 2 and "s3cr" not in repr(configured)
