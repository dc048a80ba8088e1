"""The DAGs: they parse cleanly and cheaply, wire the expected tasks in order, and run a task for real.

The structure tests parse dags/ in a child process (tests/dags/inspect_dags.py)
so that Airflow's settings and logging stay out of this process. Whole DAG runs
are in test_daily_dag_runs.py.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from airflow_helpers import (
    DAGS,
    DAILY_ORDER,
    DAY,
    LOGICAL_DATE,
    ROOT,
    TRAINING_ORDER,
    airflow_env,
    commit_run_ids,
    generated_day,
    migrated_home,
    run_airflow,
)

from tracelake.tables import table_spec

# ---------------------------------------------------------------- structure


@pytest.fixture(scope="module")
def parsed(tmp_path_factory) -> dict:
    home = tmp_path_factory.mktemp("airflow-parse")
    done = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("inspect_dags.py")), str(DAGS)],
        env=airflow_env(home),
        capture_output=True,
        text=True,
        timeout=180,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("INSPECT ")]
    assert done.returncode == 0 and lines, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(lines[-1][len("INSPECT ") :])


def chain_of(dag: dict) -> list[str]:
    """The tasks in order, checking that each has exactly one downstream task (a straight chain)."""
    tasks = dag["tasks"]
    roots = [t for t in tasks if not any(t in other["downstream"] for other in tasks.values())]
    assert len(roots) == 1, roots
    order = [roots[0]]
    while tasks[order[-1]]["downstream"]:
        assert len(tasks[order[-1]]["downstream"]) == 1, (order[-1], tasks[order[-1]]["downstream"])
        order.append(tasks[order[-1]]["downstream"][0])
    assert len(order) == len(tasks)
    return order


def test_every_dag_imports_without_errors_and_without_heavy_imports(parsed):
    assert parsed["import_errors"] == {}
    assert set(parsed["dags"]) == {"tracelake_daily", "tracelake_training"}
    # Parsing imports neither Spark, the ML stack nor the project: they load in the tasks' processes.
    assert parsed["heavy_modules_after_parse"] == []


def test_daily_dag_tasks_in_order(parsed):
    daily = parsed["dags"]["tracelake_daily"]
    assert chain_of(daily) == DAILY_ORDER
    assert (
        daily["max_active_runs"] == 1
        and daily["doc_md"]
        and daily["timetable"] == "CronDataIntervalTimetable"
    )
    tasks = daily["tasks"]
    apps = {
        t: Path(v["application"]).relative_to(ROOT).as_posix() for t, v in tasks.items() if v["application"]
    }
    assert apps == {
        "ingest": "spark_jobs/ingest.py",
        "validate_bronze": "spark_jobs/validate.py",
        "validate_silver": "spark_jobs/validate.py",
        "build_features": "spark_jobs/build_features.py",
        "validate_features": "spark_jobs/validate.py",
        "score": "batch_scoring/score.py",
        "monitor": "batch_scoring/monitor.py",
    }
    validated = {t: tasks[t]["application_args"][1] for t in apps if t.startswith("validate_")}
    assert validated == {
        "validate_bronze": "bronze_scan_events",
        "validate_silver": "silver_scan_events",
        "validate_features": "features_event_features",
    }
    # Gold is validated once per run, by the score task itself (batch_scoring/score.py gates on the
    # suite gold_scored_events before it succeeds; tests/batch_scoring/test_gold_validation.py), and
    # the DAG documents that gate.
    assert "gold_scored_events" in tasks["score"]["doc_md_text"]
    for task_id in apps:
        args = tasks[task_id]["application_args"]
        assert args[args.index("--start-date") + 1] == "{{ data_interval_start | ds }}"
        assert "tl_last_day(data_interval_start, data_interval_end)" in args[args.index("--end-date") + 1]
        assert "spark_default" in args[args.index("--master") + 1]
    assert tasks["flag_retraining"]["outlets"] == ["tracelake_retrain"]


def test_training_dag_tasks_in_order_weekly_and_on_drift(parsed):
    training = parsed["dags"]["tracelake_training"]
    assert chain_of(training) == TRAINING_ORDER
    assert training["max_active_runs"] == 1 and training["doc_md"]
    assert training["timetable"] == "AssetOrTimeSchedule"
    assert training["schedule_assets"] == ["tracelake_retrain"]  # the daily DAG's drift flag
    apps = {t: Path(v["application"]).relative_to(ROOT).as_posix() for t, v in training["tasks"].items()}
    assert apps == {
        "build_training_set": "spark_jobs/build_training_set.py",
        "validate_training_set": "spark_jobs/validate.py",
        "train": "spark_jobs/train.py",
        "promote": "spark_jobs/promote.py",
    }
    assert all((ROOT / app).is_file() for app in apps.values())


def test_every_task_retries_with_backoff_and_has_a_timeout_and_docs(parsed):
    for dag_id, dag in parsed["dags"].items():
        for task_id, task in dag["tasks"].items():
            where = f"{dag_id}.{task_id}"
            assert task["execution_timeout_s"] and task["execution_timeout_s"] > 0, where
            assert task["doc_md"], where
            assert task["retry_exponential_backoff"], where
            if task["operator"] == "TracelakeSparkSubmitOperator":
                assert task["conn_id"] == "spark_default", where
                # Validation verdicts do not change on retry; every other Spark step retries.
                assert task["retries"] == (0 if "validate" in task_id else 3), where
                assert task["max_retry_delay_s"] >= task["retry_delay_s"] > 0, where


def test_master_comes_from_the_connection_as_the_provider_reads_it(parsed):
    assert parsed["masters"] == {
        "local": "local[*]",
        "standalone": "spark://127.0.0.1:7077",
        "by_scheme": "spark://127.0.0.1:7077",
        "yarn": "yarn",
    }


# ---------------------------------------------------------------- backfill


@pytest.fixture(scope="module")
def airflow_db(tmp_path_factory) -> dict:
    """An embedded Airflow home (SQLite) with its database migrated and the DAGs serialized; no scheduler."""
    home = tmp_path_factory.mktemp("airflow-backfill")
    env = airflow_env(home)
    for command in (["db", "migrate"], ["dags", "reserialize"]):
        done = run_airflow(env, *command, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return {"home": home, "env": env}


def test_backfill_create_makes_one_run_per_day_that_processes_that_day(airflow_db):
    """`airflow backfill create --from-date D1 --to-date D3`: one run per day whose data interval is
    that day, and each task's arguments name exactly that day (what the operator guide promises);
    a second backfill of the DAG is refused while the first is running (no day processed twice at once)."""
    env = airflow_db["env"]
    backfill = [
        "backfill",
        "create",
        "--dag-id",
        "tracelake_daily",
        "--from-date",
        "2025-07-01",
        "--to-date",
        "2025-07-03",
    ]
    done = run_airflow(env, *backfill, "--max-active-runs", "1", timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    with sqlite3.connect(airflow_db["home"] / "airflow.db") as db:
        runs = db.execute(
            "SELECT run_id, run_type, data_interval_start, data_interval_end FROM dag_run "
            "WHERE dag_id = 'tracelake_daily' ORDER BY logical_date"
        ).fetchall()
    days = ["2025-07-01", "2025-07-02", "2025-07-03", "2025-07-04"]
    assert [(kind, start[:10], end[:10]) for _, kind, start, end in runs] == [
        ("backfill", days[i], days[i + 1]) for i in range(3)
    ]

    middle = runs[1][0]  # the run of 2025-07-02 (its run id names when it was due: 2025-07-03)
    rendered = run_airflow(env, "tasks", "render", "tracelake_daily", "ingest", middle, timeout=300)
    assert rendered.returncode == 0, rendered.stdout[-3000:] + rendered.stderr[-3000:]
    assert (
        "['--start-date', '2025-07-02', '--end-date', '2025-07-02', '--master', 'local[2]']"
        in rendered.stdout
    )

    again = run_airflow(env, *backfill, "--reprocess-behavior", "completed", timeout=300)
    assert (
        again.returncode != 0
        and "Another backfill is running for Dag tracelake_daily" in again.stdout + again.stderr
    )


def test_without_the_spark_connection_a_task_fails_before_spark_submit_naming_what_to_set(airflow_db):
    """No spark_default: the provider would fall back to `--master yarn`; the DAG's template stops first."""
    env = {k: v for k, v in airflow_db["env"].items() if k != "AIRFLOW_CONN_SPARK_DEFAULT"}
    done = run_airflow(env, "tasks", "render", "tracelake_daily", "ingest", "2025-07-10", timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode != 0
    assert (
        "Airflow connection 'spark_default' is not defined; create it, e.g. "
        'AIRFLOW_CONN_SPARK_DEFAULT=\'{"conn_type": "spark", "host": "local[*]"}\''
    ) in out


@pytest.fixture(scope="module")
def landing_lake(spark, test_settings, tmp_path_factory):
    """One generated landing day (200 EPCs) and a migrated Airflow home; nothing ingested yet."""
    root = tmp_path_factory.mktemp("one-task")
    settings = generated_day(spark, test_settings, root)
    _, env = migrated_home(root, settings)
    return {"settings": settings, "env": env}


@pytest.mark.slow
@pytest.mark.spark35
def test_a_task_runs_its_entrypoint_through_the_spark_provider(landing_lake, spark):
    """``airflow tasks test tracelake_daily ingest``: the installed Spark provider (6.x with Spark 4,
    5.x on the 3.5 line) spark-submits the ingest entrypoint, which writes the interval's day to silver."""
    done = run_airflow(landing_lake["env"], "tasks", "test", "tracelake_daily", "ingest", LOGICAL_DATE)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    silver = table_spec("silver_scan_events").location(str(landing_lake["settings"].lake_path))
    days = spark.read.format("delta").load(silver).groupBy("event_date").count().collect()
    assert [(r["event_date"], r["count"] > 0) for r in days] == [(DAY, True)]
    assert commit_run_ids(spark, silver)[0].startswith("tracelake_daily.ingest.")


# ---------------------------------------------------------------- retries


def test_a_user_error_fails_the_task_at_once_and_other_failures_are_retried(tmp_path):
    """Exit 2 (the entrypoints' user error) raises AirflowFailException, which Airflow never retries; exit 1
    raises the provider's AirflowException, which goes through the task's retries with backoff."""
    env = airflow_env(tmp_path / "home")
    env["AIRFLOW_CONN_SPARK_DEFAULT"] = json.dumps({"conn_type": "spark", "host": "local[1]"})
    done = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("operator_exit_codes.py")), str(DAGS), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULTS ")]
    assert done.returncode == 0 and lines, done.stdout[-3000:] + done.stderr[-3000:]
    assert json.loads(lines[-1][len("RESULTS ") :]) == {"2": "AirflowFailException", "1": "AirflowException"}
