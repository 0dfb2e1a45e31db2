from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import DagsterInstance, instance_for_test

from binance_assets.interrupts import restore_interrupts
from binance_assets.markets import MARKETS
from binance_assets_tests.vision_server import VisionServer


@pytest.fixture
def vision_root(tmp_path: Path) -> Path:
    """An empty directory laid out like the Vision bucket (``data/spot/...``)."""
    root = tmp_path / "mirror"
    root.mkdir()
    return root


@pytest.fixture
def vision_server(vision_root: Path) -> Iterator[VisionServer]:
    with VisionServer(vision_root) as server:
        yield server


restore_interrupts()  # so the CLI and daemon processes the tests start can stop their children

REAL = Path(__file__).parent / "real"
"""Real Binance Vision files (copied from shared/vision/real; see real/PROVENANCE.md)."""

TICKERS = ("BTCUSDT", "ETHUSDT", "BTCUSD_PERP")
"""Registered in every market by the `instance` fixture."""


@pytest.fixture
def bare_instance(tmp_path: Path) -> Iterator[DagsterInstance]:
    """A real Dagster instance (SQLite) in tmp_path, no ticker registered."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    with instance_for_test(temp_dir=str(home)) as instance:
        yield instance


@pytest.fixture
def instance(bare_instance: DagsterInstance) -> DagsterInstance:
    """The bare instance with TICKERS registered in every market's dynamic partitions."""
    for market in MARKETS.values():
        bare_instance.add_dynamic_partitions(market.tickers_partition_name, list(TICKERS))
    return bare_instance


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    """A fresh embedded ClickHouse store."""
    return f"chdb://{tmp_path / 'clickhouse'}"
