"""The metadata a run writes on its materialisations and checks: the one list of its keys.

assets.py writes it; cli/runs.py reads the run's totals back from the instance for its summaries (the
figures through `read_figures`, beside `figures_metadata` that writes them). Every daily_liquidity
partition a run materialises carries the run's totals (`run_metadata`) beside its own day's figures
(`day_figures`), so the totals stay small whatever the run's length: the archives read are
counted, not listed (each partition names its own, and the ledger holds them all).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from dagster import MetadataValue

from binance_assets.pipeline import DayLoad, FailedDay, LoadFigures, RunLoad
from binance_assets.trust.checks import CheckOutcome

RUN_TICKER_DAYS = "run_ticker_days"
RUN_TRADE_COUNT = "run_trade_count"
RUN_BAR_COUNT = "run_bar_count"
BYTES_DOWNLOADED = "bytes_downloaded"
SECONDS_DOWNLOAD = "seconds_download"
SECONDS_AGGREGATE = "seconds_aggregate"
"""The run's figures (pipeline.LoadFigures): `figures_metadata` writes them, `read_figures` reads back."""
RUN_DAYS_WITHOUT_ARCHIVE = "run_days_without_archive"
FALLBACK_DAYS = "fallback_days"
FAILED_DAYS = "failed_days"
LATE_DAYS = "late_days"
"""The run's days built from the fallback, failed and late, which cli/runs.py reads back."""
PARTIAL_DAYS = "partial_days"
"""Partial trades days kept: their fallback day matched neither klines count (trust/fallback.py)."""
RANGES_SHOWN = 20
"""Uncovered id ranges a partition's metadata lists (daily_liquidity.uncovered_id_ranges has more)."""
FIRST_FAILURE = "first_failure"
"""A failed check's first failing ticker-day, which cli/runs.py prints."""


def run_metadata(load: RunLoad, tickers: Sequence[str], seconds_total: float) -> dict[str, Any]:
    """The run's totals, from a drained load: the days it wrote, and those it did not (failed, late)."""
    rows = load.liquidity_rows
    sources = [row["source"] for row in rows]
    return {
        **figures_metadata(load.figures),
        "run_volume": float(sum(row["volume"] for row in rows)),
        "run_quote_volume": float(sum(row["quote_volume"] for row in rows)),
        "run_days_from_daily": sources.count("daily"),
        "run_days_from_monthly": sources.count("monthly"),
        RUN_DAYS_WITHOUT_ARCHIVE: sources.count("none"),
        "run_days_from_fallback": len(load.fallbacks),
        FALLBACK_DAYS: MetadataValue.json(fallback_days(load)),
        PARTIAL_DAYS: MetadataValue.json(partial_days(load)),
        "run_archives_read": len(load.ledger_rows),
        "seconds_total": round(seconds_total, 3),
        "tickers": MetadataValue.json(sorted(tickers)),
        FAILED_DAYS: MetadataValue.json(failed_days(load.failed)),
        LATE_DAYS: MetadataValue.json([{"ticker": t, "day": d.isoformat()} for t, d in load.late]),
    }


def figures_metadata(figures: LoadFigures) -> dict[str, Any]:
    """A load's figures as the run's totals: the one mapping of `LoadFigures` to metadata keys."""
    return {
        RUN_TICKER_DAYS: figures.days,
        RUN_TRADE_COUNT: figures.trades,
        RUN_BAR_COUNT: figures.bars,
        BYTES_DOWNLOADED: figures.downloaded_bytes,
        SECONDS_DOWNLOAD: round(figures.download_seconds, 3),
        SECONDS_AGGREGATE: round(figures.aggregate_seconds, 3),
    }


def read_figures(partitions: Collection[Mapping[str, MetadataValue]]) -> LoadFigures:
    """A run's figures read back from the metadata of its daily_liquidity partitions (one each, the latest
    of the run). The days, trades and bars are those of the partitions themselves (`day_figures`): a run
    that failed part-way wrote its days without the run's totals, and the totals of a retry that resumed
    count only the days it wrote. The bytes and seconds are the run's totals (`figures_metadata`) of the
    first partition, 0 where it carries none."""
    run = next(iter(partitions), {})

    def total(key: str) -> Any:
        return run[key].value if key in run else 0

    return LoadFigures(
        days=len(partitions),
        trades=sum(int(day["trade_count"].value) for day in partitions),
        bars=sum(int(day["bar_count"].value) for day in partitions),
        downloaded_bytes=int(total(BYTES_DOWNLOADED)),
        download_seconds=float(total(SECONDS_DOWNLOAD)),
        aggregate_seconds=float(total(SECONDS_AGGREGATE)),
    )


def day_figures(day: DayLoad) -> dict[str, Any]:
    """The figures of one ticker-day, which its own partition's materialisations carry."""
    row = day.liquidity
    return {
        "trade_count": int(row["trade_count"]),
        "volume": float(row["volume"]),
        "quote_volume": float(row["quote_volume"]),
        "bar_count": int(row["bar_count"]),
        "missing_trade_ids": int(row["missing_trade_ids"]),
        "uncovered_trade_ids": int(row["uncovered_trade_ids"]),
        "uncovered_id_ranges": _shortened(row["uncovered_id_ranges"], RANGES_SHOWN) or "none",
        "source": row["source"],
        "dataset": row["dataset"],
        "archive": day.archive,
        "archive_sha256": row["archive_sha256"] or "none",
    }


def failed_days(failed: Sequence[FailedDay]) -> list[dict[str, Any]]:
    """The days whose archive failed, as JSON: ticker, day, archive, error."""
    return [
        {"ticker": f.ticker, "day": f.day.isoformat(), "archive": f.archive, "error": str(f.error)}
        for f in failed
    ]


def fallback_days(load: RunLoad) -> list[dict[str, Any]]:
    """The days built from the fallback dataset, as JSON: ticker, day, reason, archive."""
    return [{**row, "day": row["day"].isoformat()} for row in load.fallbacks]


def partial_days(load: RunLoad) -> list[dict[str, Any]]:
    """The partial trades days kept, as JSON: ticker, day, reason, archive (the trades archive)."""
    return [{**row, "day": row["day"].isoformat()} for row in load.partial_days]


def _shortened(ranges: str, shown: int) -> str:
    """The first ``shown`` of comma-separated id ranges, then ``+N more`` (counting a trailing one)."""
    runs = ranges.split(",") if ranges else []
    if len(runs) <= shown:
        return ranges
    more = int(runs[-1][1:].split()[0]) - 1 if runs[-1].startswith("+") else 0
    return ",".join([*runs[:shown], f"+{len(runs) - shown + more} more"])


def check_metadata(outcome: CheckOutcome) -> dict[str, Any]:
    metadata: dict[str, Any] = {**outcome.totals, "failing_ticker_days": MetadataValue.json(outcome.failures)}
    if outcome.failures:
        metadata[FIRST_FAILURE] = outcome.first_failure
    metadata.update({detail: MetadataValue.json(value) for detail, value in outcome.details.items()})
    return metadata
