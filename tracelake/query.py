"""`tracelake query "SELECT ..."`: read-only SQL over the lake's tables, for analysts.

    tracelake query "SELECT location_id, count(*) FROM scored_events WHERE anomaly_flag GROUP BY 1"
    tracelake query "SELECT count(*) FROM scored_events VERSION AS OF 3"      # time travel
    tracelake query --csv top.csv "SELECT * FROM scored_events ORDER BY anomaly_score DESC LIMIT 100"
    tracelake query --engine spark "SELECT ..."    # Spark SQL, for queries too heavy for one process
    tracelake query --tables                       # the views and the tables behind them

Every Delta table of the lake is a view under its name in schemas/tables
(``gold_scored_events``, ``silver_scan_events``, ...) and under a short name,
the last part of its path (``scored_events``, ``drift``, ``quarantine``,
``event_features``, ``labels``, ...; ``scan_events`` is silver's, the layer
analysts read). Each training set is ``training_set_<name>``.

The default engine is delta-rs's DataFusion (:mod:`tracelake.query_datafusion`):
no JVM, and a session that knows only the lake tables the statement names —
no file paths, no functions reaching the file system, no writes. With
``--engine spark`` the statement is parsed with Spark's own parser and every
node of the plan is checked *before* anything runs: only read-only nodes,
relations that are the lake's views (no ``csv.`path` ``, no catalog tables),
and functions of an allowlist (no ``reflect``/``java_method``). A table is
read only when a statement names it, so a broken table fails only those
statements. Every failure is one line.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from tracelake import storage
from tracelake.arguments import parse
from tracelake.errors import TracelakeError
from tracelake.query_datafusion import DataFusionQueryError, run_datafusion
from tracelake.tables import TableSpec, all_table_specs, named_table_spec

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession

JOB = "query"
ENGINES = ("datafusion", "spark")
# Short names go to the first table claiming them, in this order of layers.
LAYER_ORDER = ("gold", "monitoring", "features", "silver", "reference", "training", "bronze")
# Commands that only read metadata (class simple names of the parsed plan).
READ_ONLY_COMMANDS = frozenset(
    {
        "DescribeRelation",
        "DescribeColumn",
        "DescribeFunction",
        "DescribeNamespace",
        "ShowTables",
        "ShowViews",
        "ShowColumns",
        "ShowFunctions",
        "ShowNamespaces",
        "ShowTableProperties",
        "ShowCreateTable",
        "DescribeDeltaHistory",
        "DescribeDeltaDetailCommand",
        "ExplainCommand",
    }
)
# Plan nodes of a query (as Spark's parser builds them, before analysis); anything else is refused.
QUERY_NODES = frozenset(
    {
        "Project",
        "Filter",
        "Aggregate",
        "Join",
        "Sort",
        "GlobalLimit",
        "LocalLimit",
        "Offset",
        "Tail",
        "Union",
        "Intersect",
        "Except",
        "SubqueryAlias",
        "UnresolvedRelation",
        "UnresolvedWith",
        "CTERelationDef",
        "CTERelationRef",
        "Distinct",
        "Deduplicate",
        "Window",
        "WithWindowDefinition",
        "Generate",
        "UnresolvedTableValuedFunction",
        "Pivot",
        "Unpivot",
        "LateralJoin",
        "OneRowRelation",
        "LocalRelation",
        "UnresolvedInlineTable",
        "Sample",
        "RepartitionByExpression",
        "Repartition",
        "UnresolvedHint",
        "UnresolvedHaving",
        "UnresolvedSubqueryColumnAliases",
        "UnresolvedTableOrView",
        "UnresolvedTable",
        "UnresolvedView",
        "UnresolvedNamespace",
        "CurrentNamespace$",
        "UnresolvedFunctionName",
        "UnresolvedIdentifier",
        "ResolvedIdentifier",
        "UnresolvedDeltaPathOrIdentifier",
        "Expand",
    }
)
# Spark's built-in function groups whose functions compute on values only.
ALLOWED_FUNCTION_GROUPS = frozenset(
    {
        "agg_funcs",
        "array_funcs",
        "bitwise_funcs",
        "collection_funcs",
        "conditional_funcs",
        "conversion_funcs",
        "datetime_funcs",
        "generator_funcs",
        "hash_funcs",
        "json_funcs",
        "lambda_funcs",
        "map_funcs",
        "math_funcs",
        "predicate_funcs",
        "string_funcs",
        "struct_funcs",
        "window_funcs",
        "csv_funcs",
        "variant_funcs",
        "sketch_funcs",
        "vector_funcs",
        "url_funcs",
    }
)
# Of the "misc" group (where reflect/java_method live), only these.
ALLOWED_MISC_FUNCTIONS = frozenset(
    {
        "typeof",
        "monotonically_increasing_id",
        "spark_partition_id",
        "uuid",
        "raise_error",
        "assert_true",
        "current_catalog",
        "current_database",
        "current_schema",
        "version",
    }
)
ALLOWED_TABLE_FUNCTIONS = frozenset(
    {
        "range",
        "explode",
        "explode_outer",
        "inline",
        "inline_outer",
        "posexplode",
        "posexplode_outer",
        "stack",
        "json_tuple",
        "variant_explode",
        "variant_explode_outer",
    }
)


class QueryError(TracelakeError, ValueError):
    """The statement cannot be parsed or run."""


class ReadOnlyQueryError(QueryError):
    """The statement would change the lake, the catalog or the session, or read outside the lake."""


def lake_views(spark: SparkSession | None, lake_root: str | Path) -> dict[str, TableSpec]:
    """View name -> table spec for every Delta table under the lake (a folder with a ``_delta_log``).

    Only folders are looked at, no table is opened: a broken table is still a view, and fails
    only the statements that read it. ``spark`` is unused (kept for callers that pass one).
    """
    specs = [s for s in all_table_specs() if s.format == "delta" and "{" not in s.path]
    order = {layer: i for i, layer in enumerate(LAYER_ORDER)}
    specs.sort(key=lambda s: (order.get(s.path.split("/")[0], len(order)), s.name))
    views: dict[str, TableSpec] = {}
    for spec in specs:
        if not storage.is_dir(storage.join(spec.location(lake_root), "_delta_log")):
            continue
        views[spec.name] = spec
        views.setdefault(spec.path.rsplit("/", 1)[-1], spec)
    sets_dir = storage.join(str(lake_root), "training", "sets")
    for name in storage.list_dir(sets_dir):
        if not storage.is_dir(storage.join(sets_dir, name, "_delta_log")):
            continue
        try:
            spec = named_table_spec("training_set", name=name)
        except TracelakeError:
            continue  # a folder name that no training-set run could have written
        views.setdefault(f"training_set_{name.replace('-', '_')}", spec)
    return views


# ---------------------------------------------------------------- Spark engine


def _seq(value: Any) -> list[Any]:
    return [value.apply(i) for i in range(value.size())]


def _nodes(plan: Any) -> list[Any]:
    """Every node of a parsed (JVM) plan: children, inner children (CTE definitions), subquery plans."""
    seen, stack = [], [plan]
    while stack:
        node = stack.pop()
        seen.append(node)
        for accessor in ("children", "innerChildren", "subqueries"):
            try:
                seq = getattr(node, accessor)()
            except Exception:
                continue
            stack.extend(_seq(seq))
        if node.getClass().getSimpleName() == "ExplainCommand":
            stack.append(node.logicalPlan())
    return seen


def _expressions(node: Any) -> list[Any]:
    """Every expression of a plan node, nested ones included."""
    try:
        stack = _seq(node.expressions())
    except Exception:
        return []
    found = []
    while stack:
        expression = stack.pop()
        found.append(expression)
        stack.extend(_seq(expression.children()))
    return found


def allowed_functions(spark: SparkSession) -> frozenset[str]:
    """Names of the built-in functions a query may call (by group, see ALLOWED_FUNCTION_GROUPS)."""
    jvm = spark._jvm
    assert jvm is not None, "a classic (JVM) session"
    registry = jvm.org.apache.spark.sql.catalyst.analysis.FunctionRegistry.builtin()
    names = set()
    for identifier in _seq(registry.listFunction()):
        name = identifier.funcName().lower()
        group = registry.lookupFunction(identifier).get().getGroup()
        if group in ALLOWED_FUNCTION_GROUPS or name in ALLOWED_MISC_FUNCTIONS:
            names.add(name)
    return frozenset(names)


def _refuse(sql: str, what: str) -> ReadOnlyQueryError:
    return ReadOnlyQueryError(
        f"tracelake query runs read-only statements only, over the lake's views; {sql.strip()[:80]!r} {what}. "
        "Use SELECT / WITH / EXPLAIN / DESCRIBE / SHOW over the views (tracelake query --tables lists them)"
    )


def _identifier(node: Any) -> list[str] | None:
    for accessor in ("multipartIdentifier", "nameParts"):
        try:
            return [str(part) for part in _seq(getattr(node, accessor)())]
        except Exception:
            continue
    return None


def check_read_only(spark: SparkSession, sql: str, views: Collection[str] | None = None) -> set[str]:
    """Parse ``sql`` with the session's parser; raise unless it only reads the lake's views.

    Refused before anything runs: writes, DDL, cache and configuration commands anywhere in the
    plan; relations that are not one of ``views`` (or a CTE of the statement) — file paths
    (``csv.`/etc/passwd` ``), catalog tables; functions outside the allowlist (``reflect``,
    ``java_method``); time travel (the default engine has it). With ``views`` None only the
    shape of relation names is checked. Returns the view names the statement reads.
    """
    try:
        plan = spark._jsparkSession.sessionState().sqlParser().parsePlan(sql)
    except Exception as error:
        message = str(error).strip().splitlines()
        detail = next(
            (line for line in message if "PARSE_SYNTAX_ERROR" in line or "Syntax error" in line),
            message[0] if message else "",
        )
        raise QueryError(
            f"cannot parse the statement ({detail.strip()[:300]}); pass one Spark SQL statement, "
            'e.g. "SELECT * FROM scored_events LIMIT 10"'
        ) from None
    functions = allowed_functions(spark)
    nodes = _nodes(plan)
    ctes = set()
    for node in nodes:
        if node.getClass().getSimpleName() == "UnresolvedWith":
            ctes |= {str(pair._1()).lower() for pair in _seq(node.cteRelations())}
    relations: set[str] = set()
    for node in nodes:
        name = node.getClass().getSimpleName()
        if name == "RelationTimeTravel":
            raise _refuse(
                sql,
                "uses time travel, which the Spark engine does not run over views; drop "
                "--engine spark (the default engine reads <view> VERSION AS OF <n>)",
            )
        if name not in READ_ONLY_COMMANDS and name not in QUERY_NODES:
            raise _refuse(
                sql,
                f"is a {name}, which would change the lake, the catalog or the session, or read "
                "outside the lake",
            )
        if name in ("UnresolvedRelation", "UnresolvedTableOrView", "UnresolvedTable", "UnresolvedView"):
            parts = _identifier(node) or []
            target = ".".join(parts)
            if len(parts) != 1 or (views is not None and parts[0].lower() not in set(views) | ctes):
                raise _refuse(
                    sql,
                    f"reads {target!r}, which is not a view over the lake (paths and catalog "
                    "tables are refused)",
                )
            if parts[0].lower() not in ctes:
                relations.add(parts[0].lower())
        if name == "UnresolvedDeltaPathOrIdentifier" or "PathBased" in name:
            raise _refuse(sql, "names a path; name a view instead")
        if name == "UnresolvedTableValuedFunction":
            parts = _identifier(node) or [str(node.name())]
            if len(parts) != 1 or parts[0].lower() not in ALLOWED_TABLE_FUNCTIONS:
                raise _refuse(sql, f"calls table function {'.'.join(parts)!r}, which is not allowed")
        for expression in _expressions(node):
            kind = expression.getClass().getSimpleName()
            if kind == "UnresolvedFunction":
                parts = _identifier(expression) or []
            elif kind == "UnresolvedGenerator":
                parts = [str(expression.name().funcName())]
            elif (kind.startswith("Unresolved") and "Function" in kind) or "Identifier" in kind:
                raise _refuse(sql, f"uses {kind}, which is not allowed")
            else:
                continue
            if len(parts) != 1 or parts[0].lower() not in functions:
                raise _refuse(
                    sql,
                    f"calls function {'.'.join(parts)!r}, which is not on the allowlist (functions "
                    "that reach the JVM or the file system are refused)",
                )
    return relations


def register_views(
    spark: SparkSession, lake_root: str | Path, names: Collection[str] | None = None
) -> dict[str, TableSpec]:
    """Register the lake's views named in ``names`` (all when None) as temporary views; returns every view."""
    views = lake_views(spark, lake_root)
    for name, spec in views.items():
        if names is not None and name not in names:
            continue
        try:
            spark.read.format("delta").load(spec.location(lake_root)).createOrReplaceTempView(name)
        except Exception as error:
            raise QueryError(
                f"table {name} ({spec.location(lake_root)}) cannot be read: {_first_line(error)}"
            ) from None
    return views


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # Py4J puts "An error occurred while calling ..." first; the JVM's message is the next line.
    if lines and lines[0].startswith("An error occurred while calling") and len(lines) > 1:
        lines = lines[1:]
    return (lines[0] if lines else type(error).__name__)[:400]


