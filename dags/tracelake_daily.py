"""tracelake_daily: one day of scan events from landing files to scores and drift."""

from __future__ import annotations

import sys
from pathlib import Path

# The DAG processor does not put the DAG folder on sys.path; _common.py lives beside this file.
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    DATE_ARGS,
    MACROS,
    START_DATE,
    TIMEOUTS,
    VALIDATION_RETRIES,
    core_module,
    default_args,
    retrain_asset,
    spark_task,
)
from airflow.sdk import DAG, CronDataIntervalTimetable, task

# The steps, their commands, dependencies and gates: declared once in tracelake/pipeline.py
# (the demo runs the same declaration in one Spark session).
pipeline = core_module("pipeline")
cli = core_module("cli")
STEPS = pipeline.in_order(pipeline.DAILY_STEPS)
RETRAIN = retrain_asset()


def step_rows() -> str:
    """The DOC table's rows: one per declared step, then the retraining flag."""
    rows = []
    for step in STEPS:
        args = " ".join(step.args)
        entrypoint = f"`{cli.entrypoint_file(step.command)}{' ' + args if args else ''}`"
        rows.append(f"| `{step.name}` | {entrypoint} | {step.stops_when} |")
    rows.append(
        "| `flag_retraining` | reads `monitoring/drift` (delta-rs) | skipped when no day of the interval "
        "has a `drift` row |"
    )
    return "\n".join(rows)


DOC = f"""
### tracelake_daily

For the run's **data interval** (one UTC day: the run that starts after midnight
processes the day before), every step is one `spark-submit` of the project's
entrypoint with `--start-date`/`--end-date` = the interval's first and last day.
Scheduled and backfill runs have the interval's first day as logical date
(`backfill create --from-date D1 --to-date D2` processes D1..D2); a manual run
with logical date D (`dags test`, `dags trigger --logical-date`) processes the
full day before D (Airflow infers a manual run's interval as the last complete one).

| task | entrypoint | stops the run when |
| --- | --- | --- |
{step_rows()}

A failed validation fails its task; everything after it is `upstream_failed`,
so bad data is never scored. Gold is validated once, inside `score`: the task
fails when the scores it wrote break their expectations, so `monitor` never
reads them. Every job replaces exactly the partitions of its
dates, so a rerun (clear the run or a task) or a backfill
(`airflow backfill create --dag-id tracelake_daily --from-date D1 --to-date D2`)
is idempotent. `flag_retraining` updates the asset `tracelake_retrain`, which
triggers `tracelake_training`.

Spark master: the `spark_default` connection (`local[*]` or `spark://HOST:7077`).
Lake and job settings: `TRACELAKE_CONFIG` / `TRACELAKE_*` in the worker's environment.
"""

with DAG(
    dag_id="tracelake_daily",
    description="landing -> bronze -> silver -> features -> scores -> drift, for one day",
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=default_args(),
    user_defined_macros=MACROS,
    doc_md=DOC,
    tags=["tracelake", "daily"],
) as dag:
    tasks = {}
    for step in STEPS:
        tasks[step.name] = spark_task(
            step.name,
            cli.entrypoint_file(step.command),
            [*step.args, *DATE_ARGS],
            timeout=step.command,
            doc_md=step.doc,
            # A check's verdict does not change on retry: fix the data, then clear the task.
            **({"retries": VALIDATION_RETRIES} if step.gate == pipeline.Gate.CHECK else {}),
        )
        for upstream in step.upstream:
            tasks[upstream] >> tasks[step.name]

    @task(task_id="flag_retraining", outlets=[RETRAIN], retries=0, execution_timeout=TIMEOUTS["check"])
    def flag_retraining(data_interval_start=None, data_interval_end=None) -> list[str]:
        """Emit a `tracelake_retrain` asset event when `monitoring/drift` has a drifted day in this
        interval; skip otherwise. Read with delta-rs: no Spark in the Airflow worker."""
        import datetime as dt

        from airflow.sdk.exceptions import AirflowSkipException

        from tracelake.config import load_settings
        from tracelake.pipeline import drifted_days

        first = data_interval_start.date()
        last = max(first, (data_interval_end - dt.timedelta(microseconds=1)).date())
        lake = load_settings().lake_uri
        days = drifted_days(lake, first, last)
        if not days:
            raise AirflowSkipException(f"no drift in {lake}/monitoring/drift for {first}..{last}")
        return [day.isoformat() for day in days]

    tasks[STEPS[-1].name] >> flag_retraining()
