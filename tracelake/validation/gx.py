"""The Great Expectations (GX 1.x) adapter: the one module that imports great_expectations.

A :class:`~tracelake.validation.suites.Suite` becomes a GX ExpectationSuite
(severity in each expectation's ``meta`` and GX's own ``severity`` field;
``$row_count_of`` filled with the computed count); :func:`validate` runs it on
a cached Spark frame in an ephemeral context and grades each result into a
:class:`~tracelake.validation.report.Outcome`, with what the runner needs to
trace a row-level failure to its days (:class:`Graded`). GX's Data Docs are
rendered on request. great_expectations is imported inside the functions: it
is slow to import, and nothing needs it before a suite runs.
"""

from __future__ import annotations

import ast
import contextlib
import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tracelake.validation.report import Outcome, plain
from tracelake.validation.suites import Suite, SuiteEntry, SuiteError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame


@dataclass(frozen=True)
class Graded:
    """One expectation as GX ran it: its outcome, and what tracing its unexpected rows to days needs."""

    entry: SuiteEntry
    outcome: Outcome
    # SQL conditions that may mark the unexpected rows (the first Spark can evaluate is used).
    unexpected_conditions: tuple[str, ...]
    # GX counted only the non-null values of the column (element_count excludes nulls).
    counts_non_null: bool


class GxValidation:
    """One suite validated on one frame, holding the GX objects that Data Docs are rendered from."""

    def __init__(self, context: Any, batch: Any, expectations: Any, result: Any) -> None:
        self._context, self._batch, self._expectations, self._result = context, batch, expectations, result

    def graded(self, suite: Suite, examples: int) -> list[Graded]:
        """Each result graded, in the suite's order (GX regroups results by column)."""
        entries = {e.key: e for e in suite.entries}
        order = {e.key: i for i, e in enumerate(suite.entries)}
        results = sorted(
            ((entries[r.expectation_config.meta["tracelake_key"]], r) for r in self._result.results),
            key=lambda pair: order[pair[0].key],
        )
        return [
            Graded(
                entry,
                _outcome(entry, result, examples),
                _unexpected_conditions(entry, result),
                "missing_count" in (result.result or {}),
            )
            for entry, result in results
        ]

    def to_json(self) -> dict[str, Any]:
        """GX's own result document (kept in results.json beside the report)."""
        return dict(self._result.to_json_dict())

    def write_data_docs(self, run_id: str) -> Path | None:
        """Render the Data Docs site (when the context has one); returns its index.html."""
        return _write_data_docs(self._context, self._batch, self._expectations, self._result, run_id)


def validate(frame: DataFrame, expectations: Any, examples: int, docs_dir: Path | None) -> GxValidation:
    """Run ``expectations`` (of :func:`gx_suite`) on ``frame``, which the caller caches.

    Data Docs, if written later, go to ``docs_dir``.
    """
    context, batch = _gx_batch(frame, expectations.name, docs_dir)
    return GxValidation(context, batch, expectations, _run_suite(batch, expectations, examples))


def gx_suite(suite: Suite, row_counts: Mapping[str, int] | None = None) -> Any:
    """The GX ExpectationSuite of ``suite``; ``row_counts[key]`` fills each ``$row_count_of``."""
    import great_expectations as gx
    from great_expectations.expectations.expectation_configuration import (
        ExpectationConfiguration,
    )
    from great_expectations.expectations.metadata_types import FailureSeverity

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
                severity=FailureSeverity(entry.severity),
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
# GX renders a row-level expectation's unexpected rows as this (pandas-like) query.
_QUERY = re.compile(r"^df\.filter\(F\.expr\((?P<literal>.*)\)\)$", re.S)


def _unexpected_conditions(entry: SuiteEntry, result: Any) -> tuple[str, ...]:
    """Spark SQL conditions that may mark a row-level expectation's unexpected rows (best first)."""
    candidates = []
    if entry.type in _ROW_CONDITIONS:
        candidates.append(_ROW_CONDITIONS[entry.type](entry.kwargs))
    match = _QUERY.match(str((result.result or {}).get("unexpected_index_query") or ""))
    if match:
        with contextlib.suppress(ValueError, SyntaxError):
            candidates.append(str(ast.literal_eval(match.group("literal"))))
    return tuple(candidates)


def _to_builtin_results(suite_result: Any) -> None:
    """Replace numpy scalars GX leaves in results (its own JSON store chokes on np.bool_)."""
    for result in suite_result.results:
        result.success = bool(result.success)
        if result.result:
            result.result = plain(result.result)
