"""Seconds, trades/s and peak RSS for one synthetic 3M-trade UM day: inflate floors, pandas, our path,
and the CSV parsers alone.

    python benchmarks/bars_bench.py [--trades 3000000] [--workdir DIR] [--repeat 3]

The archive (um_header layout, one UTC day) is generated once and cached in the workdir (delete it
after changing the generator). Every measurement runs in a fresh subprocess that times its own work
(imports excluded) and reports its own peak RSS (VmHWM), so peak RSS is per measurement; the best of
`--repeat` runs is shown, with the CPU seconds (all threads) of its fastest pass. The parse-only stages
read the CSV inflated in memory beforehand (the columns and types our reader parses, both cores), in
our reader's 4 MB line-aligned chunks and whole: the CSV parser decision in docs/performance.md ("End to
end") rests on them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing the package

TICKER = "BTCUSDT"
DAY = dt.date(2024, 1, 1)
READ_CHUNK = 1 << 20
STAGES: dict[str, str] = {
    "zipfile": "inflate zlib (zipfile read)",
    "zlib": "inflate zlib (raw stream)",
    "zlib_ng": "inflate zlib-ng (raw stream)",
    "isal": "inflate isal (raw stream)",
    "pandas": "pandas read_csv + resample",
    "ours": "ours: read_archive + aggregate_trades",
    "pyarrow_csv": "parse only: pyarrow, 4 MB chunks",
    "polars_csv": "parse only: polars, 4 MB chunks",
    "pyarrow_csv_whole": "parse only: pyarrow, whole CSV",
    "polars_csv_whole": "parse only: polars, whole CSV",
}


def build_archive(workdir: Path, trades: int) -> Path:
    """Write (once) the UM `BTCUSDT-trades-2024-01-01.zip` of `trades` trades under `workdir`."""
    from binance_assets.markets import MARKETS
    from binance_assets_tests.archives import trades_csv, write_archive, zip_archive

    key = MARKETS["um"].archive_key("trades", TICKER, DAY.isoformat())
    root = cache_root(workdir, trades)
    path = root / key
    if path.with_name(path.name + ".CHECKSUM").exists():  # written last: the zip is complete
        return path
    started = time.perf_counter()
    text = trades_csv(synthetic_day(trades), "um_header")
    written = write_archive(root, key, zip_archive(text, path.with_suffix(".csv").name))
    print(f"generated {written} in {time.perf_counter() - started:.1f} s (csv {len(text) / 1e6:.1f} MB)")
    return written


def cache_root(workdir: Path, trades: int) -> Path:
    """The mirror (laid out like the bucket) holding the benchmark's archives of `trades` trades."""
    return workdir / f"um-{trades}"


def synthetic_day(trades: int) -> pd.DataFrame:
    """The benchmark's trades: `trades` UM trades over DAY at about 42,000 USDT, whole milliseconds."""
    from binance_assets_tests.archives import make_trades

    start = dt.datetime.combine(DAY, dt.time(), tzinfo=dt.UTC)
    return make_trades(trades, start, 86_400, price=42_000.0, time_unit="ms")


def _deflate_stream(path: Path) -> tuple[int, int, int]:
    """(offset, compressed size, inflated size) of the zip's only member's raw deflate stream."""
    with zipfile.ZipFile(path) as archive:
        (info,) = archive.infolist()
    with path.open("rb") as raw:
        raw.seek(info.header_offset)
        header = struct.unpack(zipfile.structFileHeader, raw.read(zipfile.sizeFileHeader))
    name_length, extra_length = header[-2], header[-1]
    offset = info.header_offset + zipfile.sizeFileHeader + name_length + extra_length
    return offset, info.compress_size, info.file_size


def _inflate_zipfile(path: Path) -> None:
    with zipfile.ZipFile(path) as archive, archive.open(archive.infolist()[0]) as member:
        while member.read(READ_CHUNK):
            pass


def _raw_inflater(module: str) -> Callable[[], Callable[[Path], None]]:
    """A loader of a raw-deflate inflate loop over the member with `module`'s decompressobj(-15)."""

    def load() -> Callable[[Path], None]:
        if module == "isal":
            from isal import isal_zlib as codec
        elif module == "zlib_ng":
            from zlib_ng import zlib_ng as codec
        else:
            import zlib as codec

        def inflate(path: Path) -> None:
            offset, left, size = _deflate_stream(path)
            inflater = codec.decompressobj(-15)
            inflated = 0
            with path.open("rb") as raw:
                raw.seek(offset)
                while left:
                    chunk = raw.read(min(READ_CHUNK, left))
                    left -= len(chunk)
                    while chunk:  # bounded output, as zipfile reads: no huge fresh buffers
                        inflated += len(inflater.decompress(chunk, READ_CHUNK))
                        chunk = inflater.unconsumed_tail
            inflated += len(inflater.flush())
            if inflated != size:
                raise RuntimeError(f"{module} inflated {inflated} bytes, the zip says {size}")

        return inflate

    return load


