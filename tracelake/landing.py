"""The landing inventory: which files a landing table holds for some days, and the rows they hold.

One definition of a landing row, shared by ingest (which types every row into
bronze or quarantine) and validation (which reconciles bronze with landing):
every CSV record (RFC 4180: a quoted field may span lines) but a file's
header, every JSON line, every Parquet row. The files are listed and read
through Spark's Hadoop file system, so any lake URI Spark reads works; the
parsing itself is the pure transforms of :mod:`tracelake.landing_records`.

Files whose name starts with ``_`` or ``.`` (``_SUCCESS``, checksums) are not
data; any other file must have a known extension.
"""

from __future__ import annotations

import csv
import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import reduce
from typing import TYPE_CHECKING, Any

from tracelake import hadoop_fs
from tracelake import landing_records as records
from tracelake.errors import TracelakeError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from tracelake.logs import JobLogger
    from tracelake.tables import TableSpec


class LandingError(TracelakeError, ValueError):
    """Landing files cannot be ingested as delivered."""


@dataclass(frozen=True)
class LandingFile:
    """One delivered file: where it is, what it holds, and its header (CSV) or footer (Parquet) columns."""

    path: str  # as shown to people and stored in _source_file
    uri: str  # as Spark's _metadata.file_path spells it
    format: str
    landing_date: dt.date
    columns: tuple[str, ...] | None = None  # None: JSON lines (no header) or an empty file
    header_line: str | None = None
    parquet_schema: tuple[tuple[str, str], ...] | None = None  # (column, type) from a Parquet footer


def unreadable(path: str, what: str, cause: str) -> LandingError:
    return LandingError(
        f"landing file {path} cannot be read as {what} ({cause}); have the producer "
        "redeliver it, or move it out of the landing folder, and rerun"
    )


def first_line(spark: SparkSession, path: str) -> str | None:
    """A landing file's first line; an unreadable file is a LandingError naming it."""
    try:
        return hadoop_fs.first_line(spark, path)
    except hadoop_fs.HadoopReadError as error:
        raise unreadable(error.path, error.what, error.cause) from None


def header_columns(line: str) -> tuple[str, ...]:
    return tuple(name.strip().lstrip("\ufeff").strip() for name in next(csv.reader([line])))


def _described(spark: SparkSession, file: hadoop_fs.FileStatus, fmt: str, day: dt.date) -> LandingFile:
    """The file with what the driver must know before reading it: its header or footer."""
    try:
        if fmt == "parquet":
            schema = hadoop_fs.parquet_schema(spark, file.path)
            return LandingFile(
                file.path, file.uri, fmt, day, tuple(n for n, _ in schema), parquet_schema=schema
            )
        if fmt == "csv":
            header = hadoop_fs.first_line(spark, file.path)
            columns = header_columns(header) if header is not None else None
            return LandingFile(file.path, file.uri, fmt, day, columns, header)
        if file.name.lower().endswith(records.COMPRESSED_SUFFIX):
            hadoop_fs.first_line(spark, file.path)  # a .gz that is not gzip is refused here, naming the file
        return LandingFile(file.path, file.uri, fmt, day)
    except hadoop_fs.HadoopReadError as error:
        raise unreadable(error.path, error.what, error.cause) from None


