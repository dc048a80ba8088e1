"""Run the DAGs' Spark operator on entrypoints that exit 2 and 1; print the exception each raises, as JSON.

Run in a child process (``python tests/dags/operator_exit_codes.py DAGS_DIR WORK_DIR``) with AIRFLOW_HOME
and AIRFLOW_CONN_SPARK_DEFAULT set, so that Airflow's settings and logging stay out of the test process.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(dags: str, work: str) -> None:
    sys.path.insert(0, dags)
    from _operators import TracelakeSparkSubmitOperator

    results = {}
    for code in (2, 1):
        app = Path(work) / f"exit_{code}.py"
        app.write_text(f"import sys\nprint('error: a user error', file=sys.stderr)\nsys.exit({code})\n")
        operator = TracelakeSparkSubmitOperator(
            task_id=f"exit_{code}",
            application=str(app),
            conn_id="spark_default",
            driver_memory="512m",
            env_vars={"PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable},
        )
        try:
            operator.execute({})
            results[code] = None
        except Exception as error:
            results[code] = type(error).__name__
    print("RESULTS " + json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
