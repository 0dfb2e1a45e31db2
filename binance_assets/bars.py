"""Trades batches -> 5-second right-labelled bars and per-UTC-day stats (pure, vectorised, streaming).

Input rows are TRADES_SCHEMA, optionally with a ``last_id`` column (AGG_TRADES_SCHEMA): such a row is an
aggregate trade standing for the trades ``id..last_id`` at one price and time, so it adds
last_id - id + 1 to the trade counts and ``last_id`` to the id range (docs/vision-format.md section 8).

A bar stamped ``ts`` covers trades with time in [ts - 5 s, ts); empty intervals make no bar, and a bar
belongs to the UTC day of its trades (the bar stamped 00:00:00 of D+1 is day D's last). Open and close
follow (time, id) order; a repeated row id counts once (its first occurrence in file order; aggregates
are keyed by their first trade id); rows are bucketed by their own timestamp, so interleaved monthly
files aggregate correctly. missing_trade_ids is the day's id span less its trade count.

Aggregate rows also give the day's uncovered trade ids: the ids of its span that no aggregate covers
(uncovered_trade_ids, and uncovered_id_ranges as text), and per gap the times of the aggregates before
and after it (``Aggregation.gaps``), since a gap id has no time of its own (docs/vision-format.md
section 8). For aggregates that do not overlap, uncovered_trade_ids equals missing_trade_ids.

Each batch is reduced to partial bars at once (NumPy ``reduceat`` over bar runs); partial bars are
merged with the same reductions, so memory is bounded by the number of bars (17,280 a day), never by
the number of trades.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

BAR_US = 5_000_000
DAY_US = 86_400_000_000
_EPOCH = dt.date(1970, 1, 1)
_COMPACT_ROWS = 1 << 20
_MAX_ID_SPAN = 1 << 34
"""A trade id span beyond this (a 2 GiB seen-id bitmap) is not a real archive."""

DAY_BARS_SCHEMA = pa.schema(
    [
        ("day", pa.date32()),
        ("ts", pa.timestamp("s", tz="UTC")),
        ("open", pa.float64()),
        ("high", pa.float64()),
        ("low", pa.float64()),
        ("close", pa.float64()),
        ("volume", pa.float64()),
        ("quote_volume", pa.float64()),
        ("taker_buy_volume", pa.float64()),
        ("trade_count", pa.uint32()),
    ]
)
"""One ticker-day's bars as aggregated: the hl5s columns without market and ticker."""
DAYS_SCHEMA = pa.schema(
    [
        ("day", pa.date32()),
        ("trade_count", pa.uint64()),
        ("volume", pa.float64()),
        ("quote_volume", pa.float64()),
        ("taker_buy_volume", pa.float64()),
        ("bar_count", pa.uint32()),
        ("first_trade_id", pa.int64()),
        ("last_trade_id", pa.int64()),
        ("missing_trade_ids", pa.uint64()),
        ("duplicate_rows", pa.uint64()),
        ("nonpositive_rows", pa.uint64()),
        ("first_time", pa.timestamp("us", tz="UTC")),
        ("last_time", pa.timestamp("us", tz="UTC")),
        ("uncovered_trade_ids", pa.uint64()),
        ("uncovered_id_ranges", pa.string()),
    ]
)
GAPS_SCHEMA = pa.schema(
    [
        ("first_id", pa.int64()),
        ("last_id", pa.int64()),
        ("before_us", pa.int64()),
        ("after_us", pa.int64()),
    ]
)
"""Runs of trade ids no aggregate covers, ascending: ``first_id..last_id``, between the aggregate ending
just before (its time ``before_us``) and the one starting just after (``after_us``)."""
NO_GAPS = GAPS_SCHEMA.empty_table()
RANGES_KEPT = 1_000
"""uncovered_id_ranges lists this many ranges at most, then ``+N more``; the count stays exact."""


@dataclass(frozen=True)
class DayResult:
    day: dt.date
    bars: pa.Table
    """This day's bars in DAY_BARS_SCHEMA, ordered by ts."""
    stats: dict[str, object]
    """This day's row of DAYS_SCHEMA as plain Python values."""
    gaps: pa.Table = field(default_factory=GAPS_SCHEMA.empty_table)
    """The runs of trade ids in this day's span that no aggregate covers (none for trades rows)."""


