"""Features: daily snapshots and point-in-time event features, for a range of days.

    spark-submit spark_jobs/build_features.py --start-date 2025-07-01 --end-date 2025-07-30
    tracelake features --start-date 2025-07-01 --end-date 2025-07-30      (the same code)

One run, one Spark application for the whole range (a backfill is one
command): it reads silver once, from as far back as the range's first day can
depend on (:func:`read_from`), computes the per-event scan steps once, then

- features/location_daily and features/route_daily: the snapshots of every
  day of the range (plus the days before it that the as-of join may still
  use, which are not written);
- features/event_features: one row per silver event of the range, snapshots
  joined as of the event time (transforms in spark_jobs/transforms/).

Each table gets one Delta commit that replaces exactly the range's
partitions, with the run id, the silver versions read and the code version in
its commit info. Every value depends only on data within a fixed reach before
its day, so a range run and single-day runs write the same rows.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Sequence
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from spark_jobs.transforms.event_features import (
    event_features,
    scan_steps,
    snapshot_ttl,
)
from spark_jobs.transforms.snapshots import (
    location_snapshots,
    route_snapshots,
    steps_needed_from,
)
from tracelake.arguments import parse
from tracelake.config import FeatureSettings
from tracelake.errors import TracelakeError
from tracelake.ranges import read_days, require_days, write_range
from tracelake.runs import JobRun, job_run, run_entrypoint
from tracelake.tables import TableSpec, read_table, table_exists, table_spec

JOB = "features"
SILVER, LABELS, LOCATIONS = "silver_scan_events", "silver_labels", "reference_locations"
AIR_LANES, SERIAL_RANGES = "reference_air_lanes", "reference_serial_ranges"
OUTPUTS = ("features_location_daily", "features_route_daily", "features_event_features")


class MissingInputError(TracelakeError, ValueError):
    """The features job cannot run as asked (no range given)."""


def first_snapshot_day(start: dt.date, settings: FeatureSettings) -> dt.date:
    """The earliest snapshot day an event of ``start`` can still be joined to (within the TTL)."""
    return start - dt.timedelta(days=snapshot_ttl(settings) // dt.timedelta(days=1))


def read_from(start: dt.date, settings: FeatureSettings) -> dt.date:
    """The first silver day the range's features can depend on."""
    return min(
        steps_needed_from(first_snapshot_day(start, settings), settings),
        start - dt.timedelta(days=settings.lookback_days),
    )


def _read(run: JobRun, name: str) -> DataFrame:
    spec = table_spec(name)
    run.record_input(spec)
    return read_table(run.spark, spec, run.lake_root, version=run.inputs[name])


def _read_reference(run: JobRun, name: str) -> DataFrame | None:
    """A reference table the features use when the lake has it (air lanes, issued serial ranges)."""
    spec = table_spec(name)
    if not table_exists(run.spark, spec, run.lake_root):
        run.log.warning(
            f"{spec.path} does not exist: its features stay at their defaults", extra={"table": name}
        )
        return None
    return _read(run, name)


def _check_days(run: JobRun, silver: DataFrame, start: dt.date, end: dt.date) -> list[dt.date]:
    missing = require_days(
        run,
        silver,
        table_spec(SILVER),
        start,
        end,
        what="events",
        hint="ingest them first, or set features.allow_missing_dates=true to write empty partitions for them",
        allow_missing=run.settings.features.allow_missing_dates,
    )
    if missing:
        run.log.warning(
            "days without silver events", extra={"missing_dates": [d.isoformat() for d in missing]}
        )
    return missing


def _write(run: JobRun, df: DataFrame, spec: TableSpec, **lineage: Any) -> dict[str, int]:
    written = write_range(
        run, df, spec, start=run.start, end=run.end, metadata=run.commit_metadata(**lineage)
    )
    return written.as_dict()


def execute(run: JobRun) -> dict[str, Any]:
    """Build the run's range; returns its summary (tables written, days read)."""
    if run.start is None or run.end is None:
        raise MissingInputError("features needs --start-date (and optionally --end-date)")
    settings, start, end = run.settings.features, run.start, run.end
    level = getattr(StorageLevel, settings.storage_level)
    first_day, silver_from = first_snapshot_day(start, settings), read_from(start, settings)
    run.log.event("reading silver", read_from=silver_from.isoformat(), snapshots_from=first_day.isoformat())

    silver = read_days(run, table_spec(SILVER), silver_from, end)
    labels, locations = _read(run, LABELS), _read(run, LOCATIONS)
    missing = _check_days(run, silver, start, end)

    steps = scan_steps(
        silver,
        settings,
        air_lanes=_read_reference(run, AIR_LANES),
        serial_ranges=_read_reference(run, SERIAL_RANGES),
    ).persist(level)
    locations_daily = location_snapshots(
        steps, labels, locations, first_day=first_day, last_day=end, settings=settings
    ).persist(level)
    routes_daily = route_snapshots(steps, first_day=first_day, last_day=end, settings=settings).persist(level)
    try:
        in_range = F.col("snapshot_date") >= F.lit(start)
        lineage = {"read_from": silver_from.isoformat()}
        tables = {
            "features_location_daily": _write(
                run, locations_daily.where(in_range), table_spec("features_location_daily"), **lineage
            ),
            "features_route_daily": _write(
                run, routes_daily.where(in_range), table_spec("features_route_daily"), **lineage
            ),
        }
        features = event_features(
            steps, locations_daily, routes_daily, start=start, end=end, settings=settings
        )
        tables["features_event_features"] = _write(
            run, features, table_spec("features_event_features"), **lineage
        )
    finally:
        for frame in (routes_daily, locations_daily, steps):
            frame.unpersist()
    return {
        "start_date": start.isoformat(),
        "end_date": end.isoformat(),
        "read_from": silver_from.isoformat(),
        "input_versions": dict(run.inputs),
        "missing_dates": [d.isoformat() for d in missing],
        "tables": tables,
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return parse("features", argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with job_run(JOB, args) as run:
        summary = execute(run)
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(run_entrypoint(main))
