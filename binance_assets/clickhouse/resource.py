"""ClickHouseResource: the store as Dagster configuration, for the IO manager, the checks and the sensors.

Each field is declared here once; `ClickHouseIOManager` holds this resource (a nested resource), and both
build the same `Store` value from it. The url and password may be `EnvVar`s: Dagster builds the resource
again from their values when it runs, and only then is the URL checked.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

from dagster import ConfigurableResource, EnvVar
from pydantic import Field, field_validator

from binance_assets.clickhouse.client import validate_url
from binance_assets.clickhouse.store import OpenStore, Store
from binance_assets.clickhouse.tables import quote
from binance_assets.settings import CLICKHOUSE_COMPRESSIONS


class ClickHouseResource(ConfigurableResource):
    """The ClickHouse store the IO manager writes and the checks, sensors and CLI read."""

    url: str = Field(
        description="CLICKHOUSE_URL: chdb:///abs/path (embedded chDB store) or http(s)://user:password@host:port"
    )
    password: str = Field(
        default="",
        description="CLICKHOUSE_PASSWORD, for a server URL built from run.py's CLICKHOUSE_HOST... settings "
        "(kept out of url so it can be an EnvVar); empty: the url's own",
    )
    database: str = Field(default=Store.database, description="CLICKHOUSE_DATABASE: database of the tables")
    bars_table: str = Field(default=Store.bars_table, description="CLICKHOUSE_BARS_TABLE: the 5-second bars")
    liquidity_table: str = Field(
        default=Store.liquidity_table, description="CLICKHOUSE_LIQUIDITY_TABLE: the per-day stats"
    )
    archives_table: str = Field(
        default=Store.archives_table, description="CLICKHOUSE_ARCHIVES_TABLE: the archive ledger"
    )
    cluster: str = Field(
        default=Store.cluster,
        description="CLICKHOUSE_CLUSTER: a cluster of servers (Distributed over ReplicatedMergeTree tables); "
        "empty: one server or the embedded store",
    )
    compression: str = Field(
        default=Store.compression,
        description="CLICKHOUSE_COMPRESSION: how INSERTs to a server are compressed: lz4, zstd or none",
    )
    ca_cert: str = Field(
        default=Store.ca_cert,
        description="CLICKHOUSE_CA_CERT: CA certificates (PEM) of an https server; empty: the system CAs",
    )
    connect_timeout: int = Field(
        default=Store.connect_timeout, ge=1, description="CLICKHOUSE_CONNECT_TIMEOUT: seconds to connect"
    )
    send_receive_timeout: int = Field(
        default=Store.send_receive_timeout,
        ge=1,
        description="CLICKHOUSE_SEND_RECEIVE_TIMEOUT: seconds to wait for a server's answer",
    )

    @field_validator("url", mode="before")
    @classmethod
    def _valid_url(cls, value: object) -> object:
        # Before pydantic casts an EnvVar to its name; Dagster builds the resource again from its value.
        return validate_url(value) if isinstance(value, str) and not isinstance(value, EnvVar) else value

    @field_validator("database", "bars_table", "liquidity_table", "archives_table")
    @classmethod
    def _valid_identifier(cls, value: str) -> str:
        quote(value)
        return value

    @field_validator("cluster")
    @classmethod
    def _valid_cluster(cls, value: str) -> str:
        if value:
            quote(value)
        return value

    @field_validator("compression")
    @classmethod
    def _valid_compression(cls, value: str) -> str:
        if value not in CLICKHOUSE_COMPRESSIONS:
            raise ValueError(f"compression {value!r}: expected one of {', '.join(CLICKHOUSE_COMPRESSIONS)}")
        return value

    @property
    def store(self) -> Store:
        """The Store of these fields (the same names)."""
        return Store(**self.model_dump())

    def open(self) -> AbstractContextManager[OpenStore]:
        """The store with its tables in place (chdb:// creates them, a server's are checked); for chdb:// its
        lock is held until the block ends."""
        return self.store.open()
