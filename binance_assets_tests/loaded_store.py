"""An embedded store filled by the real pipeline without Dagster: a local Vision mirror (real and synthetic
trades archives) -> listing, plan, download, verify, aggregate (`pipeline.RunLoad`) -> hl5s and
daily_liquidity rows, as the IO manager writes them."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa

from binance_assets.clickhouse.store import Store
from binance_assets.clickhouse.tables import BARS_TABLE, LIQUIDITY_TABLE, conform
from binance_assets.markets import MARKETS
from binance_assets.pipeline import RunLoad
from binance_assets.plan import plan_ticker
from binance_assets.vision.download import VisionDownloader
from binance_assets.vision.listing import VisionListing
from binance_assets_tests.archives import publish, write_archive, zip_archive
from binance_assets_tests.helpers import REAL
from binance_assets_tests.vision_server import VisionServer

REAL_DAY = dt.date(2025, 1, 1)
"""Spot BTCUSDT: the real trades of its first minute, whose real 1m kline Binance published."""
DAYS = [dt.date(2024, 1, 30) + dt.timedelta(days=i) for i in range(4)]
"""um BTCUSDT's synthetic days (ETHUSDT: the middle two), across a month's end."""


@dataclass(frozen=True)
class LoadedStore:
    url: str
    trades: dict[str, pd.DataFrame]
    """um ticker -> its synthetic trades."""


def load_store(root: Path) -> LoadedStore:
    mirror = root / "mirror"
    write_archive(
        mirror,
        MARKETS["spot"].archive_key("trades", "BTCUSDT", REAL_DAY.isoformat()),
        zip_archive((REAL / "BTCUSDT-trades-2025-01-01_first-minute.csv").read_bytes(), "BTCUSDT.csv"),
    )
    trades = {
        "BTCUSDT": publish(mirror, "um", "BTCUSDT", DAYS, trades_per_day=4000, spread=24, seed=3),
        "ETHUSDT": publish(mirror, "um", "ETHUSDT", DAYS[1:3], trades_per_day=500, spread=24, seed=4),
    }
    loads = [("spot", "BTCUSDT", [REAL_DAY]), ("um", "BTCUSDT", DAYS), ("um", "ETHUSDT", DAYS[1:3])]
    url = f"chdb://{root / 'clickhouse'}"
    with VisionServer(mirror) as server, Store(url).open() as store:
        listing, downloader = VisionListing(server.url), VisionDownloader(server.url, root / "cache")
        for key, ticker, days in loads:
            market = MARKETS[key]
            listed = listing.list_trades_archives(market, ticker)
            plan = plan_ticker(ticker, days, listed, today=dt.date.today())
            for day in RunLoad(market, [plan], downloader).days():
                store.insert(BARS_TABLE, conform(day.bars, BARS_TABLE.schema))
                store.insert(
                    LIQUIDITY_TABLE, pa.Table.from_pylist([day.liquidity], schema=LIQUIDITY_TABLE.schema)
                )
    return LoadedStore(url, trades)
