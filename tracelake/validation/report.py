"""The report model: how each expectation fared, and the verdict per day of one validated range.

Plain typed data, built by :mod:`tracelake.validation.runner`; it knows
nothing of Great Expectations or Spark. ``to_dict()`` is what ``results.json``
holds.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from tracelake.dates import days_between
from tracelake.errors import TracelakeError


class ValidationFailed(TracelakeError):
    """A critical expectation failed; ``.report`` holds the whole result."""

    def __init__(self, report: ValidationReport) -> None:
        self.report = report
        super().__init__(report.failure_message())


@dataclass
class Outcome:
    """How one expectation fared."""

    key: str
    type: str
    severity: str
    columns: list[str]
    success: bool
    element_count: int | None = None
    unexpected_count: int | None = None
    unexpected_percent: float | None = None
    observed: Any = None
    examples: list[Any] = field(default_factory=list)
    error: str | None = None
    # Days (ISO dates) this failure is traced to; every day of the range when it cannot be narrowed.
    partitions: list[str] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def column(self) -> str:
        return ",".join(self.columns) or "(table)"

    def line(self) -> str:
        parts = [f"{self.severity.upper():8}", self.type, f"column={self.column}"]
        if self.error:
            parts.append(f"could not run: {self.error}")
        if self.unexpected_count is not None:
            share = f" ({self.unexpected_percent:.3g}%)" if self.unexpected_percent is not None else ""
            total = f" of {self.element_count}" if self.element_count is not None else ""
            parts.append(f"unexpected={self.unexpected_count}{total}{share}")
            if "mostly" in self.kwargs:
                parts.append(f"mostly={self.kwargs['mostly']}")
        elif self.observed is not None:
            parts.append(f"observed={short(self.observed)}")
            bounds = {
                k: self.kwargs[k]
                for k in ("value", "min_value", "max_value", "quantile_ranges", "type_")
                if k in self.kwargs
            }
            if bounds:
                parts.append(f"expected={short(bounds)}")
        if self.examples:
            parts.append("e.g. " + ", ".join(short(v, 60) for v in self.examples[:3]))
        if self.partitions:
            parts.append(f"days={days_text(self.partitions)}")
        return "  ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return dict(plain(asdict(self)))


@dataclass
class ValidationReport:
    """The verdict of one suite over one date range of one table."""

    table: str
    suite: str
    run_id: str
    start: dt.date
    end: dt.date
    date_column: str | None
    outcomes: list[Outcome]
    row_count: int
    duration_s: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    results_path: str | None = None  # a local path or an object-store URI, beside the lake
    docs_path: str | None = None

    @property
    def critical_failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.success and o.severity == "critical"]

    @property
    def warnings(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.success and o.severity == "warning"]

    @property
    def passed(self) -> bool:
        return not self.critical_failures

    @property
    def days(self) -> list[dt.date]:
        return days_between(self.start, self.end)

    @property
    def failed_partitions(self) -> list[dt.date]:
        """Days the next step must not run on (critical failures only)."""
        failed = {p for o in self.critical_failures for p in o.partitions}
        return [d for d in self.days if d.isoformat() in failed]

    @property
    def passed_partitions(self) -> list[dt.date]:
        failed = set(self.failed_partitions)
        return [d for d in self.days if d not in failed]

    def passed_ranges(self) -> list[tuple[dt.date, dt.date]]:
        """The passed days as contiguous (start, end) ranges, ready for the next step's --start/--end-date."""
        ranges: list[tuple[dt.date, dt.date]] = []
        for day in self.passed_partitions:
            if ranges and ranges[-1][1] + dt.timedelta(days=1) == day:
                ranges[-1] = (ranges[-1][0], day)
            else:
                ranges.append((day, day))
        return ranges

    def summary_text(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        head = (
            f"validation of {self.table} {self.start}..{self.end} ({self.row_count} rows): {verdict} — "
            f"{len(self.outcomes)} expectations, {len(self.critical_failures)} critical failure(s), "
            f"{len(self.warnings)} warning(s)"
        )
        lines = [head]
        lines += ["  " + o.line() for o in self.critical_failures + self.warnings]
        if not self.passed:
            lines.append(
                f"failed days (next step must skip them): {days_text([d.isoformat() for d in self.failed_partitions])}"
            )
        if self.results_path:
            lines.append(f"results: {self.results_path}")
        if self.docs_path:
            lines.append(f"data docs: {self.docs_path}")
        return "\n".join(lines)

    def failure_message(self) -> str:
        failures = "; ".join(f"{o.type} on {o.column}" for o in self.critical_failures)
        where = f" (details: {self.results_path})" if self.results_path else ""
        return (
            f"{self.table} {self.start}..{self.end} failed validation: {failures}; "
            f"fix the data or the step that wrote it, then rerun{where}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "suite": self.suite,
            "run_id": self.run_id,
            "start_date": self.start.isoformat(),
            "end_date": self.end.isoformat(),
            "date_column": self.date_column,
            "passed": self.passed,
            "row_count": self.row_count,
            "failed_partitions": [d.isoformat() for d in self.failed_partitions],
            "statistics": {
                "evaluated": len(self.outcomes),
                "critical_failures": len(self.critical_failures),
                "warnings": len(self.warnings),
            },
            "duration_s": self.duration_s,
            "timings_s": self.timings,
            "data_docs": str(self.docs_path) if self.docs_path else None,
            "outcomes": [o.to_dict() for o in self.outcomes],
        }


def require_valid(report: ValidationReport) -> ValidationReport:
    """Return ``report`` when it passed; raise ValidationFailed naming each critical failure otherwise."""
    if not report.passed:
        raise ValidationFailed(report)
    return report


def plain(value: Any) -> Any:
    """JSON-ready builtins (GX leaks numpy scalars; Spark gives dates, Rows)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [plain(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        return plain(value.item())
    if hasattr(value, "asDict"):
        return plain(value.asDict())
    return str(value)


def short(value: Any, width: int = 80) -> str:
    text = json.dumps(plain(value), default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def days_text(days: Sequence[str]) -> str:
    return ", ".join(days) if len(days) <= 6 else f"{days[0]}..{days[-1]} ({len(days)} days)"