def _delta_metadata(
    spark: SparkSession, sql: str, views: dict[str, TableSpec], relations: set[str], lake_root: str | Path
) -> DataFrame | None:
    """``DESCRIBE HISTORY / DETAIL <view>`` through Delta's API (Delta's SQL takes tables or paths only)."""
    from delta.tables import DeltaTable

    words = sql.split()
    if len(words) < 2 or words[0].lower() != "describe" or words[1].lower() not in ("history", "detail"):
        return None
    if len(relations) != 1:
        return None
    table = DeltaTable.forPath(spark, views[next(iter(relations))].location(lake_root))
    return table.history() if words[1].lower() == "history" else table.detail()


def run_query(spark: SparkSession, lake_root: str | Path, sql: str) -> DataFrame:
    """Spark engine: check ``sql``, register the views it names, and return its (lazy) result."""
    views = lake_views(spark, lake_root)
    relations = check_read_only(spark, sql, views)
    register_views(spark, lake_root, relations)
    # A second wall against `fmt`.`path` relations while the statement is analysed (spark.sql analyses
    # eagerly); the session's own setting comes back afterwards, for the jobs that share the session.
    previous = spark.conf.get("spark.sql.runSQLOnFiles", "true") or "true"
    spark.conf.set("spark.sql.runSQLOnFiles", "false")
    try:
        metadata = _delta_metadata(spark, sql, views, relations, lake_root)
        return metadata if metadata is not None else spark.sql(sql)
    except Exception as error:
        listed = ", ".join(sorted(views))
        raise QueryError(
            f"{_first_line(error)}; views over the lake at {lake_root}: {listed or 'none (run the pipeline)'}"
        ) from None
    finally:
        spark.conf.set("spark.sql.runSQLOnFiles", previous)


