"""All configuration, read from environment variables and validated once.

Every variable is parsed here and nowhere else; a bad value raises :class:`SettingsError` naming the
variable, at load time, far from nothing.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

from binance_assets.markets import MARKETS

T = TypeVar("T")

DEFAULT_VISION_URL = "https://data.binance.vision"
DEFAULT_LISTING_URL = "https://s3-ap-northeast-1.amazonaws.com/data.binance.vision"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TICKER = re.compile(r"^[A-Z0-9_]+$")
_HH_MM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


class SettingsError(ValueError):
    """A configuration variable holds a value we cannot use; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    vision_url: str = DEFAULT_VISION_URL
    listing_url: str = DEFAULT_LISTING_URL
    markets: tuple[str, ...] = ("spot", "um")
    ticker_filter: tuple[str, ...] = ("*USDT", "*USDC")
    tickers: tuple[str, ...] = ()
    clickhouse_url: str = ""
    clickhouse_database: str = "binance"
    bars_table: str = "hl5s"
    liquidity_table: str = "daily_liquidity"
    cache_dir: Path = field(default_factory=lambda: Path.home() / ".cache" / "binance-assets")
    cache_max_gb: float = 20.0
    download_concurrency: int = 4
    log_level: str = "INFO"
    dagster_home: Path = field(default_factory=lambda: Path.home() / ".dagster")
    auto_backfill: bool = False
    daily_run_time: str = "09:00"
    max_days_per_run: int = 31
    publish_grace_days: int = 7

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        dagster_home = _path(env, "DAGSTER_HOME", Path.home() / ".dagster")
        vision_url = _url(env, "BINANCE_VISION_URL", DEFAULT_VISION_URL)
        return cls(
            vision_url=vision_url,
            listing_url=_url(env, "BINANCE_VISION_LISTING_URL", DEFAULT_LISTING_URL),
            markets=_markets(env),
            ticker_filter=_list(env, "TICKER_FILTER", ("*USDT", "*USDC"), _glob),
            tickers=_list(env, "TICKERS", (), _ticker),
            clickhouse_url=_clickhouse_url(env, dagster_home),
            clickhouse_database=_identifier(env, "CLICKHOUSE_DATABASE", "binance"),
            bars_table=_identifier(env, "CLICKHOUSE_BARS_TABLE", "hl5s"),
            liquidity_table=_identifier(env, "CLICKHOUSE_LIQUIDITY_TABLE", "daily_liquidity"),
            cache_dir=_path(env, "BINANCE_CACHE_DIR", dagster_home / "vision-cache"),
            cache_max_gb=_number(env, "BINANCE_CACHE_MAX_GB", 20.0, float, minimum=0.0),
            download_concurrency=_number(env, "DOWNLOAD_CONCURRENCY", 4, int, minimum=1, maximum=64),
            log_level=_choice(env, "LOG_LEVEL", "INFO", LOG_LEVELS),
            dagster_home=dagster_home,
            auto_backfill=_bool(env, "BINANCE_AUTO_BACKFILL", False),
            daily_run_time=_hh_mm(env, "BINANCE_DAILY_RUN_TIME", "09:00"),
            max_days_per_run=_number(env, "BINANCE_MAX_DAYS_PER_RUN", 31, int, minimum=1, maximum=366),
            publish_grace_days=_number(env, "BINANCE_PUBLISH_GRACE_DAYS", 7, int, minimum=1, maximum=90),
        )

    def wants_ticker(self, ticker: str) -> bool:
        """TICKERS, when set, is the exact list; otherwise a ticker must match one TICKER_FILTER glob."""
        if self.tickers:
            return ticker in self.tickers
        return any(fnmatch.fnmatchcase(ticker, pattern) for pattern in self.ticker_filter)


