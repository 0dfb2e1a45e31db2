"""binance-assets: Binance Vision trades as verified 5-second bars in ClickHouse.

The read API, `read_bars` and `read_liquidity` (see `read/api.py`), is imported on first use: importing
the package costs nothing, and never imports Dagster.
"""

from __future__ import annotations

from typing import Any

__all__ = ["read_bars", "read_liquidity"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from binance_assets.read import api

        return getattr(api, name)
    raise AttributeError(f"module 'binance_assets' has no attribute {name!r}")
