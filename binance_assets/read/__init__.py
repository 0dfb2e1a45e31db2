"""The read API: `read_bars` and `read_liquidity` (`api.py`), their checked arguments (`arguments.py`),
the Parquet export (`export.py`) and the SQL they run on a store's tables (`sql.py`). No Dagster.

`read_bars` and `read_liquidity` are imported on first use, as from `binance_assets` itself: importing
`arguments` (as the CLI and the backfill job do) costs nothing more.
"""

from __future__ import annotations

from typing import Any

__all__ = ["read_bars", "read_liquidity"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from binance_assets.read import api

        return getattr(api, name)
    raise AttributeError(f"module 'binance_assets.read' has no attribute {name!r}")