def _raw(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None or value.strip() == "":
        return None
    return value.strip()


def _fail(name: str, value: str, expected: str) -> SettingsError:
    return SettingsError(f"{name}={value!r} is invalid: expected {expected}")


def _url(env: Mapping[str, str], name: str, default: str) -> str:
    value = _raw(env, name)
    if value is None:
        return default
    parsed = urlparse(value)
    if parsed.scheme in ("http", "https") and parsed.netloc:
        return value.rstrip("/")
    if parsed.scheme == "file" and parsed.netloc in ("", "localhost") and parsed.path.startswith("/"):
        return value.rstrip("/")
    raise _fail(name, value, "an http(s):// URL or a file:///absolute/path mirror")


def _markets(env: Mapping[str, str]) -> tuple[str, ...]:
    value = _raw(env, "BINANCE_MARKETS")
    if value is None:
        return ("spot", "um")
    markets = tuple(dict.fromkeys(part.strip().lower() for part in value.split(",") if part.strip()))
    unknown = [m for m in markets if m not in MARKETS]
    if not markets or unknown:
        raise _fail("BINANCE_MARKETS", value, f"a comma-separated subset of {', '.join(MARKETS)}")
    return markets


def _list(
    env: Mapping[str, str], name: str, default: tuple[str, ...], item: Callable[[str, str, str], str]
) -> tuple[str, ...]:
    value = _raw(env, name)
    if value is None:
        return default
    return tuple(item(name, value, part.strip()) for part in value.split(",") if part.strip())


def _glob(name: str, value: str, part: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_*?\[\]!-]+", part):
        raise _fail(name, value, "comma-separated ticker globs such as *USDT,BTC*")
    return part.upper()


def _ticker(name: str, value: str, part: str) -> str:
    ticker = part.upper()
    if not _TICKER.fullmatch(ticker):
        raise _fail(name, value, "comma-separated tickers such as BTCUSDT,ETHUSDT")
    return ticker


def _identifier(env: Mapping[str, str], name: str, default: str) -> str:
    value = _raw(env, name)
    if value is None:
        return default
    if not _IDENTIFIER.fullmatch(value):
        raise _fail(name, value, "a ClickHouse identifier (letters, digits, underscore; not a digit first)")
    return value


def _clickhouse_url(env: Mapping[str, str], dagster_home: Path) -> str:
    value = _raw(env, "CLICKHOUSE_URL")
    if value is None:
        return f"chdb://{(dagster_home / 'clickhouse').resolve()}"
    parsed = urlparse(value)
    if parsed.scheme == "chdb" and parsed.path.startswith("/") and not parsed.netloc:
        return value
    if parsed.scheme in ("http", "https") and parsed.hostname:
        try:
            parsed.port  # noqa: B018 - raises on a non-numeric port
        except ValueError:
            raise _fail("CLICKHOUSE_URL", value, "a numeric port") from None
        return value
    raise _fail("CLICKHOUSE_URL", value, "chdb:///absolute/path or http(s)://user:password@host:port")


def _path(env: Mapping[str, str], name: str, default: Path) -> Path:
    value = _raw(env, name)
    if value is None:
        return default
    return Path(value).expanduser()


def _number(
    env: Mapping[str, str],
    name: str,
    default: T,
    kind: Callable[[str], T],
    minimum: float | None = None,
    maximum: float | None = None,
) -> T:
    value = _raw(env, name)
    if value is None:
        return default
    bounds = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
    expected = f"{'an integer' if kind is int else 'a number'} {bounds}"
    try:
        number = kind(value)
    except ValueError:
        raise _fail(name, value, expected) from None
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        raise _fail(name, value, expected)
    return number


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = _raw(env, name)
    if value is None:
        return default
    if value.upper() not in choices:
        raise _fail(name, value, f"one of {', '.join(choices)}")
    return value.upper()


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = _raw(env, name)
    if value is None:
        return default
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise _fail(name, value, "true or false")


def _hh_mm(env: Mapping[str, str], name: str, default: str) -> str:
    value = _raw(env, name)
    if value is None:
        return default
    if not _HH_MM.fullmatch(value):
        raise _fail(name, value, "a UTC time HH:MM such as 09:00")
    return value


def load_settings() -> Settings:
    """Settings from the current process environment."""
    return Settings.from_env()
