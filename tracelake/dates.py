"""Date ranges: parsing CLI dates and listing the days of a range."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from tracelake.errors import TracelakeError


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
    return dt.datetime.combine(day, dt.time.min, tzinfo=dt.UTC)


def describe_days(days: Iterable[dt.date], max_runs: int = 4) -> str:
    """Days as short runs for a message: ``2025-07-01..2025-07-03, 2025-07-09 (4 days)``.

    At most ``max_runs`` runs are spelled out, so that a range of 10,000 days stays one short line.
    """
    ordered = sorted(set(days))
    if not ordered:
        return "no days"
    runs: list[tuple[dt.date, dt.date]] = []
    for day in ordered:
        if runs and day - runs[-1][1] == dt.timedelta(days=1):
            runs[-1] = (runs[-1][0], day)
        else:
            runs.append((day, day))
    text = ", ".join(
        a.isoformat() if a == b else f"{a.isoformat()}..{b.isoformat()}" for a, b in runs[:max_runs]
    )
    if len(runs) > max_runs:
        text += f", and {len(runs) - max_runs} more run(s)"
    return f"{text} ({len(ordered)} day{'s' if len(ordered) != 1 else ''})"