def show(frame: DataFrame, rows: int, truncate: int) -> str:
    """The first ``rows`` rows as a text table (Spark's own layout); a runtime error is one line."""
    try:
        return str(frame._jdf.showString(rows, truncate, False))
    except Exception as error:
        raise QueryError(f"the query failed while running: {_first_line(error)}") from None


# ---------------------------------------------------------------- output


def show_arrow(table: pa.Table, rows: int, truncate: int) -> str:
    """The first ``rows`` rows of an Arrow table in Spark's text-table layout."""

    def cell(value: Any) -> str:
        text = "NULL" if value is None else str(value).replace("\n", "\\n")
        return text[: max(truncate - 3, 0)] + "..." if truncate and len(text) > truncate else text

    head = table.slice(0, rows).to_pylist()
    grid = [list(table.column_names)] + [[cell(row[c]) for c in table.column_names] for row in head]
    widths = [max(3, *(len(line[i]) for line in grid)) for i in range(len(table.column_names))]
    rule = "+" + "+".join("-" * w for w in widths) + "+"
    lines = [rule, "|" + "|".join(h.rjust(w) for h, w in zip(grid[0], widths, strict=False)) + "|", rule]
    lines += [
        "|" + "|".join(v.rjust(w) for v, w in zip(line, widths, strict=False)) + "|" for line in grid[1:]
    ]
    lines.append(rule)
    if table.num_rows > rows:
        lines.append(f"only showing top {rows} row{'s' if rows > 1 else ''}")
    return "\n".join(lines) + "\n"