def inventory(
    spark: SparkSession,
    spec: TableSpec,
    lake_root: str,
    days: Sequence[dt.date],
    log: JobLogger | None = None,
) -> list[LandingFile]:
    """Every file of the days' partitions of landing table ``spec``, with its header or footer columns."""
    if not days:
        return []
    root = spec.location(lake_root)
    pattern = f"{root}/{spec.partition_by}={{{','.join(d.isoformat() for d in days)}}}/*"
    files: list[LandingFile] = []
    for found in hadoop_fs.glob(spark, pattern):
        if found.name.startswith(("_", ".")):
            continue
        if found.is_dir:
            if log is not None:
                log.warning("skipping a folder inside a landing partition", extra={"path": found.path})
            continue
        fmt = records.landing_format(found.name)
        if fmt is None:
            raise LandingError(
                f"landing file {found.path} has an unknown format; name it *.csv, *.json, *.jsonl or "
                "*.parquet (text formats may end in .gz), or move it out of the landing folder"
            )
        day = dt.date.fromisoformat(found.parent_name.split("=", 1)[1])
        files.append(_described(spark, found, fmt, day))
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
    from pyspark.sql import DataFrame
    from pyspark.sql import functions as F

    headers = {
        columns: i
        for i, columns in enumerate(sorted({f.columns for f in files if f.format == "csv" and f.columns}))
    }
    described = spark.createDataFrame(
        [
            (
                f.uri,
                f.path,
                f.format,
                f.landing_date,
                headers.get(f.columns) if f.columns else None,
                f.header_line,
            )
            for f in files
        ],
        "_uri string, _source_file string, format string, landing_date date, header_id int, header_line string",
    ).withColumn("source", F.lit(source))
    frames = []
    text_files = [f.path for f in files if f.format in records.TEXT_FORMATS]
    if text_files:
        lines = spark.read.text(text_files).select(
            "value",
            F.col("_metadata.file_path").alias("_uri"),
            F.col("_metadata.file_block_start").alias("_block_start"),
            F.monotonically_increasing_id().alias("_line_index"),
        )
        csv_uris = [f.uri for f in files if f.format == "csv"]
        odd = (
            lines.where(F.col("_uri").isin(csv_uris) & records.odd_quotes(F.col("value")))
            .select("_uri")
            .distinct()
        )
        multiline = [r["_uri"] for r in collect_landing(odd, files)] if csv_uris else []
        joined = records.csv_records(
            lines.withColumn("_multiline_file", F.col("_uri").isin(multiline)), csv_max_record_lines
        )
        joined = joined.join(F.broadcast(described), "_uri")
        frames.append(records.parse_text_lines(joined, spec, {i: list(c) for c, i in headers.items()}))
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
        frames.append(records.parse_parquet_rows(rows.join(F.broadcast(described), "_uri"), spec))
    if not frames:
        return spark.createDataFrame([], records.parsed_ddl(spec))
    return reduce(DataFrame.unionByName, frames)


def rows_per_day(
    spark: SparkSession, files: Sequence[LandingFile], spec: TableSpec, csv_max_record_lines: int = 100
) -> dict[dt.date, int]:
    """Landing rows per landing day of ``files``, as :func:`read_landing` delivers them to ingest."""
    from pyspark.sql import functions as F

    counted = (
        read_landing(spark, files, spec, spec.name, csv_max_record_lines)
        .groupBy("landing_date")
        .agg(F.count(F.lit(1)).alias("rows"))
    )
    return {r["landing_date"]: int(r["rows"]) for r in collect_landing(counted, files)}


def collect_landing(frame: DataFrame, files: Sequence[LandingFile] = ()) -> list[Any]:
    """``frame.collect()`` where a landing file that fails only when read in full (a truncated .gz, a
    corrupt Parquet page) becomes one line naming the file instead of a JVM traceback.

    Spark 4 names the failing file in the task error; Spark 3.5 does not for a compressed text
    stream, so on failure each of ``files`` is read alone until one fails (the error path only).
    """
    try:
        return frame.collect()
    except Exception as error:  # py4j: the failed task's exception
        failed = unreadable_file_error(error) or _probe_unreadable(frame.sparkSession, files)
        if failed is None:
            raise
        raise failed from None


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
            return unreadable(file.path, what, hadoop_fs.java_cause(error))
    return None


_FAILED_FILE = re.compile(r"(?:reading file|file path:?|in file)\s+(\S+?)[.,]?(?:\s|$)", re.IGNORECASE)


def unreadable_file_error(error: BaseException) -> LandingError | None:
    """A Spark job that failed on one landing file (a truncated .gz, a corrupt Parquet page) -> one line naming it."""
    match = _FAILED_FILE.search(str(error))
    if match is None:
        return None
    return LandingError(
        f"landing file {match.group(1)} cannot be read ({hadoop_fs.java_cause(error)}); have the producer "
        "redeliver it, or move it out of the landing folder, and rerun"
    )
