"""`python -m binance_assets.cli`."""

from binance_assets.cli.main import console

console()
