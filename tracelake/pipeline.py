"""The daily pipeline's steps, declared once: the Airflow DAG and `tracelake demo` are built from it.

Each step is one ``tracelake`` subcommand (``tracelake <command> <args> --start-date … --end-date …``,
the same code as ``spark-submit <entrypoint>``) with the steps it depends on and its gate:
what a failure of the step does to the steps after it.

Standard library only at import time: the DAG files load this module from its file while the DAG
processor parses them, without importing the rest of the package (or Spark, or the ML stack).
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass


class Gate(enum.Enum):
    """What a step's failure means downstream."""

    # Any failure fails the step and stops everything after it. Its user errors (exit 2) are not
    # retried by the DAG; other failures are.
    STOP = "stop"
    # A data check: downstream runs only on the days that passed. A DAG run covers one day, so a
    # failed check fails the task (not retried: the same data gives the same verdict) and the
    # rest of the run is upstream_failed; the demo goes on with the day ranges that passed.
    CHECK = "check"
    # Findings are recorded and logged as warnings, never raised: only the step's own errors
    # (missing inputs) fail it.
    WARN = "warn"


@dataclass(frozen=True)
class Step:
    """One step: the task id, the ``tracelake`` command it runs and the arguments before the dates."""

    name: str
    command: str
    args: tuple[str, ...]
    upstream: tuple[str, ...]
    gate: Gate
    # Table whose expectation suite this step enforces (a CHECK step, or a step that validates
    # what it writes before it succeeds).
    validates: str | None
    # True when the step runs a registered model (the demo trains one before the first such step).
    needs_champion: bool
    # What stops the run at this step (the DAG's documentation table).
    stops_when: str
    doc: str


def _check(name: str, table: str, upstream: str, doc: str) -> Step:
    return Step(
        name=name,
        command="validate",
        args=("--table", table),
        upstream=(upstream,),
        gate=Gate.CHECK,
        validates=table,
        needs_champion=False,
        stops_when="a critical expectation fails",
        doc=doc,
    )


DAILY_STEPS: tuple[Step, ...] = (
    Step(
        name="ingest",
        command="ingest",
        args=(),
        upstream=(),
        gate=Gate.STOP,
        validates=None,
        needs_champion=False,
        stops_when="a landing day is missing or unreadable",
        doc="Landing files of the interval -> `bronze/scan_events` (+ `bronze/quarantine`) -> "
        "`silver/scan_events`, `silver/labels`.",
    ),
    _check(
        "validate_bronze",
        "bronze_scan_events",
        "ingest",
        "Great Expectations suite `schemas/expectations/bronze_scan_events.json` on the interval's partitions.",
    ),
    _check(
        "validate_silver",
        "silver_scan_events",
        "validate_bronze",
        "Suite `silver_scan_events` (reconciled with bronze) on the interval's partitions.",
    ),
    Step(
        name="build_features",
        command="features",
        args=(),
        upstream=("validate_silver",),
        gate=Gate.STOP,
        validates=None,
        needs_champion=False,
        stops_when="silver is missing for a day",
        doc="Daily snapshot features and point-in-time event features (`features/event_features`).",
    ),
    _check(
        "validate_features",
        "features_event_features",
        "build_features",
        "Suite `features_event_features` (reconciled with silver, ranges, no future snapshot).",
    ),
    Step(
        name="score",
        command="score",
        args=(),
        upstream=("validate_features",),
        gate=Gate.STOP,
        # Gold is validated once per run, here: the step fails (a user error) when a critical
        # expectation of the scores it wrote fails, so monitoring never reads bad scores.
        validates="gold_scored_events",
        needs_champion=True,
        stops_when="the model cannot be resolved or verified, or the written scores fail their "
        "expectations (`gold_scored_events`)",
        doc="Scores the interval's event features with the `champion` ONNX model -> `gold/scored_events`, "
        "then validates the written partitions (suite `gold_scored_events`: probabilities in [0, 1], "
        "one row per event).",
    ),
    Step(
        name="monitor",
        command="monitor",
        args=(),
        upstream=("score",),
        gate=Gate.WARN,
        validates=None,
        needs_champion=True,
        stops_when="- (drift is recorded in `monitoring/drift`, not raised)",
        doc="Drift (PSI) of features and scores against the training reference -> `monitoring/drift`, "
        "a status per (day, column).",
    ),
)

