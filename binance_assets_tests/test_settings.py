"""Every configuration variable: defaults, parsing, and a clear error naming the variable."""

from __future__ import annotations

import warnings
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from dotenv import dotenv_values

from binance_assets.errors import SettingsError
from binance_assets.settings import DAGSTER_TUNING_DEFAULTS, Settings, SettingsWarning, apply_dagster_tuning
from binance_assets_tests.helpers import REPO


def test_defaults_put_everything_under_dagster_home(tmp_path: Path) -> None:
    settings = Settings.from_env({"DAGSTER_HOME": str(tmp_path)})
    assert settings.clickhouse_url == f"chdb://{tmp_path.resolve()}/clickhouse"
    assert settings.cache_dir == tmp_path / "vision-cache"
    assert settings.markets == ("spot", "um")
    assert settings.vision_url == "https://data.binance.vision"
    assert settings.listing_url == "https://s3-ap-northeast-1.amazonaws.com/data.binance.vision"
    assert (settings.clickhouse_database, settings.bars_table, settings.liquidity_table) == (
        "binance",
        "hl5s",
        "daily_liquidity",
    )


def test_values_are_parsed() -> None:
    settings = Settings.from_env(
        {
            "BINANCE_VISION_URL": "file:///srv/mirror/",
            "BINANCE_MARKETS": "UM, spot,um",
            "TICKER_FILTER": "*usdt, BTC*",
            "TICKERS": "btcusdt,ETHUSDT",
            "CLICKHOUSE_URL": "https://user:p%40ss@ch.example.com:8443",
            "DOWNLOAD_CONCURRENCY": "8",
            "BINANCE_CACHE_MAX_GB": "0.5",
            "LOG_LEVEL": "debug",
            "BINANCE_AUTO_BACKFILL": "yes",
            "BINANCE_DAILY_RUN_TIME": "10:30",
        }
    )
    assert settings.vision_url == "file:///srv/mirror"
    assert settings.markets == ("um", "spot")
    assert settings.ticker_filter == ("*USDT", "BTC*")
    assert settings.tickers == ("BTCUSDT", "ETHUSDT")
    assert settings.download_concurrency == 8 and settings.cache_max_gb == 0.5
    assert settings.log_level == "DEBUG" and settings.auto_backfill and settings.daily_run_time == "10:30"


def test_ticker_filter_and_explicit_tickers() -> None:
    by_glob = Settings.from_env({"TICKER_FILTER": "*USDT,*USDC"})
    assert by_glob.wants_ticker("BTCUSDT") and by_glob.wants_ticker("ETHUSDC")
    assert not by_glob.wants_ticker("BTCBUSD") and not by_glob.wants_ticker("USDTBTC")
    explicit = Settings.from_env({"TICKERS": "BTCBUSD"})
    assert explicit.wants_ticker("BTCBUSD") and not explicit.wants_ticker("BTCUSDT")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BINANCE_VISION_URL", "ftp://mirror"),
        ("BINANCE_VISION_LISTING_URL", "file://relative/path"),
        ("BINANCE_MARKETS", "spot,futures"),
        ("TICKER_FILTER", "BTC;USDT"),
        ("TICKERS", "BTC-USDT"),
        ("CLICKHOUSE_URL", "chdb://relative"),
        ("CLICKHOUSE_URL", "http://host:notaport"),
        ("CLICKHOUSE_URL", "tcp://host:9000"),
        ("CLICKHOUSE_DATABASE", "bin-ance"),
        ("CLICKHOUSE_BARS_TABLE", "1hl5s"),
        ("CLICKHOUSE_LIQUIDITY_TABLE", "daily liquidity"),
        ("CLICKHOUSE_COMPRESSION", "gzip"),
        ("CLICKHOUSE_CA_CERT", "/nonexistent/ca.pem"),
        ("CLICKHOUSE_CONNECT_TIMEOUT", "0"),
        ("CLICKHOUSE_SEND_RECEIVE_TIMEOUT", "ten"),
        ("BINANCE_CACHE_MAX_GB", "-1"),
        ("DOWNLOAD_CONCURRENCY", "abc"),
        ("DOWNLOAD_CONCURRENCY", "0"),
        ("LOG_LEVEL", "LOUD"),
        ("BINANCE_AUTO_BACKFILL", "maybe"),
        ("BINANCE_DAILY_RUN_TIME", "9am"),
        ("BINANCE_MAX_DAYS_PER_RUN", "5000"),
        ("BINANCE_PUBLISH_GRACE_DAYS", "0"),
        ("BINANCE_PARALLEL_TICKERS", "0"),
        ("BINANCE_DRY_RUN", "sometimes"),
        # run.py's names
        ("SOURCE_TO_SYNC", "BINANCE-COIN"),
        ("DATA_TABLE_NAME", "1hl5s"),
        ("CONTROL_TABLE_NAME", "daily-liquidity"),
        ("NUM_PROCESSES", "three"),
        ("NUM_PROCESSES", "0"),
        ("DRY_RUN_MODE", "Maybe"),
        ("CLICKHOUSE_HOST", "https://ch.example.com"),
        ("CLICKHOUSE_HOST", "ch.example.com:8443"),
        ("CLICKHOUSE_PORT", "http"),
        ("CLICKHOUSE_PORT", "70000"),
        ("CLICKHOUSE_SECURE", "yes please"),
    ],
)
def test_bad_value_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=f"^{name}=") as caught:
        Settings.from_env({name: value})
    assert repr(value) in str(caught.value)


