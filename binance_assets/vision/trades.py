"""Open a Binance trades zip and stream it as Arrow record batches in one normal schema.

Every market and era becomes ``id, price, qty, quote_qty, time_us, is_buyer_maker`` (TRADES_SCHEMA):
the header is detected per file (UM files before 2022-08-11 have none), the time unit per row by
magnitude (spot is in microseconds from 2025-01-01), and ``quote_qty`` is recomputed as price * qty
because the archive's own column has corrupt rows (COIN-M takes its ``base_qty`` column instead, the
base-asset volume Binance's COIN-M klines report). See vision/FORMAT.md section 3.

The zip member is inflated by ISA-L when available (about twice zlib) in a streaming raw-deflate
reader that also checks the member's CRC-32 and size, and Arrow parses it block by block, so memory
stays bounded whatever the archive's size.
"""

from __future__ import annotations

import re
import struct
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from binance_assets.markets import Market
from binance_assets.prefetch import prefetch

try:  # ISA-L is a dependency; zlib keeps the reader working where its wheel is missing.
    from isal import isal_zlib as _inflate_lib
except ImportError:  # pragma: no cover - exercised only without isal installed
    _inflate_lib = zlib  # type: ignore[assignment]

TRADES_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("price", pa.float64()),
        ("qty", pa.float64()),
        ("quote_qty", pa.float64()),
        ("time_us", pa.int64()),
        ("is_buyer_maker", pa.bool_()),
    ]
)
MS_TO_US_BELOW = 10**14
"""Times below this are milliseconds (year 5138 in ms), at or above it microseconds (1973 in us)."""

_CHUNK_SIZE = 4 << 20
"""Inflated bytes per parse: four Arrow blocks to parse on both cores; larger chunks gain nothing on a
3M-trade day (0.30-0.32 s for 2-16 MB) and cost resident memory on monthly archives."""
_BLOCK_SIZE = 1 << 20
_READ_SIZE = 1 << 20
_LOCAL_HEADER = struct.Struct("<4s5H3I2H")
_ROW_NUMBER = re.compile(r"\s*Row #(\d+):?")
_INTEGER = re.compile(rb"^-?\d+$")
_COLUMN_TYPES = {
    "id": pa.int64(),
    "price": pa.float64(),
    "qty": pa.float64(),
    "quote_qty": pa.float64(),
    "base_qty": pa.float64(),
    "time": pa.int64(),
    "is_buyer_maker": pa.bool_(),
    "is_best_match": pa.bool_(),
}


class TradesFormatError(ValueError):
    """The archive is not a readable trades file; the message names the archive (and line if known)."""

    def __init__(self, archive: str, problem: str, line: int | None = None) -> None:
        where = f"{archive}, line {line}" if line is not None else archive
        super().__init__(f"{where}: {problem}")
        self.archive = archive
        self.line = line


class _MemberChunks:
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
            raise TradesFormatError(archive, f"corrupt zip: cannot seek to {info.filename} ({exc})") from None
        if len(header) < _LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
            raise TradesFormatError(archive, f"corrupt zip: bad local header for {info.filename}")
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
                raise TradesFormatError(self._archive, "corrupt zip: member data ends early (truncated file)")
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
            raise TradesFormatError(self._archive, f"corrupt zip: cannot inflate ({exc})") from None

    def _verify(self, inflate: Any, crc: int, size: int) -> None:
        if inflate is not None and not inflate.eof:
            raise TradesFormatError(self._archive, "corrupt zip: deflate stream is incomplete")
        if size != self._info.file_size or crc != self._info.CRC:
            raise TradesFormatError(
                self._archive,
                f"corrupt zip: {self._info.filename} inflates to {size} bytes, CRC {crc:08x}; "
                f"expected {self._info.file_size} bytes, CRC {self._info.CRC:08x}",
            )


def _csv_member(archive: zipfile.ZipFile, name: str) -> zipfile.ZipInfo:
    """The trades CSV: the top-level .csv member (BTCUSDC-trades-2021-04 also nests a copy in a folder)."""
    members = [i for i in archive.infolist() if i.filename.lower().endswith(".csv") and not i.is_dir()]
    top_level = [i for i in members if "/" not in i.filename]
    chosen = top_level or members
    if len(chosen) != 1:
        found = ", ".join(i.filename for i in archive.infolist()) or "nothing"
        raise TradesFormatError(name, f"expected one CSV member, found {found}")
    if chosen[0].compress_type not in (zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED):
        raise TradesFormatError(name, f"unsupported zip compression {chosen[0].compress_type}")
    return chosen[0]


