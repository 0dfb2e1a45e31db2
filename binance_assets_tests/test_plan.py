"""Archive choice (monthly bootstrap, daily increments, late and missing days), run ranges, and months."""

from __future__ import annotations

import datetime as dt

import pytest

from binance_assets.plan import month_end, month_of, months_between, next_month, plan_ticker, run_ranges
from binance_assets.vision.listing import ArchiveInfo

NOW = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def archive(period: str, size: int = 100) -> ArchiveInfo:
    freq = "daily" if len(period) == 10 else "monthly"
    return ArchiveInfo(
        key=f"data/futures/um/{freq}/trades/BTCUSDT/BTCUSDT-trades-{period}.zip",
        size=size,
        last_modified=NOW,
        etag="x",
        ticker="BTCUSDT",
        freq=freq,
        period=period,
    )


def days(first: str, last: str) -> list[dt.date]:
    start, stop = dt.date.fromisoformat(first), dt.date.fromisoformat(last)
    return [start + dt.timedelta(days=i) for i in range((stop - start).days + 1)]


LISTED = [archive("2024-01"), *(archive(d.isoformat()) for d in days("2024-01-01", "2024-02-10"))]
TODAY = dt.date(2024, 2, 12)


def test_whole_month_uses_the_monthly_archive_and_dailies_after() -> None:
    plan = plan_ticker("BTCUSDT", days("2024-01-01", "2024-02-03"), LISTED, TODAY)
    kinds = {a.period: d for a, d in plan.serves.items()}
    assert list(kinds) == ["2024-01", "2024-02-01", "2024-02-02", "2024-02-03"]
    assert kinds["2024-01"] == tuple(days("2024-01-01", "2024-01-31"))
    assert plan.no_archive == () and plan.unpublished == ()
    assert plan.download_bytes == 400


def test_part_of_a_month_uses_daily_archives() -> None:
    plan = plan_ticker("BTCUSDT", days("2024-01-10", "2024-01-20"), LISTED, TODAY)
    assert all(a.freq == "daily" for a in plan.serves)
    assert len(plan.serves) == 11


def test_missing_daily_falls_back_to_the_monthly_archive() -> None:
    listed = [a for a in LISTED if a.period != "2024-01-15"]
    plan = plan_ticker("BTCUSDT", days("2024-01-14", "2024-01-16"), listed, TODAY)
    assert [a.period for a in plan.serves] == ["2024-01-14", "2024-01", "2024-01-16"]


def test_days_before_listing_have_no_archive() -> None:
    plan = plan_ticker("BTCUSDT", days("2023-12-30", "2024-01-01"), LISTED[1:], TODAY)
    assert plan.no_archive == tuple(days("2023-12-30", "2023-12-31"))
    assert [a.period for a in plan.serves] == ["2024-01-01"]


def test_recent_days_after_the_newest_archive_are_unpublished_older_ones_gone() -> None:
    plan = plan_ticker("BTCUSDT", days("2024-02-10", "2024-02-11"), LISTED, TODAY)
    assert plan.unpublished == (dt.date(2024, 2, 11),)
    delisted = plan_ticker("BTCUSDT", days("2024-02-10", "2024-02-11"), LISTED, TODAY + dt.timedelta(days=30))
    assert delisted.unpublished == () and delisted.no_archive == (dt.date(2024, 2, 11),)


def test_hole_inside_the_listing_is_no_archive_not_late() -> None:
    listed = [a for a in LISTED if a.period not in ("2024-01", "2024-02-05")]
    plan = plan_ticker("BTCUSDT", days("2024-02-05", "2024-02-05"), listed, TODAY)
    assert plan.no_archive == (dt.date(2024, 2, 5),) and plan.unpublished == ()


def test_nothing_listed_recent_is_late() -> None:
    plan = plan_ticker("NEWUSDT", [TODAY - dt.timedelta(days=1)], [], TODAY)
    assert plan.unpublished == (TODAY - dt.timedelta(days=1),)


