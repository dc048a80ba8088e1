"""The DAGs: they parse cleanly and cheaply, wire the expected tasks in order, and run for real.

The structure tests parse dags/ in a child process (tests/dags/inspect_dags.py)
so that Airflow's settings and logging stay out of this process. The end-to-end
tests run ``airflow dags test tracelake_daily <date>`` against an embedded
Airflow home (SQLite in a temporary folder) on a tiny generated lake: every task
is a real spark-submit of the project's entrypoint.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from delta.tables import DeltaTable
from pyspark.sql import functions as F

from tracelake.tables import table_spec

ROOT = Path(__file__).resolve().parents[2]
DAGS = ROOT / "dags"
VENV_BIN = Path(sys.executable).parent
DAY = dt.date(2025, 7, 1)
# A manual run (dags test) with logical date D processes the last complete day before D: 2025-07-02 -> 2025-07-01.
LOGICAL_DATE = (DAY + dt.timedelta(days=1)).isoformat()
EPCS = 200
DAILY_ORDER = [
    "ingest", "validate_bronze", "validate_silver", "build_features", "validate_features",
    "score", "validate_scores", "monitor", "flag_retraining",
]
TRAINING_ORDER = ["build_training_set", "validate_training_set", "train", "promote"]
SCORING_TASKS = {"score": "batch_scoring/score.py", "validate_scores": "batch_scoring/score.py",
                 "monitor": "batch_scoring/monitor.py"}


def airflow_env(home: Path, lake: Path | None = None) -> dict[str, str]:
    """A hermetic environment for the airflow CLI: its own home and SQLite database, local Spark."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "TRACELAKE_", "PYSPARK_"))}
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW_CONN_SPARK_DEFAULT": json.dumps({"conn_type": "spark", "host": "local[2]"}),
        "PATH": os.pathsep.join([str(VENV_BIN), env.get("PATH", os.defpath)]),
        "TRACELAKE_PYTHON": sys.executable,
    })
    if lake is not None:
        env.update({
            # The DAGs' knobs for a test run: no retries (a failure is the answer), small drivers.
            "TRACELAKE_DAG_RETRIES": "0",
            "TRACELAKE_DAG_DRIVER_MEMORY": "1g",
            "TRACELAKE_LAKE_ROOT": str(lake),
            "TRACELAKE_SPARK__SHUFFLE_PARTITIONS": "2",
            "TRACELAKE_SPARK__CONF": json.dumps({
                "spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false",
                "spark.default.parallelism": "2",
            }),
        })
    return env


# ---------------------------------------------------------------- structure


