"""Training set: event features + labels confirmed at or before T + a temporal split.

    spark-submit spark_jobs/build_training_set.py --start-date 2025-07-01 --end-date 2025-07-30 \\
        --as-of 2025-08-10T00:00:00 --name weekly
    tracelake training-set --start-date 2025-07-01 --end-date 2025-07-30 --as-of 2025-08-10 --name weekly

Writes ``training/sets/<name>`` (whole table, one Delta commit) from
features/event_features of the range and silver/labels:

- ``--as-of T`` (UTC; a bare date is 00:00 of that day, an offset is
  converted) is the moment the set is cut at: labels confirmed after T are
  unknown (0) and events after T are left out. A range ending after T is
  therefore cut at T -- its split is computed over the days up to T's day, and
  the log says so.
- ``split``: train < validation < test by event day, boundaries from
  ``training_set`` settings (fractions of the days, or explicit dates).
- Labels must be mature: a set whose validation or test window ends less
  than ``labels.max_delay_days`` before T is refused, because its unconfirmed
  anomalies would count as normal events. ``--allow-immature-labels``
  overrides it; the set is then marked (``immature_labels`` in the commit
  info, a tag on every model trained on it) and the promotion gate refuses it.
- A label spreads over its incident (``label_scope`` in schemas/domain.yaml).
- The commit info records T, the split boundaries, the name, and the Delta
  versions of features_event_features and silver_labels that were read, so
  the set can be rebuilt exactly (``versionAsOf``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Sequence
from typing import Any

from pyspark.sql import functions as F

from spark_jobs.transforms.training_set import (
    SPLIT_COLUMN,
    ImmatureLabelsError,
    check_mature,
    split_boundaries,
    training_set,
)
from tracelake.arguments import parse
from tracelake.errors import TracelakeError
from tracelake.ranges import read_days, require_days, write_range
from tracelake.runs import JobRun, job_run, run_entrypoint
from tracelake.tables import domain, named_table_spec, read_table, table_spec

JOB = "training-set"
FEATURES, LABELS = "features_event_features", "silver_labels"


class TrainingSetError(TracelakeError, ValueError):
    """The training set cannot be built as asked."""


def parse_as_of(value: str) -> dt.datetime:
    """``--as-of``: an ISO date or date-time; naive means UTC; returned in UTC."""
    try:
        parsed = dt.datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise TrainingSetError(
            f"--as-of {value!r} is not a date or time; use YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS[+HH:MM] (UTC if no offset)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.astimezone(dt.UTC)


def execute(
    run: JobRun, as_of: dt.datetime, name: str, *, allow_immature_labels: bool = False
) -> dict[str, Any]:
    if run.start is None or run.end is None:
        raise TrainingSetError("training-set needs --start-date (and optionally --end-date)")
    start, end = run.start, run.end
    last_day = min(end, as_of.date())
    if last_day < start:
        raise TrainingSetError(
            f"--as-of {as_of.isoformat()} is before the range's first day {start}: no event of the range was known "
            "then; pass a later --as-of or an earlier --start-date"
        )
    if last_day < end:
        run.log.warning(
            "the range ends after --as-of: events after it are left out",
            extra={"as_of": as_of.isoformat(), "last_day": last_day.isoformat()},
        )
    validation_start, test_start = split_boundaries(start, last_day, run.settings.training_set)
    max_delay = run.settings.label_max_delay_days
    immature = False
    try:
        check_mature(last_day, as_of, max_delay)
    except ImmatureLabelsError as exc:
        if not allow_immature_labels:
            raise
        immature = True
        run.log.warning(
            "immature labels allowed: the set is marked and cannot be promoted from",
            extra={"reason": str(exc)},
        )
    spec = named_table_spec("training_set", name=name)

    features = read_days(run, table_spec(FEATURES), start, last_day)
    run.record_input(table_spec(LABELS))
    labels = read_table(run.spark, table_spec(LABELS), run.lake_root, version=run.inputs[LABELS])
    require_days(
        run,
        features,
        table_spec(FEATURES),
        start,
        last_day,
        hint="run `tracelake features` for those days first",
    )

    df = training_set(features, labels, as_of=as_of, validation_start=validation_start, test_start=test_start)
    boundaries = {"validation_start": validation_start.isoformat(), "test_start": test_start.isoformat()}
    written = write_range(
        run,
        df,
        spec,
        start=None,
        end=None,
        metadata=run.commit_metadata(
            name=name,
            as_of=as_of.isoformat(),
            last_day=last_day.isoformat(),
            split=boundaries,
            immature_labels=immature,
            label_max_delay_days=max_delay,
        ),
        output=spec.path,
        record=False,  # recorded below with the split counts of the written version
    )
    version = written.version
    types = list(domain().anomaly_types)
    counts = {
        r[SPLIT_COLUMN]: r.asDict()
        for r in read_table(run.spark, spec, run.lake_root, version=version)
        .groupBy(SPLIT_COLUMN)
        .agg(F.count(F.lit(1)).alias("events"), *[F.sum(t).alias(t) for t in types])
        .collect()
    }
    for row in counts.values():
        row.pop(SPLIT_COLUMN)
    run.record_output(spec.path, **written.as_dict(), splits=counts)
    return {
        "name": name,
        "path": spec.location(run.lake_root),
        "version": version,
        "as_of": as_of.isoformat(),
        "start_date": start.isoformat(),
        "last_day": last_day.isoformat(),
        "split": boundaries,
        "immature_labels": immature,
        "label_max_delay_days": max_delay,
        "input_versions": dict(run.inputs),
        "splits": counts,
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return parse("training-set", argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    as_of = parse_as_of(args.as_of)
    named_table_spec("training_set", name=args.name)  # a bad name fails before Spark starts
    with job_run(JOB, args) as run:
        summary = execute(run, as_of, args.name, allow_immature_labels=args.allow_immature_labels)
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(run_entrypoint(main))
