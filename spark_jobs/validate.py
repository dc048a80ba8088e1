"""Validate a table's partitions with its Great Expectations suite.

    spark-submit spark_jobs/validate.py --table silver_scan_events --start-date 2025-07-01 --end-date 2025-07-07
    tracelake validate --table silver_scan_events --start-date 2025-07-01

Reads the days of the range, runs ``schemas/expectations/<table>.json``, writes
``results.json`` and Data Docs under ``<lake>/_validation/<table>/<run_id>/``,
prints a short summary, and exits 1 when a critical expectation failed (the
summary names the failed days); warnings are logged and exit 0.
"""

from __future__ import annotations

import argparse
import sys

from tracelake.arguments import parse
from tracelake.runs import job_run, run_entrypoint
from tracelake.tables import TableError, TableSpec, named_table_spec, table_spec
from tracelake.validation import validate_table


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return parse("validate", argv)


def table_to_validate(table: str, name: str | None) -> TableSpec:
    """The spec of ``--table`` (with ``--name`` for a family such as training_set)."""
    if name is not None:
        return named_table_spec(table, name=name)
    spec = table_spec(table)
    if "{" in spec.path:
        raise TableError(f"table {table!r} is a family of tables ({spec.path}); pass --name to pick one")
    return spec


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    spec = table_to_validate(args.table, args.name)  # an unknown table fails before Spark starts
    with job_run("validate", args) as run:
        report = validate_table(run, spec)
    print(report.summary_text())
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(run_entrypoint(main))
