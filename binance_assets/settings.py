"""All configuration, read from environment variables and validated once.

Every variable is parsed here and nowhere else; a bad value raises :class:`SettingsError` naming the
variable, at load time, far from nothing. The settings of the pipeline this project replaces (run.py
and its .env: SOURCE_TO_SYNC, DATA_TABLE_NAME, ...) are read as aliases when the new name is unset;
set both ways to different values, the new name wins with a :class:`SettingsWarning` naming both.
"""

from __future__ import annotations

import fnmatch
import os
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar, cast
from urllib.parse import quote, unquote, urlparse

from dotenv import load_dotenv

from binance_assets.markets import DATASETS, MARKETS, TICKER_PATTERN, DatasetName

T = TypeVar("T")
D = TypeVar("D")

DEFAULT_VISION_URL = "https://data.binance.vision"
DEFAULT_LISTING_URL = "https://s3-ap-northeast-1.amazonaws.com/data.binance.vision"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HH_MM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")
DEFAULT_MARKETS = ("spot", "um")
SEED_SOURCES = {"BINANCE-SPOT": ("spot",), "BINANCE-FUT": ("um",)}
"""run.py's SOURCE_TO_SYNC values and the markets they mean."""


DAGSTER_INSTANCE_VARIABLES = (
    "DAGSTER_PG_HOST",
    "DAGSTER_PG_PORT",
    "DAGSTER_PG_USER",
    "DAGSTER_PG_PASSWORD",
    "DAGSTER_PG_DB",
)
"""Read by the Dagster instance itself, through the `env:` sources of deploy/dagster.yaml (PostgreSQL
storage), never by this package: named here so that this module lists every variable a deployment sets."""


class SettingsError(ValueError):
    """A configuration variable holds a value we cannot use; the message names the variable."""


class SettingsWarning(UserWarning):
    """A setting given under its new name and its run.py name, with different values: the new one is used."""


@dataclass(frozen=True)
class Settings:
    vision_url: str = DEFAULT_VISION_URL
    listing_url: str = DEFAULT_LISTING_URL
    markets: tuple[str, ...] = DEFAULT_MARKETS
    ticker_filter: tuple[str, ...] = ("*USDT", "*USDC")
    tickers: tuple[str, ...] = ()
    clickhouse_url: str = field(default="", repr=False)  # may carry a password
    clickhouse_database: str = "binance"
    bars_table: str = "hl5s"
    liquidity_table: str = "daily_liquidity"
    archives_table: str = "archives"
    clickhouse_cluster: str = ""
    cache_dir: Path = field(default_factory=lambda: Path.home() / ".cache" / "binance-assets")
    cache_max_gb: float = 20.0
    download_concurrency: int = 4
    http_timeout: float = 60.0
    parallel_tickers: int = 1
    dry_run: bool = False
    log_level: str = "INFO"
    dagster_home: Path = field(default_factory=lambda: Path.home() / ".dagster")
    auto_backfill: bool = False
    daily_run_time: str = "09:00"
    max_days_per_run: int = 31
    publish_grace_days: int = 7
    kline_check: bool = True
    freshness_deadline: str = "12:00"
    dataset: DatasetName = "trades"
    fallback: DatasetName | None = "aggTrades"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        dagster_home = _path(env, "DAGSTER_HOME", Path.home() / ".dagster")
        vision_url = _url(env, "BINANCE_VISION_URL", DEFAULT_VISION_URL)
        return cls(
            vision_url=vision_url,
            listing_url=_url(env, "BINANCE_VISION_LISTING_URL", DEFAULT_LISTING_URL),
            markets=_aliased(env, "BINANCE_MARKETS", "SOURCE_TO_SYNC", DEFAULT_MARKETS, _markets, _source),
            ticker_filter=_list(env, "TICKER_FILTER", ("*USDT", "*USDC"), _glob),
            tickers=_list(env, "TICKERS", (), _ticker),
            clickhouse_url=_clickhouse_url(env, dagster_home),
            clickhouse_database=_identifier(env, "CLICKHOUSE_DATABASE", "binance"),
            bars_table=_aliased(env, "CLICKHOUSE_BARS_TABLE", "DATA_TABLE_NAME", "hl5s", _table),
            liquidity_table=_aliased(
                env, "CLICKHOUSE_LIQUIDITY_TABLE", "CONTROL_TABLE_NAME", "daily_liquidity", _table
            ),
            archives_table=_identifier(env, "CLICKHOUSE_ARCHIVES_TABLE", "archives"),
            clickhouse_cluster=_identifier(env, "CLICKHOUSE_CLUSTER", ""),
            cache_dir=_path(env, "BINANCE_CACHE_DIR", dagster_home / "vision-cache"),
            cache_max_gb=_number(env, "BINANCE_CACHE_MAX_GB", 20.0, float, minimum=0.0),
            download_concurrency=_aliased(env, "DOWNLOAD_CONCURRENCY", "NUM_PROCESSES", 4, _workers),
            http_timeout=_number(env, "BINANCE_HTTP_TIMEOUT", 60.0, float, minimum=0.1, maximum=3600.0),
            parallel_tickers=_aliased(env, "BINANCE_PARALLEL_TICKERS", "NUM_PROCESSES", 1, _workers),
            dry_run=_aliased(env, "BINANCE_DRY_RUN", "DRY_RUN_MODE", False, _flag),
            log_level=_choice(env, "LOG_LEVEL", "INFO", LOG_LEVELS),
            dagster_home=dagster_home,
            auto_backfill=_bool(env, "BINANCE_AUTO_BACKFILL", False),
            daily_run_time=_hh_mm(env, "BINANCE_DAILY_RUN_TIME", "09:00"),
            max_days_per_run=_number(env, "BINANCE_MAX_DAYS_PER_RUN", 31, int, minimum=1, maximum=366),
            publish_grace_days=_number(env, "BINANCE_PUBLISH_GRACE_DAYS", 7, int, minimum=1, maximum=90),
            kline_check=_bool(env, "BINANCE_KLINE_CHECK", True),
            freshness_deadline=_hh_mm(env, "BINANCE_FRESHNESS_DEADLINE", "12:00"),
            dataset=_dataset(env, "BINANCE_DATASET", "trades", DATASETS),
            fallback=_dataset(env, "BINANCE_FALLBACK", "aggTrades", (*DATASETS[1:], "none")),
        )

    def __post_init__(self) -> None:
        if self.clickhouse_cluster and self.clickhouse_url.startswith("chdb://"):
            raise _fail(
                "CLICKHOUSE_CLUSTER",
                self.clickhouse_cluster,
                "no cluster with an embedded store: set CLICKHOUSE_URL=http(s)://... to one of its servers",
            )

    @property
    def fallback_dataset(self) -> DatasetName | None:
        """The dataset a day falls back on (BINANCE_FALLBACK), None when it is the primary one too."""
        return self.fallback if self.fallback != self.dataset else None

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


