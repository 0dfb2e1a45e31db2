"""All configuration, read from environment variables and validated once.

Each variable is a field of the pydantic model :class:`Settings`: its name (the field's alias), its default
and its rule are written there and nowhere else. A bad value raises :class:`SettingsError`, one line naming
the variable and the value. The settings of the pipeline this project replaces (run.py and its .env:
SOURCE_TO_SYNC, DATA_TABLE_NAME, ...) are second choices of the new names (``AliasChoices``); set both ways
to different values, the new name wins with a :class:`SettingsWarning` naming both.

Not pydantic-settings' ``BaseSettings``: its sources read os.environ only, where ``from_env`` reads the
mapping it is given (the tests do), and its init source hands NUM_PROCESSES, the second choice of two
fields, to one field or the other by hash order (pydantic-settings 2.16). The CLI reads .env itself.
"""

from __future__ import annotations

import fnmatch
import os
import warnings
from collections.abc import Callable, Mapping, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar, get_args
from urllib.parse import quote, unquote, urlparse

from dotenv import load_dotenv
from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from binance_assets.clickhouse import defaults as store_defaults
from binance_assets.errors import SettingsError
from binance_assets.markets import DATASETS, MARKETS, TICKER_PATTERN, DatasetName

if TYPE_CHECKING:  # built on demand: the driver (pyarrow, clickhouse_connect) and Dagster are not imported
    from binance_assets.clickhouse.store import Store  # by `binance-assets --help`
    from binance_assets.orchestration.resources import VisionResource
    from binance_assets.vision.client import VisionClient

# The variables' defaults, written once: modules that take a setting as a field or parameter of their own
# (the Vision resource, the planner, the retry policy) import them; the store's are in clickhouse/defaults.py.
DEFAULT_VISION_URL = "https://data.binance.vision"
DEFAULT_LISTING_URL = "https://s3-ap-northeast-1.amazonaws.com/data.binance.vision"
DEFAULT_CACHE_MAX_GB = 20.0
DEFAULT_DOWNLOAD_CONCURRENCY = 4
DEFAULT_HTTP_TIMEOUT = 60.0
DEFAULT_PUBLISH_GRACE_DAYS = 7

DEFAULT_RETRY_DELAY_SECONDS = 30.0
"""The base delay of a run step's retries (assets.retry_policy)."""

DEFAULT_MARKETS = ("spot", "um")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
SEED_SOURCES = {"BINANCE-SPOT": "spot", "BINANCE-FUT": "um"}
"""run.py's SOURCE_TO_SYNC values and the market each means."""

DAGSTER_INSTANCE_VARIABLES = (
    "DAGSTER_PG_HOST",
    "DAGSTER_PG_PORT",
    "DAGSTER_PG_USER",
    "DAGSTER_PG_PASSWORD",
    "DAGSTER_PG_DB",
)
"""Read by the Dagster instance itself, through the `env:` sources of deploy/dagster.yaml (PostgreSQL
storage), never by this package: named here so that this module lists every variable a deployment sets."""
DAGSTER_TUNING_DEFAULTS = {
    "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS": "true",
    "DAGSTER_EVENT_BATCH_SIZE": "1000",
}
"""Dagster's event-count levers, on wherever this package runs Dagster (`apply_dagster_tuning`) and in the
repo's .env (read by `dagster dev`): one planned event per asset and run instead of one per partition
(failed days stay visible: dagster_internals.plan_partitions), and a run's materialisations written in
batches (PostgreSQL, and SQLite through dagster_internals.FastSqliteEventLogStorage). A value already set
wins. A deployment's pods have them from deploy/helm-values.yaml (docs/performance.md "Market scale")."""
DAGSTER_TUNING_VARIABLES = tuple(DAGSTER_TUNING_DEFAULTS)


def apply_dagster_tuning(environ: MutableMapping[str, str] = os.environ) -> None:
    """Set DAGSTER_TUNING_DEFAULTS where unset, before Dagster creates a run."""
    for name, value in DAGSTER_TUNING_DEFAULTS.items():
        environ.setdefault(name, value)


Model = TypeVar("Model", bound=BaseModel)


class SettingsWarning(UserWarning):
    """A setting given under its new name and its run.py name, with different values: the new one is used."""


def _items(value: str | tuple[str, ...]) -> tuple[str, ...]:
    """A comma-separated string as its non-blank parts; a tuple (a default, a value in code) as it is."""
    return (
        tuple(part.strip() for part in value.split(",") if part.strip()) if isinstance(value, str) else value
    )


