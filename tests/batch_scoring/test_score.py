"""Scoring: same probabilities as ONNX Runtime called directly, idempotent reruns, refused artifacts, delta-rs."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual
from scoring_frames import DAY1, DAY2, MODEL_NAME, ROWS_PER_DAY

from batch_scoring import score
from tracelake.model_io import columns_to_arrays
from tracelake.model_registry import ModelChecksumError, register_onnx_model
from tracelake.runs import job_run
from tracelake.tables import read_table, table_spec
from training.onnx_export import run_onnx

pytestmark = pytest.mark.spark35

LINEAGE = ["scored_at", "_run_id"]


def _score(spark, settings, model_uri=None):
    with job_run("score", settings=settings, spark=spark, start=DAY1, end=DAY2) as run:
        return score.execute(run, model_uri)


def test_scores_equal_onnx_runtime_on_the_same_rows(spark, scoring_lake, scored):
    summary, table = scored
    settings, spec = scoring_lake["settings"], scoring_lake["spec"]
    assert summary["validation"]["passed"] and summary["model_version"] == scoring_lake["model_version"]
    assert summary["tables"]["gold_scored_events"]["rows"] == 2 * ROWS_PER_DAY

    features = read_table(spark, table_spec("features_event_features"), str(settings.lake_path)).toPandas()
    columns = {c: features[c].to_numpy() for c in features.columns}
    columns.update({label: np.zeros(len(features), np.float32) for label in spec.label_names})
    expected = run_onnx(scoring_lake["onnx_path"], columns_to_arrays(columns, spec))
    probabilities = [f"p_{label}" for label in spec.label_names]
    got = table.toPandas().set_index("event_id").loc[features["event_id"]]
    np.testing.assert_allclose(got[probabilities].to_numpy(), expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got["anomaly_score"].to_numpy(), expected.max(axis=1), rtol=0, atol=1e-6)
    for label in spec.label_names:
        threshold = scoring_lake["thresholds"][label]
        np.testing.assert_array_equal(
            got[f"flag_{label}"].to_numpy(), got[f"p_{label}"].to_numpy() >= threshold
        )
    assert set(got["model_name"]) == {MODEL_NAME} and set(got["model_run_id"]) == {
        scoring_lake["mlflow_run_id"]
    }


def test_rerun_leaves_the_table_unchanged(spark, scoring_lake, scored):
    _, before = scored
    settings = scoring_lake["settings"]
    _score(spark, settings)
    after = read_table(spark, table_spec("gold_scored_events"), str(settings.lake_path))
    assertDataFrameEqual(after.drop(*LINEAGE), before.drop(*LINEAGE))
    assert after.select("_run_id").distinct().count() == 1


def test_delta_rs_reads_the_scored_table(scoring_lake, scored):
    """Another engine (delta-rs, no JVM) reads the very rows Spark wrote."""
    from deltalake import DeltaTable, QueryBuilder

    _, table_spark = scored
    table = DeltaTable(str(scoring_lake["settings"].lake_path / "gold" / "scored_events"))
    rows = (
        QueryBuilder()
        .register("scored_events", table)
        .execute(f"SELECT event_id, p_jump FROM scored_events WHERE event_date = DATE '{DAY2.isoformat()}'")
        .read_all()
    )
    got = pd.DataFrame(
        {"event_id": rows.column("event_id").to_pylist(), "p_jump": rows.column("p_jump").to_pylist()}
    )
    expected = table_spark.where(F.col("event_date") == F.lit(DAY2)).select("event_id", "p_jump").toPandas()
    assert len(got) == ROWS_PER_DAY
    pd.testing.assert_frame_equal(
        got.sort_values("event_id").reset_index(drop=True),
        expected.sort_values("event_id").reset_index(drop=True),
    )


def test_changed_model_artifact_is_refused(spark, scoring_lake, scored, tmp_path):
    settings = scoring_lake["settings"]
    with mlflow.start_run() as run:
        version = register_onnx_model("tracelake-tampered", scoring_lake["onnx_path"], run_id=run.info.run_id)
    stored = mlflow.get_run(run.info.run_id).info.artifact_uri.removeprefix("file://") + "/model/model.onnx"
    with open(stored, "ab") as handle:
        handle.write(b"\0")  # the artifact store's copy changes after registration
    before = read_table(spark, table_spec("gold_scored_events"), str(settings.lake_path)).count()
    with pytest.raises(ModelChecksumError, match="changed after registration"):
        _score(spark, settings, f"models:/tracelake-tampered/{version.version}")
    history = spark.sql(f"DESCRIBE HISTORY delta.`{settings.lake_path / 'gold' / 'scored_events'}`")
    assert history.where(F.col("userMetadata").contains("tracelake-tampered")).count() == 0
    assert read_table(spark, table_spec("gold_scored_events"), str(settings.lake_path)).count() == before


def test_one_session_per_worker_and_refused_bytes(scoring_lake):
    """Workers build a model's session once and reuse it; bytes whose SHA-256 differs never get one."""
    import hashlib

    from batch_scoring.transforms import ScoringModelError, scoring_model, session_for
    from tracelake.model_io import read_metadata

    data = scoring_lake["onnx_path"].read_bytes()
    metadata = read_metadata(scoring_lake["onnx_path"])
    good, _ = scoring_model(
        metadata,
        data,
        hashlib.sha256(data).hexdigest(),
        label_names=scoring_lake["spec"].label_names,
        default_threshold=0.5,
    )
    assert session_for(good) is session_for(good)
    bad, _ = scoring_model(
        metadata, data + b"\0", "0" * 64, label_names=scoring_lake["spec"].label_names, default_threshold=0.5
    )
    with pytest.raises(ScoringModelError, match="refusing to score"):
        session_for(bad)


