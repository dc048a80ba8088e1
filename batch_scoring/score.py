"""Batch scoring: event features of a range of days -> gold/scored_events.

    spark-submit batch_scoring/score.py --start-date 2025-07-01 --end-date 2025-07-30 \\
        [--model-uri models:/tracelake-anomaly-lstm@champion]
    tracelake score --start-date 2025-07-01 --end-date 2025-07-30          (the same code)

One run, one Spark job for the whole range:

1. resolves the model URI (default ``scoring.model_uri``, the ``champion``
   alias) in the MLflow registry, downloads ``model.onnx`` and refuses it when
   its SHA-256 differs from the ``onnx_sha256`` tag recorded at registration;
2. reads features_event_features for the range (the Delta version read is
   recorded) and fails when a day of the range has no features (its scored
   partition would otherwise be replaced by nothing);
3. scores every row with ONNX Runtime inside Spark (batch_scoring/transforms.py:
   mapInPandas, one session per Python worker, model bytes broadcast, threads
   and Arrow batch size from config ``scoring``);
4. writes gold/scored_events, replacing exactly the range's partitions in one
   Delta commit whose info records the run, the model (name, version, run id,
   checksum) and the input versions;
5. validates the written partitions (schemas/expectations/gold_scored_events.json:
   one row per feature row of each day, probabilities in [0, 1], no nulls) and
   fails the run when a critical expectation fails.

A rerun of a range with the same model and features leaves every column but
``scored_at`` and ``_run_id`` as it was.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Sequence
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from batch_scoring.inputs import SCORED, ScoringInputError, read_features
from batch_scoring.model_loading import LoadedModel, LoadedRules, load_model
from batch_scoring.transforms import (
    check_features,
    flags_and_score,
    probability_column,
    score_events,
)
from tracelake.arguments import parse
from tracelake.model_io import KEY_COLUMNS, sequence_features
from tracelake.ranges import write_range
from tracelake.runs import JobRun, job_run, run_entrypoint
from tracelake.tables import (
    domain,
    read_table,
    table_spec,
)

JOB = "score"
ARROW_BATCH_CONF = "spark.sql.execution.arrow.maxRecordsPerBatch"


def scored_frame(
    features: DataFrame, loaded: LoadedModel | LoadedRules, run_id: str, scored_at: dt.datetime
) -> DataFrame:
    """Scores plus the lineage columns of gold_scored_events."""
    if isinstance(loaded, LoadedRules):
        labels = loaded.model.label_names
        probabilities = loaded.detector.scores(features).select(
            *KEY_COLUMNS, *[F.col(f"p_{label}").alias(probability_column(label)) for label in labels]
        )
        scored = flags_and_score(probabilities, loaded.model)
    else:
        scored = score_events(features, loaded.model)
    return scored.select(
        "*",
        F.lit(loaded.name).alias("model_name"),
        F.lit(loaded.version).alias("model_version"),
        F.lit(loaded.run_id).alias("model_run_id"),
        F.lit(scored_at).cast("timestamp").alias("scored_at"),
        F.lit(run_id).alias("_run_id"),
    )


def execute(run: JobRun, model_uri: str | None = None) -> dict[str, Any]:
    """Score the run's range with ``model_uri`` (default ``scoring.model_uri``); returns the summary."""
    from tracelake.validation import require_valid, validate_table

    if run.start is None or run.end is None:
        raise ScoringInputError("score needs --start-date (and optionally --end-date)")

    uri = model_uri or run.settings.scoring.model_uri
    scored_at = dt.datetime.now(dt.UTC).replace(microsecond=0)
    features = read_features(run)
    loaded = load_model(run, uri)
    spec = table_spec(SCORED)
    conf = run.spark.conf
    previous_batch = conf.get(ARROW_BATCH_CONF, None)
    conf.set(ARROW_BATCH_CONF, str(run.settings.scoring.arrow_batch_rows))
    try:
        if isinstance(loaded, LoadedModel):
            check_features(
                loaded.model, features.columns, sequence_features(), run.settings.features.sequence_length
            )
        frame = scored_frame(features, loaded, run.run_id, scored_at)
        written = write_range(
            run,
            frame,
            spec,
            start=run.start,
            end=run.end,
            metadata=run.commit_metadata(**loaded.lineage()),
            model=loaded.name,
            model_version=loaded.version,
        )
    finally:
        if previous_batch is None:
            conf.unset(ARROW_BATCH_CONF)
        else:
            conf.set(ARROW_BATCH_CONF, previous_batch)
        loaded.release()
    report = require_valid(validate_table(run, SCORED))
    return {
        "start_date": run.start.isoformat(),
        "end_date": run.end.isoformat(),
        **loaded.lineage(),
        "thresholds": dict(zip(loaded.model.label_names, loaded.model.thresholds, strict=False)),
        "scored_at": scored_at.isoformat(),
        "input_versions": dict(run.inputs),
        "tables": {SCORED: written.as_dict()},
        "validation": {
            "passed": report.passed,
            "results": str(report.results_path) if report.results_path else None,
        },
    }


def top_anomalies(run: JobRun, day: dt.date, limit: int = 10) -> DataFrame:
    """The day's highest anomaly scores in gold/scored_events, with the flags that fired."""
    from batch_scoring.transforms import flag_column

    labels = domain().anomaly_types
    fired = F.concat_ws(",", *[F.when(F.col(flag_column(label)), F.lit(label)) for label in labels])
    return (
        read_table(run.spark, table_spec(SCORED), run.lake_root)
        .where(F.col("event_date") == F.lit(day))
        .orderBy(F.col("anomaly_score").desc(), F.col("event_id"))
        .limit(limit)
        .select(
            "event_date",
            "event_time",
            "epc_code",
            "location_id",
            F.round("anomaly_score", 4).alias("anomaly_score"),
            fired.alias("flags"),
        )
    )


def score_and_show_top(run: JobRun, model_uri: str | None = None, limit: int = 10) -> dict[str, Any]:
    """Score the run's range, then print the top ``limit`` anomalies of its last day (for the demo)."""
    summary = execute(run, model_uri)
    rows = top_anomalies(run, run.end, limit).toPandas()
    print(
        f"\ntop {len(rows)} anomalies of {run.end} (model {summary['model_name']} "
        f"v{summary['model_version']}):"
    )
    print(rows.to_string(index=False) if len(rows) else "(no scored events)")
    summary["top_anomalies"] = rows.astype(str).to_dict(orient="records")
    return summary


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return parse("score", argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with job_run(JOB, args) as run:
        summary = execute(run, args.model_uri)
    print(json.dumps(summary, indent=2, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(run_entrypoint(main))