@dataclass(frozen=True)
class Aggregation:
    bars: pa.Table
    """All bars in DAY_BARS_SCHEMA, ordered by ts."""
    days: pa.Table
    """One row per UTC day that has trades, in DAYS_SCHEMA, ordered by day."""
    gaps: pa.Table = field(default_factory=GAPS_SCHEMA.empty_table)
    """Every run of trade ids no aggregate covers, in GAPS_SCHEMA (empty for trades rows)."""

    def by_day(self) -> Iterator[DayResult]:
        bar_days = self.bars.column("day").to_numpy()
        stops = np.searchsorted(bar_days, self.days.column("day").to_numpy(), side="right")
        gaps = _day_slices(self.gaps, self.days)
        start = 0
        for stats, stop, (low, high) in zip(self.days.to_pylist(), stops.tolist(), gaps, strict=True):
            gap_rows = self.gaps.slice(low, high - low)
            yield DayResult(stats["day"], self.bars.slice(start, stop - start), stats, gap_rows)
            start = stop


def _day_slices(gaps: pa.Table, days: pa.Table) -> list[tuple[int, int]]:
    """Per day, the [low, high) rows of ``gaps`` inside the day's trade-id span. A span's first and last
    ids are covered ones, so a gap lies wholly inside a span or outside it (between two days)."""
    first = gaps.column("first_id").to_numpy()
    last = gaps.column("last_id").to_numpy()
    low = np.searchsorted(first, days.column("first_trade_id").to_numpy(), side="left")
    high = np.searchsorted(last, days.column("last_trade_id").to_numpy(), side="right")
    return list(zip(low.tolist(), np.maximum(high, low).tolist(), strict=True))


def id_ranges(gaps: pa.Table, kept: int = RANGES_KEPT) -> str:
    """Runs of ids as text, ascending: ``100-105,230``; past ``kept`` runs, ``+N more``."""
    shown = gaps.slice(0, kept)
    first = pc.cast(shown.column("first_id"), pa.string())
    last = pc.cast(shown.column("last_id"), pa.string())
    single = pc.equal(shown.column("first_id"), shown.column("last_id"))
    runs = pc.if_else(single, first, pc.binary_join_element_wise(first, last, "-"))
    more = [f"+{gaps.num_rows - kept} more"] if gaps.num_rows > kept else []
    return ",".join([*runs.to_pylist(), *more])


class _PartialBars:
    """Column arrays of partial bars (a bar key plus mergeable reductions), merged when they pile up."""

    FIELDS = (
        "key", "open_time", "open_id", "open", "close_time", "close_id", "close",
        "high", "low", "volume", "quote_volume", "taker_buy_volume", "trade_count",
    )  # fmt: skip

    def __init__(self) -> None:
        self.parts: list[dict[str, np.ndarray]] = []
        self.rows = 0
        self.compact_at = _COMPACT_ROWS

    def add(self, part: dict[str, np.ndarray]) -> None:
        self.parts.append(part)
        self.rows += len(part["key"])
        if self.rows > self.compact_at:
            self.compact()
            self.compact_at = max(_COMPACT_ROWS, 2 * self.rows)

    def compact(self) -> dict[str, np.ndarray]:
        """All partial bars merged into one, one row per bar, ordered by key."""
        if not self.parts:
            return {name: np.empty(0, np.int64) for name in self.FIELDS}
        if len(self.parts) > 1:
            parts, self.parts = self.parts, []
            # field by field, dropping each from the parts: peak memory is one extra copy, not two
            merged = {name: np.concatenate([part.pop(name) for part in parts]) for name in self.FIELDS}
            self.parts = [_merge(merged) if _unordered(merged["key"]) else _merge_neighbours(merged)]
            self.rows = len(self.parts[0]["key"])
        return self.parts[0]


def _runs(key: np.ndarray) -> np.ndarray:
    """Start index of each run of equal consecutive keys."""
    return np.flatnonzero(np.concatenate(([True], key[1:] != key[:-1])))


