"""What the scoring and monitoring jobs read: a range's event features and its scores.

Both go through the range scaffold (tracelake.ranges): the version read is
recorded for lineage, and a day of the range without rows fails the job with
one error naming the days.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tracelake.errors import TracelakeError
from tracelake.ranges import read_days, require_days
from tracelake.tables import table_exists, table_spec

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from tracelake.runs import JobRun

FEATURES, SCORED = "features_event_features", "gold_scored_events"


class ScoringInputError(TracelakeError, ValueError):
    """A table the range needs is not there."""


def _read_range(run: JobRun, table: str, producer: str, *, every_day_hint: str | None = None) -> DataFrame:
    """``table``'s rows of the run's range; with ``every_day_hint``, a day without rows fails the job."""
    spec = table_spec(table)
    if not table_exists(run.spark, spec, run.lake_root):
        raise ScoringInputError(
            f"{table} does not exist under {run.lake_root}; run `tracelake {producer}` first"
        )
    assert run.start is not None and run.end is not None, "a scoring run has a range"
    frame = read_days(run, spec, run.start, run.end)
    if every_day_hint is not None:
        require_days(run, frame, spec, run.start, run.end, hint=every_day_hint)
    return frame


def read_features(run: JobRun) -> DataFrame:
    """The range's event features (version recorded); every day of the range must have rows."""
    return _read_range(
        run,
        FEATURES,
        "features",
        every_day_hint="build the features of those days first (tracelake features), "
        "or score a range without them",
    )


def read_scores(run: JobRun) -> DataFrame:
    """The range's scored events (version recorded); which days must be there is the caller's check."""
    return _read_range(run, SCORED, "score")
