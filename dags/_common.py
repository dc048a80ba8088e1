"""Wiring shared by the tracelake DAGs: paths, task defaults, one Spark task per entrypoint.

Parse-time cheap on purpose: only the standard library and Airflow are
imported here; pyspark, tracelake and the ML stack are loaded by the
spark-submit processes (and by a task's body when it runs), never when the
DAG processor parses the files.

Environment (read when the DAG files are parsed; set it for the DAG processor
and the workers alike):

- ``TRACELAKE_HOME``: the project checkout that holds ``spark_jobs/`` and
  ``batch_scoring/`` (default: the folder above ``dags/``).
- ``TRACELAKE_PYTHON``: interpreter of the project's environment, used by
  spark-submit for the driver and the executors (default:
  ``$TRACELAKE_HOME/.venv/bin/python`` when it exists, else ``python3``).
- ``TRACELAKE_SPARK_CONN_ID``: Airflow connection of the Spark master
  (default ``spark_default``; ``local[*]`` is
  ``{"conn_type": "spark", "host": "local[*]"}``, a standalone master is
  ``{"conn_type": "spark", "host": "spark://HOST", "port": 7077}``).
- ``TRACELAKE_DAG_RETRIES`` (default 3; a job's user error, exit code 2, is
  never retried), ``TRACELAKE_DAG_RETRY_DELAY_MINUTES``
  (default 5, doubled after each try up to ``TRACELAKE_DAG_MAX_RETRY_DELAY_MINUTES``,
  default 60), ``TRACELAKE_DAG_VALIDATION_RETRIES`` (default 0: a failed
  expectation fails at once), ``TRACELAKE_DAG_DRIVER_MEMORY`` (default ``2g``).

The jobs read their own settings (lake root, Spark tuning, MLflow) from
``TRACELAKE_CONFIG`` / ``TRACELAKE_*`` in the environment, which spark-submit
inherits from the Airflow worker.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import os
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

TRACELAKE_HOME = Path(os.environ.get("TRACELAKE_HOME") or Path(__file__).resolve().parent.parent)
SPARK_CONN_ID = os.environ.get("TRACELAKE_SPARK_CONN_ID", "spark_default")
DRIVER_MEMORY = os.environ.get("TRACELAKE_DAG_DRIVER_MEMORY", "2g")
RETRIES = int(os.environ.get("TRACELAKE_DAG_RETRIES", "3"))
RETRY_DELAY = dt.timedelta(minutes=float(os.environ.get("TRACELAKE_DAG_RETRY_DELAY_MINUTES", "5")))
# A failed expectation is a property of the data: retrying the same data gives the
# same verdict, so validation tasks fail at once (fix the data, then clear the task).
VALIDATION_RETRIES = int(os.environ.get("TRACELAKE_DAG_VALIDATION_RETRIES", "0"))
MAX_RETRY_DELAY = dt.timedelta(minutes=float(os.environ.get("TRACELAKE_DAG_MAX_RETRY_DELAY_MINUTES", "60")))

# First day the DAGs know about: the generator's default window starts here.
START_DATE = dt.datetime(2025, 7, 1, tzinfo=dt.UTC)

# Drift found by monitoring: `flag_retraining` of the daily DAG emits an event
# on this asset when `monitoring/drift` holds a `drift` row on a day of its interval,
# and the training DAG runs on it (besides its weekly schedule).
RETRAIN_ASSET_NAME = "tracelake_retrain"
RETRAIN_ASSET_URI = "file:///tracelake/monitoring/_retrain"


def core_module(name: str) -> ModuleType:
    """``tracelake/<name>.py`` of the checkout, loaded from its file without importing the package.

    The pipeline's declaration (``tracelake/pipeline.py``) and the CLI's command table
    (``tracelake/cli.py``) import only the standard library; the package itself, and what its
    other modules import, stay out of the DAG processor.
    """
    qualified = f"_tracelake_{name}"
    if qualified in sys.modules:
        return sys.modules[qualified]
    spec = importlib.util.spec_from_file_location(qualified, TRACELAKE_HOME / "tracelake" / f"{name}.py")
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load tracelake/{name}.py from {TRACELAKE_HOME}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[qualified] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def retrain_asset():
    """The asset the daily DAG updates on drift and the training DAG is scheduled on."""
    from airflow.sdk import Asset

    return Asset(name=RETRAIN_ASSET_NAME, uri=RETRAIN_ASSET_URI)


# Longest a task may run before Airflow kills it (then it is retried).
TIMEOUTS = {
    "ingest": dt.timedelta(hours=2),
    "validate": dt.timedelta(minutes=45),
    "features": dt.timedelta(hours=2),
    "score": dt.timedelta(hours=2),
    "monitor": dt.timedelta(minutes=45),
    "training-set": dt.timedelta(hours=2),
    "train": dt.timedelta(hours=6),
    "promote": dt.timedelta(minutes=45),
    "check": dt.timedelta(minutes=5),
}


def python_executable() -> str:
    """The interpreter spark-submit runs the driver and executors with."""
    explicit = os.environ.get("TRACELAKE_PYTHON")
    if explicit:
        return explicit
    venv = TRACELAKE_HOME / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else "python3"


def default_args(owner: str = "tracelake") -> dict[str, Any]:
    """Task defaults: retries with exponential backoff; each task sets its own timeout."""
    return {
        "owner": owner,
        "depends_on_past": False,
        "retries": RETRIES,
        "retry_delay": RETRY_DELAY,
        "retry_exponential_backoff": True,
        "max_retry_delay": MAX_RETRY_DELAY,
    }


# ---- template macros (plain functions; registered as user_defined_macros) ----


def spark_master(conn: Any) -> str:
    """The master URL spark-submit gets from the connection, in the provider hook's own way.

    The jobs take their master from their settings (default ``local[*]``),
    which would override spark-submit's ``--master``; the DAG therefore passes
    the connection's master to each job's ``--master`` as well, so the
    connection stays the one place that names the cluster.
    """
    if conn is None:
        raise ValueError(
            f"Airflow connection {SPARK_CONN_ID!r} is not defined; create it, e.g. "
            f'AIRFLOW_CONN_{SPARK_CONN_ID.upper()}=\'{{"conn_type": "spark", "host": "local[*]"}}\' '
            "or with host spark://HOST and port 7077 for a standalone master"
        )
    host = conn.host or ""
    if conn.conn_type == "spark" and host and ("://" in host or not conn.port):
        master = host
    else:
        master = f"{conn.conn_type}://{host}"
    return f"{master}:{conn.port}" if conn.port else master


def last_day(data_interval_start: dt.datetime, data_interval_end: dt.datetime) -> str:
    """Inclusive last day (YYYY-MM-DD) of a data interval whose end is exclusive."""
    end = data_interval_end - dt.timedelta(microseconds=1)
    return max(data_interval_start, end).date().isoformat()


def as_of(dag_run: Any) -> dt.datetime:
    """The training cut-off: the data interval's end, else (asset-triggered runs) when the run was due."""
    when = getattr(dag_run, "data_interval_end", None) or dag_run.run_after
    return when.astimezone(dt.UTC)