def test_blank_values_mean_unset() -> None:
    assert Settings.from_env({"BINANCE_MARKETS": "  ", "DOWNLOAD_CONCURRENCY": ""}).markets == ("spot", "um")


def test_run_py_settings_are_read_when_the_new_names_are_unset() -> None:
    seed = Settings.from_env(
        {
            "SOURCE_TO_SYNC": "BINANCE-FUT",
            "DATA_TABLE_NAME": "custom_bars",
            "CONTROL_TABLE_NAME": "custom_daily",
            "NUM_PROCESSES": "3",
            "DRY_RUN_MODE": "True",
        }
    )
    assert seed.markets == ("um",)
    assert (seed.bars_table, seed.liquidity_table) == ("custom_bars", "custom_daily")
    assert (seed.download_concurrency, seed.parallel_tickers, seed.dry_run) == (3, 3, True)
    spot = Settings.from_env({"SOURCE_TO_SYNC": "binance-spot", "DRY_RUN_MODE": "False"})
    assert spot.markets == ("spot",) and not spot.dry_run
    assert (Settings().parallel_tickers, Settings().dry_run) == (1, False)


@pytest.mark.parametrize(
    ("env", "url"),
    [
        ({"CLICKHOUSE_HOST": "ch.example.com"}, "http://ch.example.com:8123"),
        ({"CLICKHOUSE_HOST": "CH.example.com", "CLICKHOUSE_SECURE": "True"}, "https://ch.example.com:8443"),
        (
            {"CLICKHOUSE_HOST": "10.0.0.5", "CLICKHOUSE_PORT": "9123", "CLICKHOUSE_USER": "loader"},
            "http://loader@10.0.0.5:9123",
        ),
        (
            {"CLICKHOUSE_HOST": "ch", "CLICKHOUSE_PASSWORD": "p@ss:w/rd %", "CLICKHOUSE_SECURE": "true"},
            "https://default:p%40ss%3Aw%2Frd%20%25@ch:8443",
        ),
    ],
)
def test_run_py_server_settings_make_the_url(env: dict[str, str], url: str) -> None:
    settings = Settings.from_env(env)
    assert settings.clickhouse_url == url
    password = env.get("CLICKHOUSE_PASSWORD")
    assert unquote(urlparse(url).password or "") == (password or "")
    assert password is None or password not in repr(settings)


def test_run_py_server_settings_need_a_host() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"CLICKHOUSE_PORT": "8123", "CLICKHOUSE_PASSWORD": "pw"})
    assert str(caught.value).startswith("CLICKHOUSE_PORT, CLICKHOUSE_PASSWORD set but CLICKHOUSE_HOST is not")


