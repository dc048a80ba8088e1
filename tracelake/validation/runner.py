"""Running a suite over a date range of a table: read, reconcile, validate, trace failures to days, report.

GX validates the cached frame once (:mod:`tracelake.validation.gx`); failed
row-level expectations are traced back to the partitions (days) holding the
unexpected rows, so the pipeline can hold back exactly those days; aggregate
checks (means, quantiles, schema) fail the whole range. Each run writes
``results.json`` and GX Data Docs under
``<lake>/<validation.results_dir>/<table>/<run_id>/``.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tracelake import storage
from tracelake.dates import days_between
from tracelake.tables import TableSpec, read_range, table_spec
from tracelake.validation import gx
from tracelake.validation.report import Outcome, ValidationReport, plain, short
from tracelake.validation.suites import RowCountTerm, Suite, SuiteError, load_suite

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

    from tracelake.config import ValidationSettings
    from tracelake.logs import JobLogger
    from tracelake.runs import JobRun


def validate_table(
    run: JobRun, table: str | TableSpec, start: dt.date | None = None, end: dt.date | None = None
) -> ValidationReport:
    """Validate the days [start, end] (default: the run's range) of ``table`` with its suite.

    ``table`` is a table name or a spec (e.g. ``named_table_spec("training_set", name=N)``).

    Reads the table's range, computes the reconciliation counts of the previous
    layer, runs the suite, writes results and Data Docs under the lake, logs
    every failure, and returns the report. It never raises on bad data: call
    :func:`~tracelake.validation.report.require_valid` (or look at
    ``report.passed_ranges()``) to gate.
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
        entry.key: reference_counts(run, terms, start, end)
        for entry in suite.entries
        if (terms := entry.row_count_terms) is not None
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
    run: JobRun, terms: Sequence[RowCountTerm], start: dt.date, end: dt.date
) -> dict[str, int]:
    """Per-day expected row count: the signed sum of each term's per-day count over [start, end].

    A landing table's rows are counted as ingest reads them (:mod:`tracelake.landing`).
    """
    from pyspark.sql import functions as F

    from tracelake import landing

    total: dict[str, int] = {}
    for term in terms:
        spec = table_spec(term.table)
        sign = -1 if term.subtract else 1
        if spec.format == "landing":
            if term.distinct or term.where:
                raise SuiteError(f"$row_count_of term {term}: landing files can only be counted whole")
            files = landing.inventory(run.spark, spec, run.lake_root, days_between(start, end), run.log)
            per_day = landing.rows_per_day(run.spark, files, spec, run.settings.ingest.csv_max_record_lines)
            counts = {day.isoformat(): n for day, n in per_day.items()}
        else:
            frame = read_range(run.spark, spec, run.lake_root, start, end)
            run.record_input(spec)
            if term.where:
                frame = frame.where(F.expr(term.where))
            measure = F.countDistinct(term.distinct) if term.distinct else F.count(F.lit(1))
            rows = frame.groupBy(F.col(str(spec.date_column)).cast("string").alias("day")).agg(
                measure.alias("n")
            )
            counts = {r["day"]: int(r["n"]) for r in rows.collect()}
        for day, n in counts.items():
            total[day] = total.get(day, 0) + sign * n
    return total


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
    phases = dict(timings or {})
    reference = reference_counts or {}
    row_counts = {key: sum(per_day.values()) for key, per_day in reference.items()}
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
    expectations = gx.gx_suite(suite, row_counts)  # a suite GX refuses fails before the range is read
    frame = df.persist(getattr(StorageLevel, settings.storage_level))
    try:
        with log.step("validate", table=suite.table, expectations=len(suite.entries)) as step:
            clock = time.perf_counter()
            row_count = frame.count()  # reads the range once and fills the cache for GX's jobs
            phases["read_and_cache_s"] = time.perf_counter() - clock
            clock = time.perf_counter()
            validation = gx.validate(frame, expectations, settings.examples, docs_dir)
            phases["great_expectations_s"] = time.perf_counter() - clock
            clock = time.perf_counter()
            graded = validation.graded(suite, settings.examples)
            _trace_failures(
                frame,
                [g for g in graded if not g.outcome.success],
                date_column,
                all_days,
                reference,
                settings.examples,
            )
            phases["trace_failures_s"] = time.perf_counter() - clock
            step.update(rows=row_count, failed=sum(not g.outcome.success for g in graded))
    finally:
        frame.unpersist()
    report = ValidationReport(
        table=suite.table,
        suite=suite.name,
        run_id=run_id,
        start=start,
        end=end,
        date_column=date_column,
        outcomes=[g.outcome for g in graded],
        row_count=row_count,
    )
    if out_dir is not None:
        clock = time.perf_counter()
        index = validation.write_data_docs(run_id)
        report.docs_path = str(index) if index is not None else None
        if index is not None and docs_dir is not None and not storage.is_local(out_dir):
            storage.upload(docs_dir, storage.join(out_dir, "data_docs"))
            shutil.rmtree(docs_dir, ignore_errors=True)
            report.docs_path = storage.join(out_dir, "data_docs", index.relative_to(docs_dir).as_posix())
        report.results_path = storage.join(out_dir, "results.json")
        phases["data_docs_s"] = time.perf_counter() - clock
    report.duration_s = round(time.perf_counter() - started + phases.get("reference_counts_s", 0.0), 3)
    report.timings = {k: round(v, 3) for k, v in phases.items()}
    if report.results_path is not None:
        _write_json(report.results_path, {**report.to_dict(), "gx_result": validation.to_json()})
    _log_report(report, log)
    return report


