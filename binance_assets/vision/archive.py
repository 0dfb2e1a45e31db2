"""Stream a Vision trades or aggTrades zip as Arrow record batches in the dataset's normal schema.

Shared by every dataset: the zip member is inflated and verified in line-aligned chunks
(`zip_member`). Three stages overlap: a thread inflates the chunk after next, a second has Arrow parse
the next one (on Arrow's threads), and the caller converts and aggregates the current one. Line 1 is a
header iff its first field is not an integer (docs/vision-format.md section 3), and every problem is an
ArchiveFormatError naming the archive and, where known, the line. A `Dataset` says only what differs:
its columns per market and how a parsed batch becomes its normal schema.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from binance_assets.markets import DatasetName, Market
from binance_assets.prefetch import prefetch
from binance_assets.vision.errors import ArchiveFormatError, BadRow
from binance_assets.vision.zip_member import MemberChunks, csv_member

MS_TO_US_BELOW = 10**14
"""Times below this are milliseconds (year 5138 in ms), at or above it microseconds (1973 in us)."""

CHUNK_SIZE = 4 << 20
"""Inflated bytes per parse: four Arrow blocks to parse on both cores; larger chunks gain nothing on a
3M-trade day (0.30-0.32 s for 2-16 MB) and cost resident memory on monthly archives."""
_BLOCK_SIZE = 1 << 20
_ROW_NUMBER = re.compile(r"\s*Row #(\d+):?")
INTEGER = re.compile(rb"^-?\d+$")
"""A CSV field holding an integer: line 1 is a header iff its first field is not one."""
_CANONICAL = {"quantity": "qty", "transact_time": "time"}
"""Futures aggTrades spell spot's qty and time this way; batches use the spot names."""
_COLUMN_TYPES = {
    **dict.fromkeys(("id", "first_trade_id", "last_trade_id", "time"), pa.int64()),
    **dict.fromkeys(("price", "qty", "quote_qty", "base_qty"), pa.float64()),
    **dict.fromkeys(("is_buyer_maker", "is_best_match"), pa.bool_()),
}


def _parse_pool() -> pa.MemoryPool:
    """jemalloc for the parser's buffers, where this pyarrow has it. Each chunk's parse allocates and frees
    its buffers: Arrow's default pool (mimalloc) maps them on transparent huge pages, whose faults zero
    2 MB at a time, and the kernel's share of a 3M-trade day was about twice jemalloc's, with a peak
    30 MB higher (docs/performance.md, "Where the time goes")."""
    try:
        return pa.jemalloc_memory_pool()
    except NotImplementedError:  # a pyarrow built without jemalloc
        return pa.default_memory_pool()


PARSE_POOL = _parse_pool()


class Conversion(NamedTuple):
    parsed: tuple[str, ...]
    """The columns to parse, by their canonical names."""
    build: Callable[[pa.RecordBatch], pa.RecordBatch]
    """The batch in the dataset's schema from the parsed columns (none null); may raise BadRow."""


@dataclass(frozen=True)
class Dataset:
    """What one Vision CSV dataset adds to the shared reader."""

    name: DatasetName
    schema: pa.Schema
    columns: Callable[[Market], tuple[str, ...]]
    """The market's CSV columns in file order, spelled as its header spells them."""
    conversion: Callable[[Market, float | None], Conversion]
    """How to convert the market's rows, given the contract size (COIN-M); raises ValueError when the
    dataset needs a contract size it was not given."""


