"""Ingest: landing files -> bronze (+ quarantine) -> silver, for a range of days.

    spark-submit spark_jobs/ingest.py --start-date 2025-07-01 --end-date 2025-07-07
    tracelake ingest --start-date 2025-07-01 --end-date 2025-07-07      (the same code)

One run reads every landing partition of the range in one Spark read per
source (``landing/scans/date=…``, ``landing/labels/date=…``; CSV with header,
JSON lines or Parquet, told apart by file extension) and the reference files,
then writes, each in one Delta commit that replaces exactly the range:

- reference/locations, reference/products (whole tables, from landing/reference);
  reference/air_lanes, reference/serial_ranges likewise where their files exist;
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
import csv
import datetime as dt
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import reduce
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from spark_jobs import ingest_epcis
from spark_jobs.transforms import bronze, epcis, landing, silver
from tracelake.dates import days_between, describe_days
from tracelake.errors import TracelakeError
from tracelake.runs import JobRun, add_common_args, job_run, run_entrypoint
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


class LandingError(TracelakeError, ValueError):
    """Landing files cannot be ingested as delivered."""


@dataclass(frozen=True)
class LandingFile:
    """One delivered file: where it is, what it holds, and its header (CSV) or footer (Parquet) columns."""

    path: str  # as shown to people and stored in _source_file
    uri: str  # as Spark's _metadata.file_path spells it
    source: str
    format: str
    landing_date: dt.date
    columns: tuple[str, ...] | None = None  # None: JSON lines (no header) or an empty file
    header_line: str | None = None
    parquet_schema: tuple[tuple[str, str], ...] | None = None  # (column, type) from a Parquet footer


# --- the file system, through Hadoop so that any lake URI Spark reads works ---


def _hadoop_path(spark: SparkSession, path: str) -> tuple[Any, Any]:
    jpath = spark._jvm.org.apache.hadoop.fs.Path(path)  # type: ignore[union-attr]
    return jpath.getFileSystem(spark._jsc.hadoopConfiguration()), jpath  # type: ignore[union-attr]


def _exists(spark: SparkSession, path: str) -> bool:
    fs, jpath = _hadoop_path(spark, path)
    return bool(fs.exists(jpath))


def _java_cause(error: BaseException) -> str:
    """The innermost cause of a JVM error, as one line (e.g. ``java.util.zip.ZipException: Not in GZIP format``)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    causes = [line.removeprefix("Caused by: ") for line in lines if line.startswith("Caused by: ")]
    first = next((line for line in lines if not line.startswith("An error occurred while calling")), "")
    return (causes[-1] if causes else first or type(error).__name__)[:300]


def _unreadable(path: str, what: str, error: BaseException) -> LandingError:
    return LandingError(
        f"landing file {path} cannot be read as {what} ({_java_cause(error)}); have the producer "
        "redeliver it, or move it out of the landing folder, and rerun"
    )


def _first_line(spark: SparkSession, path: str) -> str | None:
    """The first line of a text file (decompressed if need be), or None when it is empty."""
    jvm = spark._jvm  # type: ignore[union-attr]
    fs, jpath = _hadoop_path(spark, path)
    try:
        stream = fs.open(jpath)
        codec = jvm.org.apache.hadoop.io.compress.CompressionCodecFactory(
            spark._jsc.hadoopConfiguration()
        ).getCodec(jpath)  # type: ignore[union-attr]
        if codec is not None:
            stream = codec.createInputStream(stream)
        reader = jvm.java.io.BufferedReader(jvm.java.io.InputStreamReader(stream, "UTF-8"))
    except Exception as error:
        raise _unreadable(
            path, "text" if not path.endswith(".gz") else "gzip-compressed text", error
        ) from None
    try:
        return reader.readLine()
    except Exception as error:
        raise _unreadable(path, "gzip-compressed text" if path.endswith(".gz") else "text", error) from None
    finally:
        reader.close()