@pytest.mark.parametrize(
    ("env", "field", "value"),
    [
        ({"BINANCE_MARKETS": "spot,um", "SOURCE_TO_SYNC": "BINANCE-FUT"}, "markets", ("spot", "um")),
        ({"CLICKHOUSE_BARS_TABLE": "bars", "DATA_TABLE_NAME": "hl5s"}, "bars_table", "bars"),
        ({"CLICKHOUSE_LIQUIDITY_TABLE": "daily", "CONTROL_TABLE_NAME": "ctl"}, "liquidity_table", "daily"),
        ({"DOWNLOAD_CONCURRENCY": "8", "NUM_PROCESSES": "3"}, "download_concurrency", 8),
        ({"BINANCE_PARALLEL_TICKERS": "2", "NUM_PROCESSES": "3"}, "parallel_tickers", 2),
        ({"BINANCE_DRY_RUN": "false", "DRY_RUN_MODE": "True"}, "dry_run", False),
    ],
)
def test_a_setting_given_both_ways_differently_warns_naming_both(
    env: dict[str, str], field: str, value: object
) -> None:
    new, alias = env
    with pytest.warns(
        SettingsWarning, match=f"^{new} and its run.py name {alias} are set to different values"
    ) as caught:
        settings = Settings.from_env(env)
    assert getattr(settings, field) == value
    assert len(caught) == 1


def test_a_setting_given_both_ways_alike_is_quiet() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        settings = Settings.from_env(
            {
                "BINANCE_MARKETS": "um",
                "SOURCE_TO_SYNC": "BINANCE-FUT",
                "DOWNLOAD_CONCURRENCY": "3",
                "NUM_PROCESSES": " 3",
                "BINANCE_DRY_RUN": "true",
                "DRY_RUN_MODE": "True",
                "CLICKHOUSE_URL": "https://loader:p%40ss@ch.example.com:8443",
                "CLICKHOUSE_HOST": "CH.example.com",
                "CLICKHOUSE_USER": "loader",
                "CLICKHOUSE_PASSWORD": "p@ss",
                "CLICKHOUSE_SECURE": "True",
            }
        )
    assert settings.markets == ("um",) and settings.clickhouse_url.startswith("https://loader:")


def test_clickhouse_url_wins_over_server_settings_naming_those_that_differ() -> None:
    env = {
        "CLICKHOUSE_URL": "http://loader:old-secret@ch.example.com:8123",
        "CLICKHOUSE_HOST": "ch.example.com",
        "CLICKHOUSE_PASSWORD": "new-secret",
        "CLICKHOUSE_SECURE": "True",
    }
    with pytest.warns(SettingsWarning) as caught:
        settings = Settings.from_env(env)
    assert settings.clickhouse_url == env["CLICKHOUSE_URL"]
    (warning,) = caught
    message = str(warning.message)
    assert message.startswith(
        "CLICKHOUSE_URL and its run.py names CLICKHOUSE_PASSWORD, CLICKHOUSE_SECURE are set to different"
    )
    assert "secret" not in message and "CLICKHOUSE_HOST" not in message


def test_num_processes_stands_for_each_of_its_settings_that_is_unset() -> None:
    """run.py's NUM_PROCESSES is the second choice of two settings: one of them set takes nothing from the
    other."""
    with pytest.warns(SettingsWarning, match="^DOWNLOAD_CONCURRENCY and its run.py name NUM_PROCESSES"):
        settings = Settings.from_env({"DOWNLOAD_CONCURRENCY": "8", "NUM_PROCESSES": "3"})
    assert (settings.download_concurrency, settings.parallel_tickers) == (8, 3)
    with pytest.warns(SettingsWarning, match="^BINANCE_PARALLEL_TICKERS and its run.py name NUM_PROCESSES"):
        settings = Settings.from_env({"BINANCE_PARALLEL_TICKERS": "2", "NUM_PROCESSES": "3"})
    assert (settings.download_concurrency, settings.parallel_tickers) == (3, 2)


def test_the_dagster_tuning_defaults_reach_the_cli_the_code_location_and_dagster_dev() -> None:
    """The repo's .env (read by `dagster dev`) sets exactly the defaults; apply_dagster_tuning fills the
    unset ones and keeps a value already set."""
    assert dotenv_values(REPO / ".env") == DAGSTER_TUNING_DEFAULTS
    environ = {"DAGSTER_EVENT_BATCH_SIZE": "0"}
    apply_dagster_tuning(environ)
    assert environ == {**DAGSTER_TUNING_DEFAULTS, "DAGSTER_EVENT_BATCH_SIZE": "0"}
