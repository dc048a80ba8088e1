"""What the DAG tests share: an embedded Airflow's environment and CLI, and the lake checks."""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from delta.tables import DeltaTable

ROOT = Path(__file__).resolve().parents[2]
DAGS = ROOT / "dags"
VENV_BIN = Path(sys.executable).parent
DAY = dt.date(2025, 7, 1)
# A manual run (dags test) with logical date D processes the last complete day before D: 2025-07-02 -> 2025-07-01.
LOGICAL_DATE = (DAY + dt.timedelta(days=1)).isoformat()
EPCS = 200
DAILY_ORDER = [
    "ingest",
    "validate_bronze",
    "validate_silver",
    "build_features",
    "validate_features",
    "score",  # validates the gold it wrote (no separate validate_scores task)
    "monitor",
    "flag_retraining",
]
TRAINING_ORDER = ["build_training_set", "validate_training_set", "train", "promote"]
SCORING_TASKS = {
    "score": "batch_scoring/score.py",
    "monitor": "batch_scoring/monitor.py",
}


def airflow_env(home: Path, lake: Path | None = None) -> dict[str, str]:
    """A hermetic environment for the airflow CLI: its own home and SQLite database, local Spark."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "TRACELAKE_", "PYSPARK_"))}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW_CONN_SPARK_DEFAULT": json.dumps({"conn_type": "spark", "host": "local[2]"}),
            "PATH": os.pathsep.join([str(VENV_BIN), env.get("PATH", os.defpath)]),
            "TRACELAKE_PYTHON": sys.executable,
        }
    )
    if lake is not None:
        env.update(
            {
                # The DAGs' knobs for a test run: no retries (a failure is the answer), small drivers.
                "TRACELAKE_DAG_RETRIES": "0",
                "TRACELAKE_DAG_DRIVER_MEMORY": "1g",
                "TRACELAKE_LAKE_ROOT": str(lake),
                "TRACELAKE_SPARK__SHUFFLE_PARTITIONS": "2",
                "TRACELAKE_SPARK__CONF": json.dumps(
                    {
                        "spark.ui.enabled": "false",
                        "spark.ui.showConsoleProgress": "false",
                        "spark.default.parallelism": "2",
                    }
                ),
            }
        )
    return env


def run_airflow(env: dict[str, str], *args: str, timeout: int = 1500) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(VENV_BIN / "airflow"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(ROOT),
    )


def task_states(home: Path, dag_id: str) -> dict[str, str]:
    """Task states of the latest run of ``dag_id``, read from the embedded Airflow's SQLite database."""
    with sqlite3.connect(home / "airflow.db") as db:
        (run_id,) = db.execute(
            "SELECT run_id FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", (dag_id,)
        ).fetchone()
        rows = db.execute(
            "SELECT task_id, state FROM task_instance WHERE dag_id = ? AND run_id = ?", (dag_id, run_id)
        )
        return dict(rows.fetchall())


def commit_run_ids(spark, path: str) -> list[str]:
    """The run ids recorded in the Delta commits of a table (newest first)."""
    rows = DeltaTable.forPath(spark, path).history().select("userMetadata").collect()
    return [json.loads(r.userMetadata)["run_id"] for r in rows if r.userMetadata]


def generated_day(spark, test_settings, root: Path):
    """Settings of a lake under ``root`` with one generated landing day (EPCS EPCs) in it."""
    from spark_jobs import generate
    from tracelake.runs import job_run

    settings = test_settings.model_copy(
        update={
            "lake_root": str(root / "lake"),
            "generator": test_settings.generator.model_copy(
                update={"epcs": EPCS, "days": 1, "start_date": DAY.isoformat()}
            ),
        }
    )
    with job_run("generate", settings=settings, spark=spark, start=DAY, end=DAY) as run:
        generate.execute(run)
    return settings


def migrated_home(root: Path, settings) -> tuple[Path, dict[str, str]]:
    """An Airflow home under ``root`` for this lake, its database migrated; (home, environment)."""
    home = root / "airflow"
    home.mkdir()
    env = airflow_env(home, settings.lake_path)
    migrated = run_airflow(env, "db", "migrate", timeout=300)
    assert migrated.returncode == 0, migrated.stdout[-3000:] + migrated.stderr[-3000:]
    return home, env