def check_csv_target(path: str | Path, lake_root: str | Path, force: bool) -> Path:
    """Refuse a CSV path inside the lake (links followed) or an existing file unless ``force``."""
    target = Path(path).expanduser()
    resolved = Path(os.path.realpath(target))
    # A lake on object storage cannot hold a local file.
    lake = Path(os.path.realpath(lake_root)) if storage.is_local(str(lake_root)) else None
    if lake is not None and (resolved == lake or lake in resolved.parents):
        raise QueryError(f"--csv {str(path)!r} lies inside the lake ({lake}); write the result outside it")
    if target.is_symlink() or target.exists():
        if not force:
            raise QueryError(
                f"--csv {str(path)!r} exists; pass --force to overwrite it, or choose another path"
            )
        if not resolved.is_file() or resolved.stat().st_nlink > 1:
            raise QueryError(
                f"--csv {str(path)!r} is not a plain file of its own (a folder, device or hard "
                "link); choose another path"
            )
    return target


def write_csv(
    data: pd.DataFrame | DataFrame,
    path: str | Path,
    lake_root: str | Path | None = None,
    *,
    force: bool = False,
) -> int:
    """Every row of the result to one CSV file with a header; returns the row count."""
    target = check_csv_target(path, lake_root, force) if lake_root is not None else Path(path)
    # (pandas from DuckDB/DataFusion, a Spark DataFrame from Spark.)
    frame = cast("pd.DataFrame", data if hasattr(data, "to_csv") else data.toPandas())
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(target, "w" if force or lake_root is None else "x", newline="", encoding="utf-8") as handle:
            frame.to_csv(handle, index=False)
    except FileExistsError:
        raise QueryError(f"--csv {str(path)!r} exists; pass --force to overwrite it") from None
    return len(frame)


