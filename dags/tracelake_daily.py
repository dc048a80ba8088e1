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
    default_args,
    retrain_asset,
    retrain_marks,
    spark_task,
)
from airflow.sdk import DAG, CronDataIntervalTimetable, chain, task

RETRAIN = retrain_asset()

DOC = """
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
| `ingest` | `spark_jobs/ingest.py` | a landing day is missing or unreadable |
| `validate_bronze` | `spark_jobs/validate.py --table bronze_scan_events` | a critical expectation fails |
| `validate_silver` | `spark_jobs/validate.py --table silver_scan_events` | a critical expectation fails |
| `build_features` | `spark_jobs/build_features.py` | silver is missing for a day |
| `validate_features` | `spark_jobs/validate.py --table features_event_features` | a critical expectation fails |
| `score` | `batch_scoring/score.py` (champion model) | the model cannot be resolved or verified |
| `validate_scores` | `spark_jobs/validate.py --table gold_scored_events` | a critical expectation fails |
| `monitor` | `batch_scoring/monitor.py` | - (drift is recorded, not raised) |
| `flag_retraining` | reads `<lake>/monitoring/_retrain/` | skipped when no day of the interval is marked |

A failed validation fails its task; everything after it is `upstream_failed`,
so bad data is never scored. Every job replaces exactly the partitions of its
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
    ingest = spark_task(
        "ingest",
        "spark_jobs/ingest.py",
        DATE_ARGS,
        timeout="ingest",
        doc_md="Landing files of the interval -> `bronze/scan_events` (+ `bronze/quarantine`) -> `silver/scan_events`, `silver/labels`.",
    )
    validate_bronze = spark_task(
        "validate_bronze",
        "spark_jobs/validate.py",
        ["--table", "bronze_scan_events", *DATE_ARGS],
        timeout="validate",
        retries=VALIDATION_RETRIES,
        doc_md="Great Expectations suite `schemas/expectations/bronze_scan_events.json` on the interval's partitions.",
    )
    validate_silver = spark_task(
        "validate_silver",
        "spark_jobs/validate.py",
        ["--table", "silver_scan_events", *DATE_ARGS],
        timeout="validate",
        retries=VALIDATION_RETRIES,
        doc_md="Suite `silver_scan_events` (reconciled with bronze) on the interval's partitions.",
    )
    build_features = spark_task(
        "build_features",
        "spark_jobs/build_features.py",
        DATE_ARGS,
        timeout="features",
        doc_md="Daily snapshot features and point-in-time event features (`features/event_features`).",
    )
    validate_features = spark_task(
        "validate_features",
        "spark_jobs/validate.py",
        ["--table", "features_event_features", *DATE_ARGS],
        timeout="validate",
        retries=VALIDATION_RETRIES,
        doc_md="Suite `features_event_features` (reconciled with silver, ranges, no future snapshot).",
    )
    score = spark_task(
        "score",
        "batch_scoring/score.py",
        DATE_ARGS,
        timeout="score",
        doc_md="Scores the interval's event features with the `champion` ONNX model -> `gold/scored_events`.",
    )
    validate_scores = spark_task(
        "validate_scores",
        "spark_jobs/validate.py",
        ["--table", "gold_scored_events", *DATE_ARGS],
        timeout="validate",
        retries=VALIDATION_RETRIES,
        doc_md="Suite `gold_scored_events` (probabilities in [0, 1], one row per event).",
    )
    monitor = spark_task(
        "monitor",
        "batch_scoring/monitor.py",
        DATE_ARGS,
        timeout="monitor",
        doc_md="Drift (PSI) of features and scores against the training reference -> `monitoring/drift`; "
        "marks drifting days under `monitoring/_retrain/`.",
    )

    @task(task_id="flag_retraining", outlets=[RETRAIN], retries=0, execution_timeout=TIMEOUTS["check"])
    def flag_retraining(data_interval_start=None, data_interval_end=None) -> list[str]:
        """Emit a `tracelake_retrain` asset event when monitoring marked a day of this interval; skip otherwise."""
        import datetime as dt

        from airflow.sdk.exceptions import AirflowSkipException

        from tracelake import storage
        from tracelake.config import load_settings

        first = data_interval_start.date()
        last = (data_interval_end - dt.timedelta(microseconds=1)).date()
        settings = load_settings()
        folder = storage.join(settings.lake_uri, settings.monitoring.retrain_dir)
        marks = retrain_marks(folder, first, max(first, last))
        if not marks:
            raise AirflowSkipException(f"no retraining mark for {first}..{last} in {folder}")
        return marks

    chain(
        ingest,
        validate_bronze,
        validate_silver,
        build_features,
        validate_features,
        score,
        validate_scores,
        monitor,
        flag_retraining(),
    )
