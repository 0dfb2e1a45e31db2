"""A fake data.binance.vision for tests.

One threaded HTTP server on 127.0.0.1 serves a directory tree two ways on the same port:
``GET /<key>`` returns the object, ``GET /?prefix=&delimiter=&marker=&max-keys=`` returns an S3
ListObjects v1 listing shaped like the live bucket's (docs/vision-format.md section 2). Faults are switched
on by a pattern matched against each request's path+query, listings and objects alike: the pattern
must occur in it, or end it when the pattern ends in ``$`` (``f"{key}$"`` spoils a zip, not its
``.CHECKSUM``).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import os
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Literal
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape

_PIECE = 1 << 20
"""Bytes a paced reply sends between its sleeps."""
_DEFAULT_CODES = {403: "AccessDenied", 404: "NoSuchKey", 500: "InternalError", 503: "ServiceUnavailable"}
ChecksumStyle = Literal["newline", "no-newline", "wrong"]


@dataclass
class _Fault:
    pattern: str
    times: int | None
    """Requests left to spoil; None: until cleared."""
    status: int | None = None
    code: str | None = None
    truncate: bool = False
    reset: bool = False
    seconds: float = 0.0

    def take(self, request: str) -> bool:
        """Whether this fault spoils ``request``, counting it if so."""
        if self.pattern.endswith("$"):
            matches = request.endswith(self.pattern[:-1])
        else:
            matches = self.pattern in request
        if not matches or self.times == 0:
            return False
        if self.times is not None:
            self.times -= 1
        return True


class VisionServer:
    """Serves ``root`` (laid out like the bucket) on ``url`` until the ``with`` block ends.

    ``requests`` lists the path+query of every request received; ``max_concurrent`` is the most requests
    ever handled at once. ``omit_next_marker`` drops ``NextMarker`` from truncated pages (clients must fall
    back to the last key); ``ignore_marker`` serves the first page whatever the marker (a stuck server).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bytes_per_second = 0.0
        """Objects are sent at this rate when set (0: as fast as the loopback goes)."""
        self.omit_next_marker = False
        self.ignore_marker = False
        self.max_concurrent = 0
        self._in_flight = 0
        self._requests: list[str] = []
        self._faults: list[_Fault] = []
        self._phantom_keys: set[str] = set()
        self._etags: dict[tuple[Path, int, int], str] = {}
        self._lock = threading.Lock()
        self._httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.vision = self
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def __enter__(self) -> VisionServer:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def requests(self) -> list[str]:
        with self._lock:
            return list(self._requests)

    def hits(self, substring: str) -> int:
        """How many requests so far had ``substring`` in their path+query."""
        return sum(substring in request for request in self.requests)

    def fail(self, pattern: str, status: int = 500, times: int | None = 1, code: str | None = None) -> None:
        """Answer ``status`` with an S3 ``<Error>`` body (``code`` defaults by status; 200 is allowed)."""
        code = code or _DEFAULT_CODES.get(status, "InternalError")
        self._add(_Fault(pattern, times, status=status, code=code))

    def access_denied(self, pattern: str, times: int | None = 1) -> None:
        self.fail(pattern, 403, times, "AccessDenied")

    def not_found(self, pattern: str) -> None:
        self.fail(pattern, 404, None, "NoSuchKey")

    def truncate(self, pattern: str, times: int | None = 1) -> None:
        """Send the full Content-Length but only half the body, then close the connection."""
        self._add(_Fault(pattern, times, truncate=True))

    def reset(self, pattern: str, times: int | None = 1) -> None:
        """Send the headers and half the body, then reset the connection (TCP RST, not a clean close)."""
        self._add(_Fault(pattern, times, reset=True))

    def slow(self, pattern: str, seconds: float, times: int | None = 1) -> None:
        """Wait ``seconds`` before answering normally."""
        self._add(_Fault(pattern, times, seconds=seconds))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def add_phantom_key(self, key: str) -> None:
        """A key listed but not served, like the bucket's empty-name folder ``.../BTCUSDT//x``."""
        with self._lock:
            self._phantom_keys.add(key)

    def _add(self, fault: _Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def _begin(self, request: str) -> _Fault | None:
        """Record a request and take the first fault matching it, if any."""
        with self._lock:
            self._requests.append(request)
            self._in_flight += 1
            self.max_concurrent = max(self.max_concurrent, self._in_flight)
            return next((fault for fault in self._faults if fault.take(request)), None)

    def _end(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _object(self, key: str) -> Path | None:
        path = (self.root / key).resolve()
        if key in self._phantom_keys or not path.is_relative_to(self.root.resolve()) or not path.is_file():
            return None
        return path

    def _listing(self, query: dict[str, list[str]]) -> bytes:
        def arg(name: str, default: str = "") -> str:
            return query.get(name, [default])[0]

        prefix, delimiter, marker = arg("prefix"), arg("delimiter"), arg("marker")
        max_keys = int(arg("max-keys", "1000"))
        # Keys and common prefixes in key order, as S3 rolls keys up at the first delimiter after prefix.
        entries: list[tuple[str, bool]] = []
        for key in self._keys(prefix):
            rest = key[len(prefix) :]
            if delimiter and delimiter in rest:
                common = prefix + rest[: rest.index(delimiter) + len(delimiter)]
                if not entries or entries[-1][0] != common:
                    entries.append((common, True))
            else:
                entries.append((key, False))
        after = [entry for entry in entries if self.ignore_marker or entry[0] > marker]
        page, truncated = after[:max_keys], len(after) > max_keys
        parts = [
            '<?xml version="1.0" encoding="UTF-8"?>\n',
            '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">',
            f"<Name>data.binance.vision</Name><Prefix>{escape(prefix)}</Prefix>",
            f"<Marker>{escape(marker)}</Marker><MaxKeys>{max_keys}</MaxKeys>",
            f"<Delimiter>{escape(delimiter)}</Delimiter>" if delimiter else "",
            f"<IsTruncated>{str(truncated).lower()}</IsTruncated>",
        ]
        if truncated and delimiter and not self.omit_next_marker:
            parts.append(f"<NextMarker>{escape(page[-1][0])}</NextMarker>")
        parts += [self._contents(key) for key, is_prefix in page if not is_prefix]
        parts += [
            f"<CommonPrefixes><Prefix>{escape(key)}</Prefix></CommonPrefixes>"
            for key, is_prefix in page
            if is_prefix
        ]
        parts.append("</ListBucketResult>")
        return "".join(parts).encode()

    def _keys(self, prefix: str) -> list[str]:
        """Every key starting with ``prefix``, sorted: files under the prefix's folder, plus phantom keys."""
        with self._lock:
            keys = {key for key in self._phantom_keys if key.startswith(prefix)}
        folder = self.root / prefix[: prefix.rfind("/") + 1]
        for dirpath, _, files in os.walk(folder):
            relative = Path(dirpath).relative_to(self.root).as_posix()
            keys.update(name if relative == "." else f"{relative}/{name}" for name in files)
        return sorted(key for key in keys if key.startswith(prefix))

    def _contents(self, key: str) -> str:
        if key in self._phantom_keys:
            modified_ns, size, etag = time.time_ns(), 0, hashlib.md5(b"").hexdigest()
        else:
            modified_ns, size, etag = self._etag(self.root / key)
        modified = dt.datetime.fromtimestamp(modified_ns // 1_000_000_000, dt.UTC)
        millis = modified_ns // 1_000_000 % 1000
        return (
            f"<Contents><Key>{escape(key)}</Key>"
            f"<LastModified>{modified:%Y-%m-%dT%H:%M:%S}.{millis:03d}Z</LastModified>"
            f"<ETag>&quot;{etag}&quot;</ETag><Size>{size}</Size>"
            "<StorageClass>STANDARD</StorageClass></Contents>"
        )

    def _etag(self, path: Path) -> tuple[int, int, str]:
        """(mtime ns, size, MD5) of a file, the MD5 remembered per (path, mtime, size): a listing of
        big archives (benchmarks serve 400 MB monthly ones) would otherwise hash each one again."""
        stat = path.stat()
        known = (path, stat.st_mtime_ns, stat.st_size)
        with self._lock:
            etag = self._etags.get(known)
        if etag is None:
            etag = hashlib.md5(path.read_bytes()).hexdigest()
            with self._lock:
                self._etags[known] = etag
        return stat.st_mtime_ns, stat.st_size, etag


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    vision: VisionServer

    def handle_error(self, request: object, client_address: object) -> None:
        """Quiet when a client hung up (fault tests do it on purpose: timeouts, cut bodies)."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else keep-alive replies stall ~40 ms on delayed ACKs
    timeout = 10
    server: _HTTPServer

    def do_GET(self) -> None:
        vision = self.server.vision
        fault = vision._begin(self.path)
        try:
            if fault is not None and fault.seconds:
                time.sleep(fault.seconds)
            if fault is not None and fault.status is not None:
                self._send_error(fault.status, fault.code or "InternalError")
                return
            url = urlsplit(self.path)
            if url.path == "/":
                body = vision._listing(parse_qs(url.query, keep_blank_values=True))
                self._send(body, "application/xml", truncate=fault is not None and fault.truncate)
                return
            path = vision._object(unquote(url.path[1:]))
            if path is None:
                self._send_error(404, "NoSuchKey")
                return
            if fault is not None and fault.reset:
                self._send_then_reset(path.read_bytes())
                return
            if fault is not None and fault.truncate:
                self._send(path.read_bytes(), "binary/octet-stream", truncate=True)
                return
            self._send_file(path)
        finally:
            vision._end()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""

    def _send(self, body: bytes, content_type: str, status: int = 200, truncate: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if truncate:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self._write(body[: len(body) // 2] if truncate else body)

    def _send_file(self, path: Path) -> None:
        """An object streamed from disk: reading a big archive into memory per request cost the
        benchmarks' server seconds of page faults on a VM (docs/performance.md)."""
        with path.open("rb") as file:
            size = os.fstat(file.fileno()).st_size
            self.send_response(200)
            self.send_header("Content-Type", "binary/octet-stream")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            if not self.server.vision.bytes_per_second:
                self.connection.sendfile(file)
                return
            self._write_paced(iter(functools.partial(file.read, _PIECE), b""))

    def _write(self, body: bytes) -> None:
        """The body at the server's `bytes_per_second`, if set (benchmarks emulate a real link)."""
        if not self.server.vision.bytes_per_second:
            self.wfile.write(body)
            return
        self._write_paced(body[offset : offset + _PIECE] for offset in range(0, len(body), _PIECE))

    def _write_paced(self, pieces: Iterator[bytes]) -> None:
        """Pieces at the server's `bytes_per_second`: each is sent once the link could have carried it."""
        rate, started, sent = self.server.vision.bytes_per_second, time.monotonic(), 0
        for piece in pieces:
            sent += len(piece)
            time.sleep(max(0.0, started + sent / rate - time.monotonic()))
            self.wfile.write(piece)

    def _send_then_reset(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "binary/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.wfile.flush()
        # SO_LINGER on with a zero timeout: close() sends RST instead of FIN
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    def _send_error(self, status: int, code: str) -> None:
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>fake {code}</Message><RequestId>FAKE</RequestId></Error>"
        )
        self._send(body.encode(), "application/xml", status=status)


def put_archive(
    root: Path,
    key: str,
    data: bytes,
    checksum_style: ChecksumStyle = "newline",
) -> Path:
    """Write ``root/key`` and its ``.CHECKSUM`` in ``sha256sum`` format (``<hex>  <zip name>``).

    ``newline`` and ``no-newline`` are the two styles found on Vision; ``wrong`` names another digest.
    """
    if checksum_style not in ("newline", "no-newline", "wrong"):
        raise ValueError(f"unknown checksum_style {checksum_style!r}")
    path = root / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    digest = hashlib.sha256(data + b"!" if checksum_style == "wrong" else data).hexdigest()
    line = f"{digest}  {path.name}" + ("" if checksum_style == "no-newline" else "\n")
    path.with_name(f"{path.name}.CHECKSUM").write_text(line)
    return path
