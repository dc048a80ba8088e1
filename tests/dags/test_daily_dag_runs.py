"""The daily DAG run for real: ``airflow dags test tracelake_daily <date>`` against an embedded
Airflow home (SQLite in a temporary folder) on a tiny generated lake; every task is a real
spark-submit of the project's entrypoint. (Its own file, so that the test runner can run it
beside the other DAG tests.)
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

import pytest
from airflow_helpers import (
    DAILY_ORDER,
    DAY,
    LOGICAL_DATE,
    ROOT,
    SCORING_TASKS,
    commit_run_ids,
    generated_day,
    migrated_home,
    run_airflow,
    task_states,
)
from delta.tables import DeltaTable
from pyspark.sql import functions as F

from tracelake.tables import table_spec


@pytest.fixture(scope="module")
def daily_lake(spark, test_settings, tmp_path_factory):
    """A tiny lake (one day, 200 EPCs), a champion model, and an Airflow home with its database migrated."""
    root = tmp_path_factory.mktemp("daily-dag")
    settings = generated_day(spark, test_settings, root)
    missing = sorted({path for path in SCORING_TASKS.values() if not (ROOT / path).is_file()})
    if not missing:
        from dag_champion import register_champion

        register_champion(spark, settings, root, DAY - dt.timedelta(days=14))
    home, env = migrated_home(root, settings)
    return {"settings": settings, "home": home, "env": env, "missing": missing}


@pytest.mark.slow
def test_airflow_dags_test_runs_the_whole_daily_dag(daily_lake, spark):
    """``airflow dags test tracelake_daily`` on the tiny lake: every task succeeds."""
    args = ["dags", "test", "tracelake_daily", LOGICAL_DATE]
    if daily_lake["missing"]:
        # Only while the scoring entrypoints are not in the tree yet: their tasks are marked
        # successful without running (named in the test report), every other task runs.
        args += ["--mark-success-pattern", "^(" + "|".join(SCORING_TASKS) + ")$"]
        print(f"scoring tasks marked successful, not run: {daily_lake['missing']} missing")
    done = run_airflow(daily_lake["env"], *args)
    states = task_states(daily_lake["home"], "tracelake_daily")
    assert done.returncode == 0 and "state=success" in done.stdout, done.stdout[-6000:] + done.stderr[-3000:]

    lake = str(daily_lake["settings"].lake_path)
    drift_table = table_spec("monitoring_drift").location(lake)
    drifted = Path(drift_table).exists() and (
        spark.read.format("delta")
        .load(drift_table)
        .where((F.col("event_date") == F.lit(DAY)) & (F.col("status") == "drift"))
        .count()
        > 0
    )
    # flag_retraining emits the retraining asset when monitoring/drift has a drift row on the day,
    # and skips otherwise.
    expected = dict.fromkeys(DAILY_ORDER, "success")
    expected["flag_retraining"] = "success" if drifted else "skipped"
    assert states == expected
    with sqlite3.connect(daily_lake["home"] / "airflow.db") as db:
        (events,) = db.execute(
            "SELECT count(*) FROM asset_event e JOIN asset a ON a.id = e.asset_id "
            "WHERE a.name = 'tracelake_retrain'"
        ).fetchone()
    assert events == (1 if drifted else 0)  # what schedules tracelake_training on drift

    # Each job wrote the interval's day, under the run id the DAG gave it.
    silver = table_spec("silver_scan_events").location(lake)
    features = table_spec("features_event_features").location(lake)
    for path, task in [(silver, "ingest"), (features, "build_features")]:
        days = spark.read.format("delta").load(path).groupBy("event_date").count().collect()
        assert [(r["event_date"], r["count"] > 0) for r in days] == [(DAY, True)]
        assert commit_run_ids(spark, path)[0].startswith(f"tracelake_daily.{task}.manual__")
    if not daily_lake["missing"]:
        scored = spark.read.format("delta").load(table_spec("gold_scored_events").location(lake))
        feature_rows = spark.read.format("delta").load(features).count()
        assert scored.where(F.col("event_date") == F.lit(DAY)).count() == feature_rows
        assert commit_run_ids(spark, table_spec("monitoring_drift").location(lake))[0].startswith(
            "tracelake_daily.monitor.manual__"
        )


@pytest.mark.slow
def test_a_failing_validation_stops_the_run_before_scoring(daily_lake, spark):
    """Silver holding a duplicated event: validate_silver fails and nothing after it runs."""
    lake = str(daily_lake["settings"].lake_path)
    silver = table_spec("silver_scan_events").location(lake)
    features = table_spec("features_event_features").location(lake)
    spark.read.format("delta").load(silver).limit(1).write.format("delta").mode("append").save(silver)
    features_version = (
        DeltaTable.forPath(spark, features).history(1).first().version if Path(features).exists() else None
    )

    done = run_airflow(
        daily_lake["env"],
        "dags",
        "test",
        "tracelake_daily",
        LOGICAL_DATE,
        "--mark-success-pattern",
        "^(ingest|validate_bronze)$",
    )
    states = task_states(daily_lake["home"], "tracelake_daily")
    assert states["validate_silver"] == "failed", done.stdout[-6000:]
    after = DAILY_ORDER[DAILY_ORDER.index("validate_silver") + 1 :]
    assert {task: states[task] for task in after} == dict.fromkeys(after, "upstream_failed")
    assert "state=failed" in done.stdout
    if features_version is not None:  # nothing downstream wrote
        assert DeltaTable.forPath(spark, features).history(1).first().version == features_version


@pytest.mark.slow
def test_training_dag_renders_its_cut_off_window_and_set_name(daily_lake):
    """The weekly run due 2025-07-14 03:00 trains as of 2025-07-07 03:00 (its interval's end) on 42 days
    before it, leaving out the labels.max_delay_days (14) most recent days whose labels may not be in yet."""
    assert run_airflow(daily_lake["env"], "dags", "reserialize", timeout=300).returncode == 0
    done = run_airflow(
        daily_lake["env"],
        "tasks",
        "render",
        "tracelake_training",
        "build_training_set",
        "2025-07-14",
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (
        "['--start-date', '2025-05-26', '--end-date', '2025-06-22', '--as-of', '2025-07-07T03:00:00+00:00', "
        "'--name', 'set-20250707t0300', '--master', 'local[2]']"
    ) in done.stdout
