"""Drift monitoring: each model input and each score of a range of days against the training reference.

    spark-submit batch_scoring/monitor.py --start-date 2025-07-01 --end-date 2025-07-30
    tracelake monitor --start-date 2025-07-01 --end-date 2025-07-30          (the same code)

One run, one pass over each table for the whole range:

1. reads gold/scored_events of the range (score first) and finds the model
   version(s) that scored each day; resolves each version in the registry
   (checksum checked) and its reference: the training set named by the
   version's ``training_set`` tag at Delta version ``training_set_version``
   (else ``monitoring.reference_training_set``, latest version);
2. inputs: the tabular model inputs of features_event_features of the range,
   and of the sequence input its length ``seq_len`` and each step feature at
   the event's own step (``seq_last_<feature>``, drift.with_event_step),
   against the reference's ``monitoring.input_reference_split`` (the rows the
   model was fit on);
3. scores: ``p_<label>`` and ``anomaly_score`` of the range against the same
   model's scores of the reference's ``monitoring.score_reference_split``
   (computed here with ONNX Runtime inside Spark, as in scoring);
4. PSI per (day, column) over quantile bins of the reference
   (batch_scoring/drift.py); status ok / warn / drift from
   ``monitoring.warn_psi`` / ``monitoring.drift_psi``;
5. writes monitoring/drift (the range's partitions replaced, lineage in the
   commit info); every drifted column is logged as a warning. A day with a
   ``drift`` row in the table is what triggers retraining (the daily DAG's
   ``flag_retraining`` reads the table, tracelake.pipeline.drifted_days); a
   rerun replaces the day's rows, so a day that no longer drifts stops
   triggering it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from batch_scoring import drift
from batch_scoring.inputs import SCORED, ScoringInputError, read_features, read_scores
from batch_scoring.model_loading import LoadedModel, load_onnx_model
from batch_scoring.transforms import probabilities, probability_column
from tracelake.arguments import parse
from tracelake.dates import days_between
from tracelake.errors import TracelakeError
from tracelake.model_io import SPLIT_COLUMN
from tracelake.ranges import missing_days_message, write_range
from tracelake.runs import JobRun, job_run, run_entrypoint
from tracelake.tables import (
    named_table_spec,
    read_table,
    table_exists,
    table_spec,
)

JOB = "monitor"
DRIFT_TABLE = "monitoring_drift"
INPUT, SCORE = "input", "score"
SCORE_COLUMN = "anomaly_score"


class MonitoringError(TracelakeError, ValueError):
    """The scores or the reference that drift is measured against are not there."""


def models_by_day(scores: DataFrame, run: JobRun) -> dict[tuple[str, str], list[dt.date]]:
    """(model name, version) -> the days of the range it scored; every day must be scored by one model."""
    rows = scores.select("event_date", "model_name", "model_version").distinct().collect()
    by_day: dict[dt.date, set[tuple[str, str]]] = defaultdict(set)
    for row in rows:
        by_day[row["event_date"]].add((row["model_name"], row["model_version"]))
    missing = [d for d in days_between(run.start, run.end) if d not in by_day]
    if missing:
        raise MonitoringError(
            f"{missing_days_message(SCORED, missing)}; score those days first (tracelake score)"
        )
    mixed = {d: m for d, m in by_day.items() if len(m) > 1}
    if mixed:
        day, models = next(iter(mixed.items()))
        raise MonitoringError(
            f"{SCORED} on {day} was scored by several models {sorted(models)}; "
            "rescore the day with one model (tracelake score)"
        )
    groups: dict[tuple[str, str], list[dt.date]] = defaultdict(list)
    for day, models in sorted(by_day.items()):
        groups[next(iter(models))].append(day)
    return dict(groups)


def reference_frame(run: JobRun, loaded: LoadedModel) -> tuple[DataFrame, str]:
    """The training set the model learnt from, at the version it read; and its name for the drift rows."""
    settings = run.settings.monitoring
    name = loaded.tags.get("training_set") or settings.reference_training_set
    if not name:
        raise MonitoringError(
            f"model {loaded.name} version {loaded.version} has no training_set tag and "
            "monitoring.reference_training_set is not set; set it to the training set the model was trained on"
        )
    spec = named_table_spec("training_set", name=name)
    if not table_exists(run.spark, spec, run.lake_root):
        raise MonitoringError(
            f"reference training set {name!r} does not exist at {spec.location(run.lake_root)}; "
            "set monitoring.reference_training_set to an existing training set"
        )
    tag = loaded.tags.get("training_set_version")
    version = int(tag) if tag and loaded.tags.get("training_set") else None
    frame = read_table(run.spark, spec, run.lake_root, version=version)
    run.inputs[f"training_set[{name}]"] = version
    return frame, f"training_set:{name}@v{version if version is not None else 'latest'}"


def with_anomaly_score(scores: DataFrame, labels: Sequence[str]) -> DataFrame:
    columns = [F.col(probability_column(label)) for label in labels]
    return scores.withColumn(SCORE_COLUMN, F.greatest(*columns) if len(columns) > 1 else columns[0])


def drift_rows(
    run: JobRun,
    loaded: LoadedModel,
    days: list[dt.date],
    features: DataFrame,
    scores: DataFrame,
    computed_at: dt.datetime,
) -> list[dict[str, Any]]:
    """PSI rows of one model's days: one per (day, input) and (day, score column)."""
    settings = run.settings.monitoring
    reference, reference_name = reference_frame(run, loaded)
    model = loaded.model
    inputs = [*model.tab_features, *drift.event_step_inputs(model.seq_features)]
    score_columns = [*(probability_column(label) for label in model.label_names), SCORE_COLUMN]
    in_days = F.col("event_date").isin([F.lit(d) for d in days])

    input_ref = drift.with_event_step(
        reference.where(F.col(SPLIT_COLUMN) == settings.input_reference_split), model.seq_features
    )
    score_ref = with_anomaly_score(
        probabilities(
            reference.where(F.col(SPLIT_COLUMN) == settings.score_reference_split), model, passthrough=[]
        ),
        model.label_names,
    ).localCheckpoint()  # scored once, read twice (quantiles, counts)
    groups = []
    for kind, columns, ref, actual in (
        (INPUT, inputs, input_ref, drift.with_event_step(features.where(in_days), model.seq_features)),
        (SCORE, score_columns, score_ref, scores.where(in_days)),
    ):
        edges = drift.quantile_edges(ref, columns, settings.psi_bins, settings.quantile_relative_error)
        expected = _counts(drift.bin_counts(ref, edges).collect(), with_day=False)
        observed = _counts(drift.bin_counts(actual, edges, ["event_date"]).collect(), with_day=True)
        groups.append((kind, columns, edges, expected, observed))

    rows = []
    for kind, columns, edges, expected, observed in groups:
        for day in days:
            for column in columns:
                actual_counts = observed.get((day, column), {})
                reference_counts = expected.get(column, {})
                value = drift.psi(
                    actual_counts, reference_counts, len(edges[column]) + 1, settings.psi_epsilon
                )
                total = sum(actual_counts.values())
                rows.append(
                    {
                        "event_date": day,
                        "feature": column,
                        "kind": kind,
                        "psi": float(value),
                        "status": drift.status(value, settings.warn_psi, settings.drift_psi),
                        "threshold": settings.drift_psi,
                        "warn_threshold": settings.warn_psi,
                        "rows": total,
                        "null_share": (actual_counts.get(drift.NULL_BIN, 0) / total) if total else 0.0,
                        "reference_rows": sum(reference_counts.values()),
                        "reference": reference_name,
                        "model_name": loaded.name,
                        "model_version": loaded.version,
                        "computed_at": computed_at,
                        "_run_id": run.run_id,
                    }
                )
    score_ref.unpersist()
    return rows


