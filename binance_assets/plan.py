"""Which archives serve which requested days of one ticker: the monthly bootstrap, daily increments; and
the calendar months that runs (here), export files (read/export.py) and the plan's table (cli/preview.py) cut
days by.

Pure: takes the ticker's Vision listing and returns a plan; knows nothing of Dagster or downloads.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from binance_assets.markets import DatasetName
from binance_assets.settings import DEFAULT_PUBLISH_GRACE_DAYS
from binance_assets.vision.listing import ArchiveInfo


@dataclass(frozen=True)
class TickerPlan:
    ticker: str
    days: tuple[dt.date, ...]
    """Every requested day, sorted."""
    serves: dict[ArchiveInfo, tuple[dt.date, ...]] = field(default_factory=dict)
    """Archive to load -> the requested days it provides, in period order."""
    no_archive: tuple[dt.date, ...] = ()
    """Days with no archive to come (before listing, after delisting, or a hole): zero rows."""
    unpublished: tuple[dt.date, ...] = ()
    """Recent days after the newest archive: Binance has not published them yet (retry later)."""
    fallbacks: dict[dt.date, str] = field(default_factory=dict)
    """Days served by an archive of the fallback dataset (aggTrades), and why."""

    @property
    def download_bytes(self) -> int:
        return sum(archive.size for archive in self.serves)


def plan_ticker(
    ticker: str,
    days: Iterable[dt.date],
    listed: Sequence[ArchiveInfo],
    today: dt.date,
    grace_days: int = DEFAULT_PUBLISH_GRACE_DAYS,
    fallback: Sequence[ArchiveInfo] = (),
) -> TickerPlan:
    """Plan the requested days of one ticker from its listed archives of the primary dataset.

    A month's monthly archive is used when the request covers every day of that month on which the
    ticker has data (so one download replaces up to 31); otherwise each day's daily archive, falling
    back to the monthly one for a day whose daily archive is missing. A day with no archive to come
    (not one merely late) is served by the ``fallback`` dataset's daily or monthly archive if listed.
    """
    plan = _plan_primary(ticker, tuple(sorted(set(days))), listed, today, grace_days)
    daily = {a.first_day: a for a in fallback if a.freq == "daily"}
    monthly = {a.period: a for a in fallback if a.freq == "monthly"}
    serves = {archive: list(served) for archive, served in plan.serves.items()}
    no_archive, fallbacks = [], {}
    for day in plan.no_archive:
        source = daily.get(day) or monthly.get(month_of(day))
        if source is None:
            no_archive.append(day)
        else:
            serves.setdefault(source, []).append(day)
            fallbacks[day] = f"no {_other(source.dataset)} archive"
    if not fallbacks:
        return plan
    ordered = dict(sorted(((a, tuple(d)) for a, d in serves.items()), key=lambda item: item[1][0]))
    return replace(plan, serves=ordered, no_archive=tuple(no_archive), fallbacks=fallbacks)


ArchiveLister = Callable[[str, DatasetName], Sequence[ArchiveInfo]]
"""A ticker's listed archives of one dataset."""


def plan_tickers(
    listing: ArchiveLister,
    days_by_ticker: Mapping[str, Sequence[dt.date]],
    today: dt.date,
    grace_days: int,
    dataset: DatasetName = "trades",
    fallback: DatasetName | None = None,
) -> list[TickerPlan]:
    """Plan each ticker from its archives of ``dataset``; days with no archive to come are served by the
    ``fallback`` dataset where it has them (its archives listed only for tickers with such days)."""
    plans = []
    for ticker, days in days_by_ticker.items():
        plan = plan_ticker(ticker, days, listing(ticker, dataset), today, grace_days)
        if fallback and plan.no_archive:
            plan = plan_ticker(
                ticker, days, listing(ticker, dataset), today, grace_days, listing(ticker, fallback)
            )
        plans.append(plan)
    return plans


def _other(dataset: str) -> str:
    return "trades" if dataset == "aggTrades" else "aggTrades"


