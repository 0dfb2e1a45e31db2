"""Dagster resources: the Vision archive (listing + verified downloads) and the ClickHouse store."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from clickhouse_connect.driver.client import Client
from dagster import ConfigurableResource
from pydantic import Field

from binance_assets.clickhouse.tables import open_store
from binance_assets.plan import DEFAULT_PUBLISH_GRACE_DAYS
from binance_assets.settings import DEFAULT_LISTING_URL, DEFAULT_VISION_URL
from binance_assets.vision.download import VisionDownloader
from binance_assets.vision.listing import VisionListing

_GB = 1024**3


class VisionResource(ConfigurableResource):
    """Binance Vision: where archives are listed and downloaded, and the local verified cache."""

    vision_url: str = Field(default=DEFAULT_VISION_URL, description="BINANCE_VISION_URL: downloads")
    listing_url: str = Field(
        default=DEFAULT_LISTING_URL, description="BINANCE_VISION_LISTING_URL: S3 listing"
    )
    cache_dir: str = Field(description="BINANCE_CACHE_DIR: archives keyed by (key, sha256)")
    cache_max_gb: float = Field(default=20.0, description="BINANCE_CACHE_MAX_GB: cache size bound")
    download_concurrency: int = Field(default=4, description="DOWNLOAD_CONCURRENCY: parallel downloads")
    download_retries: int = Field(default=4, description="Attempts after the first on a transient failure")
    backoff_seconds: float = Field(default=0.5, description="First retry delay; doubles, with jitter")
    timeout_seconds: float = Field(
        default=60.0, description="BINANCE_HTTP_TIMEOUT: connect and read timeout of each request"
    )
    publish_grace_days: int = Field(
        default=DEFAULT_PUBLISH_GRACE_DAYS,
        description="Days after which a missing archive is taken as never coming (not as late)",
    )

    def listing(self) -> VisionListing:
        return VisionListing(self.listing_url, timeout=self.timeout_seconds)

    def downloader(self) -> VisionDownloader:
        return VisionDownloader(
            self.vision_url,
            Path(self.cache_dir),
            concurrency=self.download_concurrency,
            retries=self.download_retries,
            backoff_seconds=self.backoff_seconds,
            timeout=self.timeout_seconds,
            cache_max_bytes=int(self.cache_max_gb * _GB),
        )


class ClickHouseResource(ConfigurableResource):
    """Queries on the store the IO manager writes (checks, sensors, the CLI)."""

    url: str = Field(description="CLICKHOUSE_URL: chdb:///abs/path or http(s)://user:password@host:port")
    password: str = Field(default="", description="CLICKHOUSE_PASSWORD, kept out of url; empty: the url's")
    database: str = Field(default="binance", description="CLICKHOUSE_DATABASE")
    bars_table: str = Field(default="hl5s", description="CLICKHOUSE_BARS_TABLE")
    liquidity_table: str = Field(default="daily_liquidity", description="CLICKHOUSE_LIQUIDITY_TABLE")
    archives_table: str = Field(default="archives", description="CLICKHOUSE_ARCHIVES_TABLE: ledger")
    cluster: str = Field(default="", description="CLICKHOUSE_CLUSTER: empty for one server or chDB")

    @contextmanager
    def get_client(self) -> Iterator[Client]:
        """An open client with the tables in place; for chdb:// the store lock is held meanwhile."""
        with open_store(
            self.url,
            self.database,
            self.bars_table,
            self.liquidity_table,
            self.archives_table,
            password=self.password,
            cluster=self.cluster,
        ) as client:
            yield client