def _pandas_path() -> Callable[[Path], int]:
    import pandas as pd

    def run(path: Path) -> int:
        with zipfile.ZipFile(path) as archive, archive.open(archive.infolist()[0]) as member:
            trades = pd.read_csv(member)
        trades.index = pd.to_datetime(trades["time"], unit="ms", utc=True)
        trades["quote"] = trades["price"] * trades["qty"]
        trades["taker_buy"] = trades["qty"].where(~trades["is_buyer_maker"], 0.0)
        buckets = trades.resample("5s", label="right", closed="left")
        bars = buckets["price"].ohlc().join(buckets[["qty", "quote", "taker_buy"]].sum())
        bars["trade_count"] = buckets["price"].count()
        return int((bars["trade_count"] > 0).sum())

    return run


def _our_path() -> Callable[[Path], int]:
    """The lead's API; adapt here if it changes."""
    from binance_assets.bars import aggregate_trades
    from binance_assets.markets import MARKETS
    from binance_assets.vision.archive import read_archive
    from binance_assets.vision.trades import TRADES

    market = MARKETS["um"]

    def run(path: Path) -> int:
        return aggregate_trades(read_archive(path, market, TRADES)).bars.num_rows

    return run


_PARSED = ("id", "price", "qty", "time", "is_buyer_maker")
"""The columns our reader parses from a UM trades CSV (quote_qty is recomputed)."""
_COLUMNS = ("id", "price", "qty", "quote_qty", "time", "is_buyer_maker")


def _csv_chunks(path: Path, whole: bool) -> list[bytes]:
    """The zip's CSV without its header: whole, or cut at line ends every CHUNK_SIZE bytes as our
    reader hands it to the parser."""
    from binance_assets.vision.archive import CHUNK_SIZE

    with zipfile.ZipFile(path) as archive:
        text = archive.read(archive.infolist()[0])
    text = text[text.index(b"\n") + 1 :]
    if whole:
        return [text]
    chunks, start = [], 0
    while start < len(text):
        stop = (
            text.rfind(b"\n", start, start + CHUNK_SIZE) + 1 if start + CHUNK_SIZE < len(text) else len(text)
        )
        chunks.append(text[start:stop])
        start = stop
    return chunks


def _parser(name: str, whole: bool) -> Callable[[], Callable[[Path], int]]:
    """A loader of `name`'s CSV reader (pyarrow or polars) on the inflated CSV, in memory beforehand,
    as our reader would use it: the columns and types it parses, on both cores."""

    def load() -> Callable[[Path], int]:
        if name == "pyarrow":
            import pyarrow as pa
            import pyarrow.csv as pa_csv

            types = dict.fromkeys(("id", "time"), pa.int64()) | dict.fromkeys(("price", "qty"), pa.float64())
            read = pa_csv.ReadOptions(column_names=list(_COLUMNS), block_size=1 << 20)
            convert = pa_csv.ConvertOptions(
                column_types={**types, "is_buyer_maker": pa.bool_()}, include_columns=list(_PARSED)
            )

            def parse(chunk: bytes) -> int:
                return pa_csv.read_csv(pa.py_buffer(chunk), read, convert_options=convert).num_rows
        else:
            import polars as pl

            types = {"id": pl.Int64, "time": pl.Int64, "is_buyer_maker": pl.Boolean}
            schema = {column: types.get(column, pl.Float64) for column in _COLUMNS}  # in file order
            wanted = [_COLUMNS.index(c) for c in _PARSED]

            def parse(chunk: bytes) -> int:
                frame = pl.read_csv(chunk, has_header=False, schema=schema, columns=wanted)
                return frame.to_arrow().num_rows  # the aggregator takes Arrow

        chunks: dict[Path, list[bytes]] = {}

        def prepare(path: Path) -> list[bytes]:
            if path not in chunks:
                chunks[path] = _csv_chunks(path, whole)
            return chunks[path]

        def run(path: Path) -> int:
            return sum(parse(chunk) for chunk in prepare(path))

        run.prepare = prepare  # type: ignore[attr-defined]
        return run

    return load


LOADERS: dict[str, Callable[[], Callable[[Path], object]]] = {
    "zipfile": lambda: _inflate_zipfile,
    "zlib": _raw_inflater("zlib"),
    "zlib_ng": _raw_inflater("zlib_ng"),
    "isal": _raw_inflater("isal"),
    "pandas": _pandas_path,
    "ours": _our_path,
    **{
        f"{name}_csv{'_whole' if whole else ''}": _parser(name, whole)
        for name in ("pyarrow", "polars")
        for whole in (False, True)
    },
}


