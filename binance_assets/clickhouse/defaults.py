"""The store's defaults and the rules its values follow, written once and without the driver: `Store`, the
ClickHouse client and `settings.py` import them, and `binance-assets --help` imports neither pyarrow nor
clickhouse_connect through settings."""

from __future__ import annotations

import re
from urllib.parse import urlparse

DEFAULT_DATABASE = "binance"
DEFAULT_BARS_TABLE = "hl5s"
DEFAULT_LIQUIDITY_TABLE = "daily_liquidity"
DEFAULT_ARCHIVES_TABLE = "archives"
DEFAULT_COMPRESSION = "lz4"
"""How INSERTs to a server are compressed (benchmarks/insert_compression_bench.py measured the choice)."""
COMPRESSIONS = ("lz4", "zstd", "none")
DEFAULT_CONNECT_TIMEOUT = 10
DEFAULT_SEND_RECEIVE_TIMEOUT = 900
"""Seconds to wait for a server's answer: above insert_quorum_timeout (600 s by default), which an INSERT of
a ticker-year (one block of about 6.3M rows) may wait for its replicas."""

IDENTIFIER_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
"""What a database, table or cluster name may be (tables.quote quotes only these)."""
_IDENTIFIER = re.compile(IDENTIFIER_PATTERN)
STORE_URL_FORMS = "chdb:///absolute/path or http(s)://user:password@host:port"


def is_identifier(name: str) -> bool:
    return _IDENTIFIER.fullmatch(name) is not None


def url_expected(url: str) -> str | None:
    """None when url is `chdb:///abs/path` or `http(s)://[user[:password]@]host[:port]`, else what it should
    be (for an error message)."""
    parsed = urlparse(url)
    if parsed.scheme == "chdb" and not parsed.netloc and parsed.path.startswith("/"):
        return None
    if parsed.scheme in ("http", "https") and parsed.hostname:
        try:
            parsed.port  # noqa: B018 - raises ValueError on a non-numeric or out-of-range port
        except ValueError:
            return "a numeric port"
        return None
    return STORE_URL_FORMS
