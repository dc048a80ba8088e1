"""Training set: event features, the labels known at a cut-off time T, and a temporal split.

Honest about time in both directions:
- labels: an event's label columns say what was *confirmed at or before T*;
  a label confirmed later is not known at T and counts as 0;
- events: only events at or before T are included (an event after T could not
  have been in a training set cut at T); a range reaching past T is cut at T.

The split is temporal by event day: train < validation < test, never random.
A label spreads over its incident (``label_scope`` in schemas/domain.yaml);
a window is judged only once its labels are mature (:func:`check_mature`).
"""

from __future__ import annotations

import datetime as dt
import math

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from tracelake.config import TrainingSetSettings
from tracelake.dates import days_between
from tracelake.errors import TracelakeError
from tracelake.model_io import SPLIT_COLUMN, TEST, TRAIN, VALIDATION
from tracelake.tables import domain


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


class ImmatureLabelsError(TracelakeError, ValueError):
    """Some labels of the judged window may not have arrived by the cut-off."""


# How far one label reaches (schemas/domain.yaml ``label_scope``): the labelled event itself, every
# event of its EPC known at the cut-off, or the labelled event and its EPC's previous event.
EVENT, EPC_SCOPES, SWAPPED_PAIR = "event", ("epc", "epc_until_confirmed"), "swapped_pair"


def label_scopes() -> dict[str, str]:
    """anomaly type -> scope; a type without an entry labels its event only."""
    scopes = dict(domain().label_scope)
    known = {EVENT, SWAPPED_PAIR, *EPC_SCOPES}
    bad = {t: s for t, s in scopes.items() if s not in known}
    if bad:
        raise TracelakeError(f"schemas/domain.yaml label_scope {bad}: use one of {sorted(known)}")
    return {t: scopes.get(t, EVENT) for t in domain().anomaly_types}


def check_mature(window_end: dt.date, as_of: dt.datetime, max_delay_days: int, what: str = "test") -> None:
    """Refuse a window whose last day ends less than ``max_delay_days`` before ``as_of``.

    A label arrives at most ``max_delay_days`` after its event; before that, an
    unconfirmed anomaly of the window would count as a normal event.
    """
    ends = dt.datetime.combine(window_end + dt.timedelta(days=1), dt.time.min, tzinfo=dt.UTC)
    mature_at = ends + dt.timedelta(days=max_delay_days)
    if as_of < mature_at:
        raise ImmatureLabelsError(
            f"the {what} window ends {window_end} but labels arrive up to labels.max_delay_days={max_delay_days} "
            f"days late, so its labels are complete only from {mature_at.isoformat()}, after --as-of "
            f"{as_of.isoformat()}; end the range by {(as_of - dt.timedelta(days=max_delay_days + 1)).date()} "
            "or pass --allow-immature-labels (the set is then marked and never promoted)"
        )


def mature_last_day(as_of: dt.datetime, max_delay_days: int) -> dt.date:
    """The latest day whose labels are all known at ``as_of``."""
    return (as_of - dt.timedelta(days=max_delay_days)).date() - dt.timedelta(days=1)


def labels_as_of(labels: DataFrame, as_of: dt.datetime, events: DataFrame | None = None) -> DataFrame:
    """One row per event with a label confirmed at or before ``as_of``: event_id + one 0/1 int column per type.

    With ``events`` (event_id, epc_code, event_time of the events the labels may reach), each
    label spreads over its incident as ``label_scope`` says: an EPC known to be fake at
    ``as_of`` marks all its events in ``events``; an order error marks the labelled event and
    its EPC's previous event. Only labels confirmed at or before ``as_of`` spread, so
    nothing known later leaks in.
    """
    types = list(domain().anomaly_types)
    known = labels.where((F.col("confirmed_at") <= F.lit(as_of)) & F.col("anomaly_type").isin(types))
    if events is not None:
        known = _spread(known, events, label_scopes())
    pivoted = known.groupBy("event_id").pivot("anomaly_type", types).count()
    return pivoted.select(
        "event_id", *[(F.coalesce(F.col(t), F.lit(0)) > 0).cast("int").alias(t) for t in types]
    )


def _spread(known: DataFrame, events: DataFrame, scopes: dict[str, str]) -> DataFrame:
    """(event_id, anomaly_type) of every event each known label reaches."""
    pairs = known.select("event_id", "anomaly_type")
    by_epc = [t for t, s in scopes.items() if s in EPC_SCOPES]
    swapped = [t for t, s in scopes.items() if s == SWAPPED_PAIR]
    parts = [pairs]
    if by_epc:
        epcs = known.where(F.col("anomaly_type").isin(by_epc)).select("epc_code", "anomaly_type").distinct()
        parts.append(
            events.select("event_id", "epc_code").join(epcs, "epc_code").select("event_id", "anomaly_type")
        )
    if swapped:
        order = Window.partitionBy("epc_code").orderBy("event_time", "event_id")
        previous = events.select("event_id", F.lag("event_id").over(order).alias("_previous_event_id"))
        anchors = known.where(F.col("anomaly_type").isin(swapped)).select("event_id", "anomaly_type")
        parts.append(
            anchors.join(previous, "event_id")
            .where(F.col("_previous_event_id").isNotNull())
            .select(F.col("_previous_event_id").alias("event_id"), "anomaly_type")
        )
    spread = parts[0]
    for part in parts[1:]:
        spread = spread.unionByName(part)
    return spread.distinct()


def training_set(
    features: DataFrame,
    labels: DataFrame,
    *,
    as_of: dt.datetime,
    validation_start: dt.date,
    test_start: dt.date,
) -> DataFrame:
    """Features of the events at or before ``as_of`` with their labels known at ``as_of`` and a split."""
    types = list(domain().anomaly_types)
    events = features.where(F.col("event_time") <= F.lit(as_of))
    known = labels_as_of(labels, as_of, events.select("event_id", "epc_code", "event_time"))
    split = (
        F.when(F.col("event_date") < F.lit(validation_start), F.lit(TRAIN))
        .when(F.col("event_date") < F.lit(test_start), F.lit(VALIDATION))
        .otherwise(F.lit(TEST))
    )
    return (
        events.join(known, "event_id", "left")
        .na.fill(0, types)
        .select(*features.columns, *types, split.alias(SPLIT_COLUMN))
    )
