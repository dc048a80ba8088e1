"""`tracelake query` is a sandbox: only the lake's tables are read, nothing is written, every failure is one line.

Each statement an adversarial analyst tried (file paths, JVM functions, writes, overwriting the
Delta log through --csv, a broken table) runs against both engines, and a grammar of dangerous
constructs generates many more. The lake's tables and a secret file outside it are checked after.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from tracelake import query
from tracelake.query_datafusion import DataFusionQueryError, check_statement
from tracelake.tables import table_spec, write_table

SECRET = "SECRET-TOKEN-4242"
ROOT = Path(__file__).resolve().parents[2]


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under the lake with its content hash and mode."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() + oct(p.stat().st_mode)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    } | {str(p.relative_to(root)): oct(p.stat().st_mode) for p in sorted(root.rglob("*")) if p.is_dir()}


@pytest.fixture()
def df_lake(tmp_path: Path) -> dict[str, Path]:
    """A lake written by delta-rs (no JVM): gold/scored_events at versions 0 and 1, monitoring/drift, and a
    silver/scan_events whose log is corrupt; a secret file next to the lake."""
    root = tmp_path / "lake"
    scored = root / "gold" / "scored_events"
    write_deltalake(
        scored,
        pa.table({"event_id": ["e0", "e1"], "anomaly_score": [0.9, 0.2], "anomaly_flag": [True, False]}),
    )
    write_deltalake(
        scored, pa.table({"event_id": ["e2"], "anomaly_score": [0.7], "anomaly_flag": [True]}), mode="append"
    )
    write_deltalake(root / "monitoring" / "drift", pa.table({"feature": ["tier"], "psi": [0.01]}))
    broken = root / "silver" / "scan_events" / "_delta_log"
    broken.mkdir(parents=True)
    (broken / "00000000000000000000.json").write_text("{not json")
    secret = tmp_path / "secret.txt"
    secret.write_text(f"user:{SECRET}\n")
    return {"root": root, "secret": secret}


def run_df(lake: Path, sql: str) -> pa.Table:
    return query.run_datafusion(lake, sql, query.lake_views(None, lake))


def test_default_engine_reads_views_and_time_travels(df_lake):
    root = df_lake["root"]
    assert run_df(root, "SELECT count(*) AS n FROM scored_events").column("n").to_pylist() == [3]
    assert run_df(root, "SELECT count(*) AS n FROM scored_events VERSION AS OF 0").column(
        "n"
    ).to_pylist() == [2]
    both = run_df(
        root,
        "SELECT (SELECT count(*) FROM gold_scored_events version as of 0) AS old, "
        "(SELECT count(*) FROM gold_scored_events) AS new",
    )
    assert both.to_pylist() == [{"old": 2, "new": 3}]
    with pytest.raises(DataFusionQueryError, match="scored_events .* cannot be read at version 7"):
        run_df(root, "SELECT * FROM scored_events VERSION AS OF 7")


def test_a_broken_table_fails_only_the_statements_naming_it(df_lake):
    root = df_lake["root"]
    assert run_df(root, "SELECT feature FROM drift").column("feature").to_pylist() == ["tier"]
    with pytest.raises(
        DataFusionQueryError, match=r"^table scan_events \(.*silver/scan_events\) cannot be read: "
    ) as error:
        run_df(root, "SELECT * FROM scan_events")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM csv.`{secret}`",
        "SELECT * FROM text.`{secret}`",
        "SELECT * FROM delta.`{root}/gold/scored_events`",
        "SELECT * FROM '{secret}'",
        "SELECT * FROM read_csv('{secret}')",
        "CREATE EXTERNAL TABLE s STORED AS CSV LOCATION '{secret}'",
        "COPY (SELECT * FROM scored_events) TO '{root}/gold/scored_events/_delta_log/00000000000000000000.json'",
        "EXPLAIN ANALYZE COPY (SELECT 1) TO '{root}/x.csv'",
        "INSERT INTO scored_events VALUES ('e9', 1.0, true)",
        "WITH x AS (SELECT 1) INSERT INTO scored_events SELECT * FROM x",
        "DELETE FROM scored_events",
        "DROP TABLE scored_events",
        "SET datafusion.execution.batch_size = 1",
        "SELECT reflect('java.lang.System', 'getenv', 'HOME')",
        "SELECT java_method('org.apache.hadoop.fs.FileUtil', 'chmod', '{root}/gold', '000')",
        "SELECT 1; DROP TABLE scored_events",
        "SELECT * FROM information_schema.df_settings",
    ],
)
def test_default_engine_refuses_every_reach_outside_the_lake(df_lake, sql):
    root, secret = df_lake["root"], df_lake["secret"]
    before = _snapshot(root.parent)
    with pytest.raises(DataFusionQueryError) as error:
        run_df(root, sql.format(root=root, secret=secret))
    message = str(error.value)
    assert SECRET not in message and "\n" not in message and "Traceback" not in message
    assert _snapshot(root.parent) == before


def test_refused_words_inside_strings_and_quoted_names_are_data():
    statement, refs = check_statement(
        "SELECT 'insert into x' AS \"update\", -- drop table\n 1 FROM drift", {"drift": object()}
    )
    assert refs[0].view == "drift" and "insert into x" in statement


def test_cli_starts_without_a_jvm_and_prints_one_line_errors(df_lake, tmp_path):
    root = df_lake["root"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRACELAKE_CONFIG": ""}
    started = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tracelake.cli",
            "query",
            "--lake-root",
            str(root),
            "SELECT event_id FROM scored_events VERSION AS OF 0 ORDER BY event_id",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    elapsed = time.perf_counter() - started
    assert done.returncode == 0, done.stderr
    assert "|event_id|" in done.stdout and "|      e1|" in done.stdout and "e2" not in done.stdout
    assert "pyspark" not in done.stderr.lower() and elapsed < 30
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "tracelake.cli",
            "query",
            "--lake-root",
            str(root),
            "SELECT * FROM csv.`/etc/shadow`",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    plain = [line for line in bad.stderr.splitlines() if not line.startswith("{")]  # besides JSON log lines
    assert bad.returncode == 2 and len(plain) == 1 and plain[0].startswith("error: ")


def test_csv_refuses_the_lake_and_existing_files(df_lake, tmp_path):
    root = df_lake["root"]
    log = root / "gold" / "scored_events" / "_delta_log" / "00000000000000000000.json"
    before = _snapshot(root)
    link = tmp_path / "innocent.csv"
    link.symlink_to(log)
    for target in (log, root / "gold" / "new.csv", link):
        with pytest.raises(query.QueryError, match="inside the lake"):
            query.main(["SELECT * FROM drift", "--lake-root", str(root), "--csv", str(target), "--force"])
    assert _snapshot(root) == before and DeltaTable(str(root / "gold" / "scored_events")).version() == 1
    out = tmp_path / "out.csv"
    assert query.main(["SELECT feature FROM drift", "--lake-root", str(root), "--csv", str(out)]) == 0
    assert out.read_text() == "feature\ntier\n"
    with pytest.raises(query.QueryError, match="exists; pass --force"):
        query.main(["SELECT psi FROM drift", "--lake-root", str(root), "--csv", str(out)])
    assert query.main(["SELECT psi FROM drift", "--lake-root", str(root), "--csv", str(out), "--force"]) == 0
    assert out.read_text() == "psi\n0.01\n"


# ------------------------------------------------------------------ a grammar of dangerous statements

PATHS = ("{secret}", "{root}/gold/scored_events", "{root}/gold/scored_events/_delta_log", "/etc/passwd")
DANGEROUS_RELATIONS = (
    "csv.`{path}`",
    "text.`{path}`",
    "delta.`{path}`",
    "parquet.`{path}`",
    "json.`{path}`",
    "binaryFile.`{path}`",
    "`csv`.`{path}`",
    "CSV.`{path}`",
    "default.scored_events",
    "spark_catalog.default.x",
    "global_temp.x",
    "IDENTIFIER('csv.`{path}`')",
    "read_files('{path}')",
    "'{path}'",
)
DANGEROUS_CALLS = (
    "reflect('java.lang.System', 'getenv', 'HOME')",
    "java_method('java.lang.System', 'getenv', 'HOME')",
    "try_reflect('java.lang.System', 'getenv', 'HOME')",
    "ReFlEcT('org.apache.hadoop.fs.FileUtil', 'chmod', '{path}', '000')",
    "java_method('org.apache.hadoop.fs.FileUtil', 'symLink', '{path}', '{path}')",
    "from_protobuf(CAST('' AS BINARY), 'M', '{path}')",
    "xpath_string('<!DOCTYPE a [<!ENTITY e SYSTEM \"file://{path}\">]><a>&e;</a>', 'a')",
)
WRITES = (
    "INSERT INTO scored_events SELECT * FROM scored_events",
    "INSERT OVERWRITE DIRECTORY '{path}' SELECT 1",
    "CREATE TABLE t USING csv LOCATION '{path}' AS SELECT 1",
    "CREATE TEMPORARY VIEW v USING csv OPTIONS (path '{path}')",
    "DROP VIEW scored_events",
    "SET spark.sql.runSQLOnFiles=true",
    "ADD JAR '{path}'",
    "CREATE FUNCTION f AS 'java.lang.System'",
    "CACHE TABLE scored_events",
    "REFRESH TABLE scored_events",
    "DELETE FROM scored_events",
    "VACUUM scored_events RETAIN 0 HOURS",
    "COPY (SELECT 1) TO '{path}'",
    "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '{path}'",
)


def _query_around(rng: random.Random, relation: str, call: str) -> str:
    """A query that hides ``relation`` or ``call`` somewhere: top level, CTE, subquery, join, union."""
    shapes = (
        "SELECT {call} AS x FROM {rel}",
        "WITH a AS (SELECT {call} AS x FROM {rel}) SELECT * FROM a",
        "SELECT * FROM drift WHERE EXISTS (SELECT {call} FROM {rel})",
        "SELECT d.*, {call} AS x FROM drift d JOIN {rel} r ON true",
        "SELECT feature FROM drift UNION ALL SELECT CAST({call} AS STRING) FROM {rel}",
        "SELECT (SELECT max({call}) FROM {rel}) AS x",
        "EXPLAIN SELECT {call} FROM {rel}",
        "SELECT * FROM (SELECT {call} AS x FROM {rel}) s /* comment */ LIMIT 1",
    )
    return rng.choice(shapes).format(call=call, rel=relation)


def dangerous_statements(seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        kind = rng.choice(("relation", "call", "write"))
        path = rng.choice(PATHS)
        if kind == "relation":
            out.append(_query_around(rng, rng.choice(DANGEROUS_RELATIONS).replace("{path}", path), "1"))
        elif kind == "call":
            out.append(
                _query_around(
                    rng,
                    rng.choice(("drift", "scored_events")),
                    rng.choice(DANGEROUS_CALLS).replace("{path}", path),
                )
            )
        else:
            statement = rng.choice(WRITES).replace("{path}", path)
            out.append(
                rng.choice(
                    (
                        statement,
                        f"EXPLAIN {statement}",
                        f"SELECT 1; {statement}",
                        statement.lower(),
                        f"/* x */ {statement}",
                    )
                )
            )
    return out


def test_generated_dangerous_statements_never_run_in_the_default_engine(df_lake):
    root, secret = df_lake["root"], df_lake["secret"]
    before = _snapshot(root.parent)
    for sql in dangerous_statements(seed=20, count=400):
        statement = sql.format(root=root, secret=secret)
        with pytest.raises(DataFusionQueryError) as error:
            run_df(root, statement)
        assert SECRET not in str(error.value) and "\n" not in str(error.value), statement
    assert _snapshot(root.parent) == before


# ------------------------------------------------------------------ the Spark engine


@pytest.fixture()
def spark_lake(spark, lake_settings, tmp_path):
    root = Path(lake_settings.lake_path)
    drift = table_spec("monitoring_drift")
    day, t = dt.date(2025, 7, 1), dt.datetime(2025, 7, 1, 8)
    write_table(
        spark.createDataFrame(
            [(day, "tier", "input", 0.01, "ok", 0.25, 0.1, 3, 0.0, 10, "set@v0", "m", "1", t, "run")],
            drift.schema,
        ),
        drift,
        str(root),
        start=day,
        end=day,
    )
    broken = root / "silver" / "scan_events" / "_delta_log"
    broken.mkdir(parents=True)
    (broken / "00000000000000000000.json").write_text("{not json")
    secret = tmp_path / "secret.txt"
    secret.write_text(f"user:{SECRET}\n")
    return {"root": root, "secret": secret}


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM csv.`{secret}`",
        "SELECT * FROM text.`{secret}`",
        "SELECT * FROM delta.`{root}/monitoring/drift`",
        "SELECT reflect('java.lang.System', 'getenv', 'HOME')",
        "SELECT java_method('org.apache.hadoop.fs.FileUtil', 'chmod', '{root}/monitoring/drift/_delta_log', '000')",
        "SELECT java_method('org.apache.hadoop.fs.FileUtil', 'symLink', '/etc', '{root}/monitoring/drift/_delta_log/x')",
        "SELECT * FROM drift VERSION AS OF 0",
        "DESCRIBE HISTORY delta.`{root}/monitoring/drift`",
        "DESCRIBE HISTORY '{root}/monitoring/drift'",
        "SELECT * FROM IDENTIFIER('text.`{secret}`')",
    ],
)
def test_spark_engine_refuses_before_running(spark, spark_lake, sql):
    root, secret = spark_lake["root"], spark_lake["secret"]
    before = _snapshot(root.parent)
    with pytest.raises(query.ReadOnlyQueryError) as error:
        query.run_query(spark, root, sql.format(root=root, secret=secret))
    assert "\n" not in str(error.value) and SECRET not in str(error.value)
    assert _snapshot(root.parent) == before


def test_spark_engine_runtime_errors_and_broken_tables_are_one_line(spark, spark_lake):
    root = spark_lake["root"]
    frame = query.run_query(spark, root, "SELECT raise_error('boom') FROM drift")
    with pytest.raises(query.QueryError, match="the query failed while running: .*boom") as error:
        query.show(frame, 5, 20)
    assert "\n" not in str(error.value)
    assert query.run_query(spark, root, "SELECT feature FROM drift").first()["feature"] == "tier"
    with pytest.raises(query.QueryError, match=r"table scan_events \(.*\) cannot be read") as error:
        query.run_query(spark, root, "SELECT * FROM scan_events")
    assert "\n" not in str(error.value)


def test_generated_dangerous_statements_are_refused_by_the_spark_engine(spark, spark_lake):
    root, secret = spark_lake["root"], spark_lake["secret"]
    before = _snapshot(root.parent)
    for sql in dangerous_statements(seed=35, count=60):
        statement = sql.format(root=root, secret=secret)
        with pytest.raises(query.QueryError) as error:  # refused, or (a SELECT 1; ...) not parsed
            query.run_query(spark, root, statement)
        assert SECRET not in str(error.value) and "\n" not in str(error.value), statement
    assert _snapshot(root.parent) == before