def _markets(value: str | tuple[str, ...]) -> tuple[str, ...]:
    markets = tuple(dict.fromkeys(market.lower() for market in _items(value)))
    if not markets or not set(markets) <= set(MARKETS):
        raise ValueError(f"a comma-separated subset of {', '.join(MARKETS)}")
    return markets


def _one_of(*choices: str) -> BeforeValidator:
    """Any case of one of ``choices``, spelled as there; "none" is None."""

    def choose(value: object) -> object:
        chosen = next((c for c in choices if isinstance(value, str) and c.lower() == value.lower()), None)
        if chosen is None:
            raise ValueError(f"one of {', '.join(choices)}")
        return None if chosen == "none" else chosen

    return BeforeValidator(choose)


def _vision_url(value: str) -> str:
    parsed = urlparse(value)
    if (parsed.scheme in ("http", "https") and parsed.netloc) or (
        parsed.scheme == "file" and parsed.netloc in ("", "localhost") and parsed.path.startswith("/")
    ):
        return value.rstrip("/")
    raise ValueError("an http(s):// URL or a file:///absolute/path mirror")


def _clickhouse_url(value: str) -> str:
    expected = store_defaults.url_expected(value)
    if expected is not None:
        raise ValueError(expected)
    return value


def _identifier(value: str) -> str:
    if not store_defaults.is_identifier(value):
        raise ValueError("a ClickHouse identifier (letters, digits, underscore; not a digit first)")
    return value


def _compression(value: object) -> object:
    if isinstance(value, str) and value.lower() in store_defaults.COMPRESSIONS:
        return value.lower()
    raise ValueError(f"one of {', '.join(store_defaults.COMPRESSIONS)}")


def _ca_cert(value: str) -> str:
    if value and not Path(value).expanduser().is_file():
        raise ValueError("the path of a PEM file of CA certificates that exists (or empty: the system's CAs)")
    return str(Path(value).expanduser()) if value else value


# An error says "expected" the ValueError of a validator, else the field's description, else its bounds.
Flag = Annotated[bool, Field(description="true or false")]
Identifier = Annotated[str, AfterValidator(_identifier)]
Clock = Annotated[
    str, Field(pattern=r"^([01]\d|2[0-3]):([0-5]\d)$", description="a UTC time HH:MM such as 09:00")
]
Workers = Annotated[int, Field(ge=1, le=64)]
Directory = Annotated[Path, AfterValidator(Path.expanduser)]
VisionUrl = Annotated[str, AfterValidator(_vision_url)]
Glob = Annotated[str, Field(pattern=r"^[A-Za-z0-9_*?\[\]!-]+$"), AfterValidator(str.upper)]
Ticker = Annotated[str, BeforeValidator(str.upper), Field(pattern=TICKER_PATTERN.pattern)]


