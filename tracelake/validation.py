"""Validation gates: expectation suites run with Great Expectations on Spark.

A suite is one JSON file per table under ``schemas/expectations/``, named by the
table's ``expectations:`` key in ``schemas/tables/<table>.yaml``::

    {"table": "silver_scan_events",
     "description": "...",
     "expectations": [
       {"type": "expect_column_values_to_be_in_set",
        "kwargs": {"column": "event_type", "value_set": {"$domain": "event_types"}},
        "severity": "critical",
        "notes": "why this check exists"}]}

``type`` and ``kwargs`` are Great Expectations' own (GX 1.x snake_case names).
``severity`` is ``critical`` (a failure fails the step) or ``warning`` (recorded
and logged); it is stored in the expectation's ``meta`` (and GX's own
``severity`` field). ``notes`` and ``description`` go to Data Docs.

Values are never restated from ``schemas/``; placeholders are resolved when the
suite is loaded:

- ``{"$domain": KEY}``: ``schemas/domain.yaml[KEY]`` (a mapping gives its keys;
  ``"take": "values"`` its values, ``"take": "pairs"`` its ``[key, value]`` items);
- ``{"$table": "column_names"}``: the table's columns in schema order;
- ``"for_each_column": "all" | "required" | [names]`` repeats the entry per
  column, with ``{"$column": "name"}`` / ``{"$column": "spark_type"}`` in kwargs;
- ``{"$row_count_of": [TERM, ...]}`` (run time): the summed row count of other
  tables over the validated date range, each TERM
  ``{"table": T, "distinct": COL?, "where": SQL?, "subtract": true?}`` counted
  per day of T's date column. This is how a layer reconciles with the one before.

Results: GX validates the cached frame once; failed row-level expectations are
traced back to the partitions (days) holding the unexpected rows, so the
pipeline can hold back exactly those days; aggregate checks (means, quantiles,
schema) fail the whole range. Each run writes ``results.json`` and GX Data Docs
under ``<lake>/<validation.results_dir>/<table>/<run_id>/``.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import datetime as dt
import json
import math
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tracelake import storage
from tracelake.dates import days_between
from tracelake.errors import TracelakeError
from tracelake.tables import SCHEMAS_DIR, TableSpec, domain, read_range, table_spec

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from tracelake.config import ValidationSettings
    from tracelake.logs import JobLogger
    from tracelake.runs import JobRun

SEVERITIES = ("critical", "warning")
_ENTRY_KEYS = {"type", "kwargs", "severity", "notes", "description", "for_each_column"}
_SUITE_KEYS = {"table", "description", "expectations"}
_TERM_KEYS = {"table", "distinct", "where", "subtract"}
_COLUMN_KWARGS = ("column", "column_A", "column_B")


class SuiteError(TracelakeError, ValueError):
    """An expectation suite file is malformed or names something that does not exist."""


class ValidationFailed(TracelakeError):
    """A critical expectation failed; ``.report`` holds the whole result."""

    def __init__(self, report: ValidationReport) -> None:
        self.report = report
        super().__init__(report.failure_message())


# --------------------------------------------------------------------------- suites


@dataclass(frozen=True)
class SuiteEntry:
    """One expectation of a suite, placeholders resolved except ``$row_count_of``."""

    key: str  # stable id within the suite: the entry's index, plus ":<column>" when expanded
    type: str
    kwargs: dict[str, Any]
    severity: str
    notes: str | list[str] | None = None
    description: str | None = None

    @property
    def columns(self) -> list[str]:
        names = [self.kwargs[k] for k in _COLUMN_KWARGS if isinstance(self.kwargs.get(k), str)]
        return names + list(self.kwargs.get("column_list") or [])

    @property
    def row_count_terms(self) -> list[dict[str, Any]] | None:
        value = self.kwargs.get("value")
        return value["$row_count_of"] if isinstance(value, dict) and "$row_count_of" in value else None


@dataclass(frozen=True)
class Suite:
    name: str
    table: str
    path: Path
    description: str
    entries: tuple[SuiteEntry, ...]


def _domain_value(spec: dict[str, Any], where: str) -> Any:
    key, take = spec["$domain"], spec.get("take")
    values = domain()
    if key not in values:
        raise SuiteError(f"{where}: unknown $domain key {key!r}; schemas/domain.yaml has {sorted(values)}")
    value = values[key]
    if isinstance(value, Mapping):
        if take in (None, "keys"):
            return list(value)
        if take == "values":
            return sorted(set(value.values()))
        if take == "pairs":
            return [[k, v] for k, v in value.items()]
    elif take is None:
        return copy.deepcopy(value)
    raise SuiteError(
        f"{where}: cannot take {take!r} of domain key {key!r}; use keys, values or pairs of a mapping"
    )


def _resolve(value: Any, spec: TableSpec, where: str, column: Any = None) -> Any:
    """Resolve load-time placeholders inside a kwargs value (recursively)."""
    if isinstance(value, list):
        return [_resolve(v, spec, where, column) for v in value]
    if not isinstance(value, dict):
        return value
    if "$domain" in value:
        return _domain_value(value, where)
    if "$table" in value:
        if value["$table"] != "column_names":
            raise SuiteError(f'{where}: unknown $table value {value["$table"]!r}; use "column_names"')
        return spec.column_names
    if "$column" in value:
        if column is None:
            raise SuiteError(f"{where}: $column is only allowed in entries with for_each_column")
        attribute = value["$column"]
        if attribute == "name":
            return column.name
        if attribute == "spark_type":
            return type(spec.schema[column.name].dataType).__name__
        raise SuiteError(f"{where}: unknown $column value {attribute!r}; use name or spark_type")
    if "$row_count_of" in value:
        terms = value["$row_count_of"]
        if not isinstance(terms, list) or not terms:
            raise SuiteError(f"{where}: $row_count_of needs a non-empty list of terms")
        for term in terms:
            if not isinstance(term, dict) or "table" not in term or set(term) - _TERM_KEYS:
                raise SuiteError(
                    f"{where}: $row_count_of term {term!r} must be an object with "
                    f"'table' and optionally {sorted(_TERM_KEYS - {'table'})}"
                )
            table_spec(term["table"])  # fails early, naming the known tables
        return value
    unknown = [k for k in value if k.startswith("$")]
    if unknown:
        raise SuiteError(
            f"{where}: unknown placeholder {unknown[0]!r}; use $domain, $table, $column or $row_count_of"
        )
    return {k: _resolve(v, spec, where, column) for k, v in value.items()}


def _expand(raw: dict[str, Any], index: int, spec: TableSpec, where: str) -> list[SuiteEntry]:
    unknown = set(raw) - _ENTRY_KEYS
    if unknown or "type" not in raw:
        raise SuiteError(
            f"{where}: an expectation needs 'type' and may have {sorted(_ENTRY_KEYS - {'type'})}; "
            f"got {sorted(raw)}"
        )
    severity = raw.get("severity")
    if severity not in SEVERITIES:
        raise SuiteError(f"{where} ({raw['type']}): severity {severity!r} must be one of {list(SEVERITIES)}")
    kwargs = raw.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise SuiteError(f"{where} ({raw['type']}): kwargs must be an object")
    selector = raw.get("for_each_column")
    if selector is None:
        targets: list[Any] = [None]
    elif selector == "all":
        targets = list(spec.columns)
    elif selector == "required":
        targets = [c for c in spec.columns if not c.nullable]
    elif isinstance(selector, list):
        by_name = {c.name: c for c in spec.columns}
        missing = [n for n in selector if n not in by_name]
        if missing:
            raise SuiteError(f"{where}: for_each_column names {missing}, not columns of {spec.name}")
        targets = [by_name[n] for n in selector]
    else:
        raise SuiteError(f'{where}: for_each_column must be "all", "required" or a list of column names')
    entries = []
    for column in targets:
        entry = SuiteEntry(
            key=f"{index}:{column.name}" if column is not None else str(index),
            type=raw["type"],
            kwargs=_resolve(kwargs, spec, where, column),
            severity=severity,
            notes=raw.get("notes"),
            description=raw.get("description"),
        )
        unknown_columns = [c for c in entry.columns if c not in spec.column_names]
        if unknown_columns:
            raise SuiteError(
                f"{where} ({entry.type}): column(s) {unknown_columns} are not columns of table "
                f"{spec.name!r} ({', '.join(spec.column_names)})"
            )
        entries.append(entry)
    return entries


def suite_path(spec: TableSpec) -> Path:
    if not spec.expectations_file:
        raise SuiteError(
            f"table {spec.name!r} has no expectation suite; add `expectations: <file>.json` "
            f"to schemas/tables/{spec.name}.yaml and the file under {SCHEMAS_DIR / 'expectations'}"
        )
    return spec.expectations_file


def load_suite(table: str | TableSpec) -> Suite:
    """Read and check the suite of ``table``; SuiteError names the file and entry at fault."""
    spec = table_spec(table) if isinstance(table, str) else table
    path = suite_path(spec)
    if not path.is_file():
        raise SuiteError(
            f"expectation suite {path} (named by schemas/tables/{spec.name}.yaml) does not exist"
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SuiteError(f"expectation suite {path} is not valid JSON: {exc}") from None
    if (
        not isinstance(data, dict)
        or set(data) - _SUITE_KEYS
        or not isinstance(data.get("expectations"), list)
    ):
        raise SuiteError(
            f"expectation suite {path} must be an object with 'expectations' (a list) "
            f"and optionally 'table', 'description'"
        )
    if data.get("table", spec.name) != spec.name:
        raise SuiteError(
            f"expectation suite {path} is for table {data['table']!r}, "
            f"but schemas/tables/{spec.name}.yaml names it"
        )
    entries: list[SuiteEntry] = []
    for index, raw in enumerate(data["expectations"]):
        if not isinstance(raw, dict):
            raise SuiteError(f"{path.name} expectation #{index}: must be an object")
        entries.extend(_expand(raw, index, spec, f"{path.name} expectation #{index}"))
    return Suite(
        name=spec.name,
        table=spec.name,
        path=path,
        description=data.get("description", ""),
        entries=tuple(entries),
    )


def gx_suite(suite: Suite, row_counts: Mapping[str, int] | None = None) -> Any:
    """The GX ExpectationSuite of ``suite``; ``row_counts[key]`` fills each ``$row_count_of``."""
    import great_expectations as gx
    from great_expectations.expectations.expectation_configuration import (
        ExpectationConfiguration,
    )

    expectations = []
    for entry in suite.entries:
        kwargs = dict(entry.kwargs)
        if entry.row_count_terms is not None:
            if row_counts is None or entry.key not in row_counts:
                raise SuiteError(f"{suite.path.name} expectation {entry.key}: $row_count_of was not computed")
            kwargs["value"] = int(row_counts[entry.key])
        meta = {"severity": entry.severity, "tracelake_key": entry.key}
        try:
            expectation = ExpectationConfiguration(
                type=entry.type,
                kwargs=kwargs,
                meta=meta,
                notes=entry.notes,
                description=entry.description,
                severity=entry.severity,
            ).to_domain_obj()
        except Exception as exc:  # GX raises several types for unknown types / bad kwargs
            raise SuiteError(
                f"{suite.path.name} expectation {entry.key} ({entry.type}): "
                f"Great Expectations refuses it: {exc}"
            ) from None
        expectations.append(expectation)
    return gx.ExpectationSuite(
        name=suite.name, expectations=expectations, meta={"tracelake_suite_file": str(suite.path)}
    )


# --------------------------------------------------------------------------- reports


@dataclass
class Outcome:
    """How one expectation fared."""

    key: str
    type: str
    severity: str
    columns: list[str]
    success: bool
    element_count: int | None = None
    unexpected_count: int | None = None
    unexpected_percent: float | None = None
    observed: Any = None
    examples: list[Any] = field(default_factory=list)
    error: str | None = None
    # Days (ISO dates) this failure is traced to; every day of the range when it cannot be narrowed.
    partitions: list[str] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def column(self) -> str:
        return ",".join(self.columns) or "(table)"

    def line(self) -> str:
        parts = [f"{self.severity.upper():8}", self.type, f"column={self.column}"]
        if self.error:
            parts.append(f"could not run: {self.error}")
        if self.unexpected_count is not None:
            share = f" ({self.unexpected_percent:.3g}%)" if self.unexpected_percent is not None else ""
            total = f" of {self.element_count}" if self.element_count is not None else ""
            parts.append(f"unexpected={self.unexpected_count}{total}{share}")
            if "mostly" in self.kwargs:
                parts.append(f"mostly={self.kwargs['mostly']}")
        elif self.observed is not None:
            parts.append(f"observed={_short(self.observed)}")
            bounds = {
                k: self.kwargs[k]
                for k in ("value", "min_value", "max_value", "quantile_ranges", "type_")
                if k in self.kwargs
            }
            if bounds:
                parts.append(f"expected={_short(bounds)}")
        if self.examples:
            parts.append("e.g. " + ", ".join(_short(v, 60) for v in self.examples[:3]))
        if self.partitions:
            parts.append(f"days={_days_text(self.partitions)}")
        return "  ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return _plain(self.__dict__)


@dataclass
class ValidationReport:
    """The verdict of one suite over one date range of one table."""

    table: str
    suite: str
    run_id: str
    start: dt.date
    end: dt.date
    date_column: str | None
    outcomes: list[Outcome]
    row_count: int
    duration_s: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    results_path: str | None = None  # a local path or an object-store URI, beside the lake
    docs_path: str | None = None

    @property
    def critical_failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.success and o.severity == "critical"]

    @property
    def warnings(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.success and o.severity == "warning"]

    @property
    def passed(self) -> bool:
        return not self.critical_failures

    @property
    def days(self) -> list[dt.date]:
        return days_between(self.start, self.end)

    @property
    def failed_partitions(self) -> list[dt.date]:
        """Days the next step must not run on (critical failures only)."""
        failed = {p for o in self.critical_failures for p in o.partitions}
        return [d for d in self.days if d.isoformat() in failed]

    @property
    def passed_partitions(self) -> list[dt.date]:
        failed = set(self.failed_partitions)
        return [d for d in self.days if d not in failed]

    def passed_ranges(self) -> list[tuple[dt.date, dt.date]]:
        """The passed days as contiguous (start, end) ranges, ready for the next step's --start/--end-date."""
        ranges: list[tuple[dt.date, dt.date]] = []
        for day in self.passed_partitions:
            if ranges and ranges[-1][1] + dt.timedelta(days=1) == day:
                ranges[-1] = (ranges[-1][0], day)
            else:
                ranges.append((day, day))
        return ranges

    def summary_text(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        head = (
            f"validation of {self.table} {self.start}..{self.end} ({self.row_count} rows): {verdict} — "
            f"{len(self.outcomes)} expectations, {len(self.critical_failures)} critical failure(s), "
            f"{len(self.warnings)} warning(s)"
        )
        lines = [head]
        lines += ["  " + o.line() for o in self.critical_failures + self.warnings]
        if not self.passed:
            lines.append(
                f"failed days (next step must skip them): {_days_text([d.isoformat() for d in self.failed_partitions])}"
            )
        if self.results_path:
            lines.append(f"results: {self.results_path}")
        if self.docs_path:
            lines.append(f"data docs: {self.docs_path}")
        return "\n".join(lines)

    def failure_message(self) -> str:
        failures = "; ".join(f"{o.type} on {o.column}" for o in self.critical_failures)
        where = f" (details: {self.results_path})" if self.results_path else ""
        return (
            f"{self.table} {self.start}..{self.end} failed validation: {failures}; "
            f"fix the data or the step that wrote it, then rerun{where}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "suite": self.suite,
            "run_id": self.run_id,
            "start_date": self.start.isoformat(),
            "end_date": self.end.isoformat(),
            "date_column": self.date_column,
            "passed": self.passed,
            "row_count": self.row_count,
            "failed_partitions": [d.isoformat() for d in self.failed_partitions],
            "statistics": {
                "evaluated": len(self.outcomes),
                "critical_failures": len(self.critical_failures),
                "warnings": len(self.warnings),
            },
            "duration_s": self.duration_s,
            "timings_s": self.timings,
            "data_docs": str(self.docs_path) if self.docs_path else None,
            "outcomes": [o.to_dict() for o in self.outcomes],
        }


def require_valid(report: ValidationReport) -> ValidationReport:
    """Return ``report`` when it passed; raise ValidationFailed naming each critical failure otherwise."""
    if not report.passed:
        raise ValidationFailed(report)
    return report


# --------------------------------------------------------------------------- running


def validate_table(
    run: JobRun, table: str | TableSpec, start: dt.date | None = None, end: dt.date | None = None
) -> ValidationReport:
    """Validate the days [start, end] (default: the run's range) of ``table`` with its suite.

    ``table`` is a table name or a spec (e.g. ``named_table_spec("training_set", name=N)``).

    Reads the table's range, computes the reconciliation counts of the previous
    layer, runs the suite, writes results and Data Docs under the lake, logs
    every failure, and returns the report. It never raises on bad data: call
    :func:`require_valid` (or look at ``report.passed_ranges()``) to gate.
    """
    spec = table if isinstance(table, TableSpec) else table_spec(table)
    start, end = start or run.start, end or run.end
    if start is None or end is None:
        raise SuiteError(f"validating {table!r} needs a date range (--start-date/--end-date)")
    if spec.date_column is None:
        raise SuiteError(
            f"table {table!r} has neither partition_by nor owned_by_column; a range of it cannot be validated"
        )
    suite = load_suite(spec)
    run.record_input(spec)
    frame = read_range(run.spark, spec, run.lake_root, start, end)
    clock = time.perf_counter()
    reference = {
        entry.key: reference_counts(run, entry.row_count_terms, start, end)
        for entry in suite.entries
        if entry.row_count_terms is not None
    }
    out_dir = storage.join(run.lake_root, run.settings.validation.results_dir, spec.name, run.run_id)
    return validate_frame(
        frame,
        suite,
        date_column=spec.date_column,
        start=start,
        end=end,
        run_id=run.run_id,
        settings=run.settings.validation,
        log=run.log,
        reference_counts=reference,
        out_dir=out_dir,
        timings={"reference_counts_s": time.perf_counter() - clock},
    )


def reference_counts(
    run: JobRun, terms: Sequence[Mapping[str, Any]], start: dt.date, end: dt.date
) -> dict[str, int]:
    """Per-day expected row count: the signed sum of each term's per-day count over [start, end]."""
    from pyspark.sql import functions as F

    total: dict[str, int] = {}
    for term in terms:
        spec = table_spec(term["table"])
        sign = -1 if term.get("subtract") else 1
        if spec.format == "landing":
            if term.get("distinct") or term.get("where"):
                raise SuiteError(f"$row_count_of term {dict(term)}: landing files can only be counted whole")
            counts = landing_row_counts(run.spark, spec, run.lake_root, start, end)
        else:
            frame = read_range(run.spark, spec, run.lake_root, start, end)
            run.record_input(spec)
            if term.get("where"):
                frame = frame.where(F.expr(term["where"]))
            measure = F.countDistinct(term["distinct"]) if term.get("distinct") else F.count(F.lit(1))
            rows = frame.groupBy(F.col(spec.date_column).cast("string").alias("day")).agg(measure.alias("n"))
            counts = {r["day"]: int(r["n"]) for r in rows.collect()}
        for day, n in counts.items():
            total[day] = total.get(day, 0) + sign * n
    return total


_TEXT_SUFFIXES = (".csv", ".json", ".jsonl")


def landing_row_counts(
    spark: SparkSession, spec: TableSpec, lake_root: str, start: dt.date, end: dt.date
) -> dict[str, int]:
    """Records delivered per day in a landing table's ``<partition>=<day>/`` folders.

    Counted independently of ingest, as its reconciliation defines a landing
    row: every line of a text file (CSV, JSON lines, optionally gzipped) but a
    CSV file's header line, and every Parquet row. Hidden files (``_``, ``.``)
    are not data.
    """
    from pyspark.sql import functions as F

    root = spec.location(lake_root)
    text_files, parquet_files, headers = [], [], []
    for day in days_between(start, end):
        folder = f"{spec.partition_by}={day.isoformat()}"
        for name in storage.list_dir(storage.join(root, folder)):
            file = storage.join(root, folder, name)
            if name.startswith(("_", ".")) or not storage.is_file(file):
                continue
            plain = name.lower().removesuffix(".gz")
            if plain.endswith(".parquet"):
                parquet_files.append(file)
                continue
            text_files.append(file)
            if plain.endswith(".csv"):
                headers.append((f"{folder}/{name}", storage.first_line(file)))
    key = F.regexp_extract(F.col("_metadata.file_path"), r"([^/]+/[^/]+)$", 1).alias("file")
    day = F.regexp_extract(F.col("file"), rf"^{re.escape(spec.partition_by or '')}=([0-9-]+)/", 1)
    counts: dict[str, int] = {}
    frames = []
    if text_files:
        lines = spark.read.text(text_files).select("value", key)
        header_rows = spark.createDataFrame(headers or [("", "")], "file string, header string")
        lines = lines.join(F.broadcast(header_rows), "file", "left")
        frames.append(
            lines.where(F.col("header").isNull() | (F.col("value") != F.col("header"))).select("file")
        )
    if parquet_files:
        frames.append(spark.read.parquet(*parquet_files).select(key))
    for frame in frames:
        for row in frame.groupBy(day.alias("day")).count().collect():
            counts[row["day"]] = counts.get(row["day"], 0) + int(row["count"])
    return counts


def validate_frame(
    df: DataFrame,
    suite: Suite,
    *,
    date_column: str | None,
    start: dt.date,
    end: dt.date,
    run_id: str,
    settings: ValidationSettings,
    log: JobLogger,
    reference_counts: Mapping[str, Mapping[str, int]] | None = None,
    out_dir: str | None = None,
    timings: Mapping[str, float] | None = None,
) -> ValidationReport:
    """Run ``suite`` on ``df`` (the rows of [start, end]) and build the report.

    The frame is persisted for the many Spark jobs GX runs and unpersisted
    after. ``reference_counts[entry.key]`` holds the per-day expected counts of
    each ``$row_count_of`` entry. With ``out_dir``, results.json and Data Docs
    are written there. ``timings`` (seconds by phase) are carried into the report.
    """
    from pyspark import StorageLevel

    started = time.perf_counter()
    timings = dict(timings or {})
    reference_counts = reference_counts or {}
    row_counts = {key: sum(per_day.values()) for key, per_day in reference_counts.items()}
    expectations = gx_suite(suite, row_counts)
    all_days = [d.isoformat() for d in days_between(start, end)]
    # GX renders Data Docs into a local folder: the lake's own when it is local, else a temporary
    # one that is uploaded beside the results.
    docs_dir = (
        None
        if out_dir is None
        else (
            storage.local_path(storage.join(out_dir, "data_docs"))
            if storage.is_local(out_dir)
            else Path(tempfile.mkdtemp(prefix="tracelake-docs-"))
        )
    )
    frame = df.persist(getattr(StorageLevel, settings.storage_level))
    try:
        with log.step("validate", table=suite.table, expectations=len(suite.entries)) as step:
            clock = time.perf_counter()
            row_count = frame.count()  # reads the range once and fills the cache for GX's jobs
            timings["read_and_cache_s"] = time.perf_counter() - clock
            clock = time.perf_counter()
            context, batch = _gx_batch(frame, suite.name, docs_dir)
            suite_result = _run_suite(batch, expectations, settings.examples)
            timings["great_expectations_s"] = time.perf_counter() - clock
            clock = time.perf_counter()
            entries = {e.key: e for e in suite.entries}
            order = {e.key: i for i, e in enumerate(suite.entries)}
            graded = [(entries[r.expectation_config.meta["tracelake_key"]], r) for r in suite_result.results]
            graded.sort(key=lambda pair: order[pair[0].key])  # GX regroups results by column
            outcomes = [_outcome(entry, result, settings.examples) for entry, result in graded]
            _trace_failures(
                frame,
                [(e, r, o) for (e, r), o in zip(graded, outcomes, strict=False) if not o.success],
                date_column,
                all_days,
                reference_counts,
                settings.examples,
            )
            timings["trace_failures_s"] = time.perf_counter() - clock
            step.update(rows=row_count, failed=sum(not o.success for o in outcomes))
    finally:
        frame.unpersist()
    report = ValidationReport(
        table=suite.table,
        suite=suite.name,
        run_id=run_id,
        start=start,
        end=end,
        date_column=date_column,
        outcomes=outcomes,
        row_count=row_count,
    )
    if out_dir is not None:
        clock = time.perf_counter()
        index = _write_data_docs(context, batch, expectations, suite_result, run_id)
        if index is not None and docs_dir is not None and not storage.is_local(out_dir):
            storage.upload(docs_dir, storage.join(out_dir, "data_docs"))
            shutil.rmtree(docs_dir, ignore_errors=True)
            index = storage.join(out_dir, "data_docs", index.relative_to(docs_dir).as_posix())
        report.docs_path = str(index) if index is not None else None
        report.results_path = storage.join(out_dir, "results.json")
        timings["data_docs_s"] = time.perf_counter() - clock
    report.duration_s = round(time.perf_counter() - started + timings.get("reference_counts_s", 0.0), 3)
    report.timings = {k: round(v, 3) for k, v in timings.items()}
    if report.results_path is not None:
        _write_json(report.results_path, {**report.to_dict(), "gx_result": suite_result.to_json_dict()})
    _log_report(report, log)
    return report


# --------------------------------------------------------------------------- internals


def _gx_batch(frame: DataFrame, name: str, docs_dir: Path | None) -> tuple[Any, Any]:
    """An ephemeral GX context (Data Docs site at ``docs_dir``) and the batch of ``frame``."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    sites = {}
    if docs_dir is not None:
        sites["lake"] = {
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        data_docs_sites=sites,
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    context = gx.get_context(mode="ephemeral", project_config=config)
    # persist=False: the caller caches the frame (and unpersists it); GX would cache and never release it.
    asset = context.data_sources.add_spark(name="lake", persist=False).add_dataframe_asset(name=name)
    batch = asset.add_batch_definition_whole_dataframe("range").get_batch(
        batch_parameters={"dataframe": frame}
    )
    return context, batch


def _run_suite(batch: Any, expectations: Any, examples: int) -> Any:
    """Validate in two passes: counts for every expectation, then examples for the failed row-level ones.

    Asking GX for unexpected examples costs one extra Spark job per row-level
    expectation, even when it passes; the first pass asks for none, so a
    passing suite runs about half the jobs.
    """
    import great_expectations as gx

    result_format = {
        "result_format": "SUMMARY",
        "partial_unexpected_count": 0,
        "return_unexpected_index_query": True,
    }
    suite_result = batch.validate(expectations, result_format=result_format)
    failed = {
        r.expectation_config.meta["tracelake_key"]: i
        for i, r in enumerate(suite_result.results)
        if not r.success and (r.result or {}).get("unexpected_count")
    }
    if failed and examples:
        again = gx.ExpectationSuite(
            name=expectations.name,
            expectations=[e for e in expectations.expectations if e.meta["tracelake_key"] in failed],
        )
        detailed = batch.validate(
            again, result_format={**result_format, "partial_unexpected_count": examples}
        )
        for result in detailed.results:
            suite_result.results[failed[result.expectation_config.meta["tracelake_key"]]] = result
    _to_builtin_results(suite_result)
    return suite_result


def _write_data_docs(
    context: Any, batch: Any, expectations: Any, suite_result: Any, run_id: str
) -> Path | None:
    """Store the result in the context and render the Data Docs site; returns its index.html."""
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    if not context.get_config().data_docs_sites:
        return None
    context.suites.add(expectations)
    run = RunIdentifier(run_name=run_id, run_time=dt.datetime.now(dt.UTC))
    suite_result.meta["run_id"] = run
    suite_result.meta["validation_time"] = run.run_time
    key = ValidationResultIdentifier(ExpectationSuiteIdentifier(name=expectations.name), run, batch.id)
    context.validation_results_store.set(key, suite_result)
    sites = context.build_data_docs()
    url = next(iter(sites.values()), None)
    return Path(url.removeprefix("file://")) if url else None


def _outcome(entry: SuiteEntry, result: Any, examples: int) -> Outcome:
    details = result.result or {}
    error = None
    if not result.success and not details and result.exception_info:
        infos = (
            result.exception_info.values()
            if "raised_exception" not in result.exception_info
            else [result.exception_info]
        )
        messages = [str(i.get("exception_message")) for i in infos if i.get("exception_message")]
        error = (messages[0] if messages else "metric could not be computed")[:300]
    observed = details.get("observed_value")
    unexpected = details.get("unexpected_count")
    if entry.type == "unexpected_rows_expectation":
        observed, unexpected = None, observed  # its observed value is the number of unexpected rows
    mismatched = (details.get("details") or {}).get("mismatched")
    if mismatched:  # expect_table_columns_to_match_set: what is missing or extra says more than the full list
        observed = {"mismatched": mismatched}
    return Outcome(
        key=entry.key,
        type=entry.type,
        severity=entry.severity,
        columns=entry.columns,
        success=bool(result.success),
        element_count=details.get("element_count"),
        unexpected_count=unexpected,
        unexpected_percent=details.get("unexpected_percent"),
        observed=observed,
        examples=list(details.get("partial_unexpected_list") or [])[:examples],
        error=error,
        # As GX ran it: placeholders such as $row_count_of resolved.
        kwargs={k: v for k, v in result.expectation_config.kwargs.items() if k != "batch_id"},
    )


# Row conditions GX renders in a form F.expr cannot parse (window functions).
_ROW_CONDITIONS = {
    "expect_column_values_to_be_unique": lambda kw: (
        f"`{kw['column']}` IS NOT NULL AND count(1) OVER (PARTITION BY `{kw['column']}`) > 1"
    ),
    "expect_compound_columns_to_be_unique": lambda kw: "count(1) OVER (PARTITION BY {}) > 1".format(
        ", ".join(f"`{c}`" for c in kw["column_list"])
    ),
}
_QUERY = re.compile(r"^df\.filter\(F\.expr\((?P<literal>.*)\)\)$", re.S)


def _unexpected_flag(frame: DataFrame, entry: SuiteEntry, result: Any) -> Any:
    """A boolean Column marking the unexpected rows of a row-level expectation, or None."""
    from pyspark.sql import functions as F
    from pyspark.sql.utils import AnalysisException, ParseException

    candidates = []
    if entry.type in _ROW_CONDITIONS:
        candidates.append(_ROW_CONDITIONS[entry.type](entry.kwargs))
    match = _QUERY.match(str((result.result or {}).get("unexpected_index_query") or ""))
    if match:
        with contextlib.suppress(ValueError, SyntaxError):
            candidates.append(ast.literal_eval(match.group("literal")))
    for condition in candidates:
        try:
            flag = F.expr(condition)
            _ = frame.select(flag).schema  # analysis only: proves Spark can evaluate it
            return flag
        except (AnalysisException, ParseException):
            continue
    return None


def _trace_failures(
    frame: DataFrame,
    failed: Sequence[tuple[SuiteEntry, Any, Outcome]],
    date_column: str | None,
    all_days: list[str],
    reference_counts: Mapping[str, Mapping[str, int]],
    examples: int,
) -> None:
    """Set each failed outcome's ``partitions``: the days holding its unexpected rows.

    Row-level failures are narrowed in one Spark job (per day: rows, and each
    check's unexpected and counted rows, judged against its ``mostly``);
    ``$row_count_of`` checks compare rows per day with the reference; an
    unexpected-rows query is run once more for its days and examples.
    Aggregates (means, quantiles, schema) and checks that could not run fail
    every day of the range.
    """
    from pyspark.sql import functions as F

    day = F.col(date_column).cast("string").alias("day") if date_column else None
    measures = [F.count(F.lit(1)).alias("_rows")]
    judged: list[tuple[int, Outcome, float]] = []
    reconciled: list[Outcome] = []
    flagged = frame
    for i, (entry, result, outcome) in enumerate(failed):
        outcome.partitions = all_days
        if day is None or outcome.error:
            continue
        if entry.key in reference_counts:
            reconciled.append(outcome)
        elif entry.type == "unexpected_rows_expectation":
            outcome.partitions = _query_days(frame, entry, date_column, examples, outcome) or all_days
        elif outcome.unexpected_count is not None and "row_condition" not in entry.kwargs:
            flag = _unexpected_flag(frame, entry, result)
            if flag is None:
                continue
            column = entry.kwargs.get("column") if "missing_count" in (result.result or {}) else None
            flagged = flagged.withColumn(f"_unexpected_{i}", flag)
            measures += [
                F.sum(F.col(f"_unexpected_{i}").cast("int")).alias(f"_unexpected_{i}"),
                F.count(F.col(column) if column else F.lit(1)).alias(f"_counted_{i}"),
            ]
            judged.append((i, outcome, float(entry.kwargs.get("mostly", 1.0))))
    if not judged and not reconciled:
        return
    per_day = {r["day"]: r for r in flagged.groupBy(day).agg(*measures).collect()}
    for i, outcome, mostly in judged:
        bad = [
            d
            for d in all_days
            if d in per_day
            and per_day[d][f"_unexpected_{i}"]
            and 1 - per_day[d][f"_unexpected_{i}"] / per_day[d][f"_counted_{i}"] < mostly
        ]
        outcome.partitions = bad or all_days
    for outcome in reconciled:
        expected = reference_counts[outcome.key]
        rows = {d: per_day[d]["_rows"] if d in per_day else 0 for d in all_days}
        bad = [d for d in all_days if rows[d] != expected.get(d, 0)]
        outcome.observed = {
            "rows": outcome.observed,
            "by_day": {d: {"rows": rows[d], "expected": expected.get(d, 0)} for d in bad},
        }
        outcome.partitions = bad or all_days


def _query_days(
    frame: DataFrame, entry: SuiteEntry, date_column: str, examples: int, outcome: Outcome
) -> list[str]:
    """Days (and example rows) of an unexpected_rows_expectation's query; [] when it has no date column."""
    from pyspark.sql import functions as F

    view = f"tracelake_validation_{uuid.uuid4().hex[:12]}"
    frame.createOrReplaceTempView(view)
    try:
        rows = frame.sparkSession.sql(entry.kwargs["unexpected_rows_query"].format(batch=view))
        if date_column not in rows.columns:
            return []
        outcome.examples = [_plain(r.asDict()) for r in rows.limit(examples).collect()]
        return sorted(
            {
                r["day"]
                for r in rows.select(F.col(date_column).cast("string").alias("day")).distinct().collect()
            }
        )
    finally:
        frame.sparkSession.catalog.dropTempView(view)


def _plain(value: Any) -> Any:
    """JSON-ready builtins (GX leaks numpy scalars; Spark gives dates, Rows)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        return _plain(value.item())
    if hasattr(value, "asDict"):
        return _plain(value.asDict())
    return str(value)


def _to_builtin_results(suite_result: Any) -> None:
    """Replace numpy scalars GX leaves in results (its own JSON store chokes on np.bool_)."""
    for result in suite_result.results:
        result.success = bool(result.success)
        if result.result:
            result.result = _plain(result.result)


def _short(value: Any, width: int = 80) -> str:
    text = json.dumps(_plain(value), default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _days_text(days: Sequence[str]) -> str:
    return ", ".join(days) if len(days) <= 6 else f"{days[0]}..{days[-1]} ({len(days)} days)"


def _write_json(uri: str, payload: Mapping[str, Any]) -> None:
    storage.write_text(uri, json.dumps(_plain(payload), indent=2, default=str))


def _log_report(report: ValidationReport, log: JobLogger) -> None:
    for outcome in report.critical_failures + report.warnings:
        fields = {
            "table": report.table,
            "expectation": outcome.type,
            "column": outcome.column,
            "severity": outcome.severity,
            "unexpected_count": outcome.unexpected_count,
            "observed": _short(outcome.observed) if outcome.observed is not None else None,
            "examples": [_short(v, 40) for v in outcome.examples],
            "days": outcome.partitions,
            "error": outcome.error,
        }
        log.warning(
            f"{outcome.severity} expectation failed: {outcome.type} on {outcome.column}", extra=fields
        )
    log.event(
        f"validation {'passed' if report.passed else 'failed'}: {report.table}",
        table=report.table,
        passed=report.passed,
        rows=report.row_count,
        critical_failures=len(report.critical_failures),
        warnings=len(report.warnings),
        failed_partitions=[d.isoformat() for d in report.failed_partitions],
        duration_s=report.duration_s,
        timings_s=report.timings,
        results=str(report.results_path) if report.results_path else None,
        data_docs=str(report.docs_path) if report.docs_path else None,
    )
