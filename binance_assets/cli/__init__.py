"""The `binance-assets` command (console script `binance_assets.cli:console`); see `main.py`."""

from binance_assets.cli.main import console, main

__all__ = ["console", "main"]