def _parquet_schema(spark: SparkSession, path: str) -> tuple[tuple[str, str], ...]:
    """(column, Parquet type) of each column of a Parquet file's footer."""
    jvm = spark._jvm  # type: ignore[union-attr]
    _, jpath = _hadoop_path(spark, path)
    try:
        input_file = jvm.org.apache.parquet.hadoop.util.HadoopInputFile.fromPath(
            jpath, spark._jsc.hadoopConfiguration()
        )  # type: ignore[union-attr]
        reader = jvm.org.apache.parquet.hadoop.ParquetFileReader.open(input_file)
    except Exception as error:
        raise _unreadable(path, "Parquet", error) from None
    try:
        fields = reader.getFooter().getFileMetaData().getSchema().getFields()
        return tuple((str(f.getName()), str(f.toString())) for f in fields)
    finally:
        reader.close()


def _parquet_columns(spark: SparkSession, path: str) -> tuple[str, ...]:
    return tuple(name for name, _ in _parquet_schema(spark, path))


def _header_columns(line: str) -> tuple[str, ...]:
    return tuple(name.strip().lstrip("\ufeff").strip() for name in next(csv.reader([line])))


def landing_inventory(
    spark: SparkSession, run: JobRun, spec: TableSpec, source: str, days: Sequence[dt.date]
) -> list[LandingFile]:
    """Every file of the range's landing partitions, with its header or footer columns.

    Files whose name starts with ``_`` or ``.`` (``_SUCCESS``, checksums) are
    not data; any other file must have a known extension.
    """
    root = spec.location(run.lake_root)
    fs, pattern = _hadoop_path(spark, f"{root}/date={{{','.join(d.isoformat() for d in days)}}}/*")
    files: list[LandingFile] = []
    for status in fs.globStatus(pattern) or []:
        jpath = status.getPath()
        name, day = (
            str(jpath.getName()),
            dt.date.fromisoformat(str(jpath.getParent().getName())[len("date=") :]),
        )
        if name.startswith(("_", ".")):
            continue
        if status.isDirectory():
            run.log.warning("skipping a folder inside a landing partition", extra={"path": str(jpath)})
            continue
        fmt = landing.landing_format(name)
        if fmt is None:
            raise LandingError(
                f"landing file {jpath} has an unknown format; name it *.csv, *.json, *.jsonl or *.parquet "
                "(text formats may end in .gz), or move it out of the landing folder"
            )
        path, uri = str(jpath), str(jpath.toUri())
        if fmt == "parquet":
            schema = _parquet_schema(spark, path)
            files.append(
                LandingFile(path, uri, source, fmt, day, tuple(n for n, _ in schema), parquet_schema=schema)
            )
        elif fmt == "csv":
            header = _first_line(spark, path)
            columns = _header_columns(header) if header is not None else None
            files.append(LandingFile(path, uri, source, fmt, day, columns, header))
        else:
            if name.lower().endswith(landing.COMPRESSED_SUFFIX):
                _first_line(spark, path)  # a .gz that is not gzip is refused here, naming the file
            files.append(LandingFile(path, uri, source, fmt, day))
    return sorted(files, key=lambda f: f.path)


def check_header(path: str, columns: Sequence[str], spec: TableSpec) -> list[str]:
    """Fail when a file's header lacks a required column (or repeats one); return its extra columns."""
    duplicated = sorted({c for c in columns if columns.count(c) > 1})
    missing = [c for c in spec.required_columns if c not in columns]
    if missing or duplicated:
        problem = f"lacks required column(s) {missing}" if missing else f"repeats column(s) {duplicated}"
        raise LandingError(
            f"landing file {path} {problem}; its columns are {list(columns)}, {spec.name} needs "
            f"{spec.required_columns}. Have the producer redeliver the file (or move it out of the landing "
            "folder) and rerun"
        )
    return [c for c in columns if c not in spec.column_names]


