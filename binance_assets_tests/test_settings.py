"""Every configuration variable: defaults, parsing, and a clear error naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from binance_assets.settings import Settings, SettingsError


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
        ("BINANCE_CACHE_MAX_GB", "-1"),
        ("DOWNLOAD_CONCURRENCY", "abc"),
        ("DOWNLOAD_CONCURRENCY", "0"),
        ("LOG_LEVEL", "LOUD"),
        ("BINANCE_AUTO_BACKFILL", "maybe"),
        ("BINANCE_DAILY_RUN_TIME", "9am"),
        ("BINANCE_MAX_DAYS_PER_RUN", "1000"),
        ("BINANCE_PUBLISH_GRACE_DAYS", "0"),
    ],
)
def test_bad_value_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=f"^{name}=") as caught:
        Settings.from_env({name: value})
    assert repr(value) in str(caught.value)


def test_blank_values_mean_unset() -> None:
    assert Settings.from_env({"BINANCE_MARKETS": "  ", "DOWNLOAD_CONCURRENCY": ""}).markets == ("spot", "um")
