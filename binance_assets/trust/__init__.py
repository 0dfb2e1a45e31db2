"""How binance-assets proves its data: the checks of the stored rows (`checks.py`), the comparison with
Binance's own klines (`klines_check.py`), the ledger of the archives read (`ledger.py`) and the rules that
rebuild a broken or partial trades day from aggTrades (`fallback.py`): docs/design.md "Layers and data
flow" and "Archives, datasets and fallback"."""