# --------------------------------------------------------------------------- tracing failures to days


def _unexpected_flag(frame: DataFrame, graded: gx.Graded) -> Column | None:
    """A boolean Column marking the unexpected rows of a row-level expectation, or None."""
    from pyspark.errors import AnalysisException, ParseException
    from pyspark.sql import functions as F

    for condition in graded.unexpected_conditions:
        try:
            flag = F.expr(condition)
            _ = frame.select(flag).schema  # analysis only: proves Spark can evaluate it
            return flag
        except (AnalysisException, ParseException):
            continue
    return None


def _trace_failures(
    frame: DataFrame,
    failed: Sequence[gx.Graded],
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
    for i, graded in enumerate(failed):
        entry, outcome = graded.entry, graded.outcome
        outcome.partitions = all_days
        if day is None or date_column is None or outcome.error:
            continue
        if entry.key in reference_counts:
            reconciled.append(outcome)
        elif entry.type == "unexpected_rows_expectation":
            outcome.partitions = _query_days(frame, entry.kwargs, date_column, examples, outcome) or all_days
        elif outcome.unexpected_count is not None and "row_condition" not in entry.kwargs:
            flag = _unexpected_flag(frame, graded)
            if flag is None:
                continue
            column = entry.kwargs.get("column") if graded.counts_non_null else None
            flagged = flagged.withColumn(f"_unexpected_{i}", flag)
            measures += [
                F.sum(F.col(f"_unexpected_{i}").cast("int")).alias(f"_unexpected_{i}"),
                F.count(F.col(column) if column else F.lit(1)).alias(f"_counted_{i}"),
            ]
            judged.append((i, outcome, float(entry.kwargs.get("mostly", 1.0))))
    if day is None or (not judged and not reconciled):
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
    frame: DataFrame, kwargs: Mapping[str, Any], date_column: str, examples: int, outcome: Outcome
) -> list[str]:
    """Days (and example rows) of an unexpected_rows_expectation's query; [] when it has no date column."""
    from pyspark.sql import functions as F

    view = f"tracelake_validation_{uuid.uuid4().hex[:12]}"
    frame.createOrReplaceTempView(view)
    try:
        rows = frame.sparkSession.sql(kwargs["unexpected_rows_query"].format(batch=view))
        if date_column not in rows.columns:
            return []
        outcome.examples = [plain(r.asDict()) for r in rows.limit(examples).collect()]
        return sorted(
            {
                r["day"]
                for r in rows.select(F.col(date_column).cast("string").alias("day")).distinct().collect()
            }
        )
    finally:
        frame.sparkSession.catalog.dropTempView(view)


# --------------------------------------------------------------------------- results and logs


def _write_json(uri: str, payload: Mapping[str, Any]) -> None:
    storage.write_text(uri, json.dumps(plain(payload), indent=2, default=str))


def _log_report(report: ValidationReport, log: JobLogger) -> None:
    for outcome in report.critical_failures + report.warnings:
        fields = {
            "table": report.table,
            "expectation": outcome.type,
            "column": outcome.column,
            "severity": outcome.severity,
            "unexpected_count": outcome.unexpected_count,
            "observed": short(outcome.observed) if outcome.observed is not None else None,
            "examples": [short(v, 40) for v in outcome.examples],
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