def child(load: Callable[[], Callable[[Path], object]], path: Path, passes: int) -> None:
    """Run the loaded work `passes` times in this process; print one JSON line with the first (cold:
    thread pools, first-touch memory) and the fastest (warm: what every archive after a run's first
    costs)."""
    try:
        work = load()
    except Exception as error:  # reported, so the other stages still print
        print(json.dumps({"error": f"{type(error).__name__}: {error}"}))
        return
    prepare = getattr(work, "prepare", None)  # work kept out of the timing (the parse stages' inflate)
    if prepare is not None:
        prepare(path)
    times = []
    for _ in range(passes):
        started, cpu = time.perf_counter(), time.process_time()
        bars = work(path)
        times.append((time.perf_counter() - started, time.process_time() - cpu))
    seconds, cpu = min(times)
    report = {"cold": times[0][0], "seconds": seconds, "cpu": cpu, "rss_mb": _peak_rss_mb(), "bars": bars}
    print(json.dumps(report))


def _peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM). Not ru_maxrss: Linux carries the parent's peak into it
    across the vfork/exec that subprocess uses, so every child would report at least the parent's."""
    return status_kb("VmHWM") / 1024


def status_kb(field: str, pid: int | str = "self") -> int:
    """A kB field of /proc/PID/status (VmHWM, VmRSS); ValueError where the process has none."""
    status = Path(f"/proc/{pid}/status").read_text()
    (kilobytes,) = (line.split()[1] for line in status.splitlines() if line.startswith(f"{field}:"))
    return int(kilobytes)


def measure(stage: str, path: Path, repeat: int, passes: int, script: str = __file__) -> dict[str, Any]:
    """Best seconds and highest peak RSS over `repeat` fresh subprocesses running `script --child stage`,
    or {"error": ...}."""
    runs = []
    for _ in range(repeat):
        done = subprocess.run(
            [sys.executable, script, "--child", stage, "--zip", str(path), "--passes", str(passes)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode:
            lines = done.stderr.strip().splitlines() or [f"exit {done.returncode}"]
            return {"error": lines[-1]}
        report = json.loads(done.stdout.strip().splitlines()[-1])
        if "error" in report:
            return report
        runs.append(report)
    best = min(runs, key=lambda run: run["seconds"])
    return {**best, "cold": min(run["cold"] for run in runs), "rss_mb": max(run["rss_mb"] for run in runs)}


def parse_or_run_child(
    doc: str, loaders: dict[str, Callable[[], Callable[[Path], object]]]
) -> argparse.Namespace | None:
    """The benchmark's arguments; None when this process was a `--child` measurement, now done."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trades", type=int, default=3_000_000)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "binance-assets-bench")
    parser.add_argument("--repeat", type=int, default=3, help="fresh processes per stage")
    parser.add_argument("--passes", type=int, default=3, help="runs per process (the first is cold)")
    parser.add_argument("--child", choices=loaders, help=argparse.SUPPRESS)
    parser.add_argument("--zip", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(loaders[args.child], args.zip, args.passes)
        return None
    return args


def main() -> None:
    args = parse_or_run_child(__doc__ or "", LOADERS)
    if args is None:
        return

    path = build_archive(args.workdir, args.trades)
    print(f"{path}: {args.trades:,} trades, zip {path.stat().st_size / 1e6:.1f} MB")
    print(f"best of {args.repeat} processes x {args.passes} passes; ratios use warm seconds")
    print(f"{'stage':<40} {'cold s':>7} {'warm s':>7} {'CPU s':>6} {'M trades/s':>11} {'peak RSS MB':>12}")
    results: dict[str, dict[str, Any]] = {}
    for stage, label in STAGES.items():
        if stage in ("zlib_ng", "isal") and importlib.util.find_spec(stage) is None:
            print(f"{label}: not installed")
            continue
        result = measure(stage, path, args.repeat, args.passes)
        if "error" in result:
            status = "not available" if stage == "ours" else "failed"
            print(f"{'our path' if stage == 'ours' else label}: {status} ({result['error']})")
            continue
        results[stage] = result
        rate = args.trades / result["seconds"] / 1e6
        cold, warm = result["cold"], result["seconds"]
        cpu = result["cpu"]
        print(f"{label:<40} {cold:>7.2f} {warm:>7.2f} {cpu:>6.2f} {rate:>11.2f} {result['rss_mb']:>12.0f}")

    ours, pandas, isal = (results.get(stage) for stage in ("ours", "pandas", "isal"))
    if ours and pandas:
        print(f"ours vs pandas: {pandas['seconds'] / ours['seconds']:.1f}x faster (target >= 5x)")
        if ours["bars"] != pandas["bars"]:
            print(f"WARNING: ours made {ours['bars']} bars, pandas {pandas['bars']}")
    if ours and isal:
        print(f"ours vs isal inflate floor: {ours['seconds'] / isal['seconds']:.2f}x (target <= 2x)")


if __name__ == "__main__":
    main()