def _aliased(
    env: Mapping[str, str],
    name: str,
    alias: str,
    default: T,
    parse: Callable[[Mapping[str, str], str], T | None],
    parse_alias: Callable[[Mapping[str, str], str], T | None] | None = None,
) -> T:
    """``name``'s value, else its run.py ``alias``'s (read by ``parse`` too unless ``parse_alias``), else
    ``default``. Both set, to different values: ``name`` wins, with a SettingsWarning naming both."""
    value = parse(env, name)
    seed_value = (parse_alias or parse)(env, alias)
    if value is not None and seed_value is not None and value != seed_value:
        _warn_conflict(name, [alias])
    if value is not None:
        return value
    return default if seed_value is None else seed_value


def _warn_conflict(name: str, aliases: Sequence[str]) -> None:
    names = ", ".join(aliases)
    warnings.warn(
        f"{name} and its run.py name{'s' if len(aliases) > 1 else ''} {names} are set to different values: "
        f"using {name}; unset {names} to silence this",
        SettingsWarning,
        stacklevel=4,
    )


def _markets(env: Mapping[str, str], name: str) -> tuple[str, ...] | None:
    value = _raw(env, name)
    if value is None:
        return None
    markets = tuple(dict.fromkeys(part.strip().lower() for part in value.split(",") if part.strip()))
    unknown = [m for m in markets if m not in MARKETS]
    if not markets or unknown:
        raise _fail(name, value, f"a comma-separated subset of {', '.join(MARKETS)}")
    return markets


def _source(env: Mapping[str, str], name: str) -> tuple[str, ...] | None:
    """run.py's SOURCE_TO_SYNC: BINANCE-SPOT is the spot market, BINANCE-FUT the USD-M futures (um)."""
    value = _raw(env, name)
    if value is None:
        return None
    if value.upper() not in SEED_SOURCES:
        raise _fail(name, value, f"one of {', '.join(SEED_SOURCES)}")
    return SEED_SOURCES[value.upper()]


def _table(env: Mapping[str, str], name: str) -> str | None:
    return _identifier(env, name, None)


def _workers(env: Mapping[str, str], name: str) -> int | None:
    return _number(env, name, None, int, minimum=1, maximum=64)


def _flag(env: Mapping[str, str], name: str) -> bool | None:
    return _bool(env, name, None)


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
    if not TICKER_PATTERN.fullmatch(ticker):
        raise _fail(name, value, "comma-separated tickers such as BTCUSDT,ETHUSDT")
    return ticker