def _reduce(
    key: np.ndarray,
    time: np.ndarray,
    ids: np.ndarray,
    price: np.ndarray,
    qty: np.ndarray,
    quote: np.ndarray,
    taker_qty: np.ndarray,
    counts: np.ndarray | None,
) -> dict[str, np.ndarray]:
    """Partial bars from rows sorted by (key, time, id); `counts` is the trades each row stands for
    (aggregate trades), None when each row is one trade."""
    starts = _runs(key)
    ends = np.concatenate((starts[1:], [len(key)])) - 1
    return {
        "key": key[starts],
        "open_time": time[starts],
        "open_id": ids[starts],
        "open": price[starts],
        "close_time": time[ends],
        "close_id": ids[ends],
        "close": price[ends],
        "high": np.maximum.reduceat(price, starts),
        "low": np.minimum.reduceat(price, starts),
        "volume": np.add.reduceat(qty, starts),
        "quote_volume": np.add.reduceat(quote, starts),
        "taker_buy_volume": np.add.reduceat(taker_qty, starts),
        "trade_count": (
            np.diff(np.concatenate((starts, [len(key)])))
            if counts is None
            else np.add.reduceat(counts, starts)
        ),
    }


def _unordered(key: np.ndarray) -> bool:
    return bool(np.any(key[1:] < key[:-1]))


