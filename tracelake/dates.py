"""Date ranges: parsing CLI dates and listing the days of a range."""

from __future__ import annotations

from tracelake.errors import TracelakeError

import datetime as dt


class DateRangeError(TracelakeError, ValueError):
    """A date or date range given by the user is malformed or reversed."""


def parse_date(value: str, what: str = "date") -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except (TypeError, ValueError):
        raise DateRangeError(f"{what} {value!r} is not a date; use YYYY-MM-DD") from None


def check_range(start: dt.date, end: dt.date) -> None:
    if end < start:
        raise DateRangeError(
            f"end date {end.isoformat()} is before start date {start.isoformat()}; swap them"
        )


def days_between(start: dt.date, end: dt.date) -> list[dt.date]:
    """Every day from start to end, both included."""
    check_range(start, end)
    return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]


def start_of_day(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time.min, tzinfo=dt.timezone.utc)