@pytest.fixture(scope="module")
def parsed(tmp_path_factory) -> dict:
    home = tmp_path_factory.mktemp("airflow-parse")
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("inspect_dags.py")), str(DAGS)],
                          env=airflow_env(home), capture_output=True, text=True, timeout=180)
    lines = [line for line in done.stdout.splitlines() if line.startswith("INSPECT ")]
    assert done.returncode == 0 and lines, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(lines[-1][len("INSPECT "):])


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
    assert daily["max_active_runs"] == 1 and daily["doc_md"] and daily["timetable"] == "CronDataIntervalTimetable"
    tasks = daily["tasks"]
    apps = {t: Path(v["application"]).relative_to(ROOT).as_posix() for t, v in tasks.items() if v["application"]}
    assert apps == {
        "ingest": "spark_jobs/ingest.py", "validate_bronze": "spark_jobs/validate.py",
        "validate_silver": "spark_jobs/validate.py", "build_features": "spark_jobs/build_features.py",
        "validate_features": "spark_jobs/validate.py", "score": "batch_scoring/score.py",
        "validate_scores": "spark_jobs/validate.py", "monitor": "batch_scoring/monitor.py",
    }
    validated = {t: tasks[t]["application_args"][1] for t in apps if t.startswith("validate_")}
    assert validated == {"validate_bronze": "bronze_scan_events", "validate_silver": "silver_scan_events",
                         "validate_features": "features_event_features", "validate_scores": "gold_scored_events"}
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
    assert apps == {"build_training_set": "spark_jobs/build_training_set.py", "validate_training_set": "spark_jobs/validate.py",
                    "train": "spark_jobs/train.py", "promote": "spark_jobs/promote.py"}
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
    assert parsed["masters"] == {"local": "local[*]", "standalone": "spark://127.0.0.1:7077",
                                 "by_scheme": "spark://127.0.0.1:7077", "yarn": "yarn"}


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
    backfill = ["backfill", "create", "--dag-id", "tracelake_daily", "--from-date", "2025-07-01", "--to-date", "2025-07-03"]
    done = run_airflow(env, *backfill, "--max-active-runs", "1", timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    with sqlite3.connect(airflow_db["home"] / "airflow.db") as db:
        runs = db.execute("SELECT run_id, run_type, data_interval_start, data_interval_end FROM dag_run "
                          "WHERE dag_id = 'tracelake_daily' ORDER BY logical_date").fetchall()
    days = ["2025-07-01", "2025-07-02", "2025-07-03", "2025-07-04"]
    assert [(kind, start[:10], end[:10]) for _, kind, start, end in runs] == [
        ("backfill", days[i], days[i + 1]) for i in range(3)]

    middle = runs[1][0]  # the run of 2025-07-02 (its run id names when it was due: 2025-07-03)
    rendered = run_airflow(env, "tasks", "render", "tracelake_daily", "ingest", middle, timeout=300)
    assert rendered.returncode == 0, rendered.stdout[-3000:] + rendered.stderr[-3000:]
    assert "['--start-date', '2025-07-02', '--end-date', '2025-07-02', '--master', 'local[2]']" in rendered.stdout

    again = run_airflow(env, *backfill, "--reprocess-behavior", "completed", timeout=300)
    assert again.returncode != 0 and "Another backfill is running for Dag tracelake_daily" in again.stdout + again.stderr


def test_without_the_spark_connection_a_task_fails_before_spark_submit_naming_what_to_set(airflow_db):
    """No spark_default: the provider would fall back to `--master yarn`; the DAG's template stops first."""
    env = {k: v for k, v in airflow_db["env"].items() if k != "AIRFLOW_CONN_SPARK_DEFAULT"}
    done = run_airflow(env, "tasks", "render", "tracelake_daily", "ingest", "2025-07-10", timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode != 0
    assert ("Airflow connection 'spark_default' is not defined; create it, e.g. "
            "AIRFLOW_CONN_SPARK_DEFAULT='{\"conn_type\": \"spark\", \"host\": \"local[*]\"}'") in out


# ---------------------------------------------------------------- end to end


def run_airflow(env: dict[str, str], *args: str, timeout: int = 1500) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "airflow"), *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=str(ROOT))


def task_states(home: Path, dag_id: str) -> dict[str, str]:
    """Task states of the latest run of ``dag_id``, read from the embedded Airflow's SQLite database."""
    with sqlite3.connect(home / "airflow.db") as db:
        (run_id,) = db.execute("SELECT run_id FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", (dag_id,)).fetchone()
        rows = db.execute("SELECT task_id, state FROM task_instance WHERE dag_id = ? AND run_id = ?", (dag_id, run_id))
        return dict(rows.fetchall())


def commit_run_ids(spark, path: str) -> list[str]:
    """The run ids recorded in the Delta commits of a table (newest first)."""
    rows = DeltaTable.forPath(spark, path).history().select("userMetadata").collect()
    return [json.loads(r.userMetadata)["run_id"] for r in rows if r.userMetadata]


@pytest.fixture(scope="module")
def daily_lake(spark, test_settings, tmp_path_factory):
    """A tiny lake (one day, 200 EPCs), a champion model, and an Airflow home with its database migrated."""
    from spark_jobs import generate
    from tracelake.runs import job_run

    root = tmp_path_factory.mktemp("daily-dag")
    settings = test_settings.model_copy(update={
        "lake_root": str(root / "lake"),
        "generator": test_settings.generator.model_copy(update={"epcs": EPCS, "days": 1, "start_date": DAY.isoformat()}),
    })
    with job_run("generate", settings=settings, spark=spark, start=DAY, end=DAY) as run:
        generate.execute(run)
    missing = sorted({path for path in SCORING_TASKS.values() if not (ROOT / path).is_file()})
    if not missing:
        from dag_champion import register_champion

        register_champion(spark, settings, root, DAY - dt.timedelta(days=14))
    home = root / "airflow"
    home.mkdir()
    env = airflow_env(home, settings.lake_path)
    migrated = run_airflow(env, "db", "migrate", timeout=300)
    assert migrated.returncode == 0, migrated.stdout[-3000:] + migrated.stderr[-3000:]
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
    marked = sorted(p.name for p in (Path(lake) / daily_lake["settings"].monitoring.retrain_dir).glob("*.json"))
    # flag_retraining emits the retraining asset when monitoring marked the day, and skips otherwise.
    expected = {task: "success" for task in DAILY_ORDER}
    expected["flag_retraining"] = "success" if marked else "skipped"
    assert states == expected
    with sqlite3.connect(daily_lake["home"] / "airflow.db") as db:
        (events,) = db.execute("SELECT count(*) FROM asset_event e JOIN asset a ON a.id = e.asset_id "
                               "WHERE a.name = 'tracelake_retrain'").fetchone()
    assert events == (1 if marked else 0)  # what schedules tracelake_training on drift

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
            "tracelake_daily.monitor.manual__")


