"""ClickHouseResource: the store as Dagster configuration, for the IO manager, the checks and the sensors.

Its fields are the `Store`'s, declared there once (type, default, description): Dagster's resources of
other stores (dagster-duckdb, dagster-snowflake) are likewise the driver's arguments as fields.
`ClickHouseIOManager` holds this resource (a nested resource), and both build the same `Store` from it.
The url and password may be `EnvVar`s: Dagster builds the resource again from their values when it runs,
and only then is the URL checked.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import MISSING, asdict, fields
from typing import Any, get_type_hints

from dagster import ConfigurableResource, EnvVar
from pydantic import Field, create_model, model_validator

from binance_assets.clickhouse.store import OpenStore, Store

_VALID_URL = "chdb:///"
"""Stands in for an EnvVar url while the other values are checked."""


def _store_fields() -> dict[str, Any]:
    """Store's fields as pydantic fields: each one's type, default, description and bounds."""
    types = get_type_hints(Store)
    return {
        f.name: (
            types[f.name],
            Field(**({} if f.default is MISSING else {"default": f.default}), **f.metadata),
        )
        for f in fields(Store)
    }


_StoreConfig: type[ConfigurableResource] = create_model(
    "_StoreConfig", __base__=ConfigurableResource, **_store_fields()
)


class ClickHouseResource(_StoreConfig):
    """The ClickHouse store the IO manager writes and the checks, sensors and CLI read."""

    @model_validator(mode="before")
    @classmethod
    def _valid_store(cls, values: Any) -> Any:
        # Before pydantic casts an EnvVar to its name; Dagster builds the resource again from its value.
        if isinstance(values, dict):
            names = {f.name for f in fields(Store)}
            given = {k: v for k, v in values.items() if k in names and not isinstance(v, EnvVar)}
            Store(**{"url": _VALID_URL, **given})
        return values

    @classmethod
    def of(cls, store: Store, **connection: str | EnvVar) -> ClickHouseResource:
        """The resource of ``store``; ``connection`` (url, password) replaces its values, e.g. by EnvVars."""
        return cls(**{**asdict(store), **connection})

    @property
    def store(self) -> Store:
        """The Store of these fields (the same names)."""
        return Store(**self.model_dump())

    def open(self) -> AbstractContextManager[OpenStore]:
        """The store with its tables in place (chdb:// creates them, a server's are checked); for chdb:// its
        lock is held until the block ends."""
        return self.store.open()
