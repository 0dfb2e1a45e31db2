"""Dagster resource of the Vision archive (listing + verified downloads); the ClickHouse store's is
`clickhouse/resource.py`."""

from __future__ import annotations

import dataclasses

from dagster import ConfigurableResource
from pydantic import Field

from binance_assets.settings import (
    DEFAULT_CACHE_MAX_GB,
    DEFAULT_DOWNLOAD_CONCURRENCY,
    DEFAULT_HTTP_TIMEOUT,
    DEFAULT_LISTING_URL,
    DEFAULT_PUBLISH_GRACE_DAYS,
    DEFAULT_VISION_URL,
)
from binance_assets.vision.client import VisionClient
from binance_assets.vision.download import VisionDownloader
from binance_assets.vision.listing import VisionListing


class VisionResource(ConfigurableResource):
    """Binance Vision: where archives are listed and downloaded, and the local verified cache."""

    vision_url: str = Field(default=DEFAULT_VISION_URL, description="BINANCE_VISION_URL: downloads")
    listing_url: str = Field(
        default=DEFAULT_LISTING_URL, description="BINANCE_VISION_LISTING_URL: S3 listing"
    )
    cache_dir: str = Field(description="BINANCE_CACHE_DIR: archives keyed by (key, sha256)")
    cache_max_gb: float = Field(
        default=DEFAULT_CACHE_MAX_GB, description="BINANCE_CACHE_MAX_GB: cache size bound"
    )
    download_concurrency: int = Field(
        default=DEFAULT_DOWNLOAD_CONCURRENCY, description="DOWNLOAD_CONCURRENCY: parallel downloads"
    )
    download_retries: int = Field(default=4, description="Attempts after the first on a transient failure")
    backoff_seconds: float = Field(default=0.5, description="First retry delay; doubles, with jitter")
    timeout_seconds: float = Field(
        default=DEFAULT_HTTP_TIMEOUT,
        description="BINANCE_HTTP_TIMEOUT: connect and read timeout of each request",
    )
    publish_grace_days: int = Field(
        default=DEFAULT_PUBLISH_GRACE_DAYS,
        description="Days after which a missing archive is taken as never coming (not as late)",
    )

    @classmethod
    def of(cls, client: VisionClient, *, publish_grace_days: int) -> VisionResource:
        return cls(**dataclasses.asdict(client), publish_grace_days=publish_grace_days)

    def client(self) -> VisionClient:
        fields = dataclasses.fields(VisionClient)
        return VisionClient(**{field.name: getattr(self, field.name) for field in fields})

    def listing(self) -> VisionListing:
        return self.client().listing()

    def downloader(self) -> VisionDownloader:
        return self.client().downloader()