def day_before(when: dt.datetime, days: int) -> str:
    """The day (YYYY-MM-DD) ``days`` days before ``when``'s day: 1 = the last full day before it."""
    return (when.astimezone(dt.UTC).date() - dt.timedelta(days=int(days))).isoformat()


def label_max_delay_days(configured: Any = None) -> int:
    """``configured`` when given, else the project's ``labels.max_delay_days`` (read at render time, not parse time)."""
    if configured not in (None, ""):
        return int(configured)
    from tracelake.config import load_settings

    return load_settings().label_max_delay_days


def set_name(dag_run: Any) -> str:
    """Name of the training set a training run builds: ``set-<cut-off as yyyymmddthhmm>`` (canonical: lower case)."""
    return f"set-{as_of(dag_run):%Y%m%dt%H%M}"


def run_id_for(dag_id: str, task_id: str, run_id: str, try_number: int) -> str:
    """TRACELAKE_RUN_ID of one task try: recorded in the Delta commits and logs of the job."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{dag_id}.{task_id}.{run_id}.try{try_number}").strip("-")


MACROS = {
    "tl_spark_master": spark_master,
    "tl_last_day": last_day,
    "tl_as_of": as_of,
    "tl_day_before": day_before,
    "tl_set_name": set_name,
    "tl_label_max_delay_days": label_max_delay_days,
    "tl_run_id": run_id_for,
}

FIRST_DAY = "{{ data_interval_start | ds }}"
LAST_DAY = "{{ tl_last_day(data_interval_start, data_interval_end) }}"
DATE_ARGS = ["--start-date", FIRST_DAY, "--end-date", LAST_DAY]


def task_env(python: str) -> dict[str, str]:
    """Environment of a task's process (on top of the worker's): interpreter, run id, PATH.

    The provider runs ``spark-submit`` from PATH; the environment's ``bin``
    folder (where pip put pyspark's ``spark-submit``) goes first so that the
    project's pyspark runs the job even when the worker's PATH lacks it.
    """
    env = {
        "PYSPARK_PYTHON": python,
        "PYSPARK_DRIVER_PYTHON": python,
        "TRACELAKE_RUN_ID": "{{ tl_run_id(dag.dag_id, task.task_id, run_id, ti.try_number) }}",
    }
    bin_dir = Path(python).parent
    if (bin_dir / "spark-submit").exists():
        env["PATH"] = os.pathsep.join([str(bin_dir), os.environ.get("PATH", os.defpath)])
    return env


MASTER_ARG = ["--master", f"{{{{ tl_spark_master(conn.get('{SPARK_CONN_ID}')) }}}}"]


def spark_task(
    task_id: str,
    entrypoint: str,
    args: list[str],
    *,
    timeout: str,
    doc_md: str,
    **kwargs: Any,
):
    """One task = one ``spark-submit <entrypoint> <args> --master <connection's master>``.

    A job's user error (exit 2) fails the task at once; other failures are retried (_operators.py).
    """
    from _operators import TracelakeSparkSubmitOperator

    python = python_executable()
    return TracelakeSparkSubmitOperator(
        task_id=task_id,
        application=str(TRACELAKE_HOME / entrypoint),
        application_args=[*args, *MASTER_ARG],
        conn_id=SPARK_CONN_ID,
        name=f"tracelake-{task_id}",
        driver_memory=DRIVER_MEMORY,
        conf={
            "spark.pyspark.python": python,
            "spark.pyspark.driver.python": python,
        },
        env_vars=task_env(python),
        execution_timeout=TIMEOUTS[timeout],
        doc_md=doc_md,
        **kwargs,
    )
