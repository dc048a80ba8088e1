"""Training set: event features, the labels known at a cut-off time T, and a temporal split.

Honest about time in both directions:
- labels: an event's label columns say what was *confirmed at or before T*;
  a label confirmed later is not known at T and counts as 0;
- events: only events at or before T are included (an event after T could not
  have been in a training set cut at T); a range reaching past T is cut at T.

The split is temporal by event day: train < validation < test, never random.
"""

from __future__ import annotations

import datetime as dt
import math

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from tracelake.config import TrainingSetSettings
from tracelake.dates import days_between
from tracelake.errors import TracelakeError
from tracelake.tables import domain

TRAIN, VALIDATION, TEST = "train", "validation", "test"
SPLIT_COLUMN = "split"


class SplitError(TracelakeError, ValueError):
    """The range cannot be split into non-empty train, validation and test days."""


def split_boundaries(start: dt.date, end: dt.date, settings: TrainingSetSettings) -> tuple[dt.date, dt.date]:
    """(first validation day, first test day) for the days [start, end].

    Explicit ``validation_start``/``test_start`` win; otherwise the first
    ``floor(train_fraction * days)`` days train, the next
    ``floor(validation_fraction * days)`` validate (at least one day each) and
    the rest test.
    """
    days = days_between(start, end)
    if settings.validation_start is not None and settings.test_start is not None:
        validation_start = dt.date.fromisoformat(settings.validation_start)
        test_start = dt.date.fromisoformat(settings.test_start)
        if not start < validation_start < test_start <= end:
            raise SplitError(
                f"split boundaries validation_start={validation_start} and test_start={test_start} must satisfy "
                f"{start} < validation_start < test_start <= {end} (the range, cut at --as-of) so that every split "
                "has days; change training_set.validation_start / test_start"
            )
        return validation_start, test_start
    n_train = max(1, math.floor(settings.train_fraction * len(days)))
    n_validation = max(1, math.floor(settings.validation_fraction * len(days)))
    if n_train + n_validation >= len(days):
        raise SplitError(
            f"{len(days)} day(s) from {start} to {end} cannot hold train, validation and test days with "
            f"train_fraction={settings.train_fraction} and validation_fraction={settings.validation_fraction}; "
            "give a longer range (at least 3 days) or explicit training_set.validation_start / test_start"
        )
    return days[n_train], days[n_train + n_validation]


def labels_as_of(labels: DataFrame, as_of: dt.datetime) -> DataFrame:
    """One row per event with a label confirmed at or before ``as_of``: event_id + one 0/1 int column per type."""
    types = list(domain()["anomaly_types"])
    known = labels.where((F.col("confirmed_at") <= F.lit(as_of)) & F.col("anomaly_type").isin(types))
    pivoted = known.groupBy("event_id").pivot("anomaly_type", types).count()
    return pivoted.select("event_id", *[(F.coalesce(F.col(t), F.lit(0)) > 0).cast("int").alias(t) for t in types])


def training_set(
    features: DataFrame,
    labels: DataFrame,
    *,
    as_of: dt.datetime,
    validation_start: dt.date,
    test_start: dt.date,
) -> DataFrame:
    """Features of the events at or before ``as_of`` with their labels known at ``as_of`` and a split."""
    types = list(domain()["anomaly_types"])
    events = features.where(F.col("event_time") <= F.lit(as_of))
    split = (F.when(F.col("event_date") < F.lit(validation_start), F.lit(TRAIN))
             .when(F.col("event_date") < F.lit(test_start), F.lit(VALIDATION))
             .otherwise(F.lit(TEST)))
    return (events.join(labels_as_of(labels, as_of), "event_id", "left")
            .na.fill(0, types)
            .select(*features.columns, *types, split.alias(SPLIT_COLUMN)))
