"""`tracelake query`, Spark engine: views named by table, read-only statements only, CSV output.

The default (DataFusion) engine and the sandbox's attack statements are in test_query_sandbox.py."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from tracelake import query
from tracelake.tables import read_table, table_spec, write_table

DAY = dt.date(2025, 7, 1)


@pytest.fixture()
def lake(spark, lake_settings):
    """A lake holding a tiny gold/scored_events day and a monitoring/drift day."""
    root = str(lake_settings.lake_path)
    scored = table_spec("gold_scored_events")
    t = dt.datetime(2025, 7, 1, 8, 0)
    rows = []
    for i, (location, score) in enumerate([("LOC1", 0.9), ("LOC1", 0.2), ("LOC2", 0.7)]):
        p = [score, 0.1, 0.1, 0.1, 0.1]
        rows.append(
            (
                f"e{i}",
                f"epc{i}",
                t,
                location,
                DAY,
                *p,
                *(v >= 0.5 for v in p),
                score,
                score >= 0.5,
                "m",
                "1",
                "r",
                t,
                "run",
            )
        )
    write_table(spark.createDataFrame(rows, scored.schema), scored, root, start=DAY, end=DAY)
    drift = table_spec("monitoring_drift")
    write_table(
        spark.createDataFrame(
            [
                (
                    DAY,
                    "tier",
                    "input",
                    0.01,
                    "ok",
                    0.25,
                    0.1,
                    3,
                    0.0,
                    10,
                    "training_set:x@v0",
                    "m",
                    "1",
                    t,
                    "run",
                )
            ],
            drift.schema,
        ),
        drift,
        root,
        start=DAY,
        end=DAY,
    )
    return root


def test_views_are_named_by_table_and_short_name(spark, lake):
    views = query.lake_views(spark, lake)
    assert {"gold_scored_events", "scored_events", "monitoring_drift", "drift"} <= set(views)
    assert views["scored_events"].name == "gold_scored_events"


def test_select_runs_over_the_views(spark, lake):
    got = query.run_query(
        spark,
        lake,
        "SELECT location_id, count(*) AS anomalies FROM scored_events "
        "WHERE anomaly_flag GROUP BY location_id",
    )
    assertDataFrameEqual(
        got, spark.createDataFrame([("LOC1", 1), ("LOC2", 1)], "location_id string, anomalies bigint")
    )
    joined = query.run_query(
        spark,
        lake,
        "WITH top AS (SELECT * FROM scored_events ORDER BY anomaly_score DESC "
        "LIMIT 1) SELECT t.event_id, d.status FROM top t JOIN drift d USING (event_date)",
    )
    assertDataFrameEqual(joined, spark.createDataFrame([("e0", "ok")], "event_id string, status string"))


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO scored_events SELECT * FROM scored_events",
        "WITH x AS (SELECT * FROM scored_events) INSERT OVERWRITE scored_events SELECT * FROM x",
        "DELETE FROM gold_scored_events WHERE anomaly_score > 0.5",
        "DROP VIEW scored_events",
        "CREATE TABLE copy USING delta AS SELECT * FROM scored_events",
        "SET spark.sql.shuffle.partitions=1",
    ],
)
def test_write_statements_are_refused_before_running(spark, lake, sql):
    before = read_table(spark, table_spec("gold_scored_events"), lake).localCheckpoint()
    with pytest.raises(query.ReadOnlyQueryError, match="read-only statements only"):
        query.run_query(spark, lake, sql)
    assertDataFrameEqual(read_table(spark, table_spec("gold_scored_events"), lake), before)


def test_refused_delta_maintenance_and_allowed_metadata(spark, lake):
    for sql in (
        "VACUUM scored_events",
        "OPTIMIZE scored_events",
        "RESTORE TABLE scored_events TO VERSION AS OF 0",
    ):
        with pytest.raises(query.ReadOnlyQueryError):
            query.check_read_only(spark, sql)
    for sql in (
        "DESCRIBE scored_events",
        "SHOW TABLES",
        "EXPLAIN SELECT * FROM scored_events",
        "DESCRIBE HISTORY scored_events",
        "SELECT * FROM scored_events s WHERE EXISTS (SELECT 1 FROM drift d WHERE d.event_date = s.event_date)",
    ):
        query.check_read_only(spark, sql)
    with pytest.raises(query.QueryError, match="cannot parse"):
        query.check_read_only(spark, "SELECT 1; DROP TABLE x")


def test_main_prints_a_table_and_writes_csv(spark, lake, lake_settings, tmp_path, capsys):
    csv = tmp_path / "out" / "top.csv"
    args = [
        "SELECT event_id, anomaly_score FROM scored_events ORDER BY anomaly_score DESC",
        "--csv",
        str(csv),
        "--lake-root",
        lake,
        "--master",
        lake_settings.spark.master,
        "--engine",
        "spark",
    ]
    assert query.main(args) == 0
    printed = capsys.readouterr().out
    assert "|event_id|anomaly_score|" in printed and "wrote 3 row(s)" in printed
    pd.testing.assert_frame_equal(
        pd.read_csv(csv), pd.DataFrame({"event_id": ["e0", "e2", "e1"], "anomaly_score": [0.9, 0.7, 0.2]})
    )
    assert spark.table("scored_events").where(F.col("event_id") == "e0").count() == 1


def test_delta_history_and_detail_of_a_view(spark, lake):
    """DESCRIBE HISTORY / DETAIL accept the view names (Delta itself only takes tables or paths)."""
    history = query.run_query(spark, lake, "DESCRIBE HISTORY scored_events").select("version", "operation")
    assertDataFrameEqual(history, spark.createDataFrame([(0, "WRITE")], "version bigint, operation string"))
    detail = (
        query.run_query(spark, lake, "describe detail `drift`").select("location", "partitionColumns").first()
    )
    assert detail["location"].endswith("monitoring/drift") and detail["partitionColumns"] == ["event_date"]
