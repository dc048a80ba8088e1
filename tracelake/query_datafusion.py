"""The default engine of `tracelake query`: delta-rs's DataFusion over the lake's Delta tables.

A sandbox by construction: the session knows only the lake tables that the
statement names (registered one by one, so a broken table fails only the
statements naming it), has no file-reading table functions, and no JVM. The
statement is checked before it runs: one statement, a query (SELECT, WITH,
VALUES, EXPLAIN of a query, DESCRIBE of a view), and no word that writes or
reads outside the registered tables (COPY, CREATE EXTERNAL TABLE, SET, ...).

``DESCRIBE HISTORY <view>`` lists the table's commits (delta-rs's history).
Time travel: ``<view> VERSION AS OF <n>`` and ``<view> TIMESTAMP AS OF '<time>'``
read the table at that version; each becomes a view of its own for DataFusion.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tracelake import storage
from tracelake.errors import TracelakeError

if TYPE_CHECKING:
    import pyarrow as pa
    from deltalake import DeltaTable

    from tracelake.tables import TableSpec

# Statements may only start with these words (after EXPLAIN's options, a query must follow).
QUERY_STARTS = frozenset({"select", "with", "values"})
EXPLAIN_OPTIONS = frozenset({"analyze", "verbose", "format", "indent", "tree", "graphviz", "pgjson"})
# Words that only statements changing something (or reading outside the lake) use; refused anywhere.
REFUSED_WORDS = frozenset(
    {
        "insert",
        "update",
        "delete",
        "merge",
        "copy",
        "create",
        "drop",
        "alter",
        "truncate",
        "set",
        "reset",
        "prepare",
        "execute",
        "deallocate",
        "attach",
        "detach",
        "load",
        "install",
        "external",
        "location",
        "vacuum",
        "optimize",
        "restore",
        "grant",
        "revoke",
        "use",
        "call",
        "into",
    }
)
_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<comment>--[^\n]*|/\*.*?\*/)
  | (?P<string>'(?:[^']|'')*')
  | (?P<quoted>"(?:[^"]|"")*"|`(?:[^`]|``)*`)
  | (?P<word>[A-Za-z_][A-Za-z0-9_$]*)
  | (?P<number>\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)
  | (?P<other>.)
""",
    re.VERBOSE | re.DOTALL,
)


class DataFusionQueryError(TracelakeError, ValueError):
    """The statement cannot be run by the DataFusion engine (subclassed by query.QueryError's users)."""


@dataclass(frozen=True)
class Token:
    kind: str
    text: str
    start: int
    end: int

    @property
    def word(self) -> str:
        """Lower-case word, or the unquoted identifier of a quoted one; empty for other tokens."""
        if self.kind == "word":
            return self.text.lower()
        if self.kind == "quoted":
            quote = self.text[0]
            return self.text[1:-1].replace(quote * 2, quote)
        return ""


def tokenize(sql: str) -> list[Token]:
    """The statement's tokens without spaces and comments; an unterminated quote is an error."""
    tokens: list[Token] = []
    position = 0
    while position < len(sql):
        match = _TOKEN.match(sql, position)
        if match is None or (match.lastgroup == "other" and match.group() in "'\"`"):
            raise DataFusionQueryError(
                f"unterminated quote at character {position} of the statement; "
                "close every '...', \"...\" and `...`"
            )
        if match.lastgroup not in ("space", "comment"):
            tokens.append(Token(match.lastgroup or "other", match.group(), match.start(), match.end()))
        position = match.end()
    return tokens


@dataclass(frozen=True)
class TableRef:
    """A lake view named in the statement, at its current version or a pinned one."""

    view: str
    version: int | None = None
    timestamp: str | None = None

    @property
    def alias(self) -> str:
        if self.version is not None:
            return f"{self.view}__version_{self.version}"
        if self.timestamp is not None:
            return f"{self.view}__timestamp_{re.sub(r'[^0-9a-z]', '_', self.timestamp.lower())}"
        return self.view


def check_statement(sql: str, views: Mapping[str, object]) -> tuple[str, list[TableRef]]:
    """Refuse anything but one read-only query; return the statement with time travel rewritten
    to per-version view names, and the lake views it names."""
    tokens = tokenize(sql)
    while tokens and tokens[-1].text == ";":
        tokens.pop()
    if not tokens:
        raise DataFusionQueryError(
            'the statement is empty; pass one query, e.g. "SELECT * FROM scored_events LIMIT 10"'
        )
    if any(t.text == ";" for t in tokens):
        raise DataFusionQueryError("pass one statement only (a ';' separates two)")
    _check_start(tokens)
    for token in tokens:
        if token.kind == "word" and token.word in REFUSED_WORDS:
            raise DataFusionQueryError(
                f"tracelake query runs read-only statements only; {token.text.upper()!r} is refused (it writes, "
                "changes the session or reads outside the lake's tables). Use SELECT / WITH / VALUES / EXPLAIN / "
                "DESCRIBE; tables are written by the pipeline's jobs"
            )
    return _rewrite_tables(sql, tokens, views)


def _check_start(tokens: list[Token]) -> None:
    first = tokens[0].word
    if first in QUERY_STARTS:
        return
    if first in ("describe", "desc") and len(tokens) == 2 and tokens[1].word:
        return
    if first == "describe" and len(tokens) == 3 and tokens[1].word == "history":
        raise DataFusionQueryError(
            f"DESCRIBE HISTORY {tokens[2].text}: not a view over the lake; "
            "tracelake query --tables lists them"
        )
    if first == "explain":
        rest = [t.word for t in tokens[1:]]
        while rest and rest[0] in EXPLAIN_OPTIONS:
            rest.pop(0)
        if rest and rest[0] in QUERY_STARTS:
            return
    raise DataFusionQueryError(
        f"tracelake query runs read-only statements only; a statement starting with {tokens[0].text!r} is "
        "refused. Use SELECT / WITH / VALUES / EXPLAIN <query> / DESCRIBE <view>"
    )


