"""The `binance-assets` CLI as a user runs it: subprocesses against the fake Vision server, a real Dagster
instance in a temporary DAGSTER_HOME, an embedded ClickHouse store and, for `backfill`, the real daemon."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from dagster import DagsterRunStatus, RunsFilter

from binance_assets.cli import main
from binance_assets.clickhouse.client import open_client
from binance_assets.markets import MARKETS
from binance_assets.orchestration.assets import BARS, LIQUIDITY, asset_key
from binance_assets.orchestration.backfills import BACKFILL_TICKER_DAYS
from binance_assets_tests.archives import expected_bars, expected_klines, publish, write_archive, write_klines
from binance_assets_tests.helpers import (
    DAYS,
    RANGE_END,
    RANGE_START,
    SETTINGS_PREFIXES,
    TODAY,
    Cli,
    assert_bars_match,
    error_line,
    partitions_materialised,
    query,
)


@pytest.mark.parametrize(
    "command", [[], ["discover"], ["materialize"], ["backfill"], ["init"], ["status"], ["sql"], ["export"]]
)
def test_every_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*command, "--help"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: binance-assets {' '.join(command)}".rstrip())


@pytest.mark.parametrize(
    ("args", "ran", "unwanted"),
    [
        (["--help"], "argparse", ("dagster", "pyarrow", "clickhouse_connect", "pandas", "requests")),
        (["sql", "SELECT 1 AS one"], "binance_assets.cli.store", ("dagster",)),
        (["init"], "binance_assets.cli.store", ("dagster",)),
        (["status"], "binance_assets.cli.store", ("dagster",)),
    ],
)
def test_store_commands_import_no_dagster(
    cli: Cli, args: list[str], ran: str, unwanted: tuple[str, ...]
) -> None:
    """`--help` starts in a fraction of a second: the parser imports neither Dagster nor the store's driver;
    the store commands never import Dagster (about 1 s). `ran`: a module the command must have imported."""
    script = (
        "import sys\nfrom binance_assets.cli.main import main\ntry:\n    main(sys.argv[1:])\n"
        "except SystemExit:\n    pass\nprint('IMPORTED', *sorted(sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, *args],
        env=cli.env,
        cwd=cli.home.parent,
        capture_output=True,
        text=True,
    )
    imported = set(result.stdout.rsplit("IMPORTED", 1)[-1].split())
    assert ran in imported, result.stderr
    assert not {name.split(".")[0] for name in imported} & set(unwanted), result.stdout


def test_discover_registers_the_filtered_tickers_once(cli: Cli, vision_root: Path) -> None:
    for seed, ticker in enumerate(("BTCUSDT", "ETHUSDT", "BTCBUSD")):
        publish(vision_root, "um", ticker, DAYS[:1], trades_per_day=10, seed=seed)

    first = cli("discover")
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [
        "um: 3 tickers listed, 2 wanted, 2 new",
        "  BTCUSDT  new",
        "  ETHUSDT  new",
    ]
    again = cli("discover", "--market", "um")
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[0] == "um: 3 tickers listed, 2 wanted, 0 new"
    with cli.instance() as instance:
        assert instance.get_dynamic_partitions("um_tickers") == ["BTCUSDT", "ETHUSDT"]


def test_a_long_backfill_is_split_into_backfills_of_whole_tickers(cli: Cli, vision_root: Path) -> None:
    """40 tickers x every USD-M day (over 100,000 ticker-days) make two backfills, for the daemon
    serialises each one's whole partition set as it submits its runs (see BACKFILL_TICKER_DAYS): each
    holds at most that many ticker-days and whole tickers, and together exactly the request. They share
    one timestamp, which the daemon's cache of the market's partitions is keyed on."""
    first, last = dt.date(2019, 9, 8), TODAY - dt.timedelta(days=3)
    tickers = [f"T{index:02d}USDT" for index in range(40)]
    for seed, ticker in enumerate(tickers):
        publish(vision_root, "um", ticker, [last], trades_per_day=5, seed=seed)
    days = (last - first).days + 1
    per_backfill = BACKFILL_TICKER_DAYS // days

    result = cli("backfill", "--market", "um", *(f"--ticker={t}" for t in tickers), "--start", str(first),
                 "--end", str(last))  # fmt: skip
    assert result.returncode == 0, result.stderr
    with cli.instance() as instance:
        by_id = {backfill.backfill_id: backfill for backfill in instance.get_backfills()}
        assert sorted(by_id) == sorted(result.stdout.split())
        backfills = [by_id[backfill_id] for backfill_id in result.stdout.split()]
        targets = [backfill.asset_backfill_data.target_subset for backfill in backfills]
    assert [backfill.title[-5:] for backfill in backfills] == ["[1/2]", "[2/2]"]
    assert len({backfill.backfill_timestamp for backfill in backfills}) == 1
    groups = [tickers[:per_backfill], tickers[per_backfill:]]
    for target, group in zip(targets, groups, strict=True):
        assert target.asset_keys == {asset_key(MARKETS["um"], BARS), asset_key(MARKETS["um"], LIQUIDITY)}
        for subset in target.partitions_subsets_by_asset_key.values():
            keys = {tuple(reversed(key.split("|"))) for key in subset.get_partition_keys()}  # date|ticker
            assert len(keys) == len(group) * days <= BACKFILL_TICKER_DAYS
            assert {ticker for ticker, _ in keys} == set(group)
            assert {day for _, day in keys} == {str(first + dt.timedelta(days=i)) for i in range(days)}


def test_materialize_fills_the_store_records_runs_and_sql_prints_them(cli: Cli, vision_root: Path) -> None:
    days = DAYS[29:33]  # 2024-01-30..2024-02-02: across a month boundary, one run per ticker
    trades = {t: publish(vision_root, "um", t, days, seed=s) for s, t in enumerate(("BTCUSDT", "ETHUSDT"), 1)}

    result = cli(
        "materialize", "--market", "um", "--ticker", "BTCUSDT", "--ticker", "ETHUSDT",
        "--start", "2024-01-30", "--end", "2024-02-02", "--no-retries",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    progress = [line for line in result.stderr.splitlines() if line.startswith("um ")]
    bar_counts = {t: len(expected_bars(frame)) for t, frame in trades.items()}
    assert [line.split(":")[0] for line in progress] == [
        "um BTCUSDT 2024-01-30..2024-02-02",
        "um ETHUSDT 2024-01-30..2024-02-02",
    ]
    assert [line.rsplit(", ", 1)[1] for line in progress] == [f"{n:,} bars" for n in bar_counts.values()]
    assert_bars_match(cli.store_url, trades, days[0], days[-1])
    liquidity = query(cli.store_url, "SELECT ticker, day, source FROM binance.daily_liquidity FINAL")
    assert len(liquidity) == 8 and set(liquidity["source"]) == {"daily"}

    with cli.instance() as instance:
        assert instance.get_dynamic_partitions("um_tickers") == ["BTCUSDT", "ETHUSDT"]
        runs = instance.get_runs(RunsFilter(tags={"binance/reason": "cli"}))
        assert sorted((r.status, r.tags[RANGE_START], r.tags[RANGE_END]) for r in runs) == [
            (DagsterRunStatus.SUCCESS, "2024-01-30|BTCUSDT", "2024-02-02|BTCUSDT"),
            (DagsterRunStatus.SUCCESS, "2024-01-30|ETHUSDT", "2024-02-02|ETHUSDT"),
        ]
        for name in ("hl5s_bars", "daily_liquidity"):
            partitions = partitions_materialised(instance, name, "2024")
            assert len(partitions) == len(set(partitions)) == 8

    table = cli("sql", "SELECT ticker, count() AS bars FROM hl5s GROUP BY ticker ORDER BY ticker")
    assert table.returncode == 0, table.stderr
    width = max(len("bars"), *(len(str(n)) for n in bar_counts.values()))
    assert table.stdout.splitlines() == [
        f"ticker   {'bars':>{width}}",
        f"-------  {'-' * width}",
        *(f"{ticker}  {n:>{width}}" for ticker, n in bar_counts.items()),
        "(2 rows)",
    ]


def test_materialize_runs_tickers_in_parallel(cli: Cli, vision_root: Path) -> None:
    """BINANCE_PARALLEL_TICKERS=2: two runs at once in one process, each run's start beside the other's events
    (Dagster's logging set-up at a run's start deadlocked with a run storing an event: dagster_internals.py
    `_Instance`)."""
    tickers = ("AAAUSDT", "BBBUSDT", "CCCUSDT", "DDDUSDT")
    days = DAYS[:6]
    trades = {
        t: publish(vision_root, "um", t, days, trades_per_day=200, seed=s) for s, t in enumerate(tickers)
    }

    result = cli(
        "materialize", "--market", "um", *(a for t in tickers for a in ("--ticker", t)),
        "--start", str(days[0]), "--end", str(days[-1]), "--no-retries", BINANCE_PARALLEL_TICKERS="2",
        timeout=120,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert "ticker-days: 24 done (0 without archive), 0 failed, 0 skipped" in result.stdout
    assert_bars_match(cli.store_url, trades, days[0], days[-1])


def test_materialize_loads_the_published_days_and_leaves_a_late_one_missing(
    cli: Cli, vision_root: Path
) -> None:
    """Yesterday is not published yet: the day before is written, yesterday waits, and the run succeeds."""
    yesterday = TODAY - dt.timedelta(days=1)
    publish(vision_root, "um", "ETHUSDT", [yesterday - dt.timedelta(days=1)], trades_per_day=10)
    result = cli(
        "materialize", "--market", "um", "--ticker", "ETHUSDT",
        "--start", str(yesterday - dt.timedelta(days=1)), "--end", str(yesterday), "--no-retries",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (
        "ticker-days: 1 done (0 without archive), 0 failed, 1 not yet published, 0 skipped" in result.stdout
    )
    assert "will be retried" not in result.stdout + result.stderr
    with cli.instance() as instance:
        (run,) = instance.get_runs(RunsFilter(tags={"binance/reason": "cli"}))
        assert run.status == DagsterRunStatus.SUCCESS


def test_materialize_runs_every_ticker_and_names_each_failed_day(cli: Cli, vision_root: Path) -> None:
    """A corrupt day of one ticker: the other days and the other ticker are written; the summary names
    the failed ticker-day, the error line its run, and the exit status is 1."""
    days = [dt.date(2024, 1, 30) + dt.timedelta(days=i) for i in range(3)]
    for seed, ticker in enumerate(("ETHUSDT", "BTCUSDT")):
        publish(vision_root, "um", ticker, days, trades_per_day=10, seed=seed)
    write_archive(vision_root, MARKETS["um"].archive_key("trades", "ETHUSDT", str(days[1])), b"not a zip")
    result = cli(
        "materialize", "--market", "um", "--ticker", "ETHUSDT", "--ticker", "BTCUSDT",
        "--start", str(days[0]), "--end", str(days[-1]), "--no-retries",
    )  # fmt: skip
    assert result.returncode == 1
    summary, failure = result.stdout.splitlines()[-2:]
    assert "ticker-days: 5 done (0 without archive), 1 failed, 0 skipped" in summary
    assert failure.startswith(f"  failed: um ETHUSDT {days[1]}: ") and "not a readable zip" in failure
    line = error_line(result)
    assert f"um ETHUSDT {days[0]}..{days[-1]}: run " in line and f"ETHUSDT {days[1]}: " in line
    liquidity = query(
        cli.store_url, "SELECT ticker, day FROM binance.daily_liquidity FINAL ORDER BY ticker, day"
    )
    assert liquidity.values.tolist() == [["BTCUSDT", d] for d in days] + [
        ["ETHUSDT", days[0]],
        ["ETHUSDT", days[2]],
    ]


CHECKS = (
    "bars_well_formed", "liquidity_matches_bars", "trade_ids_continuous", "day_coverage", "sane_trades",
    "built_from_fallback", "matches_binance_klines",
)  # fmt: skip


KLINE_RUN = ("materialize", "--market", "um", "--ticker", "BTCUSDT", "--start", "2024-01-30", "--end", "2024-02-01")  # fmt: skip  # noqa: E501


def check_lines(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """The check results a materialize printed: check name -> the rest of its line."""
    lines = [line.strip().split(" ", 1) for line in result.stderr.splitlines() if line.startswith("  ")]
    return {name: rest for name, rest in lines}


def test_materialize_prints_every_check_and_exits_0_when_klines_match(cli: Cli, vision_root: Path) -> None:
    publish(vision_root, "um", "BTCUSDT", DAYS[29:32], klines=True, seed=1)
    result = cli(*KLINE_RUN, "--no-retries")
    assert result.returncode == 0, result.stderr
    checks = check_lines(result)
    assert set(checks) == set(CHECKS)
    assert checks["matches_binance_klines"] == "(ERROR) passed"
    assert checks["day_coverage"].startswith("(WARN) ")


def test_materialize_exits_3_naming_the_check_and_day_if_a_kline_differs(cli: Cli, vision_root: Path) -> None:
    trades = publish(vision_root, "um", "BTCUSDT", DAYS[29:32], klines=True, seed=2)
    klines = expected_klines(trades, [DAYS[30]])
    traded = klines.index[klines["count"] > 0][3]
    klines.loc[traded, "volume"] *= 1.001
    write_klines(vision_root, "um", "BTCUSDT", str(DAYS[30]), klines)
    minute = pd.Timestamp(klines.loc[traded, "open_time"], unit="ms").strftime("%H:%M")
    off = cli(*KLINE_RUN, "--no-retries", BINANCE_KLINE_CHECK="false")
    assert off.returncode == 0, off.stderr
    assert "matches_binance_klines" not in check_lines(off)

    result = cli(*KLINE_RUN, "--no-retries")
    assert result.returncode == 3, result.stderr
    failed = f"(ERROR) failed, first on BTCUSDT {DAYS[30]} {minute}"
    assert check_lines(result)["matches_binance_klines"] == failed
    line = error_line(result)
    assert "um BTCUSDT 2024-01-30..2024-02-01: run " in line
    assert line.endswith(f"wrote its rows, but check matches_binance_klines {failed}")
    liquidity = query(cli.store_url, "SELECT day, trade_count FROM binance.daily_liquidity FINAL ORDER BY 1")
    assert liquidity.values.tolist() == [[day, 400] for day in DAYS[29:32]]  # the rows stay written


_VALID = ["--market", "um", "--ticker", "BTCUSDT", "--start", "2024-01-01"]


@pytest.mark.parametrize(
    ("args", "env", "code", "message"),
    [
        (["materialize", *_VALID[:1], "moon", *_VALID[2:]], {}, 2, "unknown market 'moon'"),
        (["backfill", *_VALID[:5], "2024-13-01"], {}, 2, "invalid date '2024-13-01'"),
        (["materialize", *_VALID[:3], "btcusdt", *_VALID[4:]], {}, 2, "invalid ticker 'btcusdt'"),
        (["materialize", *_VALID[:4]], {}, 2, "the following arguments are required: --start"),
        (["materialize", *_VALID, "--end", "2023-12-31"], {}, 2, "--end 2023-12-31 is before --start"),
        (["backfill", *_VALID[:5], "2019-09-07"], {}, 2, "before um's first day 2019-09-08"),
        (["materialize", *_VALID, "--end", str(TODAY)], {}, 2, f"--end {TODAY} is not before today"),
        (["discover", "--market", "spot"], {}, 2, "market 'spot' is not enabled: BINANCE_MARKETS=um"),
        (["discover"], {"DOWNLOAD_CONCURRENCY": "abc"}, 2, "DOWNLOAD_CONCURRENCY='abc' is invalid"),
        (["discover"], {"DAGSTER_HOME": "/nonexistent"}, 2, "DAGSTER_HOME='/nonexistent' is invalid"),
        (["materialize", *_VALID], {}, 1, "BTCUSDT has no trades archives on Binance Vision"),
        (["sql", "SELECT nope"], {}, 1, "Unknown expression identifier `nope`"),
    ],
    ids=[
        "unknown-market", "bad-date", "lowercase-ticker", "missing-argument", "end-before-start",
        "before-market", "today", "market-not-enabled", "bad-env-var", "bad-dagster-home", "unknown-ticker",
        "bad-sql",
    ],
)  # fmt: skip
def test_bad_input_exits_nonzero_with_one_line(
    cli: Cli, args: list[str], env: dict[str, str], code: int, message: str
) -> None:
    result = cli(*args, **env)
    assert result.returncode == code, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert message in error_line(result)


SEED_ENV = """\
# run.py's .env, and where the local mirror is
SOURCE_TO_SYNC=BINANCE-FUT
DATA_TABLE_NAME=custom_bars
CONTROL_TABLE_NAME=custom_daily
NUM_PROCESSES=2
DRY_RUN_MODE=False
BINANCE_VISION_URL=file://{mirror}
BINANCE_VISION_LISTING_URL=file://{mirror}
"""


def store_state(store_url: str) -> tuple[list[tuple[str]], int, list[tuple[str, dt.date, int, dt.datetime]]]:
    """The tables of database binance, the bars' row count and the liquidity rows (with loaded_at)."""
    with open_client(store_url) as client:
        tables = client.query("SELECT name FROM system.tables WHERE database = 'binance' ORDER BY name")
        bars = int(client.command("SELECT count() FROM binance.custom_bars"))
        daily = client.query(
            "SELECT ticker, day, trade_count, loaded_at FROM binance.custom_daily FINAL ORDER BY ticker, day"
        )
    return tables.result_rows, bars, daily.result_rows