@pytest.mark.slow
def test_a_failing_validation_stops_the_run_before_scoring(daily_lake, spark):
    """Silver holding a duplicated event: validate_silver fails and nothing after it runs."""
    lake = str(daily_lake["settings"].lake_path)
    silver = table_spec("silver_scan_events").location(lake)
    features = table_spec("features_event_features").location(lake)
    spark.read.format("delta").load(silver).limit(1).write.format("delta").mode("append").save(silver)
    features_version = DeltaTable.forPath(spark, features).history(1).first().version if Path(features).exists() else None

    done = run_airflow(daily_lake["env"], "dags", "test", "tracelake_daily", LOGICAL_DATE,
                       "--mark-success-pattern", "^(ingest|validate_bronze)$")
    states = task_states(daily_lake["home"], "tracelake_daily")
    assert states["validate_silver"] == "failed", done.stdout[-6000:]
    after = DAILY_ORDER[DAILY_ORDER.index("validate_silver") + 1:]
    assert {task: states[task] for task in after} == {task: "upstream_failed" for task in after}
    assert "state=failed" in done.stdout
    if features_version is not None:  # nothing downstream wrote
        assert DeltaTable.forPath(spark, features).history(1).first().version == features_version


@pytest.fixture(scope="module")
def landing_lake(spark, test_settings, tmp_path_factory):
    """One generated landing day (200 EPCs) and a migrated Airflow home; nothing ingested yet."""
    from spark_jobs import generate
    from tracelake.runs import job_run

    root = tmp_path_factory.mktemp("one-task")
    settings = test_settings.model_copy(update={
        "lake_root": str(root / "lake"),
        "generator": test_settings.generator.model_copy(update={"epcs": EPCS, "days": 1, "start_date": DAY.isoformat()}),
    })
    with job_run("generate", settings=settings, spark=spark, start=DAY, end=DAY) as run:
        generate.execute(run)
    home = root / "airflow"
    home.mkdir()
    env = airflow_env(home, settings.lake_path)
    migrated = run_airflow(env, "db", "migrate", timeout=300)
    assert migrated.returncode == 0, migrated.stdout[-3000:] + migrated.stderr[-3000:]
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


@pytest.mark.slow
def test_training_dag_renders_its_cut_off_window_and_set_name(daily_lake):
    """The weekly run due 2025-07-14 03:00 trains as of 2025-07-07 03:00 (its interval's end) on 42 days
    before it, leaving out the labels.max_delay_days (14) most recent days whose labels may not be in yet."""
    assert run_airflow(daily_lake["env"], "dags", "reserialize", timeout=300).returncode == 0
    done = run_airflow(daily_lake["env"], "tasks", "render", "tracelake_training", "build_training_set", "2025-07-14",
                       timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert ("['--start-date', '2025-05-26', '--end-date', '2025-06-22', '--as-of', '2025-07-07T03:00:00+00:00', "
            "'--name', 'set-20250707t0300', '--master', 'local[2]']") in done.stdout


# ---------------------------------------------------------------- retries


def test_a_user_error_fails_the_task_at_once_and_other_failures_are_retried(tmp_path):
    """Exit 2 (the entrypoints' user error) raises AirflowFailException, which Airflow never retries; exit 1
    raises the provider's AirflowException, which goes through the task's retries with backoff."""
    env = airflow_env(tmp_path / "home")
    env["AIRFLOW_CONN_SPARK_DEFAULT"] = json.dumps({"conn_type": "spark", "host": "local[1]"})
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("operator_exit_codes.py")), str(DAGS),
                           str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULTS ")]
    assert done.returncode == 0 and lines, done.stdout[-3000:] + done.stderr[-3000:]
    assert json.loads(lines[-1][len("RESULTS "):]) == {"2": "AirflowFailException", "1": "AirflowException"}
