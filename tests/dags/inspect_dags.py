"""Parse dags/ the way the DAG processor does and print what the tests check, as JSON.

Run in a child process (``python tests/dags/inspect_dags.py``) with AIRFLOW_HOME set to a
temporary folder, so that Airflow's settings and logging stay out of the test process.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HEAVY = ("pyspark", "torch", "mlflow", "great_expectations", "tracelake", "onnxruntime", "pandas", "delta")


def schedule_assets(condition) -> list[str]:
    """Names of the assets a schedule waits on (a single asset, or any/all of several)."""
    if condition is None:
        return []
    if hasattr(condition, "objects"):
        return sorted(name for item in condition.objects for name in schedule_assets(item))
    return [getattr(condition, "name", str(condition))]


def describe(dag) -> dict:
    tasks = {}
    for task_id, task in dag.task_dict.items():
        tasks[task_id] = {
            "operator": type(task).__name__,
            "downstream": sorted(task.downstream_task_ids),
            "retries": task.retries,
            "retry_exponential_backoff": bool(task.retry_exponential_backoff),
            "retry_delay_s": task.retry_delay.total_seconds(),
            "max_retry_delay_s": task.max_retry_delay.total_seconds() if task.max_retry_delay else None,
            "execution_timeout_s": task.execution_timeout.total_seconds() if task.execution_timeout else None,
            "doc_md": bool(task.doc_md),
            "doc_md_text": task.doc_md or "",
            "application": getattr(task, "application", None),
            "application_args": getattr(task, "application_args", None),
            "conn_id": getattr(task, "conn_id", None) or getattr(task, "_conn_id", None),
            "outlets": sorted(getattr(a, "name", str(a)) for a in task.outlets),
        }
    return {
        "tasks": tasks,
        "max_active_runs": dag.max_active_runs,
        "catchup": dag.catchup,
        "doc_md": bool(dag.doc_md),
        "timetable": type(dag.timetable).__name__,
        "timetable_summary": getattr(dag.timetable, "summary", None)
        or getattr(dag.timetable, "description", None),
        "schedule_assets": schedule_assets(getattr(dag.timetable, "asset_condition", None)),
    }


def main(dag_folder: str) -> int:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=dag_folder)
    heavy = sorted({name.split(".")[0] for name in sys.modules if name.split(".")[0] in HEAVY})
    sys.path.insert(0, dag_folder)
    import _common  # the DAGs' helpers: pure functions, checked here with Airflow's own Connection class
    from airflow.models.connection import Connection

    masters = {
        uri: _common.spark_master(Connection(conn_id="spark_default", **fields))
        for uri, fields in {
            "local": {"conn_type": "spark", "host": "local[*]"},
            "standalone": {"conn_type": "spark", "host": "spark://127.0.0.1", "port": 7077},
            "by_scheme": {"conn_type": "spark", "host": "127.0.0.1", "port": 7077},
            "yarn": {"conn_type": "spark", "host": "yarn"},
        }.items()
    }
    print(
        "INSPECT "
        + json.dumps(
            {
                "import_errors": {str(k): str(v) for k, v in bag.import_errors.items()},
                "dags": {dag_id: describe(dag) for dag_id, dag in bag.dags.items()},
                "heavy_modules_after_parse": heavy,
                "masters": masters,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).resolve().parents[2] / "dags")))
