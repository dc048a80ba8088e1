"""Scoring transforms: event features -> probabilities, flags and one anomaly score.

The model runs inside Spark through ``mapInArrow``. What makes it fast:

- one ONNX Runtime session per Python worker, reused across batches and
  tasks: sessions live in a module-level cache keyed by the model's SHA-256
  (PySpark reuses Python workers, ``spark.python.worker.reuse`` is on by
  default), so a worker builds each model's session once;
- the model's bytes reach the executors as a broadcast variable (read lazily:
  only a worker that has no session for the checksum yet loads them); the
  worker checks the bytes' SHA-256 before it builds a session;
- ``intra_op_threads``/``inter_op_threads`` (config ``scoring``) are per
  session: with one Spark task per core, one thread each keeps the cores
  busy without oversubscribing them;
- the Arrow batch (``spark.sql.execution.arrow.maxRecordsPerBatch``, config
  ``scoring.arrow_batch_rows``) is one ONNX Runtime call;
- batches stay Arrow end to end: the feature columns become flat float32
  buffers (zero-copy where Arrow's layout allows), the key columns go back
  untouched and the probabilities are appended as Arrow arrays, so no
  pandas frame is built per batch.

Rows go through :func:`tracelake.model_io.model_inputs`, the conversion that
also builds the training batches, so scoring and training read the feature
layout the same way. Nothing here imports torch: a worker loads numpy,
pyarrow and ONNX Runtime (pyarrow itself loads pandas for some conversions,
but no batch becomes a pandas frame). Probabilities, thresholds and the
anomaly score are computed here; lineage columns are added by the job.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from tracelake.errors import TracelakeError
from tracelake.model_io import (
    KEY_COLUMNS,
    OUTPUT_NAME,
    SEQ_COLUMN,
    SEQ_LEN_COLUMN,
    Columns,
    FeatureSpec,
    model_inputs,
)


class ScoringModelError(TracelakeError, ValueError):
    """The model does not fit the features it is asked to score, or its bytes are not the registered ones."""


def probability_column(label: str) -> str:
    return f"p_{label}"


def flag_column(label: str) -> str:
    return f"flag_{label}"


@dataclass(frozen=True)
class ScoringModel:
    """What a worker needs to score: the model (broadcast bytes + checksum) and its feature spec.

    Built on the driver by :func:`scoring_model`; pickled into the mapInArrow closure.
    """

    sha256: str
    payload: Any  # pyspark Broadcast of the ONNX bytes (or the bytes themselves, for plain Python use)
    seq_features: tuple[str, ...]
    tab_features: tuple[str, ...]
    seq_len: int
    label_names: tuple[str, ...]
    thresholds: tuple[float, ...]
    intra_op_threads: int = 1
    inter_op_threads: int = 1

    def feature_spec(self) -> FeatureSpec:
        return FeatureSpec(self.seq_features, self.tab_features, self.seq_len, self.label_names)

    def model_bytes(self) -> bytes:
        return self.payload if isinstance(self.payload, (bytes, bytearray)) else self.payload.value


def scoring_model(
    metadata: Mapping[str, Any],
    model_bytes_or_broadcast: Any,
    sha256: str,
    *,
    label_names: Sequence[str],
    default_threshold: float,
    intra_op_threads: int = 1,
    inter_op_threads: int = 1,
) -> tuple[ScoringModel, list[str]]:
    """The :class:`ScoringModel` of an exported model's metadata (``tracelake.model_io.read_metadata``).

    ``label_names`` are the labels the output table has columns for; the
    model must predict exactly those. Returns the model and warnings (e.g.
    thresholds missing from the model).
    """
    spec = metadata.get("feature_spec")
    if not spec:
        raise ScoringModelError(
            "the ONNX model carries no tracelake feature_spec metadata; export it with "
            "training.onnx_export.export_onnx"
        )
    labels = tuple(spec["label_names"])
    if set(labels) != set(label_names):
        raise ScoringModelError(
            f"the model predicts {list(labels)}, the scored table needs {list(label_names)}; "
            "score with a model trained on schemas/domain.yaml anomaly_types"
        )
    warnings = []
    thresholds = metadata.get("thresholds")
    if not thresholds:
        warnings.append(
            f"the model has no thresholds; flags use scoring.default_threshold={default_threshold}"
        )
        thresholds = dict.fromkeys(labels, default_threshold)
    return ScoringModel(
        sha256=sha256,
        payload=model_bytes_or_broadcast,
        seq_features=tuple(spec["seq_features"]),
        tab_features=tuple(spec["tab_features"]),
        seq_len=int(spec["seq_len"]),
        label_names=labels,
        thresholds=tuple(float(thresholds[label]) for label in labels),
        intra_op_threads=intra_op_threads,
        inter_op_threads=inter_op_threads,
    ), warnings


def check_features(
    model: ScoringModel, columns: Sequence[str], sequence_features: Sequence[str], sequence_length: int
) -> None:
    """Fail early, on the driver, when the feature table cannot feed the model."""
    missing = [c for c in (*KEY_COLUMNS, *model.feature_spec().input_columns) if c not in columns]
    if missing:
        raise ScoringModelError(
            f"the model reads column(s) {missing}, which features_event_features lacks; "
            "score with a model trained on the current feature table"
        )
    if tuple(sequence_features) != model.seq_features or sequence_length != model.seq_len:
        raise ScoringModelError(
            f"the model expects sequences of {model.seq_len} steps of {list(model.seq_features)}; the feature "
            f"table holds {sequence_length} steps of {list(sequence_features)}; retrain on the current features"
        )


# --- worker side ------------------------------------------------------------------------------

_SESSIONS: dict[tuple[str, int, int], Any] = {}


def session_for(model: ScoringModel) -> Any:
    """This worker's ONNX Runtime session for ``model`` (built once, then reused)."""
    key = (model.sha256, model.intra_op_threads, model.inter_op_threads)
    session = _SESSIONS.get(key)
    if session is None:
        import onnxruntime as ort

        data = model.model_bytes()
        actual = hashlib.sha256(data).hexdigest()
        if actual != model.sha256:
            raise ScoringModelError(
                f"model bytes on the worker have SHA-256 {actual[:16]}…, expected "
                f"{model.sha256[:16]}…; refusing to score"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = model.intra_op_threads
        options.inter_op_num_threads = model.inter_op_threads
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        _SESSIONS[key] = session
    return session


def feeds(frame: Columns, model: ScoringModel) -> dict[str, np.ndarray]:
    """ONNX Runtime inputs for rows of the feature table (Arrow table or batch, pandas frame, column dict)."""
    return model_inputs(frame, model.feature_spec())


def predict(frame: Columns, model: ScoringModel) -> np.ndarray:
    """Probabilities [rows, labels] of rows of the feature table, with this worker's session."""
    if len(frame[SEQ_LEN_COLUMN]) == 0:
        return np.zeros((0, len(model.label_names)), dtype=np.float32)
    return session_for(model).run([OUTPUT_NAME], feeds(frame, model))[0]


def _float64_array(values: np.ndarray) -> pa.Array:
    """A float64 Arrow array over ``values``' buffer, without a copy."""
    data = np.ascontiguousarray(values, dtype=np.float64)
    return pa.Array.from_buffers(pa.float64(), len(data), [None, pa.py_buffer(data)])


def _score_partition(
    model: ScoringModel, passthrough: Sequence[str]
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    names = [probability_column(label) for label in model.label_names]

    def score(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            probabilities = predict(batch, model).astype(np.float64)
            columns = [batch.column(name) for name in passthrough]
            columns += [_float64_array(probabilities[:, j]) for j in range(len(names))]
            yield pa.RecordBatch.from_arrays(columns, names=[*passthrough, *names])

    return score


def probabilities(
    features: DataFrame, model: ScoringModel, passthrough: Sequence[str] = KEY_COLUMNS
) -> DataFrame:
    """``passthrough`` columns + one ``p_<label>`` double per label, computed by ONNX Runtime in the workers."""
    needed = list(dict.fromkeys([*passthrough, SEQ_COLUMN, SEQ_LEN_COLUMN, *model.tab_features]))
    source = features.select(*needed)
    fields = [source.schema[c] for c in passthrough]
    ddl = ", ".join(
        [
            *(f"`{f.name}` {f.dataType.simpleString()}" for f in fields),
            *(f"`{probability_column(label)}` double" for label in model.label_names),
        ]
    )
    return source.mapInArrow(_score_partition(model, list(passthrough)), schema=ddl)


def flags_and_score(scored: DataFrame, model: ScoringModel) -> DataFrame:
    """Add ``flag_<label>`` (p >= the model's threshold), ``anomaly_score`` (max p) and ``anomaly_flag`` (any flag)."""
    flags: list[Column] = []
    for label, threshold in zip(model.label_names, model.thresholds, strict=False):
        flags.append((F.col(probability_column(label)) >= F.lit(threshold)).alias(flag_column(label)))
    probs = [F.col(probability_column(label)) for label in model.label_names]
    score = F.greatest(*probs) if len(probs) > 1 else probs[0]
    any_flag = (
        F.greatest(*[F.col(flag_column(label)) for label in model.label_names])
        if len(probs) > 1
        else F.col(flag_column(model.label_names[0]))
    )
    return scored.select("*", *flags, score.alias("anomaly_score")).withColumn("anomaly_flag", any_flag)


def score_events(features: DataFrame, model: ScoringModel) -> DataFrame:
    """Event features -> keys, probabilities, flags, anomaly score (no lineage columns)."""
    return flags_and_score(probabilities(features, model), model)
