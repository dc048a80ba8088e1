"""`tracelake query "SELECT ..."`: read-only Spark SQL over the lake's tables, for analysts.

    tracelake query "SELECT location_id, count(*) FROM scored_events WHERE anomaly_flag GROUP BY 1"
    tracelake query --csv top.csv "SELECT * FROM scored_events ORDER BY anomaly_score DESC LIMIT 100"
    tracelake query --tables                       # the views and the tables behind them

Every Delta table of the lake that exists is a temporary view under its name
in schemas/tables (``gold_scored_events``, ``silver_scan_events``, ...) and
under a short name, the last part of its path (``scored_events``, ``drift``,
``quarantine``, ``event_features``, ``labels``, ...; ``scan_events`` is
silver's, the layer analysts read). Each training set is
``training_set_<name>``.

Only read-only statements run: queries (SELECT, WITH, VALUES, TABLE), EXPLAIN
of a query, DESCRIBE / SHOW and Delta's DESCRIBE HISTORY / DETAIL. The
statement is parsed with the session's own SQL parser (Delta's extensions
included) and every node of the parsed plan is checked *before* anything runs:
a write, DDL, cache or configuration command anywhere in it (an INSERT behind
a WITH, for instance) is refused with :class:`ReadOnlyQueryError`. This guards
the lake against accidents; it is not a sandbox for untrusted users.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession

from tracelake.errors import TracelakeError
from tracelake.tables import TableSpec, all_table_specs, named_table_spec, table_exists

JOB = "query"
# Short names go to the first table claiming them, in this order of layers.
LAYER_ORDER = ("gold", "monitoring", "features", "silver", "reference", "training", "bronze")
# Commands that only read metadata (class simple names of the parsed plan).
READ_ONLY_COMMANDS = frozenset({
    "DescribeRelation", "DescribeColumn", "DescribeFunction", "DescribeNamespace", "ShowTables", "ShowViews",
    "ShowColumns", "ShowFunctions", "ShowNamespaces", "ShowTableProperties", "ShowCreateTable",
    "DescribeDeltaHistory", "DescribeDeltaDetailCommand", "ExplainCommand",
})
_COMMAND = "org.apache.spark.sql.catalyst.plans.logical.Command"


class QueryError(TracelakeError, ValueError):
    """The statement cannot be parsed or run."""


class ReadOnlyQueryError(QueryError):
    """The statement would change the lake, the catalog or the session."""


def lake_views(spark: SparkSession, lake_root: str | Path) -> dict[str, TableSpec]:
    """View name -> table spec for every Delta table that exists under the lake."""
    specs = [s for s in all_table_specs() if s.format == "delta" and "{" not in s.path]
    order = {layer: i for i, layer in enumerate(LAYER_ORDER)}
    specs.sort(key=lambda s: (order.get(s.path.split("/")[0], len(order)), s.name))
    views: dict[str, TableSpec] = {}
    for spec in specs:
        if not table_exists(spark, spec, lake_root):
            continue
        views[spec.name] = spec
        views.setdefault(spec.path.rsplit("/", 1)[-1], spec)
    sets_dir = Path(lake_root) / "training" / "sets"
    if sets_dir.is_dir():
        for folder in sorted(p for p in sets_dir.iterdir() if (p / "_delta_log").is_dir()):
            try:
                views[f"training_set_{folder.name}".replace("-", "_").replace(".", "_")] = named_table_spec(
                    "training_set", name=folder.name)
            except TracelakeError:
                continue  # a folder name that no training-set run could have written
    return views


def register_views(spark: SparkSession, lake_root: str | Path) -> dict[str, TableSpec]:
    """Register :func:`lake_views` as temporary views of the session; returns them."""
    views = lake_views(spark, lake_root)
    for name, spec in views.items():
        spark.read.format("delta").load(spec.location(lake_root)).createOrReplaceTempView(name)
    return views


def _nodes(plan: Any) -> list[Any]:
    """Every node of a parsed (JVM) plan: children, inner children (CTE definitions), subquery plans."""
    seen, stack = [], [plan]
    while stack:
        node = stack.pop()
        seen.append(node)
        for accessor in ("children", "innerChildren", "subqueries"):
            try:
                seq = getattr(node, accessor)()
            except Exception:  # noqa: BLE001 - not every node has every accessor
                continue
            stack.extend(seq.apply(i) for i in range(seq.size()))
        if node.getClass().getSimpleName() == "ExplainCommand":
            stack.append(node.logicalPlan())
    return seen


def check_read_only(spark: SparkSession, sql: str) -> str:
    """Parse ``sql`` with the session's parser; raise unless it only reads. Returns the root node's name."""
    jvm = spark._jvm
    try:
        plan = spark._jsparkSession.sessionState().sqlParser().parsePlan(sql)
    except Exception as error:  # py4j wraps the JVM's ParseException
        message = str(error).strip().splitlines()
        detail = next((line for line in message if "PARSE_SYNTAX_ERROR" in line or "Syntax error" in line),
                      message[0] if message else "")
        raise QueryError(f"cannot parse the statement ({detail.strip()[:300]}); pass one Spark SQL statement, "
                         "e.g. \"SELECT * FROM scored_events LIMIT 10\"") from None
    loader = jvm.java.lang.Thread.currentThread().getContextClassLoader()
    command = jvm.java.lang.Class.forName(_COMMAND, False, loader)
    for node in _nodes(plan):
        name = node.getClass().getSimpleName()
        if name in READ_ONLY_COMMANDS:
            continue
        if command.isInstance(node) or name.endswith("Statement") or name.startswith("InsertInto"):
            raise ReadOnlyQueryError(
                f"tracelake query runs read-only statements only; {sql.strip()[:80]!r} is a {name} that would "
                "change the lake, the catalog or the session. Use SELECT / WITH / EXPLAIN / DESCRIBE / SHOW; "
                "tables are written by the pipeline's jobs (tracelake <step> --start-date ...)")
    return plan.getClass().getSimpleName()


# DESCRIBE HISTORY / DETAIL need a Delta table, not a temporary view: a view name is replaced by its path.
_DELTA_METADATA = re.compile(r"^(\s*DESCRIBE\s+(?:HISTORY|DETAIL)\s+)(`[^`]+`|[A-Za-z_][\w]*)(?=\s|;|$)",
                             re.IGNORECASE)


def _delta_metadata_on_views(sql: str, views: dict[str, TableSpec], lake_root: str | Path) -> str:
    """``DESCRIBE HISTORY <view>`` -> ``DESCRIBE HISTORY delta.`<location>` `` for a view over a lake table."""
    match = _DELTA_METADATA.match(sql)
    if not match or match.group(2).strip("`") not in views:
        return sql
    location = str(views[match.group(2).strip("`")].location(lake_root)).replace("`", "``")
    return f"{match.group(1)}delta.`{location}`{sql[match.end():]}"


def run_query(spark: SparkSession, lake_root: str | Path, sql: str) -> DataFrame:
    """Check ``sql`` is read-only, register the lake's views, and return its (lazy) result."""
    check_read_only(spark, sql)
    views = register_views(spark, lake_root)
    sql = _delta_metadata_on_views(sql, views, lake_root)
    try:
        return spark.sql(sql)
    except Exception as error:  # AnalysisException: unknown view or column, type errors
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        views = ", ".join(sorted(lake_views(spark, lake_root)))
        raise QueryError(f"{first[:400]}; views over the lake at {lake_root}: {views or 'none (run the pipeline)'}") \
            from None


