"""The suite language: expectation suites as JSON under ``schemas/expectations/``, resolved against ``schemas/``.

A suite is one JSON file per table, named by the table's ``expectations:`` key
in ``schemas/tables/<table>.yaml``::

    {"table": "silver_scan_events",
     "description": "...",
     "expectations": [
       {"type": "expect_column_values_to_be_in_set",
        "kwargs": {"column": "event_type", "value_set": {"$domain": "event_types"}},
        "severity": "critical",
        "notes": "why this check exists"}]}

``type`` and ``kwargs`` are Great Expectations' own (GX 1.x snake_case names).
``severity`` is ``critical`` (a failure fails the step) or ``warning`` (recorded
and logged). ``notes`` and ``description`` go to Data Docs.

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
  per day of T's date column (a landing table: its rows as ingest reads them,
  see :mod:`tracelake.landing`). This is how a layer reconciles with the one before.

This module knows nothing of Great Expectations or Spark: it reads and checks
the files (:func:`load_suite`); :mod:`tracelake.validation.gx` hands them to GX.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracelake.errors import TracelakeError
from tracelake.tables import SCHEMAS_DIR, Domain, TableSpec, domain, table_spec

SEVERITIES = ("critical", "warning")
_ENTRY_KEYS = {"type", "kwargs", "severity", "notes", "description", "for_each_column"}
_SUITE_KEYS = {"table", "description", "expectations"}
_TERM_KEYS = {"table", "distinct", "where", "subtract"}
_COLUMN_KWARGS = ("column", "column_A", "column_B")


class SuiteError(TracelakeError, ValueError):
    """An expectation suite file is malformed or names something that does not exist."""


@dataclass(frozen=True)
class RowCountTerm:
    """One term of a ``$row_count_of``: rows (or distinct values) of a table per day, added or subtracted."""

    table: str
    distinct: str | None = None
    where: str | None = None
    subtract: bool = False

    @classmethod
    def parse(cls, raw: Any, where: str) -> RowCountTerm:
        if not isinstance(raw, dict) or "table" not in raw or set(raw) - _TERM_KEYS:
            raise SuiteError(
                f"{where}: $row_count_of term {raw!r} must be an object with "
                f"'table' and optionally {sorted(_TERM_KEYS - {'table'})}"
            )
        table_spec(raw["table"])  # fails early, naming the known tables
        return cls(raw["table"], raw.get("distinct"), raw.get("where"), bool(raw.get("subtract")))


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
    def row_count_terms(self) -> tuple[RowCountTerm, ...] | None:
        """The terms of a ``$row_count_of`` value (checked when the suite was loaded), or None."""
        value = self.kwargs.get("value")
        if not isinstance(value, dict) or "$row_count_of" not in value:
            return None
        return tuple(RowCountTerm.parse(t, self.key) for t in value["$row_count_of"])


@dataclass(frozen=True)
class Suite:
    name: str
    table: str
    path: Path
    description: str
    entries: tuple[SuiteEntry, ...]


def _domain_value(spec: dict[str, Any], where: str) -> Any:
    key, take = spec["$domain"], spec.get("take")
    if key not in Domain.field_names():
        raise SuiteError(
            f"{where}: unknown $domain key {key!r}; schemas/domain.yaml has {Domain.field_names()}"
        )
    value = domain().value(key)
    if isinstance(value, Mapping):
        if take in (None, "keys"):
            return list(value)
        if take == "values":
            return sorted(set(value.values()))
        if take == "pairs":
            return [[k, v] for k, v in value.items()]
    elif take is None:
        # (A suite is JSON: lists, not the Domain's tuples.)
        return list(value) if isinstance(value, tuple) else copy.deepcopy(value)
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
            RowCountTerm.parse(term, where)
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