def check_columns(files: Sequence[LandingFile], spec: TableSpec) -> dict[str, list[str]]:
    """Check every header (CSV) and footer (Parquet); the extra columns per file that has some."""
    extra = {f.path: check_header(f.path, f.columns, spec) for f in files if f.columns is not None}
    return {path: columns for path, columns in extra.items() if columns}


def read_landing(
    spark: SparkSession,
    files: Sequence[LandingFile],
    spec: TableSpec,
    source: str,
    csv_max_record_lines: int = 100,
) -> DataFrame:
    """The parsed landing rows of one source: one text read (CSV, JSON lines) and one Parquet read per schema.

    CSV lines are joined into records first (RFC 4180: a quoted field may hold line breaks); only
    files with a line of unbalanced quotes are ordered for it, which one pass over the text finds.
    Parquet files whose columns have different types are read apart and meet as text.
    """
    headers = {
        columns: i
        for i, columns in enumerate(sorted({f.columns for f in files if f.format == "csv" and f.columns}))
    }
    inventory = spark.createDataFrame(
        [(f.uri, f.path, f.format, f.landing_date, headers.get(f.columns), f.header_line) for f in files],  # type: ignore[arg-type]
        "_uri string, _source_file string, format string, landing_date date, header_id int, header_line string",
    ).withColumn("source", F.lit(source))
    frames = []
    text_files = [f.path for f in files if f.format in landing.TEXT_FORMATS]
    if text_files:
        lines = spark.read.text(text_files).select(
            "value",
            F.col("_metadata.file_path").alias("_uri"),
            F.col("_metadata.file_block_start").alias("_block_start"),
            F.monotonically_increasing_id().alias("_line_index"),
        )
        csv_uris = [f.uri for f in files if f.format == "csv"]
        odd = (
            lines.where(F.col("_uri").isin(csv_uris) & landing.odd_quotes(F.col("value")))
            .select("_uri")
            .distinct()
        )
        multiline = [r["_uri"] for r in collect_landing(odd, files)] if csv_uris else []
        records = landing.csv_records(
            lines.withColumn("_multiline_file", F.col("_uri").isin(multiline)), csv_max_record_lines
        )
        records = records.join(F.broadcast(inventory), "_uri")
        frames.append(landing.parse_text_lines(records, spec, {i: list(c) for c, i in headers.items()}))
    schemas: dict[tuple[tuple[str, str], ...], list[str]] = {}
    for f in files:
        if f.format == "parquet":
            schemas.setdefault(f.parquet_schema or (), []).append(f.path)
    for paths in schemas.values():
        rows = spark.read.parquet(*paths)
        rows = rows.select(
            F.struct(*[F.col(f"`{c}`") for c in rows.columns]).alias("_payload"),
            F.col("_metadata.file_path").alias("_uri"),
        )
        frames.append(landing.parse_parquet_rows(rows.join(F.broadcast(inventory), "_uri"), spec))
    if not frames:
        return spark.createDataFrame([], landing.parsed_ddl(spec))
    return reduce(DataFrame.unionByName, frames)


def collect_landing(frame: DataFrame, files: Sequence[LandingFile] = ()) -> list[Any]:
    """``frame.collect()`` where a landing file that fails only when read in full (a truncated .gz, a
    corrupt Parquet page) becomes one line naming the file instead of a JVM traceback.

    Spark 4 names the failing file in the task error; Spark 3.5 does not for a compressed text
    stream, so on failure each of ``files`` is read alone until one fails (the error path only).
    """
    try:
        return frame.collect()
    except Exception as error:  # py4j: the failed task's exception
        unreadable = unreadable_file_error(error) or _probe_unreadable(frame.sparkSession, files)
        if unreadable is None:
            raise
        raise unreadable from None


def _probe_unreadable(spark: SparkSession, files: Sequence[LandingFile]) -> LandingError | None:
    """The first landing file that cannot be read in full on its own, as one line; None if all can."""
    for file in files:
        reader = spark.read.parquet if file.format == "parquet" else spark.read.text
        try:
            reader(file.path).count()
        except Exception as error:
            what = (
                "Parquet"
                if file.format == "parquet"
                else ("gzip-compressed text" if file.path.endswith(".gz") else "text")
            )
            return _unreadable(file.path, what, error)
    return None