_TRAVEL = ("version", "timestamp")


def _rewrite_tables(sql: str, tokens: list[Token], views: Mapping[str, object]) -> tuple[str, list[TableRef]]:
    refs: dict[str, TableRef] = {}
    pieces: list[str] = []
    cursor = 0
    i = 0
    while i < len(tokens):
        token = tokens[i]
        name = token.word if token.kind in ("word", "quoted") else ""
        if name in views:
            ref = TableRef(name)
            following = [t.word for t in tokens[i + 1 : i + 4]]
            if following[:1] and following[0] in _TRAVEL and following[1:3] == ["as", "of"]:
                if i + 4 >= len(tokens):
                    raise DataFusionQueryError(f"{name} {following[0].upper()} AS OF needs a value")
                value = tokens[i + 4]
                if following[0] == "version":
                    if value.kind != "number" or not value.text.isdigit():
                        raise DataFusionQueryError(
                            f"{name} VERSION AS OF {value.text}: the version must be a "
                            "whole number, e.g. VERSION AS OF 3 (DESCRIBE HISTORY lists them)"
                        )
                    ref = TableRef(name, version=int(value.text))
                else:
                    if value.kind != "string":
                        raise DataFusionQueryError(
                            f"{name} TIMESTAMP AS OF {value.text}: quote the time, e.g. "
                            "TIMESTAMP AS OF '2025-07-01T00:00:00Z'"
                        )
                    ref = TableRef(name, timestamp=value.text[1:-1].replace("''", "'"))
                pieces.append(sql[cursor : token.start])
                pieces.append(f'"{ref.alias}"')
                cursor = value.end
                i += 5
                refs[ref.alias] = ref
                continue
            refs.setdefault(ref.alias, ref)
        i += 1
    pieces.append(sql[cursor:])
    return "".join(pieces), list(refs.values())


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    for prefix in ("DeltaError:", "Error during planning:", "SQL error:"):
        text = text.removeprefix(prefix).strip()
    # DataFusion puts the cause on the lines after the context ("... failed\ncaused by\n..."): one line.
    # A Rust backtrace ("0: <unknown>" ...) after the message is dropped.
    parts = []
    for part in text.splitlines():
        if re.match(r"\s*(\d+: |(stack )?backtrace)", part, re.IGNORECASE):
            break
        parts.append(part.strip())
    line = " ".join(p for p in parts if p) or type(error).__name__
    return line[:400]


def _open_table(ref: TableRef, spec: TableSpec, lake_root: str | Path) -> DeltaTable:
    from deltalake import DeltaTable

    location = spec.location(lake_root)
    try:
        options = None if storage.is_local(location) else storage.delta_rs_options()
        table = DeltaTable(storage.arrow_uri(location), version=ref.version, storage_options=options)
        if ref.timestamp is not None:
            table.load_as_version(ref.timestamp)
    except Exception as error:
        at = (
            f" at version {ref.version}"
            if ref.version is not None
            else (f" as of {ref.timestamp}" if ref.timestamp is not None else "")
        )
        raise DataFusionQueryError(
            f"table {ref.view} ({location}) cannot be read{at}: {_first_line(error)}"
        ) from None
    return table


HISTORY_FIRST = ("version", "timestamp", "operation", "operationParameters", "userMetadata")


def history(table: DeltaTable) -> pa.Table:
    """The table's commits, newest first, like Spark's DESCRIBE HISTORY (nested fields as JSON)."""
    import datetime as dt

    import pyarrow as pa

    rows = []
    for entry in table.history():
        row = {
            key: json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value
            for key, value in entry.items()
        }
        millis = row.get("timestamp")
        if isinstance(millis, int):
            row["timestamp"] = dt.datetime.fromtimestamp(millis / 1000, dt.UTC)
        rows.append(row)
    keys = {key for row in rows for key in row}
    columns = [k for k in HISTORY_FIRST if k in keys] + sorted(keys - set(HISTORY_FIRST))
    as_text = [c for c in columns if c not in ("version", "timestamp")]
    return pa.Table.from_pylist(
        [
            {c: (str(r[c]) if c in as_text and r.get(c) is not None else r.get(c)) for c in columns}
            for r in rows
        ]
    )


def run_datafusion(lake_root: str | Path, sql: str, views: Mapping[str, TableSpec]) -> pa.Table:
    """Run one read-only statement over the lake's views; the whole result as an Arrow table."""
    import pyarrow as pa
    from deltalake import QueryBuilder

    words = [t.word for t in tokenize(sql) if t.text != ";"]
    if len(words) == 3 and words[:2] == ["describe", "history"] and words[2] in views:
        return history(_open_table(TableRef(words[2]), views[words[2]], lake_root))
    statement, refs = check_statement(sql, views)
    builder = QueryBuilder()
    for ref in refs:
        builder.register(ref.alias, _open_table(ref, views[ref.view], lake_root))
    try:
        return pa.table(builder.execute(statement))
    except Exception as error:
        message = _first_line(error)
        if "not found" in message and "table" in message:
            message += "; views over the lake: " + (", ".join(sorted(views)) or "none (run the pipeline)")
        raise DataFusionQueryError(message) from None