# The weekly (or drift-triggered) training steps. Their dates, cut-off and set name are chosen by
# the runner (the training DAG templates them from its run; the demo from its data), so each
# step's ``args`` are only the fixed ones.
TRAINING_STEPS: tuple[Step, ...] = (
    Step(
        name="build_training_set",
        command="training-set",
        args=(),
        upstream=(),
        gate=Gate.STOP,
        validates=None,
        needs_champion=False,
        stops_when="event features are missing for a day of the window, or its test days' labels are "
        "not yet mature",
        doc="Event features of the window + labels confirmed at or before the cut-off, temporal split "
        "-> `training/sets/<name>`.",
    ),
    _check(
        "validate_training_set",
        "training_set",
        "build_training_set",
        "Suite `training_set`: temporal split in order, labels 0/1; a failure stops before training.",
    ),
    Step(
        name="train",
        command="train",
        args=(),
        upstream=("validate_training_set",),
        gate=Gate.STOP,
        validates=None,
        needs_champion=False,
        stops_when="a detector fails to train or export",
        doc="Sequence model through TorchDistributor, the MLlib baseline and the rules: evaluated on the "
        "test split, logged to MLflow, registered with alias `challenger`.",
    ),
    Step(
        name="promote",
        command="promote",
        args=(),
        upstream=("train",),
        gate=Gate.STOP,
        validates=None,
        needs_champion=False,
        stops_when="the registry cannot be read (a challenger that is not better is not a failure)",
        doc="Promotion gate: `champion` moves to the challenger only if it is better on the same test data "
        "by `training.promotion_margin`; otherwise the champion stays and the reason is logged.",
    ),
)

# The monitoring table whose `drift` rows trigger retraining, and that status.
DRIFT_TABLE = "monitoring_drift"
DRIFT_STATUS = "drift"


def step(name: str, steps: tuple[Step, ...] = DAILY_STEPS) -> Step:
    """The step named ``name``."""
    for candidate in steps:
        if candidate.name == name:
            return candidate
    raise KeyError(f"no step {name!r}; steps: {', '.join(s.name for s in steps)}")


def in_order(steps: tuple[Step, ...] = DAILY_STEPS) -> tuple[Step, ...]:
    """The steps, checked to be declared after everything they depend on (the order both runners use)."""
    seen: set[str] = set()
    for candidate in steps:
        missing = [name for name in candidate.upstream if name not in seen]
        if missing:
            raise ValueError(f"step {candidate.name!r} depends on {missing}, not declared before it")
        seen.add(candidate.name)
    return steps


def drifted_days(lake_root: str, first: dt.date, last: dt.date) -> list[dt.date]:
    """Days of [first, last] with at least one ``drift`` row in ``monitoring/drift`` (none when the
    table does not exist yet). Read with delta-rs: no Spark, so the Airflow worker can decide."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    from tracelake import storage
    from tracelake.tables import table_spec

    location = table_spec(DRIFT_TABLE).location(lake_root)
    try:
        options = None if storage.is_local(location) else storage.delta_rs_options()
        table = DeltaTable(storage.arrow_uri(location), storage_options=options)
    except TableNotFoundError:
        return []
    rows = table.to_pyarrow_table(
        columns=["event_date"],
        filters=[("event_date", ">=", first), ("event_date", "<=", last), ("status", "=", DRIFT_STATUS)],
    )
    days: set[dt.date] = set(rows.column("event_date").to_pylist())
    return sorted(days)