_FAILED_FILE = re.compile(r"(?:reading file|file path:?|in file)\s+(\S+?)[.,]?(?:\s|$)", re.IGNORECASE)


def unreadable_file_error(error: BaseException) -> LandingError | None:
    """A Spark job that failed on one landing file (a truncated .gz, a corrupt Parquet page) -> one line naming it."""
    match = _FAILED_FILE.search(str(error))
    if match is None:
        return None
    return LandingError(
        f"landing file {match.group(1)} cannot be read ({_java_cause(error)}); have the producer "
        "redeliver it, or move it out of the landing folder, and rerun"
    )


def load_reference(
    run: JobRun, landing_name: str, table_name: str, key: Sequence[str], tables: dict[str, dict[str, int]]
) -> DataFrame:
    """Type a reference file and replace its table; returns the table as committed."""
    spark, source, spec = run.spark, table_spec(landing_name), table_spec(table_name)
    path = source.location(run.lake_root)
    if not _exists(spark, path):
        raise LandingError(
            f"reference file {path} does not exist; deliver it (e.g. `tracelake generate`) and rerun"
        )
    header = _first_line(spark, path)
    extra = check_header(path, _header_columns(header) if header is not None else (), source)
    if extra:
        run.log.warning(
            "reference file has extra columns; they are ignored", extra={"file": path, "columns": extra}
        )
    typed = bronze.typed_reference(spark.read.option("header", True).csv(path), spec, key).persist()
    try:
        problems = typed.where(F.col("_problem").isNotNull()).limit(5).collect()
        if problems:
            raise bronze.ReferenceDataError(
                f"reference file {path} has bad rows, e.g. {[r['_problem'] for r in problems]}; fix it and rerun"
            )
        version = _write(run, typed.drop("_problem"), table_name, tables, whole_table=True, source_file=path)
    finally:
        typed.unpersist()
    run.inputs[table_name] = version
    return read_table(spark, spec, run.lake_root, version=version)


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
    files = {s: landing_inventory(run.spark, run, table_spec(n), s, days) for s, n in SOURCES.items()}
    extra_columns: dict[str, list[str]] = {}
    for source, name in SOURCES.items():
        extra_columns.update(check_columns(files[source], table_spec(name)))
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
        if _exists(spark, table_spec(landing_name).location(run.lake_root)):
            load_reference(run, landing_name, table, key, tables)
        else:
            run.log.event("optional reference file not delivered; its table is left as it is", table=table)

    scans_spec, labels_spec = table_spec(SOURCES[bronze.SCANS]), table_spec(SOURCES[bronze.LABELS])
    level = getattr(StorageLevel, settings.storage_level)
    scans = bronze.classify_scans(
        read_landing(spark, files[bronze.SCANS], scans_spec, bronze.SCANS, settings.csv_max_record_lines),
        references["reference_locations"],
        scans_spec.required_columns,
    ).persist(level)
    labels = bronze.classify_labels(
        read_landing(spark, files[bronze.LABELS], labels_spec, bronze.LABELS, settings.csv_max_record_lines),
        domain()["anomaly_types"],
        labels_spec.required_columns,
    ).persist(level)
    delivery = ingest_epcis.read(run, epcis_files, level)
    try:
        with run.log.step("parse and count landing rows") as counted:
            outcomes = [
                r.asDict()
                for r in collect_landing(
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
            domain()["epc_regex"],
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
    parser = argparse.ArgumentParser(
        prog="tracelake ingest",
        description="Landing files -> bronze (+ quarantine) -> silver for a range of days; idempotent per range.",
    )
    add_common_args(parser)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with job_run(JOB, args) as run:
        summary = execute(run)
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(run_entrypoint(main))