def test_top_anomalies_of_a_day(spark, scoring_lake, scored):
    """What the demo prints: the day's highest anomaly scores, with the flags that fired."""
    _, table = scored
    with job_run("score", settings=scoring_lake["settings"], spark=spark) as run:
        top = score.top_anomalies(run, DAY2, limit=3).toPandas()
    day = table.where(F.col("event_date") == F.lit(DAY2)).toPandas()
    expected = day.sort_values(["anomaly_score", "event_id"], ascending=[False, True]).head(3)
    assert top["epc_code"].tolist() == expected["epc_code"].tolist()
    np.testing.assert_allclose(top["anomaly_score"], expected["anomaly_score"].round(4))
    labels = scoring_lake["spec"].label_names
    fired = [",".join(label for label in labels if row[f"flag_{label}"]) for _, row in expected.iterrows()]
    assert top["flags"].tolist() == fired


def test_the_rules_detector_scores_gold_like_a_model(spark, scoring_lake, scored, tmp_path):
    """A registered rules detector (training/rules.py) scores the range: its expressions, its thresholds, its name."""
    from tracelake.model_registry import CHECKSUM_TAG, FORMAT_TAG, register_artifacts, sha256_of
    from training.rules import FORMAT, VARIANTS, RulesDetector

    settings = scoring_lake["settings"]
    labels = list(scoring_lake["spec"].label_names)
    detector = RulesDetector(
        {label: next(iter(VARIANTS[label])) for label in labels}, dict.fromkeys(labels, 0.5)
    )
    document = tmp_path / "rules" / "rules.json"
    document.parent.mkdir()
    document.write_text(detector.to_json())
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(document.parent), "model")
        version = register_artifacts(
            "tracelake-rules-test",
            run.info.run_id,
            "model",
            tags={FORMAT_TAG: FORMAT, CHECKSUM_TAG: sha256_of(document)},
        )
    try:
        summary = _score(spark, settings, f"models:/tracelake-rules-test/{version.version}")
        assert summary["validation"]["passed"] and summary["model_name"] == "tracelake-rules-test"
        gold = read_table(spark, table_spec("gold_scored_events"), str(settings.lake_path))
        features = read_table(spark, table_spec("features_event_features"), str(settings.lake_path))
        expected = (
            detector.scores(features).select("event_id", *[f"p_{label}" for label in labels]).toPandas()
        )
        got = gold.toPandas().set_index("event_id").loc[expected["event_id"]]
        np.testing.assert_allclose(
            got[[f"p_{label}" for label in labels]].to_numpy(),
            expected[[f"p_{label}" for label in labels]].to_numpy(),
            rtol=0,
            atol=0,
        )
        assert (got["flag_jump"] == (got["p_jump"] >= 0.5)).all()
        assert set(got["model_name"]) == {"tracelake-rules-test"} and len(got) == 2 * ROWS_PER_DAY
    finally:
        _score(spark, settings)  # the module's other tests read the champion's scores


def test_scoring_workers_never_import_torch(spark, scoring_lake):
    """The scoring UDF, run by Spark's Python workers, loads numpy, Arrow and ONNX Runtime but not torch.

    The loaded model comes from the registry through the jobs' loader (its bytes broadcast); each
    output row also carries whether ``torch`` was in the worker's ``sys.modules`` after scoring.
    """
    import sys

    import pyarrow as pa

    from batch_scoring.model_loading import load_onnx_model
    from batch_scoring.transforms import _score_partition

    settings, spec = scoring_lake["settings"], scoring_lake["spec"]
    features = read_table(spark, table_spec("features_event_features"), str(settings.lake_path))
    with job_run("score", settings=settings, spark=spark) as run:
        loaded = load_onnx_model(run, f"models:/{MODEL_NAME}@champion")
    score_batches = _score_partition(loaded.model, ["event_id"])

    def score_and_report(batches):
        # Spark reuses Python workers: one that an earlier job of this session gave torch proves nothing.
        before = "torch" in sys.modules
        for out in score_batches(batches):
            n = out.num_rows
            extra = {
                "torch_before": pa.array([before] * n),
                "torch_loaded": pa.array(["torch" in sys.modules] * n),
            }
            yield pa.RecordBatch.from_arrays(
                [*out.columns, *extra.values()], names=[*out.schema.names, *extra]
            )

    probabilities = ", ".join(f"`p_{label}` double" for label in spec.label_names)
    try:
        rows = (
            features.select("event_id", "seq", "seq_len", *spec.tab_features)
            .mapInArrow(
                score_and_report,
                schema=f"event_id string, {probabilities}, torch_before boolean, torch_loaded boolean",
            )
            .toPandas()
        )
    finally:
        loaded.release()
    assert len(rows) == 2 * ROWS_PER_DAY
    assert np.isfinite(rows[[f"p_{label}" for label in spec.label_names]].to_numpy()).all()
    fresh = rows[~rows["torch_before"]]
    assert len(fresh), "every worker had torch from an earlier job; run this file in a fresh session"
    assert not fresh["torch_loaded"].any(), "a scoring worker imported torch"