def show(frame: DataFrame, rows: int, truncate: int) -> str:
    """The first ``rows`` rows as a text table (Spark's own layout)."""
    return frame._jdf.showString(rows, truncate, False)


def write_csv(frame: DataFrame, path: str | Path) -> int:
    """Every row of the result to one CSV file with a header; returns the row count."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    data = frame.toPandas()
    data.to_csv(target, index=False)
    return len(data)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    from tracelake.runs import add_common_args

    parser = argparse.ArgumentParser(
        prog="tracelake query",
        description="Run one read-only Spark SQL statement over the lake's tables (views named like "
                    "scored_events, scan_events, event_features, quarantine, labels, drift); print a table.",
    )
    parser.add_argument("sql", nargs="?", help="the statement, e.g. \"SELECT * FROM scored_events LIMIT 10\"")
    parser.add_argument("--csv", metavar="PATH", help="also write every row of the result to this CSV file")
    parser.add_argument("--rows", type=int, help="rows to print (default: query.show_rows)")
    parser.add_argument("--tables", action="store_true", help="list the views and the tables behind them")
    add_common_args(parser, dates=False)
    args = parser.parse_args(argv)
    if not args.sql and not args.tables:
        parser.error("pass a SQL statement (or --tables)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    from tracelake.runs import job_run

    args = parse_args(argv)
    with job_run(JOB, args) as run:
        if args.tables:
            for name, spec in lake_views(run.spark, run.lake_root).items():
                print(f"{name:28} {spec.location(run.lake_root)}")
            return 0
        frame = run_query(run.spark, run.lake_root, args.sql)
        settings = run.settings.query
        print(show(frame, args.rows or settings.show_rows, settings.truncate_chars))
        if args.csv:
            count = write_csv(frame, args.csv)
            print(f"wrote {count} row(s) to {args.csv}")
            run.log.event("wrote csv", path=str(args.csv), rows=count)
    return 0


if __name__ == "__main__":
    from tracelake.runs import run_entrypoint

    sys.exit(run_entrypoint(main))
