"""Point-in-time proof: data that arrives after T changes no feature computed for T or before.

Randomised journeys (seeded) are featurised twice with the production
transforms, as spark_jobs/build_features.py chains them (scan steps, location
and route snapshots, event features with the as-of join): once as they are,
once with everything after T rewritten -- silver rows after T moved, dropped
and added (for old and new EPCs), and labels confirmed after T added (also for
events before T), dropped and retyped. Every event feature of an event at or
before T, and every snapshot effective at or before T, must be identical.
"""

from __future__ import annotations

import datetime as dt
import random

import pytest
from feature_frames import LOCATIONS, day, ts
from journeys import ANOMALIES, featurise, first_per_key, journeys, label_rows
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

T = ts(3, 12)  # the cut: 2025-07-04 12:00 UTC
MICRO = dt.timedelta(microseconds=1)
FIRST, LAST = day(0), day(6)


@pytest.fixture(scope="module")
def history():
    """(rows, labels) of the world as it is, and as rewritten after T."""
    rng = random.Random(20250704)
    rows = journeys(rng, [f"E{i:02d}" for i in range(10)], 0.0, 100.0)
    rows.append(("at-T", "E00", T, "H2", "HUB_Inbound"))  # exactly at T: on the known side
    before = [r for r in rows if r[2] <= T]
    after = [r for r in rows if r[2] > T]
    assert len(before) > 30 and len(after) > 30, "the journeys must straddle T"
    labels = [
        *label_rows(rng, rng.sample(before, 12), ts(0, 6), T - MICRO),
        (before[0][0], "jump", T),  # confirmed exactly at T: known
        *label_rows(rng, rng.sample(before, 10), T + MICRO, ts(6, 23)),
        *label_rows(rng, rng.sample(after, 10), T + MICRO, ts(6, 23)),
    ]

    rewritten_after = []
    for r in after:
        choice = rng.random()
        if choice < 0.2:
            continue  # dropped
        if choice < 0.5:
            r = (
                r[0],
                r[1],
                r[2] + dt.timedelta(hours=rng.uniform(-0.5, 30))
                if r[2] > T + dt.timedelta(hours=1)
                else r[2],
                rng.choice(list(LOCATIONS)),
                r[4],
            )  # moved in time and place
        rewritten_after.append(r)
    rewritten_after += [
        ("late-1", "E01", T + MICRO, "P1", "POS_Sell"),  # a microsecond after T
        ("late-2", "E02", T + dt.timedelta(hours=3), "H1", "HUB_Outbound"),
    ]
    rewritten_after += journeys(rng, [f"N{i:02d}" for i in range(6)], 85.0, 130.0)  # new EPCs after T
    rewritten_after = [r for r in rewritten_after if r[2] > T]
    known = [lab for lab in labels if lab[2] <= T]
    rewritten_labels = (
        known
        + [(e, rng.choice(ANOMALIES), c) for e, _, c in labels if c > T and rng.random() < 0.5]
        + label_rows(rng, rng.sample(before, 15), T + MICRO, ts(6, 23))
        + label_rows(rng, rng.sample(rewritten_after, 10), T + MICRO, ts(6, 23))
    )
    return (rows, first_per_key(labels)), (before + rewritten_after, first_per_key(rewritten_labels))


def test_nothing_after_t_changes_a_feature_at_or_before_t(spark, test_settings, history):
    settings = test_settings.features.model_copy(
        update={
            "sequence_length": 6,
            "lookback_days": 3,
            "snapshot_window_days": 2,
            "label_window_days": 4,
            "snapshot_ttl_hours": 60.0,
        }
    )  # events join snapshots of earlier days too
    (rows, labels), (rows_now, labels_now) = history
    # Each output computed once (every check below reads it again).
    then = {k: v.localCheckpoint() for k, v in featurise(spark, rows, labels, settings, FIRST, LAST).items()}
    now = {
        k: v.localCheckpoint()
        for k, v in featurise(spark, rows_now, labels_now, settings, FIRST, LAST).items()
    }

    known_event = F.col("event_time") <= F.lit(T)
    known_snapshot = F.col("snapshot_ts") <= F.lit(T)
    assertDataFrameEqual(now["event_features"].where(known_event), then["event_features"].where(known_event))
    assertDataFrameEqual(
        now["location_daily"].where(known_snapshot), then["location_daily"].where(known_snapshot)
    )
    assertDataFrameEqual(now["route_daily"].where(known_snapshot), then["route_daily"].where(known_snapshot))

    # Not vacuous: the rewrite did change what comes after T, and the cut held real rows.
    assert then["event_features"].where(known_event).count() == len([r for r in rows if r[2] <= T])
    assert then["event_features"].where(known_event & F.col("loc_snapshot_date").isNotNull()).count() > 0
    later = ~known_event
    assert now["event_features"].where(later).exceptAll(then["event_features"].where(later)).count() > 0
    assert (
        now["location_daily"]
        .where(~known_snapshot)
        .exceptAll(then["location_daily"].where(~known_snapshot))
        .count()
        > 0
    )