def _merge_neighbours(p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`_merge` of partial bars already ordered by key (batches in time order, as daily files and most
    monthly ones are): only the few keys split across batches need the sorting merge."""
    key = p["key"]
    starts = _runs(key)
    if len(starts) == len(key):
        return p
    sizes = np.diff(np.concatenate((starts, [len(key)])))
    split = sizes > 1
    rows = np.flatnonzero(np.repeat(split, sizes))
    joined = _merge({name: values[rows] for name, values in p.items()})
    merged = {}
    for name in list(p):
        merged[name] = p.pop(name)[starts]  # field by field: one extra copy at a time
        merged[name][split] = joined[name]
    return merged


def _merge(p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Merge partial bars sharing a key: open is the earliest (time, id), close the latest."""
    by_open = np.lexsort((p["open_id"], p["open_time"], p["key"]))
    key = p["key"][by_open]
    starts = _runs(key)
    merged = {name: p[name][by_open][starts] for name in ("key", "open_time", "open_id", "open")}
    for name, op in (
        ("high", np.maximum),
        ("low", np.minimum),
        ("volume", np.add),
        ("quote_volume", np.add),
        ("taker_buy_volume", np.add),
        ("trade_count", np.add),
    ):
        merged[name] = op.reduceat(p[name][by_open], starts)
    by_close = np.lexsort((p["close_id"], p["close_time"], p["key"]))
    ends = np.concatenate((starts[1:], [len(key)])) - 1
    for name in ("close_time", "close_id", "close"):
        merged[name] = p[name][by_close][ends]
    return merged


class _SeenIds:
    """Trade ids already counted, as a bitmap over the id span (ids are near-contiguous per symbol).

    The common batch, consecutive ids all above every id seen so far, needs no look-up: it is kept as
    a range of ids and marked in the bitmap only when a later batch needs the look-up.
    """

    def __init__(self) -> None:
        self.base = 0
        self.bits = np.zeros(0, np.uint8)
        self.low: int | None = None
        self.top: int | None = None
        """The lowest and the highest id seen."""
        self.ranges: list[list[int]] = []
        """[first, last] ranges of ids seen and not yet marked in the bitmap, ascending."""

    def first_seen(self, ids: np.ndarray) -> np.ndarray | None:
        """Mask of rows whose id was not seen before, in this or earlier batches; None when all are new."""
        if len(ids) == 0:
            return None
        first_id, last_id = int(ids[0]), int(ids[-1])
        increasing = bool(np.all(ids[1:] > ids[:-1]))
        above = self.top is None or first_id > self.top
        if increasing and above and last_id - first_id == len(ids) - 1:
            self.low = first_id if self.low is None else self.low
            if last_id - self.low >= _MAX_ID_SPAN:
                raise ValueError(f"trade ids {self.low}..{last_id} span too far for one archive")
            self.top = last_id
            if self.ranges and self.ranges[-1][1] == first_id - 1:
                self.ranges[-1][1] = last_id
            else:
                self.ranges.append([first_id, last_id])
            return None
        self._mark_ranges()
        if increasing:
            unique = ids
        else:
            unique, first = np.unique(ids, return_index=True)
        self.low = min(int(unique[0]), int(unique[0]) if self.low is None else self.low)
        self.top = max(int(unique[-1]), int(unique[-1]) if self.top is None else self.top)
        self._cover(int(unique[0]), int(unique[-1]))
        offsets = unique - self.base
        fresh = ((self.bits[offsets >> 3] >> (offsets & 7).astype(np.uint8)) & 1) == 0
        self._mark(offsets[fresh])
        if increasing:
            return None if fresh.all() else fresh
        keep = np.zeros(len(ids), bool)
        keep[first[fresh]] = True
        return keep

    def _cover(self, low: int, high: int) -> None:
        """Grow the bitmap (amortised doubling) so that it covers ids low..high."""
        low -= low & 7
        end = self.base + 8 * len(self.bits)
        if len(self.bits) and self.base <= low and high < end:
            return
        new_base = min(self.base, low) if len(self.bits) else low
        new_end = max(high + 1, end) if len(self.bits) else high + 1
        if new_end - new_base > _MAX_ID_SPAN:
            raise ValueError(f"trade ids {new_base}..{new_end} span too far for one archive")
        new_end = min(max(new_end, new_base + 2 * (end - self.base)), new_base + _MAX_ID_SPAN)
        grown = np.zeros((new_end - new_base + 7) >> 3, np.uint8)
        shift = (self.base - new_base) >> 3
        grown[shift : shift + len(self.bits)] = self.bits
        self.base, self.bits = new_base, grown

    def _mark_ranges(self) -> None:
        """Set the bits of the pending id ranges: whole bytes by slice, the bytes at either end by mask."""
        for low, high in self.ranges:
            self._cover(low, high)
            start, stop = low - self.base, high - self.base + 1
            whole_start, whole_stop = (start + 7) >> 3, stop >> 3
            if whole_start <= whole_stop:
                self.bits[whole_start:whole_stop] = 0xFF
                edges = np.concatenate((np.arange(start, whole_start << 3), np.arange(whole_stop << 3, stop)))
            else:  # the range lies inside one byte
                edges = np.arange(start, stop)
            self._mark(edges)
        self.ranges = []

    def _mark(self, offsets: np.ndarray) -> None:
        """Set the bits of sorted, distinct offsets without ufunc.at (one OR per touched byte)."""
        if len(offsets) == 0:
            return
        byte = offsets >> 3
        starts = _runs(byte)
        masks = np.left_shift(np.uint8(1), (offsets & 7).astype(np.uint8))
        self.bits[byte[starts]] |= np.bitwise_or.reduceat(masks, starts)


def _merge_ranges(
    first: np.ndarray, last: np.ndarray, first_time: np.ndarray, last_time: np.ndarray
) -> dict[str, np.ndarray]:
    """Id ranges ``first..last`` (sorted by first) merged where they touch or overlap; each merged range
    keeps the time of the range starting it and of the range reaching its last id."""
    reach = np.maximum.accumulate(last)
    starts = np.flatnonzero(np.concatenate(([True], first[1:] > reach[:-1] + 1)))
    ends = np.concatenate((starts[1:], [len(first)])) - 1
    reacher = np.maximum.accumulate(np.where(last == reach, np.arange(len(last)), 0))
    return {
        "first": first[starts],
        "last": reach[ends],
        "first_time": first_time[starts],
        "last_time": last_time[reacher[ends]],
    }


class _Coverage:
    """The trade-id ranges aggregate rows cover, kept merged: memory grows with the gaps between them,
    not with the rows (each batch adds its own gaps plus one range, merged when they pile up)."""

    def __init__(self) -> None:
        self.parts: list[dict[str, np.ndarray]] = []
        self.rows = 0
        self.compact_at = _COMPACT_ROWS

    def add(self, ids: np.ndarray, last: np.ndarray, time: np.ndarray) -> None:
        """Aggregates ``ids..last`` at ``time`` (any order)."""
        if np.any(ids[1:] < ids[:-1]):
            order = np.argsort(ids, kind="stable")
            ids, last, time = ids[order], last[order], time[order]
        part = _merge_ranges(ids, last, time, time)
        self.parts.append(part)
        self.rows += len(part["first"])
        if self.rows > self.compact_at:
            self.compact()
            self.compact_at = max(_COMPACT_ROWS, 2 * self.rows)

    def compact(self) -> dict[str, np.ndarray]:
        """Every range merged, ascending."""
        if len(self.parts) != 1:
            names = ("first", "last", "first_time", "last_time")
            merged = {n: np.concatenate([p[n] for p in self.parts] or [np.empty(0, np.int64)]) for n in names}
            order = np.argsort(merged["first"], kind="stable")
            self.parts = [_merge_ranges(*(merged[n][order] for n in names))] if len(order) else []
            self.rows = len(order)
        return self.parts[0] if self.parts else {}

    def gaps(self) -> pa.Table:
        """The runs of ids between the covered ranges, in GAPS_SCHEMA."""
        ranges = self.compact()
        if not ranges:
            return NO_GAPS
        columns = (
            ranges["last"][:-1] + 1,
            ranges["first"][1:] - 1,
            ranges["last_time"][:-1],
            ranges["first_time"][1:],
        )
        return pa.table(dict(zip(GAPS_SCHEMA.names, columns, strict=True)), schema=GAPS_SCHEMA)


class BarAggregator:
    """Feed batches in TRADES_SCHEMA (or AGG_TRADES_SCHEMA) with :meth:`add`; :meth:`finish` returns bars
    and day stats."""

    def __init__(self) -> None:
        self._bars = _PartialBars()
        self._seen = _SeenIds()
        self._coverage: _Coverage | None = None
        """The ids aggregate rows cover; None until a batch of aggregates is added."""
        self._day_parts: list[dict[str, np.ndarray]] = []
        """Per batch and day: first/last id, rows with price or qty <= 0, duplicate rows dropped."""

    def add(self, batch: pa.RecordBatch | pa.Table) -> None:
        if batch.num_rows == 0:
            return
        names = ("id", "time_us", "price", "qty", "quote_qty", "is_buyer_maker")
        if "last_id" in batch.schema.names:
            names += ("last_id",)
        columns = [batch.column(name).to_numpy(zero_copy_only=False) for name in names]
        keep = self._seen.first_seen(columns[0])
        if keep is not None:
            dropped_days, dropped = np.unique(columns[1][~keep] // DAY_US, return_counts=True)
            self._day_parts.append({"day": dropped_days, "duplicate_rows": dropped})
            columns = [a[keep] for a in columns]
            if len(columns[0]) == 0:
                return
        if not _is_sorted(columns[1], columns[0]):
            order = np.lexsort((columns[0], columns[1]))
            columns = [a[order] for a in columns]
        ids, time, price, qty, quote, maker = columns[:6]
        last = columns[6] if len(columns) > 6 else ids
        counts = None if last is ids else last - ids + 1
        if counts is not None:
            self._coverage = self._coverage or _Coverage()
            self._coverage.add(ids, last, time)
        taker_qty = np.where(maker, 0.0, qty)
        self._bars.add(_reduce(time // BAR_US, time, ids, price, qty, quote, taker_qty, counts))
        day = time // DAY_US
        starts = _runs(day)
        self._day_parts.append(
            {
                "day": day[starts],
                "first_trade_id": np.minimum.reduceat(ids, starts),
                "last_trade_id": np.maximum.reduceat(last, starts),
                "nonpositive_rows": np.add.reduceat(((price <= 0) | (qty <= 0)).astype(np.int64), starts),
            }
        )

    def finish(self) -> Aggregation:
        bars = self._bars.compact()
        gaps = self._coverage.gaps() if self._coverage else NO_GAPS
        return Aggregation(bars=_bars_table(bars), days=self._days_table(bars, gaps), gaps=gaps)

    def _days_table(self, bars: dict[str, np.ndarray], gaps: pa.Table) -> pa.Table:
        """Day stats: sums over the day's bars, plus the id range and counts gathered per batch."""
        bar_day = (bars["key"] * BAR_US) // DAY_US
        days, bar_starts = np.unique(bar_day, return_index=True)
        if len(days) == 0:
            return DAYS_SCHEMA.empty_table()
        first_id = np.full(len(days), np.iinfo(np.int64).max)
        last_id = np.full(len(days), np.iinfo(np.int64).min)
        nonpositive = np.zeros(len(days), np.int64)
        duplicates = np.zeros(len(days), np.int64)
        for part in self._day_parts:
            index = np.searchsorted(days, part["day"])
            if "duplicate_rows" in part:
                # a duplicate may carry a time on a day with no bars: count it on the next day with bars
                np.add.at(duplicates, np.minimum(index, len(days) - 1), part["duplicate_rows"])
                continue
            np.minimum.at(first_id, index, part["first_trade_id"])
            np.maximum.at(last_id, index, part["last_trade_id"])
            np.add.at(nonpositive, index, part["nonpositive_rows"])

        def per_day(values: np.ndarray, op: np.ufunc = np.add) -> np.ndarray:
            return op.reduceat(values, bar_starts)

        trade_count = per_day(bars["trade_count"])
        spans = pa.table({"first_trade_id": first_id, "last_trade_id": last_id})
        gap_ids = np.concatenate(
            ([0], np.cumsum(gaps["last_id"].to_numpy() - gaps["first_id"].to_numpy() + 1))
        )
        gap_rows = _day_slices(gaps, spans)
        return pa.table(
            {
                "day": _dates(days),
                "trade_count": trade_count.astype(np.uint64),
                "volume": per_day(bars["volume"]),
                "quote_volume": per_day(bars["quote_volume"]),
                "taker_buy_volume": per_day(bars["taker_buy_volume"]),
                "bar_count": np.diff(np.concatenate((bar_starts, [len(bar_day)]))).astype(np.uint32),
                "first_trade_id": first_id,
                "last_trade_id": last_id,
                # aggregates overlapping in id (no archive seen so) would count more trades than the span
                "missing_trade_ids": np.maximum((last_id - first_id + 1) - trade_count, 0).astype(np.uint64),
                "duplicate_rows": duplicates.astype(np.uint64),
                "nonpositive_rows": nonpositive.astype(np.uint64),
                "first_time": per_day(bars["open_time"], np.minimum),
                "last_time": per_day(bars["close_time"], np.maximum),
                "uncovered_trade_ids": np.array(
                    [gap_ids[high] - gap_ids[low] for low, high in gap_rows], np.uint64
                ),
                "uncovered_id_ranges": [id_ranges(gaps.slice(low, high - low)) for low, high in gap_rows],
            },
            schema=DAYS_SCHEMA,
        )


def _is_sorted(time: np.ndarray, ids: np.ndarray) -> bool:
    step = np.diff(time)
    return bool(np.all(step >= 0) and np.all((step > 0) | (np.diff(ids) > 0)))


def _dates(day_index: np.ndarray) -> pa.Array:
    return pa.array(day_index.astype(np.int32), pa.date32())


def _bars_table(bars: dict[str, np.ndarray]) -> pa.Table:
    key = bars["key"].astype(np.int64)
    close_s = (key + 1) * (BAR_US // 1_000_000)
    return pa.table(
        {
            "day": _dates((key * BAR_US) // DAY_US),
            "ts": pa.array(close_s, pa.timestamp("s", tz="UTC")),
            "open": bars["open"].astype(np.float64, copy=False),
            "high": bars["high"].astype(np.float64, copy=False),
            "low": bars["low"].astype(np.float64, copy=False),
            "close": bars["close"].astype(np.float64, copy=False),
            "volume": bars["volume"].astype(np.float64, copy=False),
            "quote_volume": bars["quote_volume"].astype(np.float64, copy=False),
            "taker_buy_volume": bars["taker_buy_volume"].astype(np.float64, copy=False),
            "trade_count": bars["trade_count"].astype(np.uint32),
        },
        schema=DAY_BARS_SCHEMA,
    )


def aggregate_trades(batches: Iterable[pa.RecordBatch | pa.Table]) -> Aggregation:
    """Aggregate a stream of trade batches (TRADES_SCHEMA or AGG_TRADES_SCHEMA) into bars and day stats."""
    aggregator = BarAggregator()
    for batch in batches:
        aggregator.add(batch)
    return aggregator.finish()
