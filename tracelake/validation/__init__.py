"""Validation gates: expectation suites run with Great Expectations on Spark.

- :mod:`~tracelake.validation.suites`: the suite language (``schemas/expectations/<table>.json``);
- :mod:`~tracelake.validation.report`: the report model (outcomes, verdict per day);
- :mod:`~tracelake.validation.runner`: validating a table's range (read, reconcile, trace, write results);
- :mod:`~tracelake.validation.gx`: the Great Expectations adapter.

Importing this package imports neither Spark nor Great Expectations.
"""

from tracelake.validation.gx import gx_suite
from tracelake.validation.report import Outcome, ValidationFailed, ValidationReport, require_valid
from tracelake.validation.runner import reference_counts, validate_frame, validate_table
from tracelake.validation.suites import (
    SEVERITIES,
    RowCountTerm,
    Suite,
    SuiteEntry,
    SuiteError,
    load_suite,
    suite_path,
)

__all__ = [
    "SEVERITIES",
    "Outcome",
    "RowCountTerm",
    "Suite",
    "SuiteEntry",
    "SuiteError",
    "ValidationFailed",
    "ValidationReport",
    "gx_suite",
    "load_suite",
    "reference_counts",
    "require_valid",
    "suite_path",
    "validate_frame",
    "validate_table",
]
