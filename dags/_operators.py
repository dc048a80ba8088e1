"""The Spark task's operator: spark-submit of one entrypoint, where a user error is not retried.

Every entrypoint exits 2 on an error the user must fix (bad dates, a missing
table, data that fails a check: one line on stderr, see tracelake.runs) and 1
(or a JVM exit code) on anything else. Retrying cannot change a user error, so
exit 2 fails the task at once (``AirflowFailException`` skips the retries);
other failures keep the task's retries with backoff (lost executors, full disks,
a busy metastore).

Imported when a DAG builds its tasks (the provider is needed then anyway), never
by the parse-time-cheap ``_common`` module itself.
"""

from __future__ import annotations

import re
from typing import Any

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException

# The exit code of tracelake's entrypoints for an error the user must fix (tracelake.runs.run_entrypoint).
USER_ERROR_EXIT_CODE = 2
_EXIT_CODE = re.compile(r"Error code is: (-?\d+)")


def exit_code(hook: Any, error: BaseException) -> int | None:
    """spark-submit's exit code: from the hook's process, else from the provider's message."""
    process = getattr(hook, "_submit_sp", None)
    code = getattr(process, "returncode", None)
    if isinstance(code, int):
        return code
    match = _EXIT_CODE.search(str(error))
    return int(match.group(1)) if match else None


class TracelakeSparkSubmitOperator(SparkSubmitOperator):
    """SparkSubmitOperator whose job's user error (exit 2) fails the task without retries."""

    def execute(self, context: Any) -> None:
        try:
            return super().execute(context)
        except AirflowException as error:
            if (
                isinstance(error, AirflowFailException)
                or exit_code(self._hook, error) != USER_ERROR_EXIT_CODE
            ):
                raise
            raise AirflowFailException(
                f"{self.task_id}: the job stopped on a user error (exit code {USER_ERROR_EXIT_CODE}; its one-line "
                "reason is the last 'error:' line of the log above). Retrying cannot fix it: fix the input or the "
                "arguments, then clear the task"
            ) from error