def _plan_primary(
    ticker: str,
    requested: tuple[dt.date, ...],
    listed: Sequence[ArchiveInfo],
    today: dt.date,
    grace_days: int,
) -> TickerPlan:
    daily = {a.first_day: a for a in listed if a.freq == "daily"}
    monthly = {a.period: a for a in listed if a.freq == "monthly"}
    if not listed:
        return _without_archives(ticker, requested, None, today, grace_days)
    first_listed = min(a.first_day for a in listed)
    last_listed = max(a.last_day for a in listed)
    wanted = set(requested)

    serves: dict[ArchiveInfo, list[dt.date]] = {}
    leftover: list[dt.date] = []
    for month in sorted({month_of(d) for d in requested}):
        month_days = [d for d in requested if month_of(d) == month]
        archive = monthly.get(month)
        if archive is not None and _covers_month(archive, wanted, first_listed, last_listed):
            serves.setdefault(archive, []).extend(month_days)
            continue
        for day in month_days:
            source = daily.get(day) or monthly.get(month)
            if source is None:
                leftover.append(day)
            else:
                serves.setdefault(source, []).append(day)
    rest = _without_archives(ticker, tuple(leftover), last_listed, today, grace_days)
    ordered = dict(sorted(((a, tuple(d)) for a, d in serves.items()), key=lambda item: item[1][0]))
    return TickerPlan(ticker, requested, ordered, rest.no_archive, rest.unpublished)


def _covers_month(archive: ArchiveInfo, wanted: set[dt.date], first: dt.date, last: dt.date) -> bool:
    return all(day in wanted for day in archive.days() if first <= day <= last)


def _without_archives(
    ticker: str, days: tuple[dt.date, ...], last_listed: dt.date | None, today: dt.date, grace_days: int
) -> TickerPlan:
    """Split archive-less days into not-yet-published (recent, after the newest archive) and none."""
    recent = today - dt.timedelta(days=grace_days)
    unpublished = tuple(d for d in days if (last_listed is None or d > last_listed) and d >= recent)
    no_archive = tuple(d for d in days if d not in unpublished)
    return TickerPlan(ticker, days, {}, no_archive, unpublished)


def run_ranges(days: Iterable[dt.date], max_days: int) -> list[tuple[dt.date, dt.date]]:
    """Cut days into runs of consecutive days, at most ``max_days`` each, whole months kept together
    where they fit (so a run can use the month's monthly archive). Returns inclusive (first, last)."""
    ranges: list[tuple[dt.date, dt.date]] = []
    for run in _consecutive(sorted(set(days))):
        start = run[0]
        while start <= run[-1]:
            stop = min(run[-1], start + dt.timedelta(days=max_days - 1))
            if stop < run[-1] and stop != month_end(stop) and month_of(start) != month_of(stop):
                stop = stop.replace(day=1) - dt.timedelta(days=1)  # end the run where a month ends
            ranges.append((start, stop))
            start = stop + dt.timedelta(days=1)
    return ranges


def _consecutive(days: list[dt.date]) -> list[list[dt.date]]:
    runs: list[list[dt.date]] = []
    for day in days:
        if runs and day - runs[-1][-1] == dt.timedelta(days=1):
            runs[-1].append(day)
        else:
            runs.append([day])
    return runs


def month_of(day: dt.date) -> str:
    """The day's month as YYYY-MM: the period of its monthly archive."""
    return day.strftime("%Y-%m")


def next_month(day: dt.date) -> dt.date:
    """The first day of the month after the day's."""
    return (day.replace(day=28) + dt.timedelta(days=4)).replace(day=1)


def month_end(day: dt.date) -> dt.date:
    """The last day of the day's month."""
    return next_month(day) - dt.timedelta(days=1)


def months_between(first: dt.date, last: dt.date) -> list[tuple[dt.date, dt.date]]:
    """first..last (inclusive) cut at month ends: (first, last) of each month's days in the range."""
    spans: list[tuple[dt.date, dt.date]] = []
    while first <= last:
        spans.append((first, min(last, month_end(first))))
        first = next_month(first)
    return spans
