"""The scaffold of a job over a range of days: read the input's days, require each one, write, record.

Jobs that turn one table's days into another's repeat the same edges: read the
input at the Delta version recorded for lineage, limited to the days needed;
fail with one error naming every day of the range that has no rows (an empty
day would silently replace its output partitions with nothing); write the
output in one commit and record what the commit wrote. These helpers are those
edges; the transforms in between stay the job's own.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tracelake.dates import days_between
from tracelake.errors import TracelakeError
from tracelake.tables import TableError, TableSpec, read_table, rows_written, write_table

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from tracelake.runs import JobRun

# Missing days named in an error before it says "...".
_NAMED_DAYS = 10


class MissingDaysError(TracelakeError, ValueError):
    """Days of a job's range have no rows in the table the job reads."""


@dataclass(frozen=True)
class WrittenTable:
    """What one write committed: the rows Delta recorded and the new table version."""

    rows: int
    version: int

    def as_dict(self) -> dict[str, int]:
        return {"rows": self.rows, "version": self.version}


def _date_column(spec: TableSpec) -> str:
    column = spec.date_column
    if column is None:
        raise TableError(f"table {spec.name!r} has no date column to select days on")
    return column


def read_days(run: JobRun, spec: TableSpec, first: dt.date, last: dt.date) -> DataFrame:
    """The table's rows dated ``first``..``last``, read at its current version, recorded as the run's input."""
    from pyspark.sql import functions as F

    run.record_input(spec)
    frame = read_table(run.spark, spec, run.lake_root, version=run.inputs[spec.name])
    return frame.where(F.col(_date_column(spec)).between(F.lit(first), F.lit(last)))


def days_in_log(
    spec: TableSpec, lake_root: str, version: int, first: dt.date, last: dt.date
) -> set[dt.date] | None:
    """The days of ``first``..``last`` with rows in ``spec`` at ``version``, from the Delta log alone.

    A table partitioned by its date column lists its days in the log: every
    data file carries its partition value and record count, so no data is
    read. None when the table is not partitioned that way or delta-rs cannot
    read its log (a feature it lacks): the caller then asks Spark.
    """
    if spec.partition_by is None or spec.partition_by != spec.date_column:
        return None
    from deltalake import DeltaTable

    from tracelake import storage

    location = spec.location(lake_root)
    options = None if storage.is_local(location) else storage.delta_rs_options()
    try:
        actions = DeltaTable(storage.arrow_uri(location), version=version, storage_options=options)
        files = actions.get_add_actions(flatten=True)
    except Exception:  # delta-rs lags Delta's protocol; Spark's scan gives the same answer
        return None
    import pyarrow as pa

    table = pa.table(files)
    days = table.column(f"partition.{spec.partition_by}").to_pylist()
    records = table.column("num_records").to_pylist()
    # A file without stats (num_records null) counts as rows: Delta never writes a partition without one.
    return {day for day, n in zip(days, records, strict=True) if first <= day <= last and n != 0}


def missing_days(frame: DataFrame, column: str, first: dt.date, last: dt.date) -> list[dt.date]:
    """The days of ``first``..``last`` on which ``frame`` has no row (one distinct-days query)."""
    from pyspark.sql import functions as F

    present = {
        row[0]
        for row in frame.where(F.col(column).between(F.lit(first), F.lit(last)))
        .select(column)
        .distinct()
        .collect()
    }
    return [day for day in days_between(first, last) if day not in present]


def missing_days_message(table: str, missing: Sequence[dt.date], *, what: str = "rows") -> str:
    """``<table> has no <what> on d1, d2 ... (n day(s) of the range)``: the first days named, all counted."""
    named = ", ".join(day.isoformat() for day in missing[:_NAMED_DAYS])
    more = " ..." if len(missing) > _NAMED_DAYS else ""
    return f"{table} has no {what} on {named}{more} ({len(missing)} day(s) of the range)"


def require_days(
    run: JobRun,
    frame: DataFrame,
    spec: TableSpec,
    first: dt.date,
    last: dt.date,
    *,
    hint: str,
    what: str = "rows",
    allow_missing: bool = False,
) -> list[dt.date]:
    """Fail with :class:`MissingDaysError` naming the days of ``first``..``last`` without rows in ``frame``
    (read from ``spec``); ``hint`` says how to fix it. With ``allow_missing`` the days are returned instead.

    The days come from the Delta log of the version the run recorded for ``spec`` (:func:`read_days`), so
    checking a month of events reads no data; a frame of any other origin is scanned once.
    """
    version = run.inputs.get(spec.name)
    present = None if version is None else days_in_log(spec, run.lake_root, version, first, last)
    if present is None:
        missing = missing_days(frame, _date_column(spec), first, last)
    else:
        missing = [day for day in days_between(first, last) if day not in present]
    if missing and not allow_missing:
        raise MissingDaysError(f"{missing_days_message(spec.name, missing, what=what)}; {hint}")
    return missing


def write_range(
    run: JobRun,
    frame: DataFrame,
    spec: TableSpec,
    *,
    start: dt.date | None,
    end: dt.date | None,
    metadata: dict[str, Any],
    output: str | None = None,
    record: bool = True,
    **step_fields: Any,
) -> WrittenTable:
    """Write ``frame`` replacing the days ``start``..``end`` of ``spec`` (the whole table without them), in a
    logged step; then record the rows Delta counted and the version as the run's output ``output``
    (default: the table's name). ``record=False`` leaves recording to the caller (to add fields)."""
    name = output or spec.name
    with run.log.step(f"write {name}", **step_fields) as result:
        version = write_table(frame, spec, run.lake_root, start=start, end=end, metadata=metadata)
        written = WrittenTable(rows=rows_written(run.spark, spec, run.lake_root), version=version)
        result.update(written.as_dict())
    if record:
        run.record_output(name, **written.as_dict())
    return written