def read_archive(
    path: Path,
    market: Market,
    dataset: Dataset,
    *,
    contract_size: float | None = None,
    name: str | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> Iterator[pa.RecordBatch]:
    """Stream the rows of one Vision zip of `dataset` as record batches in `dataset.schema`.

    Rows keep file order: sorting and de-duplication are the aggregator's job, since monthly files
    interleave days. Raises ArchiveFormatError naming the archive (as `name`, by default the file's
    name: the cache names files by their sha256) and the line for a corrupt zip, unexpected columns,
    an unparsable row, an empty field or a row the dataset rejects.
    """
    conversion = dataset.conversion(market, contract_size)  # eager: a missing argument fails here
    return _stream(Path(path), name or Path(path).name, dataset.columns(market), conversion, chunk_size)


def _stream(
    path: Path, name: str, columns: tuple[str, ...], conversion: Conversion, chunk_size: int
) -> Iterator[pa.RecordBatch]:
    with open(path, "rb") as file:
        try:
            info = csv_member(zipfile.ZipFile(file), name)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise ArchiveFormatError(name, f"not a readable zip archive ({exc})") from None
        parser = _Parser(columns, conversion.parsed, name)
        chunks = prefetch(MemberChunks(file, info, name, chunk_size), depth=2)
        tables = prefetch(_tables(chunks, parser), depth=1)
        try:
            yield from _batches(tables, parser, conversion.build)
        finally:
            tables.close()
            chunks.close()


class _Parser:
    """Arrow CSV options for one archive, its header check and its row-error reporting."""

    def __init__(self, columns: tuple[str, ...], parsed: tuple[str, ...], name: str) -> None:
        self.columns = columns
        self.names = [_CANONICAL.get(c, c) for c in columns]
        self.spelled = dict(zip(self.names, columns, strict=True))
        self.name = name
        self.convert = pa_csv.ConvertOptions(
            column_types={c: _COLUMN_TYPES[c] for c in parsed},
            include_columns=list(parsed),
            true_values=["true", "True", "TRUE"],
            false_values=["false", "False", "FALSE"],
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        )

    def has_header(self, first_line: bytes) -> bool:
        """Check line 1 against the columns; True when it is a header (its first field is no integer)."""
        fields = first_line.rstrip(b"\r\n").split(b",")
        expected = self.columns
        if INTEGER.match(fields[0].strip()):
            if len(fields) != len(expected):
                problem = f"{len(fields)} fields, expected {len(expected)} ({','.join(expected)})"
                raise ArchiveFormatError(self.name, f"unexpected columns: {problem}", line=1)
            return False
        header = tuple(_camel_to_snake(f.strip().decode("ascii", "replace")) for f in fields)
        if header != expected:
            problem = f"unexpected columns {','.join(header)}; expected {','.join(expected)}"
            raise ArchiveFormatError(self.name, problem, line=1)
        return True

    def read(self, chunk: memoryview, skip: int, *, use_threads: bool) -> pa.Table:
        options = pa_csv.ReadOptions(
            column_names=self.names, skip_rows=skip, use_threads=use_threads, block_size=_BLOCK_SIZE
        )
        return pa_csv.read_csv(
            pa.py_buffer(chunk), read_options=options, convert_options=self.convert, memory_pool=PARSE_POOL
        )

    def row_error(self, chunk: memoryview, skip: int, first_line: int) -> ArchiveFormatError:
        """Parse the failing chunk again on one thread: only then does Arrow say which row (counted in
        the chunk, skipped header included) is wrong."""
        try:
            self.read(chunk, skip, use_threads=False)
        except pa.ArrowInvalid as exc:
            message = str(exc)
            match = _ROW_NUMBER.search(message)
            line = first_line + int(match.group(1)) - 1 if match else None
            problem = f"unparsable row: {_ROW_NUMBER.sub('', message).strip(' :')}"
            return ArchiveFormatError(self.name, problem, line)
        return ArchiveFormatError(self.name, "unparsable rows (Arrow failed with threads only)")

    def check_not_null(self, batch: pa.RecordBatch, first_line: int) -> None:
        for column, values in zip(batch.schema.names, batch.columns, strict=True):
            if values.null_count:
                row = pc.index(pc.is_null(values), True).as_py()
                problem = f"unparsable row: empty {self.spelled[column]} field"
                raise ArchiveFormatError(self.name, problem, first_line + row)


def _camel_to_snake(column: str) -> str:
    return re.sub(r"(?<=[a-z])([A-Z])", r"_\1", column).lower()


def _tables(chunks: Iterator[memoryview], parser: _Parser) -> Iterator[tuple[pa.Table, int]]:
    """Each chunk parsed, with the file line of its first row."""
    first_line = 1
    for index, chunk in enumerate(chunks):
        skip = int(index == 0 and parser.has_header(bytes(chunk[:4096]).split(b"\n", 1)[0]))
        try:
            table = parser.read(chunk, skip, use_threads=True)
        except pa.ArrowInvalid:
            for _ in chunks:  # a corrupt member garbles rows before its CRC is reached: report the cause
                pass
            raise parser.row_error(chunk, skip, first_line) from None
        first_line += skip
        yield table, first_line
        first_line += table.num_rows


def _batches(
    tables: Iterator[tuple[pa.Table, int]], parser: _Parser, build: Callable[[pa.RecordBatch], pa.RecordBatch]
) -> Iterator[pa.RecordBatch]:
    for table, first_line in tables:
        for batch in table.to_batches():
            parser.check_not_null(batch, first_line)
            try:
                yield build(batch)
            except BadRow as bad:
                raise ArchiveFormatError(parser.name, bad.problem, first_line + bad.row) from None
            first_line += batch.num_rows


def time_us(raw: pa.Array) -> pa.Array:
    """UTC microseconds of a time column in ms or us, told apart per row by magnitude (spot switched
    to microseconds on 2025-01-01, docs/vision-format.md section 3)."""
    values = raw.to_numpy()
    return pa.array(np.where(values < MS_TO_US_BELOW, values * 1000, values))
