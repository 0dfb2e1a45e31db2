"""The metadata a run writes on its materialisations and checks: the one list of its keys.

assets.py writes it; cli/runs.py reads the run's totals back from the instance for its summaries. Every
daily_liquidity partition a run materialises carries the run's totals (`run_metadata`) beside its own
day's figures (`day_metadata`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from dagster import MetadataValue

from binance_assets.pipeline import RunLoad
from binance_assets.trust.checks import CheckOutcome

RUN_TICKER_DAYS = "run_ticker_days"
RUN_DAYS_WITHOUT_ARCHIVE = "run_days_without_archive"
RUN_TRADE_COUNT = "run_trade_count"
RUN_BAR_COUNT = "run_bar_count"
BYTES_DOWNLOADED = "bytes_downloaded"
FALLBACK_DAYS = "fallback_days"
"""The run's totals that cli/runs.py reads back."""
FIRST_FAILURE = "first_failure"
"""A failed check's first failing ticker-day, which cli/runs.py prints."""


def run_metadata(load: RunLoad, tickers: Sequence[str], seconds_total: float) -> dict[str, Any]:
    """The run's totals, from a drained load."""
    rows, figures = load.liquidity_rows, load.figures
    sources = [row["source"] for row in rows]
    return {
        RUN_TRADE_COUNT: figures.trades,
        RUN_BAR_COUNT: figures.bars,
        "run_volume": float(sum(row["volume"] for row in rows)),
        "run_quote_volume": float(sum(row["quote_volume"] for row in rows)),
        RUN_TICKER_DAYS: figures.days,
        "run_days_from_daily": sources.count("daily"),
        "run_days_from_monthly": sources.count("monthly"),
        RUN_DAYS_WITHOUT_ARCHIVE: sources.count("none"),
        "run_days_from_fallback": len(load.fallbacks),
        FALLBACK_DAYS: MetadataValue.json(fallback_days(load)),
        "archives": MetadataValue.md(_archives_table(load.ledger_rows)) if load.ledger_rows else "none",
        BYTES_DOWNLOADED: figures.downloaded_bytes,
        "seconds_download": round(figures.download_seconds, 3),
        "seconds_aggregate": round(figures.aggregate_seconds, 3),
        "seconds_total": round(seconds_total, 3),
        "tickers": MetadataValue.json(sorted(tickers)),
    }


def day_metadata(load: RunLoad) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """Each ticker-day's liquidity row, with the figures its own partition's materialisation carries."""
    archive_keys = {archive["sha256"]: archive["key"] for archive in load.ledger_rows}
    for row in load.liquidity_rows:
        yield (
            row,
            {
                "trade_count": int(row["trade_count"]),
                "volume": float(row["volume"]),
                "quote_volume": float(row["quote_volume"]),
                "bar_count": int(row["bar_count"]),
                "missing_trade_ids": int(row["missing_trade_ids"]),
                "source": row["source"],
                "dataset": row["dataset"],
                "archive": archive_keys.get(row["archive_sha256"], "none"),
                "archive_sha256": row["archive_sha256"] or "none",
            },
        )


def fallback_days(load: RunLoad) -> list[dict[str, Any]]:
    """The days built from the fallback dataset, as JSON: ticker, day, reason, archive."""
    return [{**row, "day": row["day"].isoformat()} for row in load.fallbacks]


def check_metadata(outcome: CheckOutcome) -> dict[str, Any]:
    metadata: dict[str, Any] = {**outcome.totals, "failing_ticker_days": MetadataValue.json(outcome.failures)}
    if outcome.failures:
        metadata[FIRST_FAILURE] = outcome.first_failure
    metadata.update({detail: MetadataValue.json(value) for detail, value in outcome.details.items()})
    return metadata


def _archives_table(archives: list[dict[str, Any]]) -> str:
    lines = ["| key | freq | bytes | sha256 |", "|---|---|---|---|"]
    lines += [f"| {a['key']} | {a['freq']} | {a['size']} | `{a['sha256']}` |" for a in archives]
    return "\n".join(lines)