def _counts(rows: list[Any], *, with_day: bool) -> dict[Any, dict[int, int]]:
    out: dict[Any, dict[int, int]] = defaultdict(dict)
    for row in rows:
        key = (row["event_date"], row["feature"]) if with_day else row["feature"]
        out[key][int(row["bin"])] = int(row["count"])
    return out


def warn_drifted(run: JobRun, rows: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Log a warning for each drifted column; returns day -> its drifted columns."""
    drifted: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        if row["status"] == drift.DRIFT:
            drifted[row["event_date"].isoformat()].append(row["feature"])
            run.log.warning(
                f"drift: {row['kind']} {row['feature']} on {row['event_date']} has PSI {row['psi']:.3f} "
                f">= {row['threshold']}; the day triggers retraining",
                extra={
                    "event_date": row["event_date"].isoformat(),
                    "feature": row["feature"],
                    "kind": row["kind"],
                    "psi": round(row["psi"], 6),
                },
            )
    return dict(drifted)


def execute(run: JobRun) -> dict[str, Any]:
    """Measure drift for the run's range and write monitoring/drift; the summary."""
    if run.start is None or run.end is None:
        raise MonitoringError("monitor needs --start-date (and optionally --end-date)")
    computed_at = dt.datetime.now(dt.UTC).replace(microsecond=0)
    try:
        scores = read_scores(run)
    except ScoringInputError as error:
        raise MonitoringError(str(error)) from None
    groups = models_by_day(scores, run)
    try:
        features = read_features(run)
    except ScoringInputError as error:
        raise MonitoringError(str(error)) from None
    rows: list[dict[str, Any]] = []
    models = []
    for (name, version), days in groups.items():
        loaded = load_onnx_model(run, f"models:/{name}/{version}")
        try:
            with run.log.step("drift", model=name, model_version=version, days=len(days)) as result:
                part = drift_rows(run, loaded, days, features, scores, computed_at)
                result.update(columns=len(part), drifted=sum(r["status"] == drift.DRIFT for r in part))
        finally:
            loaded.release()
        rows.extend(part)
        models.append(loaded.lineage())
    spec = table_spec(DRIFT_TABLE)
    frame = run.spark.createDataFrame(rows, schema=spec.schema)
    written = write_range(
        run, frame, spec, start=run.start, end=run.end, metadata=run.commit_metadata(models=models)
    )
    drifted_days = warn_drifted(run, rows)
    counts = {s: sum(r["status"] == s for r in rows) for s in (drift.OK, drift.WARN, drift.DRIFT)}
    return {
        "start_date": run.start.isoformat(),
        "end_date": run.end.isoformat(),
        "models": models,
        "input_versions": dict(run.inputs),
        "tables": {DRIFT_TABLE: written.as_dict()},
        "status_counts": counts,
        "retrain_days": drifted_days,
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return parse("monitor", argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with job_run(JOB, args) as run:
        summary = execute(run)
    print(json.dumps(summary, indent=2, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(run_entrypoint(main))