def test_run_ranges_keep_months_together() -> None:
    ranges = run_ranges(days("2024-01-15", "2024-04-03"), 31)
    assert ranges == [
        (dt.date(2024, 1, 15), dt.date(2024, 1, 31)),
        (dt.date(2024, 2, 1), dt.date(2024, 2, 29)),
        (dt.date(2024, 3, 1), dt.date(2024, 3, 31)),
        (dt.date(2024, 4, 1), dt.date(2024, 4, 3)),
    ]


def test_run_ranges_split_gaps_and_cap_length() -> None:
    picked = days("2024-01-01", "2024-01-05") + days("2024-01-08", "2024-01-09")
    assert run_ranges(picked, 3) == [
        (dt.date(2024, 1, 1), dt.date(2024, 1, 3)),
        (dt.date(2024, 1, 4), dt.date(2024, 1, 5)),
        (dt.date(2024, 1, 8), dt.date(2024, 1, 9)),
    ]
    covered = [
        d
        for first, last in run_ranges(days("2023-11-20", "2024-03-10"), 31)
        for d in days(str(first), str(last))
    ]
    assert covered == days("2023-11-20", "2024-03-10")


D = dt.date


@pytest.mark.parametrize(
    ("day", "month", "following", "end"),
    [
        (D(2023, 12, 31), "2023-12", D(2024, 1, 1), D(2023, 12, 31)),  # December to January
        (D(2023, 12, 1), "2023-12", D(2024, 1, 1), D(2023, 12, 31)),
        (D(2024, 1, 31), "2024-01", D(2024, 2, 1), D(2024, 1, 31)),
        (D(2024, 2, 10), "2024-02", D(2024, 3, 1), D(2024, 2, 29)),  # leap February
        (D(2024, 2, 29), "2024-02", D(2024, 3, 1), D(2024, 2, 29)),
        (D(2023, 2, 28), "2023-02", D(2023, 3, 1), D(2023, 2, 28)),
        (D(2100, 2, 1), "2100-02", D(2100, 3, 1), D(2100, 2, 28)),  # a century: not a leap year
        (D(2024, 4, 30), "2024-04", D(2024, 5, 1), D(2024, 4, 30)),
    ],
)
def test_month_of_a_day_its_end_and_the_next(
    day: dt.date, month: str, following: dt.date, end: dt.date
) -> None:
    assert (month_of(day), next_month(day), month_end(day)) == (month, following, end)


@pytest.mark.parametrize(
    ("first", "last", "spans"),
    [
        (D(2024, 1, 10), D(2024, 1, 20), [(D(2024, 1, 10), D(2024, 1, 20))]),  # inside one month
        (D(2024, 2, 29), D(2024, 2, 29), [(D(2024, 2, 29), D(2024, 2, 29))]),  # one day
        (D(2024, 2, 1), D(2024, 2, 29), [(D(2024, 2, 1), D(2024, 2, 29))]),  # a whole (leap) month
        (
            D(2023, 12, 30),
            D(2024, 3, 1),
            [
                (D(2023, 12, 30), D(2023, 12, 31)),
                (D(2024, 1, 1), D(2024, 1, 31)),
                (D(2024, 2, 1), D(2024, 2, 29)),
                (D(2024, 3, 1), D(2024, 3, 1)),
            ],
        ),
        (D(2024, 1, 31), D(2024, 2, 1), [(D(2024, 1, 31), D(2024, 1, 31)), (D(2024, 2, 1), D(2024, 2, 1))]),
        (D(2024, 3, 2), D(2024, 3, 1), []),  # last before first: no days
    ],
)
def test_months_between_cuts_a_range_at_month_ends(
    first: dt.date, last: dt.date, spans: list[tuple[dt.date, dt.date]]
) -> None:
    assert months_between(first, last) == spans
