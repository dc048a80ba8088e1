"""Parsed landing rows -> typed bronze rows, or quarantine rows with a reason.

Pure transforms over the frames of :mod:`tracelake.landing_records`.
Every landing row gets exactly one outcome: ``reason_code`` null (accepted)
or the first failing check, in this order:

| code | meaning |
| --- | --- |
| ``non_utf8`` | the line holds bytes that are not UTF-8 |
| ``unparseable`` | wrong field count, not a JSON object, blank line |
| ``missing_required`` | a required column is empty |
| ``bad_type`` | a value does not parse as its type (``event_time``, ``confirmed_at``) |
| ``unknown_location`` | ``location_id`` is not in reference/locations (scans) |
| ``unknown_anomaly_type`` | not one of the domain's anomaly types (labels) |
| ``outside_partition`` | the row's date is not its landing partition's date |

``reason`` is ``"<code>: <detail>"`` with the offending value. Business
anomalies (fake EPCs, cloned tags, odd journeys) are not checked here: they
are data the model must see.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from tracelake.errors import TracelakeError
from tracelake.landing_records import NON_UTF8, UNPARSEABLE
from tracelake.tables import TableSpec

MISSING_REQUIRED = "missing_required"
BAD_TYPE = "bad_type"
UNKNOWN_LOCATION = "unknown_location"
UNKNOWN_ANOMALY_TYPE = "unknown_anomaly_type"
OUTSIDE_PARTITION = "outside_partition"
REASON_CODES = (
    NON_UTF8,
    UNPARSEABLE,
    MISSING_REQUIRED,
    BAD_TYPE,
    UNKNOWN_LOCATION,
    UNKNOWN_ANOMALY_TYPE,
    OUTSIDE_PARTITION,
)

SCANS = "scans"
LABELS = "labels"

# ISO-8601 date and time; seconds, fraction and zone optional (no zone = UTC).
ISO_TIMESTAMP = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}(:?\d{2})?)?$"

# Columns of the classified frame beyond the landing columns.
OUTCOME_COLUMNS = ("reason_code", "reason")


class ReconciliationError(TracelakeError, RuntimeError):
    """Landing rows do not add up to the rows written to bronze and quarantine."""


class ReferenceDataError(TracelakeError, ValueError):
    """A reference file has rows that cannot be typed, or duplicate keys."""


@dataclass(frozen=True)
class Check:
    """One quarantine rule: rows where ``failed`` holds get ``"<code>: <detail>"``."""

    code: str
    failed: Column
    detail: Column


def parse_timestamp(text: Column) -> Column:
    """ISO-8601 text -> timestamp (UTC when it names no zone); null when it is not one."""
    return F.when(text.rlike(ISO_TIMESTAMP), F.try_to_timestamp(text))


def _missing(columns: Sequence[str]) -> Column:
    return F.array_compact(F.array(*[F.when(F.col(c).isNull(), F.lit(c)) for c in columns]))


def _quoted(value: Column) -> Column:
    return F.concat(F.lit("'"), value, F.lit("'"))


def classify(parsed: DataFrame, checks: Sequence[Check]) -> DataFrame:
    """Add ``reason_code`` and ``reason``: the landing parse error, else the first failing check."""
    code: Column = F.when(F.col("parse_error").isNotNull(), F.split(F.col("parse_error"), ":").getItem(0))
    reason: Column = F.when(F.col("parse_error").isNotNull(), F.col("parse_error"))
    for check in checks:
        code = code.when(check.failed, F.lit(check.code))
        reason = reason.when(check.failed, F.concat(F.lit(f"{check.code}: "), check.detail))
    return parsed.withColumn("reason_code", code).withColumn("reason", reason)


def classify_scans(parsed: DataFrame, locations: DataFrame, required: Sequence[str]) -> DataFrame:
    """Scan rows with their outcome, plus ``event_ts`` (typed ``event_time``).

    ``locations`` is reference/locations (unique ``location_id``); ``required``
    the landing columns that must not be empty.
    """
    known = locations.select("location_id", F.lit(True).alias("_location_known"))
    rows = parsed.join(F.broadcast(known), "location_id", "left").withColumn(
        "event_ts", parse_timestamp(F.col("event_time"))
    )
    missing = _missing(required)
    checks = [
        Check(MISSING_REQUIRED, F.size(missing) > 0, F.array_join(missing, ", ")),
        Check(
            BAD_TYPE, F.col("event_ts").isNull(), F.concat(F.lit("event_time="), _quoted(F.col("event_time")))
        ),
        Check(UNKNOWN_LOCATION, F.col("_location_known").isNull(), F.col("location_id")),
        Check(
            OUTSIDE_PARTITION,
            F.to_date("event_ts") != F.col("landing_date"),
            F.format_string(
                "event_time %s not in date=%s", F.col("event_time"), F.col("landing_date").cast("string")
            ),
        ),
    ]
    return classify(rows, checks).drop("_location_known")


def classify_labels(parsed: DataFrame, anomaly_types: Sequence[str], required: Sequence[str]) -> DataFrame:
    """Label rows with their outcome, plus ``confirmed_ts`` (typed ``confirmed_at``)."""
    rows = parsed.withColumn("confirmed_ts", parse_timestamp(F.col("confirmed_at")))
    missing = _missing(required)
    checks = [
        Check(MISSING_REQUIRED, F.size(missing) > 0, F.array_join(missing, ", ")),
        Check(
            BAD_TYPE,
            F.col("confirmed_ts").isNull(),
            F.concat(F.lit("confirmed_at="), _quoted(F.col("confirmed_at"))),
        ),
        Check(
            UNKNOWN_ANOMALY_TYPE, ~F.col("anomaly_type").isin(*anomaly_types), _quoted(F.col("anomaly_type"))
        ),
        Check(
            OUTSIDE_PARTITION,
            F.to_date("confirmed_ts") != F.col("landing_date"),
            F.format_string(
                "confirmed_at %s not in date=%s", F.col("confirmed_at"), F.col("landing_date").cast("string")
            ),
        ),
    ]
    return classify(rows, checks)


def _lineage(run_id: str, ingested_at: dt.datetime) -> list[Column]:
    return [F.lit(ingested_at).cast("timestamp").alias("_ingested_at"), F.lit(run_id).alias("_run_id")]


def bronze_scan_events(classified: DataFrame, run_id: str, ingested_at: dt.datetime) -> DataFrame:
    """Accepted scan rows, typed, with lineage columns (columns of bronze_scan_events)."""
    return classified.where(F.col("reason_code").isNull()).select(
        "event_id",
        "epc_code",
        F.col("event_ts").alias("event_time"),
        # Optional: null where a file predates the column or the value does not parse.
        (
            parse_timestamp(F.col("record_time"))
            if "record_time" in classified.columns
            else F.lit(None).cast("timestamp")
        ).alias("record_time"),
        "location_id",
        "business_step",
        "event_type",
        "operator_id",
        "device_id",
        "product_name",
        F.to_date("event_ts").alias("event_date"),
        "_source_file",
        *_lineage(run_id, ingested_at),
    )


def accepted_labels(classified: DataFrame) -> DataFrame:
    """Accepted label rows, typed: event_id, epc_code, anomaly_type, confirmed_at, label_date."""
    return classified.where(F.col("reason_code").isNull()).select(
        "event_id",
        "epc_code",
        "anomaly_type",
        F.col("confirmed_ts").alias("confirmed_at"),
        F.col("landing_date").alias("label_date"),
    )


def quarantine_rows(classified: DataFrame, run_id: str, ingested_at: dt.datetime) -> DataFrame:
    """Rejected rows of any source (columns of bronze_quarantine)."""
    return classified.where(F.col("reason_code").isNotNull()).select(
        "source",
        "raw_payload",
        "reason",
        F.col("landing_date").alias("ingest_date"),
        "_source_file",
        *_lineage(run_id, ingested_at),
    )


def landing_outcomes(*classified: DataFrame) -> DataFrame:
    """Rows per (source, file, reason_code): the run's one counting pass.

    Also the extra JSON keys seen, and for quarantined rows one example
    (``reason``, ``raw_payload``), the smallest, so that it is deterministic.
    """
    columns = ["source", "_source_file", "reason_code", "reason", "raw_payload", "extra_columns"]
    rows = classified[0].select(*columns)
    for frame in classified[1:]:
        rows = rows.unionByName(frame.select(*columns))
    return rows.groupBy("source", "_source_file", "reason_code").agg(
        F.count(F.lit(1)).alias("rows"),
        F.array_sort(F.array_distinct(F.flatten(F.collect_set("extra_columns")))).alias("extra_columns"),
        F.min(F.when(F.col("reason_code").isNotNull(), F.struct("reason", "raw_payload"))).alias("example"),
    )


def typed_reference(raw: DataFrame, spec: TableSpec, key: Sequence[str]) -> DataFrame:
    """A reference file's text columns cast to the table's types, plus ``_problem``.

    ``_problem`` is null for a good row, else says what is wrong with it: an
    empty or untyped required value, or a key that occurs more than once.
    """
    # An optional column a file predates (e.g. gln) is null; a missing required one fails check_header first.
    raw = raw.select(
        "*",
        *[
            F.lit(None).cast("string").alias(c.name)
            for c in spec.columns
            if c.nullable and c.name not in raw.columns
        ],
    )
    typed = raw.select(
        *[F.col(f"`{c.name}`").alias(f"_raw_{c.name}") for c in spec.columns],
        *[F.expr(f"try_cast(nullif(trim(`{c.name}`), '') AS {c.type})").alias(c.name) for c in spec.columns],
    )
    key_count = F.count(F.lit(1)).over(Window.partitionBy(*key))
    problems = [
        F.when(
            F.col(c.name).isNull(),
            F.concat(
                F.lit(f"{c.name}="),
                F.coalesce(_quoted(F.col(f"_raw_{c.name}")), F.lit("<empty>")),
                F.lit(f" is not a {c.type}"),
            ),
        )
        for c in spec.columns
        if not c.nullable
    ]
    problems.append(F.when(key_count > 1, F.format_string(f"{'/'.join(key)} occurs %d times", key_count)))
    problem = F.concat_ws("; ", *problems)
    return typed.select(*spec.column_names, F.when(problem != "", problem).alias("_problem"))


def reconcile(
    outcomes: Iterable[Mapping[str, Any]],
    written: Mapping[str, int],
    tolerance: int = 0,
) -> dict[str, dict[str, Any]]:
    """Check that landing rows = bronze rows + quarantine rows, per source; raise on a mismatch.

    ``outcomes`` are the rows of :func:`landing_outcomes`, counted before any
    write; ``written`` the rows the Delta commits of this run report for
    ``bronze_scan_events`` and ``bronze_quarantine``. Labels have no bronze
    table: their accepted rows are what silver_labels is built from.
    """
    counts = {s: {"landing_rows": 0, "accepted_rows": 0, "quarantine_rows": 0} for s in (SCANS, LABELS)}
    for row in outcomes:
        source = counts.setdefault(
            row["source"], {"landing_rows": 0, "accepted_rows": 0, "quarantine_rows": 0}
        )
        source["landing_rows"] += row["rows"]
        source["accepted_rows" if row["reason_code"] is None else "quarantine_rows"] += row["rows"]
    counts[SCANS]["bronze_rows"] = written["bronze_scan_events"]

    result: dict[str, dict[str, Any]] = {}
    for name, c in counts.items():
        kept = c["bronze_rows"] if name == SCANS else c["accepted_rows"]
        result[name] = {**c, "difference": c["landing_rows"] - kept - c["quarantine_rows"]}
    expected = sum(c["quarantine_rows"] for c in counts.values())
    result["quarantine_table"] = {
        "expected_rows": expected,
        "written_rows": written["bronze_quarantine"],
        "difference": written["bronze_quarantine"] - expected,
    }
    for r in result.values():
        r["ok"] = abs(r["difference"]) <= tolerance
    bad = {name: r for name, r in result.items() if not r["ok"]}
    if bad:
        raise ReconciliationError(
            f"landing rows do not reconcile with the rows written (tolerance {tolerance}): {bad}; "
            "bronze and quarantine are committed, silver is not; inspect this run's log, fix the cause and rerun the range"
        )
    return result
