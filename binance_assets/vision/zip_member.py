"""Stream the one CSV member of a Vision zip in line-aligned chunks, verifying its CRC-32 and size.

The member is inflated by ISA-L when available (about twice zlib) in a streaming raw-deflate reader,
so memory stays bounded whatever the archive's size. Every failure is an ArchiveFormatError naming
the archive (and the line when known).
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from collections.abc import Iterator
from typing import Any, BinaryIO

from binance_assets.vision.errors import ArchiveFormatError

try:  # ISA-L is a dependency; zlib keeps the reader working where its wheel is missing.
    from isal import isal_zlib as _inflate_lib
except ImportError:  # pragma: no cover - exercised only without isal installed
    _inflate_lib = zlib  # type: ignore[assignment]

_READ_SIZE = 1 << 20
_LOCAL_HEADER = struct.Struct("<4s5H3I2H")


def csv_member(archive: zipfile.ZipFile, name: str) -> zipfile.ZipInfo:
    """The CSV: the top-level .csv member (BTCUSDC-trades-2021-04 also nests a copy in a folder)."""
    members = [i for i in archive.infolist() if i.filename.lower().endswith(".csv") and not i.is_dir()]
    top_level = [i for i in members if "/" not in i.filename]
    chosen = top_level or members
    if len(chosen) != 1:
        found = ", ".join(i.filename for i in archive.infolist()) or "nothing"
        raise ArchiveFormatError(name, f"expected one CSV member, found {found}")
    if chosen[0].compress_type not in (zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED):
        raise ArchiveFormatError(name, f"unsupported zip compression {chosen[0].compress_type}")
    return chosen[0]


class MemberChunks:
    """Line-aligned chunks of a raw-deflate (or stored) zip member; verifies its CRC-32 and size at EOF."""

    def __init__(self, file: BinaryIO, info: zipfile.ZipInfo, archive: str, chunk_size: int) -> None:
        self._file = file
        self._info = info
        self._archive = archive
        self._chunk_size = chunk_size
        try:
            file.seek(info.header_offset)
            header = file.read(_LOCAL_HEADER.size)
        except OSError as exc:
            raise ArchiveFormatError(
                archive, f"corrupt zip: cannot seek to {info.filename} ({exc})"
            ) from None
        if len(header) < _LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
            raise ArchiveFormatError(archive, f"corrupt zip: bad local header for {info.filename}")
        name_len, extra_len = _LOCAL_HEADER.unpack(header)[-2:]
        file.seek(info.header_offset + _LOCAL_HEADER.size + name_len + extra_len)

    def __iter__(self) -> Iterator[memoryview]:
        deflated = self._info.compress_type == zipfile.ZIP_DEFLATED
        inflate = _inflate_lib.decompressobj(-15) if deflated else None
        left, crc, size = self._info.compress_size, 0, 0
        pending: list[bytes] = []
        pending_size = 0
        while left > 0:
            compressed = self._file.read(min(_READ_SIZE, left))
            if not compressed:
                raise ArchiveFormatError(
                    self._archive, "corrupt zip: member data ends early (truncated file)"
                )
            left -= len(compressed)
            data = self._inflate(inflate, compressed)
            crc, size = _inflate_lib.crc32(data, crc), size + len(data)
            pending.append(data)
            pending_size += len(data)
            if pending_size >= self._chunk_size:
                joined = b"".join(pending)
                cut = joined.rfind(b"\n") + 1
                if cut:
                    yield memoryview(joined)[:cut]  # no copy of the chunk, only of its unfinished line
                pending, pending_size = [joined[cut:]], len(joined) - cut
        tail = inflate.flush() if inflate is not None else b""
        self._verify(inflate, _inflate_lib.crc32(tail, crc), size + len(tail))
        last = b"".join([*pending, tail])
        if last:
            yield memoryview(last)

    def _inflate(self, inflate: Any, compressed: bytes) -> bytes:
        if inflate is None:
            return compressed
        try:
            return inflate.decompress(compressed)
        except (zlib.error, _inflate_lib.error) as exc:
            raise ArchiveFormatError(self._archive, f"corrupt zip: cannot inflate ({exc})") from None

    def _verify(self, inflate: Any, crc: int, size: int) -> None:
        if inflate is not None and not inflate.eof:
            raise ArchiveFormatError(self._archive, "corrupt zip: deflate stream is incomplete")
        if size != self._info.file_size or crc != self._info.CRC:
            raise ArchiveFormatError(
                self._archive,
                f"corrupt zip: {self._info.filename} inflates to {size} bytes, CRC {crc:08x}; "
                f"expected {self._info.file_size} bytes, CRC {self._info.CRC:08x}",
            )
