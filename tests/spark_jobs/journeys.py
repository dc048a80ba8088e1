"""Seeded random journeys through the test network of feature_frames (imported by the test modules beside it)."""

from __future__ import annotations

import datetime as dt
import random

from feature_frames import air_lanes, locations, serial_ranges, silver, ts
from feature_frames import labels as make_labels
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from spark_jobs.build_features import first_snapshot_day, read_from
from spark_jobs.transforms.event_features import event_features, scan_steps
from spark_jobs.transforms.snapshots import location_snapshots, route_snapshots
from tracelake.config import FeatureSettings

ROUTE = ["F1", "W1", "H1", "S1", "R1", "P1"]
TYPES = {
    "F1": ("Aggregation", "Factory_Outbound"),
    "W1": ("WMS_Inbound", "WMS_Outbound"),
    "H1": ("HUB_Inbound", "HUB_Outbound"),
    "H2": ("HUB_Inbound", "HUB_Outbound"),
    "S1": ("W_Stock_Inbound", "W_Stock_Outbound"),
    "R1": ("R_Stock_Inbound", "R_Stock_Outbound"),
    "P1": ("POS_Sell", "POS_Sell"),
}
ANOMALIES = ["epc_fake", "epc_dup", "loc_err", "evt_order_err", "jump"]


def journeys(rng: random.Random, epcs: list[str], first_hour: float, last_hour: float) -> list[tuple]:
    """Silver rows (event_id, epc, time, location, event_type): each EPC starts between the two hours
    (after 2025-07-01 00:00) and walks the route (sometimes via H2, sometimes backwards), an in and an
    out scan per place, 2-20 h between places and 0.2-2 h at a place."""
    rows = []
    for epc in epcs:
        hour = rng.uniform(first_hour, last_hour)
        places = [p if not (p == "H1" and rng.random() < 0.3) else "H2" for p in ROUTE]
        if rng.random() < 0.2:  # a backwards move
            places.insert(3, "W1")
        for n, place in enumerate(places):
            for k, event_type in enumerate(TYPES[place]):
                hour += rng.uniform(0.2, 2.0) if k else rng.uniform(2.0, 20.0)
                rows.append((f"{epc}-{n}{k}", epc, ts(0, hour), place, event_type))
    return rows


def label_rows(
    rng: random.Random, events: list[tuple], confirmed_from: dt.datetime, confirmed_to: dt.datetime
) -> list[tuple]:
    """One label of a random type per event, confirmed at a random time in [confirmed_from, confirmed_to]."""
    span = (confirmed_to - confirmed_from).total_seconds()
    return [
        (e[0], rng.choice(ANOMALIES), confirmed_from + dt.timedelta(seconds=rng.uniform(0, span)))
        for e in events
    ]


def first_per_key(labels: list[tuple]) -> list[tuple]:
    """Silver holds one label per (event_id, anomaly_type): keep the first given."""
    kept: dict[tuple[str, str], tuple] = {}
    for label in labels:
        kept.setdefault(label[:2], label)
    return list(kept.values())


def featurise(
    spark: SparkSession,
    rows: list[tuple],
    labels: list[tuple],
    settings: FeatureSettings,
    first: dt.date,
    last: dt.date,
) -> dict[str, DataFrame]:
    """The feature outputs of the days [first, last], chained as spark_jobs/build_features.py does
    (snapshot frames include the earlier days the as-of join may use, as that job computes them)."""
    steps = scan_steps(
        silver(spark, rows).where(F.col("event_date").between(read_from(first, settings), last)),
        settings,
        air_lanes=air_lanes(spark),
        serial_ranges=serial_ranges(spark),
    )
    first_snapshot = first_snapshot_day(first, settings)
    loc = location_snapshots(
        steps,
        make_labels(spark, labels),
        locations(spark),
        first_day=first_snapshot,
        last_day=last,
        settings=settings,
    )
    route = route_snapshots(steps, first_day=first_snapshot, last_day=last, settings=settings)
    return {
        "event_features": event_features(steps, loc, route, start=first, end=last, settings=settings),
        "location_daily": loc,
        "route_daily": route,
    }
