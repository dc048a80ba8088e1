"""Ingest: landing files -> bronze (+ quarantine) -> silver, for a range of days.

    spark-submit spark_jobs/ingest.py --start-date 2025-07-01 --end-date 2025-07-07
    tracelake ingest --start-date 2025-07-01 --end-date 2025-07-07      (the same code)

One run reads every landing partition of the range in one Spark read per
source (``landing/scans/date=…``, ``landing/labels/date=…``; CSV with header,
JSON lines or Parquet, told apart by file extension) and the reference files,
then writes, each in one Delta commit that replaces exactly the range:

- reference/locations, reference/products (whole tables, from landing/reference);
  reference/air_lanes, reference/serial_ranges likewise where their files exist.
  A reference file that has not changed since its table's last commit is not
  written again;
- bronze/scan_events: typed rows with ``_source_file``, ``_ingested_at``, ``_run_id``;
- bronze/quarantine: every landing row that could not be typed, with its raw
  payload and reason (see :mod:`spark_jobs.transforms.bronze`);
- silver/scan_events: one row per event_id, location and EPC parts added;
- silver/labels: confirmed anomaly labels whose confirmation day lies in the range.

Before silver is written the run reconciles: landing rows = bronze rows +
quarantine rows per source, or it fails. A landing file whose header lacks a
required column fails the run before anything is written; extra columns are
left out of bronze and reported.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import sys
from collections.abc import Sequence
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from spark_jobs import ingest_epcis
from spark_jobs.transforms import bronze, epcis, silver
from tracelake import hadoop_fs, landing, storage
from tracelake.arguments import parse
from tracelake.dates import days_between, describe_days
from tracelake.landing import LandingError, LandingFile
from tracelake.runs import JobRun, code_version, job_run, run_entrypoint
from tracelake.tables import TableSpec, domain, read_table, table_spec, write_table

JOB = "ingest"

# Landing reference file -> reference table, with the key that must be unique.
REFERENCES = (
    ("landing_locations", "reference_locations", ("location_id",)),
    ("landing_products", "reference_products", ("company_code", "product_code")),
)
# Reference files a producer may not deliver (landing folders older than them): loaded when present.
OPTIONAL_REFERENCES = (
    ("landing_air_lanes", "reference_air_lanes", ("origin_location_id", "destination_location_id")),
    ("landing_serial_ranges", "reference_serial_ranges", ("company_prefix", "item_reference", "serial_from")),
)
# Landing table of each source.
SOURCES = {bronze.SCANS: "landing_scans", bronze.LABELS: "landing_labels"}


def load_reference(
    run: JobRun, landing_name: str, table_name: str, key: Sequence[str], tables: dict[str, dict[str, int]]
) -> DataFrame:
    """Type a reference file and replace its table; returns the table as committed.

    A file whose bytes (with the table's columns, key and the code) made the table's last commit is
    not typed or written again: the table is read as it is.
    """
    spark, source, spec = run.spark, table_spec(landing_name), table_spec(table_name)
    path = source.location(run.lake_root)
    if not hadoop_fs.exists(spark, path):
        raise LandingError(
            f"reference file {path} does not exist; deliver it (e.g. `tracelake generate`) and rerun"
        )
    header = landing.first_line(spark, path)
    extra = landing.check_header(path, landing.header_columns(header) if header is not None else (), source)
    if extra:
        run.log.warning(
            "reference file has extra columns; they are ignored", extra={"file": path, "columns": extra}
        )
    fingerprint = _reference_fingerprint(path, spec, key)
    version = _version_made_from(spec.location(run.lake_root), fingerprint)
    if version is not None:
        tables[table_name] = {"rows": 0, "version": version}
        run.log.event("reference file unchanged; its table is kept", table=table_name, version=version)
    else:
        typed = bronze.typed_reference(spark.read.option("header", True).csv(path), spec, key).persist()
        try:
            problems = typed.where(F.col("_problem").isNotNull()).limit(5).collect()
            if problems:
                raise bronze.ReferenceDataError(
                    f"reference file {path} has bad rows, e.g. {[r['_problem'] for r in problems]}; "
                    "fix it and rerun"
                )
            version = _write(
                run,
                typed.drop("_problem"),
                table_name,
                tables,
                whole_table=True,
                source_file=path,
                source_sha256=fingerprint,
            )
        finally:
            typed.unpersist()
    run.inputs[table_name] = version
    return read_table(spark, spec, run.lake_root, version=version)


def _reference_fingerprint(path: str, spec: TableSpec, key: Sequence[str]) -> str:
    """What decides a reference table's rows: the file's bytes, the table's columns and key, the code."""
    digest = hashlib.sha256(storage.read_bytes(path))  # reference files are small: locations, products
    digest.update(json.dumps([spec.ddl, list(key), code_version()]).encode())
    return digest.hexdigest()


def _version_made_from(location: str, fingerprint: str) -> int | None:
    """The table's version when its last commit was made from ``fingerprint``, else None.

    Read with delta-rs from the log alone (no Spark job); any doubt (no table, a log delta-rs cannot
    read) means None, and the file is loaded as usual.
    """
    from deltalake import DeltaTable

    try:
        options = None if storage.is_local(location) else storage.delta_rs_options()
        table = DeltaTable(storage.arrow_uri(location), storage_options=options)
        last = table.history(1)
    except Exception:  # the careful answer is to load the file
        return None
    made_from = json.loads((last[0].get("userMetadata") or "{}") if last else "{}").get("source_sha256")
    return table.version() if made_from == fingerprint else None


def _rows_committed(run: JobRun, spec: TableSpec) -> int:
    """Rows this run's commit to the table wrote, as Delta records them (no scan of the data).

    0 when the table's latest commit is not this run's: Delta records no
    commit for a write that neither adds nor removes a file (an empty range).
    """
    from delta.tables import DeltaTable

    last = (
        DeltaTable.forPath(run.spark, spec.location(run.lake_root))
        .history(1)
        .select("operationMetrics", "userMetadata")
        .first()
    )
    if last is None or json.loads(last["userMetadata"] or "{}").get("run_id") != run.run_id:
        return 0
    return int((last["operationMetrics"] or {}).get("numOutputRows", 0))


def _write(
    run: JobRun,
    df: DataFrame,
    name: str,
    tables: dict[str, dict[str, int]],
    *,
    whole_table: bool = False,
    dates: Sequence[dt.date] | None = None,
    **lineage: Any,
) -> int:
    """One commit to table ``name`` (the run's range, chosen dates, or the whole table); records rows and version."""
    spec = table_spec(name)
    owned: dict[str, Any] = (
        {} if whole_table else {"dates": dates} if dates else {"start": run.start, "end": run.end}
    )
    with run.log.step(f"write {name}"):
        version = write_table(df, spec, run.lake_root, **owned, metadata=run.commit_metadata(**lineage))
    tables[name] = {"rows": _rows_committed(run, spec), "version": version}
    run.record_output(name, **tables[name])
    return version


def _inventory(
    run: JobRun, days: Sequence[dt.date], other_deliveries: frozenset[dt.date] = frozenset()
) -> tuple[dict[str, list[LandingFile]], dict[str, list[str]], list[dt.date]]:
    """The range's landing files per source, checked; the extra header columns per file; days without scans."""
    files = {
        s: landing.inventory(run.spark, table_spec(n), run.lake_root, days, run.log)
        for s, n in SOURCES.items()
    }
    extra_columns: dict[str, list[str]] = {}
    for source, name in SOURCES.items():
        extra_columns.update(landing.check_columns(files[source], table_spec(name)))
    missing = sorted(set(days) - {f.landing_date for f in files[bronze.SCANS]} - other_deliveries)
    if missing:
        message = f"no landing scan files for {describe_days(missing)}"
        if not run.settings.ingest.allow_missing_dates:
            raise LandingError(
                f"{message} under {table_spec(SOURCES[bronze.SCANS]).location(run.lake_root)}; a run would empty "
                "their bronze and silver partitions. Deliver them, narrow the range, or set "
                "ingest.allow_missing_dates=true"
            )
        run.log.warning(message + "; their partitions become empty", extra={"missing_dates": missing})
    run.log.event("landing files", files={s: len(f) for s, f in files.items()}, missing_dates=missing)
    return files, extra_columns, missing


def execute(run: JobRun) -> dict[str, Any]:
    """Ingest the run's date range; returns the run's summary (tables, quarantine, reconciliation)."""
    if run.start is None or run.end is None:
        raise LandingError("ingest needs --start-date (and optionally --end-date)")
    spark, settings = run.spark, run.settings.ingest
    days = days_between(run.start, run.end)
    ingested_at = dt.datetime.now(dt.UTC)
    tables: dict[str, dict[str, int]] = {}

    # Everything that can be refused is refused before the first write.
    epcis_files = ingest_epcis.inventory(run, days)
    files, extra_columns, missing_days = _inventory(run, days, frozenset(f.landing_date for f in epcis_files))
    references = {
        table: load_reference(run, landing_name, table, key, tables)
        for landing_name, table, key in REFERENCES
    }
    for landing_name, table, key in OPTIONAL_REFERENCES:
        if hadoop_fs.exists(spark, table_spec(landing_name).location(run.lake_root)):
            load_reference(run, landing_name, table, key, tables)
        else:
            run.log.event("optional reference file not delivered; its table is left as it is", table=table)

    scans_spec, labels_spec = table_spec(SOURCES[bronze.SCANS]), table_spec(SOURCES[bronze.LABELS])
    level = getattr(StorageLevel, settings.storage_level)
    scans = bronze.classify_scans(
        landing.read_landing(
            spark, files[bronze.SCANS], scans_spec, bronze.SCANS, settings.csv_max_record_lines
        ),
        references["reference_locations"],
        scans_spec.required_columns,
    ).persist(level)
    labels = bronze.classify_labels(
        landing.read_landing(
            spark, files[bronze.LABELS], labels_spec, bronze.LABELS, settings.csv_max_record_lines
        ),
        domain().anomaly_types,
        labels_spec.required_columns,
    ).persist(level)
    delivery = ingest_epcis.read(run, epcis_files, level)
    try:
        with run.log.step("parse and count landing rows") as counted:
            outcomes = [
                r.asDict()
                for r in landing.collect_landing(
                    bronze.landing_outcomes(scans, labels), [*files[bronze.SCANS], *files[bronze.LABELS]]
                )
            ]
            counted.update(landing_rows=sum(r["rows"] for r in outcomes))
        for row in outcomes:  # JSON lines have no header: their extra keys are found while parsing
            if row["extra_columns"]:
                seen = extra_columns.get(row["_source_file"], [])
                extra_columns[row["_source_file"]] = sorted({*seen, *row["extra_columns"]})
        for path, columns in sorted(extra_columns.items()):
            run.log.warning(
                "landing file has extra columns; they are left out of bronze",
                extra={"file": path, "columns": columns},
            )
        _log_examples(run, outcomes)

        landing_files = {s: len(f) for s, f in files.items()}
        bronze_rows = bronze.bronze_scan_events(scans, run.run_id, ingested_at)
        _write(run, bronze_rows, "bronze_scan_events", tables, landing_files=landing_files)
        quarantined = bronze.quarantine_rows(scans, run.run_id, ingested_at).unionByName(
            bronze.quarantine_rows(labels, run.run_id, ingested_at)
        )
        # EPCIS documents: bronze/epcis_events is written when the range delivers some, or did before.
        epcis_days, epcis_quarantined, epcis_quarantine_rows = ingest_epcis.event_dates_owned(run), None, 0
        if delivery.files or epcis_days:
            epcis_bronze = epcis.bronze_rows(delivery.flat, run.run_id, ingested_at)
            epcis_quarantined = (
                epcis.quarantine_rows(delivery.flat, run.run_id, ingested_at)
                .unionByName(
                    ingest_epcis.kept_out_of_silver(
                        run, epcis_bronze, references["reference_locations"], ingested_at
                    )
                )
                .persist(level)
            )
            landing_files[epcis.SOURCE] = len(delivery.files)
            _write(run, epcis_bronze, "bronze_epcis_events", tables, landing_files=landing_files)
            epcis_days |= ingest_epcis.event_dates(epcis_bronze)
            quarantined = quarantined.unionByName(epcis_quarantined)
        _write(run, quarantined, "bronze_quarantine", tables, landing_files=landing_files)
        if epcis_quarantined is not None:
            epcis_quarantine_rows = epcis_quarantined.count()
            epcis_quarantined.unpersist()

        written = {n: tables[n]["rows"] for n in ("bronze_scan_events", "bronze_quarantine")}
        written["bronze_quarantine"] -= epcis_quarantine_rows
        reconciliation = bronze.reconcile(outcomes, written, settings.reconciliation_tolerance)
        if "bronze_epcis_events" in tables:
            reconciliation[epcis.SOURCE] = ingest_epcis.reconcile(
                delivery.outcomes, tables["bronze_epcis_events"]["rows"], settings.reconciliation_tolerance
            )
            reconciliation[epcis.SOURCE]["quarantine_rows_with_silver"] = epcis_quarantine_rows
        run.log.event("reconciled", reconciliation=reconciliation)

        run.inputs["bronze_scan_events"] = tables["bronze_scan_events"]["version"]
        silver_bronze, silver_days = bronze_rows, None
        if "bronze_epcis_events" in tables:
            run.inputs["bronze_epcis_events"] = tables["bronze_epcis_events"]["version"]
            silver_bronze, silver_days = ingest_epcis.silver_input(
                run, bronze_rows, references["reference_locations"], epcis_days
            )
        events = silver.silver_scan_events(
            silver_bronze,
            references["reference_locations"],
            references["reference_products"],
            domain().epc_regex,
            run.run_id,
        )
        _write(run, events, "silver_scan_events", tables, dates=silver_days)
        _write(
            run,
            silver.silver_labels(bronze.accepted_labels(labels), run.run_id),
            "silver_labels",
            tables,
            landing_files=landing_files,
        )
    finally:
        scans.unpersist()
        labels.unpersist()
        delivery.unpersist()

    return {
        "run_id": run.run_id,
        "start_date": run.start.isoformat(),
        "end_date": run.end.isoformat(),
        "landing_files": landing_files,
        "tables": tables,
        "quarantine": {**_quarantine_counts(outcomes), **ingest_epcis.quarantine_counts(delivery.outcomes)},
        "reconciliation": reconciliation,
        "duplicates_dropped": {
            # With EPCIS deliveries silver spans more days and sources than bronze/scan_events.
            "silver_scan_events": (
                tables["bronze_scan_events"]["rows"] - tables["silver_scan_events"]["rows"]
                if silver_days is None
                else None
            ),
            "silver_labels": reconciliation[bronze.LABELS]["accepted_rows"] - tables["silver_labels"]["rows"],
        },
        "extra_columns": extra_columns,
        "missing_dates": [d.isoformat() for d in missing_days],
    }


def _quarantine_counts(outcomes: Sequence[dict[str, Any]]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for row in outcomes:
        if row["reason_code"] is not None:
            per_reason = counts.setdefault(row["source"], {})
            per_reason[row["reason_code"]] = per_reason.get(row["reason_code"], 0) + row["rows"]
    return {s: dict(sorted(c.items())) for s, c in sorted(counts.items())}


def _log_examples(run: JobRun, outcomes: Sequence[dict[str, Any]]) -> None:
    """One quarantined row per source and reason, so that the log shows what went wrong."""
    shown: set[tuple[str, str]] = set()
    for row in sorted(outcomes, key=lambda r: (r["source"], r["reason_code"] or "", r["_source_file"])):
        key = (row["source"], row["reason_code"])
        if row["reason_code"] is None or key in shown:
            continue
        shown.add(key)
        run.log.warning(
            "quarantined rows",
            extra={
                "source": row["source"],
                "reason_code": row["reason_code"],
                "file": row["_source_file"],
                "example_reason": row["example"]["reason"],
                "example_payload": row["example"]["raw_payload"],
            },
        )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return parse("ingest", argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with job_run(JOB, args) as run:
        summary = execute(run)
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(run_entrypoint(main))
