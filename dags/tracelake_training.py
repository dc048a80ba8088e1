"""tracelake_training: weekly (or on drift) training set -> train both models -> promotion gate."""

from __future__ import annotations

import sys
from pathlib import Path

# The DAG processor does not put the DAG folder on sys.path; _common.py lives beside this file.
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    MACROS,
    START_DATE,
    VALIDATION_RETRIES,
    core_module,
    default_args,
    retrain_asset,
    spark_task,
)
from airflow.sdk import (
    DAG,
    AssetOrTimeSchedule,
    CronDataIntervalTimetable,
    Param,
)

pipeline = core_module("pipeline")
cli = core_module("cli")
STEPS = pipeline.in_order(pipeline.TRAINING_STEPS)

DOC = """
### tracelake_training

Runs every Monday 03:00 UTC for the week that just ended, and also whenever the
asset `tracelake_retrain` is updated (the daily DAG's `flag_retraining` does so
when `monitoring/drift` has a `drift` row on a day of its interval: PSI above
`monitoring.drift_psi`; it reads the Delta table with delta-rs, no Spark).

The cut-off **as of** is the data interval's end (weekly runs) or the time the
run was due (drift-triggered runs). Labels arrive late, so the training set
covers the `window_days` days before the cut-off minus the last
`label_maturity_days` days (default: the setting `labels.max_delay_days`: the
days whose labels may still be on their way); labels are those confirmed at or
before the cut-off (point-in-time correct) and spread over their incidents.

| task | entrypoint | what it does |
| --- | --- | --- |
| `build_training_set` | `spark_jobs/build_training_set.py --as-of … --name set-YYYYMMDDTHHMM` | event features + labels known as of the cut-off, temporal split |
| `validate_training_set` | `spark_jobs/validate.py --table training_set --name …` | suite `training_set` (temporal split, 0/1 labels) |
| `train` | `spark_jobs/train.py --training-set … --models lstm,baseline,rules` | the three detectors trained (rules: tuned), evaluated on the mature test days, logged to MLflow, registered as `challenger` |
| `promote` | `spark_jobs/promote.py` | moves `champion` to the challenger only if it beats the champion on the test days rebuilt with the labels known at gate time |

Roll a bad promotion back with `tracelake rollback` (see the README's operator section).
Params (set them when triggering by hand): `window_days`, `label_maturity_days`, `models`.
"""

with DAG(
    dag_id="tracelake_training",
    description="training set as of the cut-off -> train lstm + baseline -> register -> promotion gate",
    schedule=AssetOrTimeSchedule(
        timetable=CronDataIntervalTimetable("0 3 * * 1", timezone="UTC"),
        assets=retrain_asset(),
    ),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=default_args(),
    user_defined_macros=MACROS,
    params={
        "window_days": Param(42, type="integer", minimum=1, description="days of events before the cut-off"),
        "label_maturity_days": Param(
            None,
            type=["null", "integer"],
            minimum=0,
            description="most recent days left out, their labels still on their way "
            "(default: labels.max_delay_days)",
        ),
        "models": Param("lstm,baseline,rules", type="string", description="comma list of models to train"),
    },
    doc_md=DOC,
    tags=["tracelake", "training"],
) as dag:
    AS_OF = "{{ tl_as_of(dag_run).isoformat() }}"
    SET_NAME = "{{ tl_set_name(dag_run) }}"
    SET_DATES = [
        "--start-date",
        "{{ tl_day_before(tl_as_of(dag_run), params.window_days) }}",
        "--end-date",
        "{{ tl_day_before(tl_as_of(dag_run), tl_label_max_delay_days(params.label_maturity_days) + 1) }}",
    ]

    # Per step, the arguments this DAG templates from its run (after the step's fixed ones).
    RUN_ARGS = {
        "build_training_set": [*SET_DATES, "--as-of", AS_OF, "--name", SET_NAME],
        "validate_training_set": ["--name", SET_NAME, *SET_DATES],
        "train": ["--training-set", SET_NAME, "--models", "{{ params.models }}"],
        "promote": [],
    }
    tasks = {}
    for step in STEPS:
        tasks[step.name] = spark_task(
            step.name,
            cli.entrypoint_file(step.command),
            [*step.args, *RUN_ARGS[step.name]],
            timeout=step.command,
            doc_md=step.doc,
            **({"retries": VALIDATION_RETRIES} if step.gate == pipeline.Gate.CHECK else {}),
        )
        for upstream in step.upstream:
            tasks[upstream] >> tasks[step.name]
