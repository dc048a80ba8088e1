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


def _read_range(run: JobRun, table: str, producer: str) -> DataFrame:
    spec = table_spec(table)
    if not table_exists(run.spark, spec, run.lake_root):
        raise ScoringInputError(
            f"{table} does not exist under {run.lake_root}; run `tracelake {producer}` first"
        )
    assert run.start is not None and run.end is not None, "a scoring run has a range"
    return read_days(run, spec, run.start, run.end)


def read_features(run: JobRun) -> DataFrame:
    """The range's event features (version recorded); every day of the range must have rows."""
    frame = _read_range(run, FEATURES, "features")
    assert run.start is not None and run.end is not None
    require_days(
        frame,
        table_spec(FEATURES),
        run.start,
        run.end,
        hint="build the features of those days first (tracelake features), or score a range without them",
    )
    return frame


def read_scores(run: JobRun) -> DataFrame:
    """The range's scored events (version recorded); which days must be there is the caller's check."""
    return _read_range(run, SCORED, "score")