def instance_state(cli: Cli) -> tuple[int, int, list[str]]:
    with cli.instance() as instance:
        return (
            instance.get_runs_count(),
            len(instance.get_backfills()),
            instance.get_dynamic_partitions("um_tickers"),
        )


def test_a_seed_env_drives_a_materialisation_and_its_dry_run_writes_nothing(
    cli: Cli, vision_root: Path, tmp_path: Path
) -> None:
    """A directory holding only run.py's .env (plus the mirror's URLs); HOME is its home, DAGSTER_HOME unset.
    Then DRY_RUN_MODE=True in the environment (which beats the .env's False) turns a backfill into a dry run
    that prints the same per-day trade counts and leaves the store and the instance as they were."""
    workdir = tmp_path / "seed"
    workdir.mkdir()
    (workdir / ".env").write_text(SEED_ENV.format(mirror=vision_root))
    env = {k: v for k, v in cli.env.items() if not k.startswith(SETTINGS_PREFIXES)} | {"HOME": str(workdir)}
    seed = Cli(env, workdir / ".dagster", f"chdb://{workdir / '.dagster' / 'clickhouse'}")
    days = DAYS[29:32]
    trades = {
        t: publish(vision_root, "um", t, [*days, DAYS[32]], trades_per_day=100, seed=s)
        for s, t in enumerate(("BTCUSDT", "ETHUSDT", "SOLUSDT"), 1)
    }
    bars = [expected_bars(trades[t]) for t in ("BTCUSDT", "ETHUSDT")]

    result = seed(
        "materialize", "--market", "um", "--ticker", "BTCUSDT", "--ticker", "ETHUSDT",
        "--start", str(days[0]), "--end", str(days[-1]), "--no-retries",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    n_bars = sum(int((b["day"] <= days[-1]).sum()) for b in bars)
    assert result.stdout.splitlines()[-1].startswith(
        "materialised um: 2 tickers; ticker-days: 6 done (0 without archive), 0 failed, 0 skipped; "
        f"600 trades, {n_bars:,} bars, "
    )
    tables, bar_rows, daily = before = store_state(seed.store_url)
    assert tables == [("archives",), ("custom_bars",), ("custom_daily",)]
    assert bar_rows == n_bars
    assert [(t, d, n) for t, d, n, _ in daily] == [(t, d, 100) for t in ("BTCUSDT", "ETHUSDT") for d in days]
    assert instance_state(seed) == (2, 0, ["BTCUSDT", "ETHUSDT"])

    dry = seed(
        "backfill", "--market", "um", "--ticker", "BTCUSDT", "--ticker", "ETHUSDT", "--ticker", "SOLUSDT",
        "--start", str(days[0]), "--end", str(DAYS[32]), DRY_RUN_MODE="True",
    )  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    printed = {
        (ticker, dt.date.fromisoformat(day)): int(n.replace(",", ""))
        for ticker, day, n in re.findall(r"^um (\w+) (\S+): ([\d,]+) trades", dry.stdout, re.MULTILINE)
    }
    assert len(printed) == 12 and set(printed.values()) == {100}
    assert {(t, d): printed[t, d] for t, d, _, _ in daily} == {(t, d): n for t, d, n, _ in daily}
    assert dry.stdout.splitlines()[-1].startswith(
        "dry run of um: 3 tickers; ticker-days: 12 done (0 without archive), 0 failed, 0 skipped; "
        "1,200 trades"
    )
    assert store_state(seed.store_url) == before
    assert instance_state(seed) == (2, 0, ["BTCUSDT", "ETHUSDT"])