def _identifier(env: Mapping[str, str], name: str, default: D) -> str | D:
    value = _raw(env, name)
    if value is None:
        return default
    if not _IDENTIFIER.fullmatch(value):
        raise _fail(name, value, "a ClickHouse identifier (letters, digits, underscore; not a digit first)")
    return value


def _clickhouse_url(env: Mapping[str, str], dagster_home: Path) -> str:
    """CLICKHOUSE_URL, else a server URL from run.py's CLICKHOUSE_HOST..., else the embedded store."""
    url, server = _given_url(env), _seed_server(env)
    if url is not None:
        differing = [name for name, value in server.items() if _url_server(url)[name] != value]
        if differing:
            _warn_conflict("CLICKHOUSE_URL", differing)
        return url
    if server:
        return _server_url(server)
    return f"chdb://{(dagster_home / 'clickhouse').resolve()}"


def _given_url(env: Mapping[str, str]) -> str | None:
    value = _raw(env, "CLICKHOUSE_URL")
    if value is None:
        return None
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


def _seed_server(env: Mapping[str, str]) -> dict[str, object]:
    """run.py's server settings that are set, parsed, by variable name."""
    host = _raw(env, "CLICKHOUSE_HOST")
    if host is not None and not _HOST.fullmatch(host):
        raise _fail("CLICKHOUSE_HOST", host, "a host name such as clickhouse.example.com (no scheme or port)")
    values = {
        "CLICKHOUSE_HOST": host.lower() if host else None,
        "CLICKHOUSE_PORT": _number(env, "CLICKHOUSE_PORT", None, int, minimum=1, maximum=65535),
        "CLICKHOUSE_USER": _raw(env, "CLICKHOUSE_USER"),
        "CLICKHOUSE_PASSWORD": _raw(env, "CLICKHOUSE_PASSWORD"),
        "CLICKHOUSE_SECURE": _bool(env, "CLICKHOUSE_SECURE", None),
    }
    return {name: value for name, value in values.items() if value is not None}


def _server_url(server: Mapping[str, object]) -> str:
    """http(s)://user:password@host:port, user and password URL-encoded; port 8123, or 8443 if secure."""
    if "CLICKHOUSE_HOST" not in server:
        given = ", ".join(server)
        raise SettingsError(
            f"{given} set but CLICKHOUSE_HOST is not: set CLICKHOUSE_HOST (the server) or CLICKHOUSE_URL"
        )
    secure = bool(server.get("CLICKHOUSE_SECURE", False))
    port = server.get("CLICKHOUSE_PORT", 8443 if secure else 8123)
    user, password = server.get("CLICKHOUSE_USER"), server.get("CLICKHOUSE_PASSWORD")
    auth = quote(str(user or "default"), safe="") if user or password else ""
    if password:
        auth += f":{quote(str(password), safe='')}"
    return f"{'https' if secure else 'http'}://{auth}{'@' if auth else ''}{server['CLICKHOUSE_HOST']}:{port}"


def _url_server(url: str) -> dict[str, object]:
    """CLICKHOUSE_URL's parts under run.py's names, to compare with those that are set."""
    parsed = urlparse(url)
    secure = parsed.scheme == "https"
    return {
        "CLICKHOUSE_HOST": parsed.hostname,
        "CLICKHOUSE_PORT": parsed.port or (8443 if secure else 8123),
        "CLICKHOUSE_USER": unquote(parsed.username or "default"),
        "CLICKHOUSE_PASSWORD": unquote(parsed.password or ""),
        "CLICKHOUSE_SECURE": secure,
    }


def _path(env: Mapping[str, str], name: str, default: Path) -> Path:
    value = _raw(env, name)
    if value is None:
        return default
    return Path(value).expanduser()


def _number(
    env: Mapping[str, str],
    name: str,
    default: D,
    kind: Callable[[str], T],
    minimum: float | None = None,
    maximum: float | None = None,
) -> T | D:
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


def _dataset(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> DatasetName | None:
    """One of ``choices``, any case; "none" is None."""
    value = _raw(env, name) or default
    chosen = next((choice for choice in choices if choice.lower() == value.lower()), None)
    if chosen is None:
        raise _fail(name, value, f"one of {', '.join(choices)}")
    return None if chosen == "none" else cast(DatasetName, chosen)


def _bool(env: Mapping[str, str], name: str, default: D) -> bool | D:
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


def settings_from_environment(warn: Callable[[str], None]) -> Settings:
    """The settings of the CLI and the read API: the environment, completed by a `.env` file in the working
    directory as `dagster dev` does (variables already set win); each warning raised while loading them
    (a setting given both ways) goes to ``warn`` as one line."""
    load_dotenv(Path.cwd() / ".env", override=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SettingsWarning)
        settings = load_settings()
    for warning in caught:
        warn(str(warning.message))
    return settings