def _layout(first_line: bytes, market: Market, name: str) -> bool:
    """Check line 1 against the market's columns; True when it is a header (its first field is no integer)."""
    fields = first_line.rstrip(b"\r\n").split(b",")
    expected = market.csv_columns
    has_header = not _INTEGER.match(fields[0].strip())
    if has_header:
        header = tuple(_camel_to_snake(f.strip().decode("ascii", "replace")) for f in fields)
        if header != expected:
            raise TradesFormatError(
                name, f"unexpected columns {','.join(header)}; expected {','.join(expected)}", line=1
            )
    elif len(fields) != len(expected):
        problem = f"unexpected columns: {len(fields)} fields, expected {len(expected)} ({','.join(expected)})"
        raise TradesFormatError(name, problem, line=1)
    return has_header


def _camel_to_snake(column: str) -> str:
    return re.sub(r"(?<=[a-z])([A-Z])", r"_\1", column).lower()


def read_trades(
    path: Path, market: Market, *, name: str | None = None, chunk_size: int = _CHUNK_SIZE
) -> Iterator[pa.RecordBatch]:
    """Stream the trades of one Binance trades zip as record batches in TRADES_SCHEMA.

    A thread inflates the next line-aligned chunk while Arrow parses the current one on its own threads.
    Raises TradesFormatError naming the archive (and the line) for a corrupt zip, unexpected columns or
    an unparsable row (as ``name``, by default the file's name: the cache names files by their sha256).
    Rows keep file order: sorting and de-duplication are the aggregator's job, since monthly files
    interleave days.
    """
    name = name or Path(path).name
    with open(path, "rb") as file:
        try:
            info = _csv_member(zipfile.ZipFile(file), name)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise TradesFormatError(name, f"not a readable zip archive ({exc})") from None
        chunks = prefetch(_MemberChunks(file, info, name, chunk_size), depth=2)
        try:
            yield from _parse(chunks, market, name)
        finally:
            chunks.close()


def _parse(chunks: Iterator[memoryview], market: Market, name: str) -> Iterator[pa.RecordBatch]:
    volume_column = market.quote_column
    wanted = ["id", "price", "qty", "time", "is_buyer_maker"] + ([volume_column] if volume_column else [])
    convert = pa_csv.ConvertOptions(
        column_types={c: _COLUMN_TYPES[c] for c in wanted},
        include_columns=wanted,
        true_values=["true", "True", "TRUE"],
        false_values=["false", "False", "FALSE"],
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
    first_line = 1
    for index, chunk in enumerate(chunks):
        skip = int(index == 0 and _layout(bytes(chunk[:4096]).split(b"\n", 1)[0], market, name))
        try:
            table = _read_chunk(chunk, market, convert, skip, use_threads=True)
        except pa.ArrowInvalid:
            for _ in chunks:  # a corrupt member garbles rows before its CRC is reached: report the cause
                pass
            raise _row_error(chunk, market, convert, skip, name, first_line) from None
        for batch in table.to_batches():
            yield _normalise(batch, volume_column, name, first_line + skip)
            first_line += batch.num_rows
        first_line += skip


def _read_chunk(
    chunk: memoryview, market: Market, convert: pa_csv.ConvertOptions, skip: int, *, use_threads: bool
) -> pa.Table:
    options = pa_csv.ReadOptions(
        column_names=list(market.csv_columns), skip_rows=skip, use_threads=use_threads, block_size=_BLOCK_SIZE
    )
    return pa_csv.read_csv(pa.py_buffer(chunk), read_options=options, convert_options=convert)


def _row_error(
    chunk: memoryview, market: Market, convert: pa_csv.ConvertOptions, skip: int, name: str, first_line: int
) -> TradesFormatError:
    """Parse the failing chunk again on one thread: only then does Arrow say which row (counted in the
    chunk, skipped header included) is wrong."""
    try:
        _read_chunk(chunk, market, convert, skip, use_threads=False)
    except pa.ArrowInvalid as exc:
        message = str(exc)
        match = _ROW_NUMBER.search(message)
        line = first_line + int(match.group(1)) - 1 if match else None
        return TradesFormatError(name, f"unparsable row: {_ROW_NUMBER.sub('', message).strip(' :')}", line)
    return TradesFormatError(name, "unparsable rows (Arrow failed with threads only)")


def _normalise(
    batch: pa.RecordBatch, volume_column: str | None, name: str, first_line: int
) -> pa.RecordBatch:
    for column, values in zip(batch.schema.names, batch.columns, strict=True):
        if values.null_count:
            row = pc.index(pc.is_null(values), True).as_py()
            raise TradesFormatError(name, f"unparsable row: empty {column} field", first_line + row)
    raw_time = batch.column("time").to_numpy()
    time_us = np.where(raw_time < MS_TO_US_BELOW, raw_time * 1000, raw_time)
    price, qty = batch.column("price"), batch.column("qty")
    quote = batch.column(volume_column) if volume_column else pc.multiply(price, qty)
    return pa.RecordBatch.from_arrays(
        [batch.column("id"), price, qty, quote, pa.array(time_us), batch.column("is_buyer_maker")],
        schema=TRADES_SCHEMA,
    )