class Settings(BaseModel):
    """The settings of one deployment. ``from_env`` reads them; ``Settings(field=...)`` reads nothing."""

    # defer_build: the schema is built when settings are first read, not by `binance-assets --help`
    model_config = ConfigDict(
        frozen=True, validate_by_name=True, validate_by_alias=True, validate_default=False, defer_build=True
    )

    dagster_home: Directory = Field(
        default_factory=lambda: Path.home() / ".dagster", validation_alias="DAGSTER_HOME"
    )
    vision_url: VisionUrl = Field(DEFAULT_VISION_URL, validation_alias="BINANCE_VISION_URL")
    listing_url: VisionUrl = Field(DEFAULT_LISTING_URL, validation_alias="BINANCE_VISION_LISTING_URL")
    markets: Annotated[tuple[str, ...], BeforeValidator(_markets)] = Field(
        DEFAULT_MARKETS, validation_alias=AliasChoices("BINANCE_MARKETS", "SOURCE_TO_SYNC")
    )
    ticker_filter: Annotated[tuple[Glob, ...], BeforeValidator(_items)] = Field(
        ("*USDT", "*USDC"),
        description="comma-separated ticker globs such as *USDT,BTC*",
        validation_alias="TICKER_FILTER",
    )
    tickers: Annotated[tuple[Ticker, ...], BeforeValidator(_items)] = Field(
        (), description="comma-separated tickers such as BTCUSDT,ETHUSDT", validation_alias="TICKERS"
    )
    clickhouse_url: Annotated[str, AfterValidator(_clickhouse_url)] = Field(
        default_factory=lambda data: f"chdb://{(data['dagster_home'] / 'clickhouse').resolve()}",
        repr=False,  # may carry a password
        validation_alias="CLICKHOUSE_URL",
    )
    clickhouse_database: Identifier = Field(
        store_defaults.DEFAULT_DATABASE, validation_alias="CLICKHOUSE_DATABASE"
    )
    bars_table: Identifier = Field(
        store_defaults.DEFAULT_BARS_TABLE,
        validation_alias=AliasChoices("CLICKHOUSE_BARS_TABLE", "DATA_TABLE_NAME"),
    )
    liquidity_table: Identifier = Field(
        store_defaults.DEFAULT_LIQUIDITY_TABLE,
        validation_alias=AliasChoices("CLICKHOUSE_LIQUIDITY_TABLE", "CONTROL_TABLE_NAME"),
    )
    archives_table: Identifier = Field(
        store_defaults.DEFAULT_ARCHIVES_TABLE, validation_alias="CLICKHOUSE_ARCHIVES_TABLE"
    )
    clickhouse_cluster: Identifier = Field("", validation_alias="CLICKHOUSE_CLUSTER")
    clickhouse_ca_cert: Annotated[str, AfterValidator(_ca_cert)] = Field(
        "", validation_alias="CLICKHOUSE_CA_CERT"
    )
    clickhouse_connect_timeout: int = Field(
        store_defaults.DEFAULT_CONNECT_TIMEOUT, ge=1, le=600, validation_alias="CLICKHOUSE_CONNECT_TIMEOUT"
    )
    clickhouse_send_receive_timeout: int = Field(
        store_defaults.DEFAULT_SEND_RECEIVE_TIMEOUT,
        ge=1,
        le=86400,
        validation_alias="CLICKHOUSE_SEND_RECEIVE_TIMEOUT",
    )
    clickhouse_compression: Annotated[str, BeforeValidator(_compression)] = Field(
        store_defaults.DEFAULT_COMPRESSION, validation_alias="CLICKHOUSE_COMPRESSION"
    )
    cache_dir: Directory = Field(
        default_factory=lambda data: data["dagster_home"] / "vision-cache",
        validation_alias="BINANCE_CACHE_DIR",
    )
    cache_max_gb: float = Field(DEFAULT_CACHE_MAX_GB, ge=0.0, validation_alias="BINANCE_CACHE_MAX_GB")
    download_concurrency: Workers = Field(
        DEFAULT_DOWNLOAD_CONCURRENCY, validation_alias=AliasChoices("DOWNLOAD_CONCURRENCY", "NUM_PROCESSES")
    )
    http_timeout: float = Field(
        DEFAULT_HTTP_TIMEOUT, ge=0.1, le=3600.0, validation_alias="BINANCE_HTTP_TIMEOUT"
    )
    parallel_tickers: Workers = Field(
        1, validation_alias=AliasChoices("BINANCE_PARALLEL_TICKERS", "NUM_PROCESSES")
    )
    dry_run: Flag = Field(False, validation_alias=AliasChoices("BINANCE_DRY_RUN", "DRY_RUN_MODE"))
    log_level: Annotated[str, _one_of(*LOG_LEVELS)] = Field("INFO", validation_alias="LOG_LEVEL")
    auto_backfill: Flag = Field(False, validation_alias="BINANCE_AUTO_BACKFILL")
    daily_run_time: Clock = Field("09:00", validation_alias="BINANCE_DAILY_RUN_TIME")
    max_days_per_run: int = Field(1096, ge=1, le=3660, validation_alias="BINANCE_MAX_DAYS_PER_RUN")
    publish_grace_days: int = Field(
        DEFAULT_PUBLISH_GRACE_DAYS, ge=1, le=90, validation_alias="BINANCE_PUBLISH_GRACE_DAYS"
    )
    retry_delay: float = Field(
        DEFAULT_RETRY_DELAY_SECONDS, ge=0.0, le=3600.0, validation_alias="BINANCE_RETRY_DELAY_SECONDS"
    )
    kline_check: Flag = Field(True, validation_alias="BINANCE_KLINE_CHECK")
    freshness_deadline: Clock = Field("12:00", validation_alias="BINANCE_FRESHNESS_DEADLINE")
    dataset: Annotated[DatasetName, _one_of(*DATASETS)] = Field("trades", validation_alias="BINANCE_DATASET")
    fallback: Annotated[DatasetName | None, _one_of(*DATASETS[1:], "none")] = Field(
        "aggTrades", validation_alias="BINANCE_FALLBACK"
    )

    _from_process: dict[str, str] = PrivateAttr(default_factory=dict)
    """The variables ``from_env`` found set in the process environment (stripped), empty for a mapping."""

    @field_validator("clickhouse_cluster")
    @classmethod
    def _cluster_needs_a_server(cls, cluster: str, info: ValidationInfo) -> str:
        if cluster and info.data.get("clickhouse_url", "").startswith("chdb://"):
            raise ValueError(
                "no cluster with an embedded store: set CLICKHOUSE_URL=http(s)://... to one of its servers"
            )
        return cluster

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The settings ``environ`` (default: the process environment) sets, the others at their default."""
        given = _set_variables(os.environ if environ is None else environ, (cls, _Server))
        env = dict(given)
        source = env.get("SOURCE_TO_SYNC")  # run.py's name for the market, in its own words
        if source is not None:
            if source.upper() not in SEED_SOURCES:
                raise _invalid("SOURCE_TO_SYNC", source, f"one of {', '.join(SEED_SOURCES)}")
            env["SOURCE_TO_SYNC"] = SEED_SOURCES[source.upper()]
        server = _validated(_Server, env)
        url_given = "CLICKHOUSE_URL" in env
        if server.given() and not url_given:
            env["CLICKHOUSE_URL"] = server.url()
        settings = _validated(cls, env)
        for name, field in cls.model_fields.items():
            new, *old = _names(field)
            if name == "clickhouse_url":
                differing = server.differing(settings.clickhouse_url) if url_given else []
            else:
                differing = [
                    o
                    for o in old
                    if new in env and o in env and _value(name, o, env) != getattr(settings, name)
                ]
            if differing:
                warnings.warn(
                    f"{new} and its run.py name{'s' if len(differing) > 1 else ''} {', '.join(differing)} "
                    f"are set to different values: using {new}; unset {', '.join(differing)} to silence this",
                    SettingsWarning,
                    stacklevel=2,
                )
        if environ is None:
            settings._from_process.update(given)
        return settings

    def process_variable(self, name: str) -> str | None:
        """Variable ``name`` as the process environment set it when these settings were read from it, else
        None: a value Dagster can read again at run time (an EnvVar) and the CLI can quote."""
        return self._from_process.get(name)

    @property
    def store(self) -> Store:
        """The ClickHouse store of these settings (CLICKHOUSE_URL, CLICKHOUSE_DATABASE, ...)."""
        from binance_assets.clickhouse.store import Store

        return Store(
            url=self.clickhouse_url,
            database=self.clickhouse_database,
            bars_table=self.bars_table,
            liquidity_table=self.liquidity_table,
            archives_table=self.archives_table,
            cluster=self.clickhouse_cluster,
            compression=self.clickhouse_compression,
            ca_cert=self.clickhouse_ca_cert,
            connect_timeout=self.clickhouse_connect_timeout,
            send_receive_timeout=self.clickhouse_send_receive_timeout,
        )

    @property
    def vision_client(self) -> VisionClient:
        """Binance Vision as these settings configure it: its listing, downloads and cache."""
        from binance_assets.vision.client import VisionClient

        return VisionClient(
            vision_url=self.vision_url,
            listing_url=self.listing_url,
            cache_dir=str(self.cache_dir),
            cache_max_gb=self.cache_max_gb,
            download_concurrency=self.download_concurrency,
            timeout_seconds=self.http_timeout,
        )

    @property
    def vision(self) -> VisionResource:
        """`vision_client` as the assets' Dagster resource, with the planner's grace days."""
        from binance_assets.orchestration.resources import VisionResource

        return VisionResource.of(self.vision_client, publish_grace_days=self.publish_grace_days)

    @property
    def fallback_dataset(self) -> DatasetName | None:
        """The dataset a day falls back on (BINANCE_FALLBACK), None when it is the primary one too."""
        return self.fallback if self.fallback != self.dataset else None

    def wants_ticker(self, ticker: str) -> bool:
        """TICKERS, when set, is the exact list; otherwise a ticker must match one TICKER_FILTER glob."""
        if self.tickers:
            return ticker in self.tickers
        return any(fnmatch.fnmatchcase(ticker, pattern) for pattern in self.ticker_filter)


def _value(name: str, variable: str, env: Mapping[str, str]) -> object:
    """Settings field ``name`` as ``variable`` alone makes it."""
    return getattr(_validated(Settings, {variable: env[variable]}), name)


class _Server(BaseModel):
    """run.py's ClickHouse server settings: CLICKHOUSE_URL is made of them when it is unset."""

    model_config = ConfigDict(frozen=True, validate_by_name=True, validate_by_alias=True, defer_build=True)

    host: Annotated[str, AfterValidator(str.lower)] | None = Field(
        None,
        pattern=r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$",
        description="a host name such as clickhouse.example.com (no scheme or port)",
        validation_alias="CLICKHOUSE_HOST",
    )
    port: int | None = Field(None, ge=1, le=65535, validation_alias="CLICKHOUSE_PORT")
    user: str | None = Field(None, validation_alias="CLICKHOUSE_USER")
    password: str | None = Field(None, repr=False, validation_alias="CLICKHOUSE_PASSWORD")
    secure: bool | None = Field(None, description="true or false", validation_alias="CLICKHOUSE_SECURE")

    def given(self) -> list[str]:
        """The variables that are set, in the order of the fields."""
        return [
            _names(f)[0] for name, f in type(self).model_fields.items() if getattr(self, name) is not None
        ]

    def url(self) -> str:
        """http(s)://user:password@host:port, user and password URL-encoded; port 8123, or 8443 if secure."""
        if self.host is None:
            raise SettingsError(
                f"{', '.join(self.given())} set but CLICKHOUSE_HOST is not: "
                "set CLICKHOUSE_HOST (the server) or CLICKHOUSE_URL"
            )
        port = self.port or (8443 if self.secure else 8123)
        auth = quote(self.user or "default", safe="") if self.user or self.password else ""
        if self.password:
            auth += f":{quote(self.password, safe='')}"
        return f"{'https' if self.secure else 'http'}://{auth}{'@' if auth else ''}{self.host}:{port}"

    def differing(self, url: str) -> list[str]:
        """The variables that are set to other values than ``url`` has."""
        parsed = urlparse(url)
        secure = parsed.scheme == "https"
        in_url = {
            "host": parsed.hostname,
            "port": parsed.port or (8443 if secure else 8123),
            "user": unquote(parsed.username or "default"),
            "password": unquote(parsed.password or ""),
            "secure": secure,
        }
        fields = type(self).model_fields
        return [
            _names(fields[name])[0]
            for name, value in in_url.items()
            if getattr(self, name) not in (None, value)
        ]


