from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import DagsterInstance, instance_for_test

from binance_assets.markets import MARKETS
from binance_assets.processes import restore_interrupts
from binance_assets.settings import DAGSTER_TUNING_VARIABLES
from binance_assets_tests.helpers import REPO, Cli, cli_env
from binance_assets_tests.loaded_store import LoadedStore, load_store
from binance_assets_tests.postgres import PostgresServer, PostgresUnavailable, find_bin_dir, postgres_server
from binance_assets_tests.vision_server import VisionServer


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The daemon tests (`slow`, minutes each) first: `--dist load` (pyproject addopts) hands the first
    tests out one per worker in turn, so the workers share them, and the short tests fill in around them."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(autouse=True)
def _dagster_tuning_per_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts without Dagster's tuning variables, and what `main()` sets in this process
    (settings.apply_dagster_tuning) is undone after it: tests that want them set them."""
    for name in DAGSTER_TUNING_VARIABLES:
        monkeypatch.delenv(name, raising=False)


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


@pytest.fixture
def cli(tmp_path: Path, vision_server: VisionServer) -> Cli:
    """The CLI on a fresh laptop instance (dagster.yaml) and embedded store, on the fake Vision server."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    store_url = f"chdb://{tmp_path / 'clickhouse'}"
    return Cli(cli_env(home, vision_server, store_url), home, store_url)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL server (binance_assets_tests/postgres.py), skipped where none can be had."""
    try:
        find_bin_dir()
    except PostgresUnavailable as error:
        pytest.skip(str(error))
    with postgres_server() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def instance_cli(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    vision_server: VisionServer,
    monkeypatch: pytest.MonkeyPatch,
) -> Cli:
    """The CLI on the laptop instance (dagster.yaml, SQLite) or the production one (deploy/dagster.yaml,
    PostgreSQL)."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    store_url = f"chdb://{tmp_path / 'clickhouse'}"
    env = cli_env(home, vision_server, store_url)
    if request.param == "sqlite":
        shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    else:
        shutil.copy(REPO / "deploy" / "dagster.yaml", home / "dagster.yaml")
        database = request.getfixturevalue("postgres").create_database(f"dagster_{tmp_path.name.lower()}")
        env.update(database.env)
        for name, value in database.env.items():  # the test's own instance reads them too
            monkeypatch.setenv(name, value)
    return Cli(env, home, store_url)


@pytest.fixture(scope="session")
def loaded_store(tmp_path_factory: pytest.TempPathFactory) -> LoadedStore:
    """One store per session, filled by the real pipeline (see loaded_store.py); read only."""
    return load_store(tmp_path_factory.mktemp("loaded"))


@pytest.fixture
def reader_env(loaded_store: LoadedStore, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> LoadedStore:
    """The loaded store as CLICKHOUSE_URL, in an empty working directory (no stray .env)."""
    monkeypatch.setenv("CLICKHOUSE_URL", loaded_store.url)
    monkeypatch.chdir(tmp_path)
    return loaded_store
