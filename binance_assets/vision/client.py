"""Binance Vision as configured: where archives are listed and downloaded, and the local verified cache.

No Dagster here: `binance-assets materialize` starts the first downloads with it before it imports Dagster
(cli/warm_up.py). The assets' resource, orchestration/resources.py `VisionResource`, holds the same
fields as Dagster config and builds its listing and downloader through this class.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from binance_assets.vision.download import VisionDownloader
from binance_assets.vision.listing import VisionListing

_GB = 1024**3


@dataclass(frozen=True)
class VisionClient:
    vision_url: str
    listing_url: str
    cache_dir: str
    cache_max_gb: float
    download_concurrency: int
    timeout_seconds: float
    download_retries: int = 4
    backoff_seconds: float = 0.5

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