def _names(field: FieldInfo) -> list[str]:
    """The variables a field is read from: its own, then run.py's."""
    alias = field.validation_alias
    return [str(name) for name in alias.choices] if isinstance(alias, AliasChoices) else [str(alias)]


def _set_variables(environ: Mapping[str, str], models: tuple[type[BaseModel], ...]) -> dict[str, str]:
    """The variables of ``models`` that ``environ`` sets, stripped: a blank one is unset."""
    names = dict.fromkeys(name for model in models for f in model.model_fields.values() for name in _names(f))
    return {name: value.strip() for name in names if (value := environ.get(name, "")).strip()}


def _validated(model: type[Model], env: Mapping[str, str]) -> Model:
    """``model`` from the variables in ``env``; the first invalid one is a one-line SettingsError."""
    fields = {name: field for field in model.model_fields.values() for name in _names(field)}
    try:
        return model(**{name: value for name, value in env.items() if name in fields})
    except ValidationError as error:
        detail = error.errors()[0]
        name = str(detail["loc"][0])
        raise _invalid(name, env[name], _expected(detail, fields[name])) from None


def _expected(detail: ErrorDetails, field: FieldInfo) -> str:
    if detail["type"] == "value_error":
        return str(detail.get("ctx", {})["error"])
    if field.description:
        return field.description
    kind = "an integer" if int in (field.annotation, *get_args(field.annotation)) else "a number"
    low = next(m.ge for m in field.metadata if hasattr(m, "ge"))
    high = next((m.le for m in field.metadata if hasattr(m, "le")), None)
    return f"{kind} between {low} and {high}" if high is not None else f"{kind} >= {low}"


def _invalid(name: str, value: str, expected: str) -> SettingsError:
    return SettingsError(f"{name}={value!r} is invalid: expected {expected}")


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