# ---------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return parse(JOB, argv)


def _main_datafusion(args: argparse.Namespace) -> int:
    from tracelake.logs import job_logger
    from tracelake.runs import new_run_id, settings_from_args

    settings = settings_from_args(args)
    lake_root = settings.lake_uri
    if args.csv:
        check_csv_target(args.csv, lake_root, args.force)
    log = job_logger(JOB, run_id=new_run_id(JOB), engine="datafusion")
    with log.step(JOB, lake_root=lake_root):
        views = lake_views(None, lake_root)
        if args.tables:
            for name, spec in views.items():
                print(f"{name:28} {spec.location(lake_root)}")
            return 0
        try:
            table = run_datafusion(lake_root, args.sql, views)
        except DataFusionQueryError as error:
            raise QueryError(str(error)) from None
        print(show_arrow(table, args.rows or settings.query.show_rows, settings.query.truncate_chars), end="")
        if args.csv:
            count = write_csv(table.to_pandas(), args.csv, lake_root, force=args.force)
            print(f"wrote {count} row(s) to {args.csv}")
            log.event("wrote csv", path=str(args.csv), rows=count)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from tracelake.runs import job_run, settings_from_args

    args = parse_args(argv)
    engine = args.engine or settings_from_args(args).query.engine
    if engine == "datafusion":
        return _main_datafusion(args)
    with job_run(JOB, args) as run:
        if args.csv:
            check_csv_target(args.csv, run.lake_root, args.force)
        if args.tables:
            for name, spec in lake_views(run.spark, run.lake_root).items():
                print(f"{name:28} {spec.location(run.lake_root)}")
            return 0
        frame = run_query(run.spark, run.lake_root, args.sql)
        settings = run.settings.query
        print(show(frame, args.rows or settings.show_rows, settings.truncate_chars))
        if args.csv:
            try:
                data = frame.toPandas()
            except Exception as error:
                raise QueryError(f"the query failed while running: {_first_line(error)}") from None
            count = write_csv(data, args.csv, run.lake_root, force=args.force)
            print(f"wrote {count} row(s) to {args.csv}")
            run.log.event("wrote csv", path=str(args.csv), rows=count)
    return 0


if __name__ == "__main__":
    from tracelake.runs import run_entrypoint

    sys.exit(run_entrypoint(main))
