"""ClickHouse connections: `chdb:///abs/path` (embedded) or `http(s)://...` (server); `store.py` opens the
store (connection, lock, tables) through `open_client`.

chDB (4.4, ClickHouse 26.9) hosts one engine per process and one process per store directory:
- a second process opening a store that is open elsewhere fails at once ("Cannot lock file
  <store>/status"), so every use of an embedded store holds an inter-process `flock` on
  `<store>.lock`, waiting (polling) up to `lock_timeout` seconds, for the span open-work-close only;
- within one process, opening a second store path while a client on another path is open raises
  ("EmbeddedServer already initialized with path ..."); once every client is closed a different path
  (or the same one again) opens fine (about 0.03 s), so clients are closed in `finally` and all threads
  of the process take turns through one `threading.Lock` (held for the same span; not re-entrant).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from binance_assets.clickhouse.defaults import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_SEND_RECEIVE_TIMEOUT,
    url_expected,
)
from binance_assets.clickhouse.errors import StoreBusyError
from binance_assets.locks import file_lock

LOCK_TIMEOUT = 600.0
"""Seconds a run, sensor or CLI command waits for an embedded store another process is using."""
_EMBEDDED_LOCK = threading.Lock()
"""One chDB engine per process: threads use embedded stores one at a time."""
EMBEDDED_SETTINGS = {
    "compile_expressions": 0,
    "compile_aggregate_expressions": 0,
    "compile_sort_description": 0,
}
"""The embedded engine runs without ClickHouse's JIT. A server compiles an expression once it has seen it
3 times and keeps the code; chDB drops the code when its last client closes but keeps the counts, so
every later open compiled each check's expressions again: 0.6 s of a run's first queries after each
open (docs/performance.md "End to end")."""


def validate_url(url: str) -> str:
    """Return url if it is `chdb:///abs/path` or `http(s)://[user[:password]@]host[:port]`, else raise."""
    if url_expected(url) is None:
        return url
    raise ValueError(
        f"ClickHouse URL {describe_url(url)!r}: expected chdb:///abs/path or http(s)://host:port"
    )


def describe_url(url: str) -> str:
    """The URL with its password replaced by *** (for logs and error messages)."""
    return _replace_password(url, "***")


def with_host(url: str, host: str) -> str:
    """The URL with its host replaced (its scheme, user, password, port and path kept)."""
    parsed = urlparse(url)
    user, at, _ = parsed.netloc.rpartition("@")
    port = f":{parsed.port}" if parsed.port else ""
    return parsed._replace(netloc=f"{user}{at}{host}{port}").geturl()


def without_password(url: str) -> str:
    """The URL with no password, its user kept (the password then goes to `open_client` apart)."""
    return _replace_password(url, None)


def _replace_password(url: str, password: str | None) -> str:
    parsed = urlparse(url)
    if parsed.password is None:
        return url
    host = parsed.netloc.rpartition("@")[2]
    user = parsed.username if password is None else f"{parsed.username}:{password}"
    return parsed._replace(netloc=f"{user}@{host}").geturl()


def lock_file_for(store: Path) -> Path:
    """The inter-process lock of an embedded store: `<store>.lock`, next to the store directory."""
    return store.with_name(f"{store.name}.lock")


@dataclass(frozen=True)
class Transport:
    """How a server is reached (ignored by chdb://): timeouts in seconds and a CA bundle for https."""

    connect_timeout: int = DEFAULT_CONNECT_TIMEOUT
    send_receive_timeout: int = DEFAULT_SEND_RECEIVE_TIMEOUT
    ca_cert: str = ""
    """A PEM file of CA certificates that verify the server's (CLICKHOUSE_CA_CERT); empty: the system's."""


@contextmanager
def open_client(
    url: str,
    database: str | None = None,
    *,
    password: str | None = None,
    lock_timeout: float = LOCK_TIMEOUT,
    transport: Transport = Transport(),
) -> Iterator[Client]:
    """Open a clickhouse-connect client for url, yield it, close it; for chdb:// hold the store lock.

    ``password``, when given, replaces the URL's (a server password kept out of the URL, e.g. from an
    EnvVar).
    """
    parsed = urlparse(validate_url(url))
    with ExitStack() as stack:
        if parsed.scheme == "chdb":
            store = Path(os.path.realpath(parsed.path))
            stack.enter_context(_embedded_store_lock(store, lock_timeout))
            client = clickhouse_connect.get_client(
                dsn=f"chdb://{store}", database=database, settings=EMBEDDED_SETTINGS
            )
        else:
            client = _http_client(url, database, password, transport)
        try:
            yield client
        finally:
            client.close()


def _http_client(url: str, database: str | None, password: str | None, transport: Transport) -> Client:
    parsed = urlparse(url)
    return clickhouse_connect.get_client(
        connect_timeout=transport.connect_timeout,
        send_receive_timeout=transport.send_receive_timeout,
        ca_cert=transport.ca_cert or None,
        host=parsed.hostname,
        port=parsed.port,
        username=unquote(parsed.username) if parsed.username else None,
        password=unquote(parsed.password or "") if password is None else password,
        interface=parsed.scheme,
        secure=parsed.scheme == "https",
        database=database,
    )


@contextmanager
def _embedded_store_lock(store: Path, timeout: float) -> Iterator[None]:
    deadline = time.monotonic() + timeout
    lock_file = lock_file_for(store)
    if not _EMBEDDED_LOCK.acquire(timeout=max(timeout, 0)):
        raise StoreBusyError(lock_file, timeout)
    try:
        remaining = max(deadline - time.monotonic(), 0)
        with file_lock(lock_file, remaining, lambda: StoreBusyError(lock_file, timeout)):
            yield
    finally:
        _EMBEDDED_LOCK.release()
