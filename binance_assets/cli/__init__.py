"""The `binance-assets` command (console script `binance_assets.cli:main`); see `main.py`."""

from binance_assets.cli.main import main

__all__ = ["main"]
