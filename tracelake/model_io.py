"""The model's input/output contract: feature names, column layout, model input arrays, ONNX names.

One home for what the training set, the trainer, the ONNX export, scoring and
drift monitoring must agree on. Light on purpose: numpy, pyarrow and the
schema reader only (never torch or pyspark), so a Spark Python worker that
scores rows imports nothing heavier than ONNX Runtime.

Feature names come from ``schemas/tables/features_event_features.yaml``: the
columns with role ``feature`` are the tabular inputs in column order, its
``sequence_features`` order the features of one step of the ``sequence``
column, and the ``sequence_length`` column counts the real steps. Labels are
``schemas/domain.yaml`` ``anomaly_types`` (role ``label`` in training_set.yaml).

Column layout (what the training-set job writes, what training and scoring read):

| column | type | meaning |
| --- | --- | --- |
| one per tabular feature | float (double accepted) | ``FeatureSpec.tab_features``, in that order |
| ``seq`` | array<float>, exactly ``seq_len * n_seq_features`` long (the row's ``seq_len``) | the EPC's last events, flattened time-major, no padding |
| ``seq_len`` | int | how many time steps ``seq`` holds (1..``FeatureSpec.seq_len``) |
| one per label | int, 0 or 1 | ``FeatureSpec.label_names`` (schemas/domain.yaml ``anomaly_types``) |
| ``split`` | string | ``train``, ``validation`` or ``test`` (training sets only) |

``seq`` is one flat array, not one array column per sequence feature: one
column is one Arrow list to convert (a reshape, no per-feature stacking), and
the Spark side builds it with one ``flatten(transform(...))``. Element
``t * n_seq_features + f`` is feature ``FeatureSpec.seq_features[f]`` of time
step ``t``. Steps are oldest first: steps ``0 .. seq_len-1`` are the EPC's most
recent events ending with this one (so step ``seq_len-1`` is the event
itself). The column stores only these real steps (compact: most events have a
short history, so a padded column would be mostly zeros on disk, in Arrow
memory and in every transfer); :func:`pad_sequences` is the one place that
expands them to the model's right-padded [N, T, F] input (steps
``seq_len .. T-1`` are 0). Two padded inputs are also accepted where the rows
arrive already dense: a 2-D numeric array [N, T * F] (a petastorm tensor) and
an Arrow ``fixed_size_list`` of T * F values; there steps ``seq_len ..`` are
padding (any value; 0 by convention). Missing feature values may be null/NaN:
the model imputes the training mean.

The exported model (training/onnx_export.py) takes ``INPUT_NAMES`` --
``seq`` float32 [N, T, F] (right-padded), ``seq_len`` int64 [N], ``tab`` float32 [N, K] --
and returns ``OUTPUT_NAME`` float32 [N, labels]; its metadata (``metadata_props``
prefixed ``METADATA_PREFIX``, JSON values) carries the :class:`FeatureSpec`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, NamedTuple, Self, TypeAlias

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from tracelake.errors import TracelakeError
from tracelake.tables import domain, table_spec

FEATURES_TABLE = "features_event_features"

# Column roles of the table schemas (ColumnSpec.role).
FEATURE_ROLE, SEQUENCE_ROLE, SEQUENCE_LENGTH_ROLE = "feature", "sequence", "sequence_length"

SEQ_COLUMN = "seq"
SEQ_LEN_COLUMN = "seq_len"
SPLIT_COLUMN = "split"
TRAIN, VALIDATION, TEST = "train", "validation", "test"
SPLITS = (TRAIN, VALIDATION, TEST)
# What identifies a scored event: the leading columns of gold_scored_events.
KEY_COLUMNS = ("event_id", "epc_code", "event_time", "location_id", "event_date")
_RESERVED = {SEQ_COLUMN, SEQ_LEN_COLUMN, SPLIT_COLUMN}

INPUT_NAMES = ("seq", "seq_len", "tab")
OUTPUT_NAME = "probabilities"
METADATA_PREFIX = "tracelake."

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
# Rows in the column layout: a pyarrow Table or RecordBatch, a pandas frame, or a dict of arrays.
Columns: TypeAlias = Mapping[str, Any] | pa.Table | pa.RecordBatch


class DataError(TracelakeError, ValueError):
    """Rows or a feature spec that do not match the column layout above."""


# --- feature names, from schemas/ ---------------------------------------------------------------


@cache
def _schema_features() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(sequence features, tabular features) of the feature table; checks the layout's column names."""
    spec = table_spec(FEATURES_TABLE)
    by_role = {
        role: [c.name for c in spec.columns if c.role == role]
        for role in (SEQUENCE_ROLE, SEQUENCE_LENGTH_ROLE)
    }
    if by_role != {SEQUENCE_ROLE: [SEQ_COLUMN], SEQUENCE_LENGTH_ROLE: [SEQ_LEN_COLUMN]}:
        raise DataError(
            f"schemas/tables/{FEATURES_TABLE}.yaml must tag exactly column {SEQ_COLUMN!r} with role "
            f"{SEQUENCE_ROLE!r} and {SEQ_LEN_COLUMN!r} with role {SEQUENCE_LENGTH_ROLE!r}; it tags {by_role}"
        )
    sequence = tuple(str(f["name"]) for f in spec.extra.get("sequence_features") or ())
    tabular = tuple(c.name for c in spec.columns if c.role == FEATURE_ROLE)
    return sequence, tabular


def sequence_features() -> list[str]:
    """Features of one time step of ``seq``, in order (``sequence_features`` of the feature table)."""
    return list(_schema_features()[0])


def tabular_features() -> list[str]:
    """The tabular model inputs: the feature table's columns with role ``feature``, in table order."""
    return list(_schema_features()[1])


def label_names() -> tuple[str, ...]:
    """The anomaly types of schemas/domain.yaml, in order."""
    return tuple(domain().anomaly_types)


@dataclass(frozen=True)
class FeatureSpec:
    """Names and order of the model's inputs and outputs (they travel with the model)."""

    seq_features: tuple[str, ...]
    tab_features: tuple[str, ...]
    seq_len: int
    label_names: tuple[str, ...]

    def __post_init__(self) -> None:
        for field_name in ("seq_features", "tab_features", "label_names"):
            object.__setattr__(self, field_name, tuple(getattr(self, field_name)))
        if not self.seq_features or not self.tab_features or not self.label_names:
            raise DataError(
                f"a feature spec needs at least one sequence feature, tabular feature and label; got {self}"
            )
        if self.seq_len < 1:
            raise DataError(f"seq_len must be >= 1, got {self.seq_len}")
        columns = [*self.tab_features, *self.label_names]
        clashes = sorted({c for c in columns if columns.count(c) > 1} | (set(columns) & _RESERVED))
        if clashes or len(set(self.seq_features)) != len(self.seq_features):
            raise DataError(
                f"feature/label names must be unique and not one of {sorted(_RESERVED)}; offending: "
                f"{clashes or self.seq_features}"
            )

    @classmethod
    def from_schema(cls, seq_len: int) -> FeatureSpec:
        """The spec of the current feature table and domain (``seq_len``: ``features.sequence_length``)."""
        return cls(tuple(sequence_features()), tuple(tabular_features()), seq_len, label_names())

    @property
    def n_seq(self) -> int:
        return len(self.seq_features)

    @property
    def n_tab(self) -> int:
        return len(self.tab_features)

    @property
    def n_labels(self) -> int:
        return len(self.label_names)

    @property
    def input_columns(self) -> list[str]:
        """The feature-table columns the model reads (no labels), in layout order."""
        return [*self.tab_features, SEQ_COLUMN, SEQ_LEN_COLUMN]

    @property
    def columns(self) -> list[str]:
        """The training-set columns the trainer reads, in layout order."""
        return [*self.input_columns, *self.label_names]

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq_features": list(self.seq_features),
            "tab_features": list(self.tab_features),
            "seq_len": self.seq_len,
            "label_names": list(self.label_names),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSpec:
        missing = {"seq_features", "tab_features", "seq_len", "label_names"} - set(data)
        if missing:
            raise DataError(f"feature spec lacks {sorted(missing)}; got keys {sorted(data)}")
        return cls(
            tuple(data["seq_features"]),
            tuple(data["tab_features"]),
            int(data["seq_len"]),
            tuple(data["label_names"]),
        )


# --- rows -> model input arrays -----------------------------------------------------------------


class Arrays(NamedTuple):
    """Rows as numpy: seq [N, T, F] f32, seq_len [N] i64, tab [N, K] f32, labels [N, L] f32."""

    seq: FloatArray
    seq_len: IntArray
    tab: FloatArray
    labels: FloatArray

    @property
    def n_rows(self) -> int:
        return int(self.seq_len.shape[0])

    def take(self, index: npt.NDArray[np.integer[Any]] | slice) -> Self:
        return type(self)(self.seq[index], self.seq_len[index], self.tab[index], self.labels[index])


def _list_array(column: Any, name: str) -> pa.Array | None:
    """An Arrow array of the column (chunks combined), a pandas/object column converted; None if dense."""
    if isinstance(column, pa.ChunkedArray):
        return column.combine_chunks()
    if isinstance(column, pa.Array):
        return column
    # Python lists are rows of lists (compact) whatever their lengths; numpy: object = one array per row.
    values = column if isinstance(column, (list, tuple)) else np.asarray(column)
    if isinstance(values, np.ndarray) and values.dtype != object:
        return None
    try:  # e.g. pandas: one array per row; converted in C, no Python per row
        return pa.array(values, pa.list_(pa.float32()), from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
        raise DataError(f"column {name!r} must hold one array of floats per row: {exc}") from exc


def pad_sequences(values: npt.ArrayLike, seq_len: npt.ArrayLike, steps: int, n_features: int) -> FloatArray:
    """Compact sequences -> the model's right-padded float32 [N, steps, n_features].

    ``values`` are the rows' real steps one after another (row ``i`` holds
    ``seq_len[i] * n_features`` values, time-major); ``seq_len`` each in
    1..steps (checked by the caller). Steps ``seq_len .. steps-1`` are 0.
    """
    lengths = np.asarray(seq_len, dtype=np.int64) * n_features
    flat = np.asarray(values, dtype=np.float32).reshape(-1)
    if flat.shape[0] != int(lengths.sum()):
        raise DataError(f"{flat.shape[0]} sequence values for rows holding {int(lengths.sum())}")
    out = np.zeros((lengths.shape[0], steps * n_features), dtype=np.float32)
    # Row-major boolean assignment fills each row's leading cells in order: the flat values as they are.
    out[np.arange(steps * n_features)[None, :] < lengths[:, None]] = flat
    return out.reshape(-1, steps, n_features)


def compact_sequences(seq: npt.ArrayLike, seq_len: npt.ArrayLike) -> pa.ListArray:
    """Right-padded [N, T, F] sequences -> the compact ``seq`` column (the real steps of each row only)."""
    padded = np.asarray(seq, dtype=np.float32)
    n, steps = padded.shape[0], padded.shape[1]
    width = int(np.prod(padded.shape[2:], dtype=np.int64))
    lengths = np.asarray(seq_len, dtype=np.int64) * width
    flat = padded.reshape(n, steps * width)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = flat[np.arange(steps * width)[None, :] < lengths[:, None]]
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.float32()))


def _refuse_null_rows(array: pa.Array, name: str) -> None:
    if array.null_count:
        row = int(np.flatnonzero(array.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(f"column {name!r} is null in row {row}; every row needs its sequence")


def _sequence(column: Any, seq_len: IntArray, spec: FeatureSpec) -> FloatArray:
    """The ``seq`` column -> float32 [N, T, F], right-padded; nulls inside become NaN.

    A list column is compact (row ``i`` holds exactly ``seq_len[i] * F``
    values); a ``fixed_size_list`` or a 2-D numeric array holds T * F values per
    row, already padded.
    """
    name, steps, n_features = SEQ_COLUMN, spec.seq_len, spec.n_seq
    width = steps * n_features
    array = _list_array(column, name)
    if array is None or pa.types.is_fixed_size_list(array.type):
        if array is not None:
            _refuse_null_rows(array, name)
            if array.type.list_size != width:
                raise DataError(
                    f"column {name!r} is a fixed-size list of {array.type.list_size} values; a padded "
                    f"sequence holds {width} (seq_len x sequence features)"
                )
            values = array.flatten().cast(pa.float32()).to_numpy(zero_copy_only=False)
            return np.asarray(values, dtype=np.float32).reshape(-1, steps, n_features).copy()
        matrix = np.asarray(column)
        if matrix.ndim != 2 or (len(matrix) and matrix.shape[1] != width):
            raise DataError(f"column {name!r} must be [rows, {width}], got shape {matrix.shape}")
        return np.array(matrix, dtype=np.float32).reshape(-1, steps, n_features)
    if len(array) != len(seq_len):
        raise DataError(f"column {name!r} has {len(array)} rows, {SEQ_LEN_COLUMN!r} {len(seq_len)}")
    _refuse_null_rows(array, name)
    lengths = pc.list_value_length(array).to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(lengths != seq_len * n_features)
    if bad.size:
        row = int(bad[0])
        raise DataError(
            f"column {name!r} must hold seq_len x {n_features} values per row (its real steps, no padding); "
            f"row {row} has {int(lengths[row])} for seq_len {int(seq_len[row])}"
        )
    values = array.flatten().cast(pa.float32()).to_numpy(zero_copy_only=False)
    return pad_sequences(values, seq_len, steps, n_features)


def _vector(column: Any, dtype: Any) -> npt.NDArray[Any]:
    if isinstance(column, (pa.Array, pa.ChunkedArray)):
        return np.asarray(column.to_numpy(zero_copy_only=False)).astype(dtype, copy=False)
    return np.asarray(column).astype(dtype, copy=False)


def _require(columns: Columns, names: Sequence[str], what: str) -> None:
    available = (
        set(columns.column_names) if isinstance(columns, (pa.Table, pa.RecordBatch)) else set(columns.keys())
    )
    missing = [c for c in names if c not in available]
    if missing:
        raise DataError(f"{what} lacks column(s) {missing}; it has {sorted(available)}")


def _inputs(columns: Columns, spec: FeatureSpec) -> tuple[FloatArray, IntArray, FloatArray]:
    """(seq [N, T, F], seq_len [N], tab [N, K]) of layout columns already checked to be present."""
    lengths = _vector(columns[SEQ_LEN_COLUMN], np.float64)
    bad = np.flatnonzero(~np.isfinite(lengths) | (lengths < 1) | (lengths > spec.seq_len))
    if bad.size:
        raise DataError(
            f"column {SEQ_LEN_COLUMN!r} must lie in 1..{spec.seq_len}; row {int(bad[0])} has {lengths[bad[0]]}"
        )
    seq_len = lengths.astype(np.int64)
    seq = _sequence(columns[SEQ_COLUMN], seq_len, spec)  # a new, writable array (torch wants one)
    n = seq.shape[0]
    if n != seq_len.shape[0]:
        raise DataError(f"column {SEQ_COLUMN!r} has {n} rows, {SEQ_LEN_COLUMN!r} {seq_len.shape[0]}")
    tab = np.empty((n, spec.n_tab), dtype=np.float32)
    for j, name in enumerate(spec.tab_features):
        tab[:, j] = _vector(columns[name], np.float32)
    return seq, seq_len, tab


def columns_to_arrays(columns: Columns, spec: FeatureSpec) -> Arrays:
    """Layout columns with labels (pyarrow table or batch, pandas frame, dict of arrays) -> :class:`Arrays`.

    Raises :class:`DataError` naming the column and row when the data breaks the layout.
    """
    _require(columns, spec.columns, "training data")
    seq, seq_len, tab = _inputs(columns, spec)
    labels = np.empty((seq.shape[0], spec.n_labels), dtype=np.float32)
    for j, name in enumerate(spec.label_names):
        values = _vector(columns[name], np.float32)
        bad = np.flatnonzero((values != 0) & (values != 1))  # NaN (null) fails both
        if bad.size:
            raise DataError(f"label column {name!r} must be 0 or 1; row {int(bad[0])} has {values[bad[0]]}")
        labels[:, j] = values
    return Arrays(seq, seq_len, tab, labels)


def model_inputs(columns: Columns, spec: FeatureSpec) -> dict[str, npt.NDArray[Any]]:
    """The exported model's inputs (``INPUT_NAMES``) of feature-table rows; labels are not needed."""
    _require(columns, spec.input_columns, "feature data")
    return arrays_feeds(*_inputs(columns, spec))


def arrays_feeds(seq: FloatArray, seq_len: IntArray, tab: FloatArray) -> dict[str, npt.NDArray[Any]]:
    """The exported model's inputs (``INPUT_NAMES``), contiguous and in the dtypes it takes."""
    values = (
        np.ascontiguousarray(seq, dtype=np.float32),
        np.ascontiguousarray(seq_len, dtype=np.int64),
        np.ascontiguousarray(tab, dtype=np.float32),
    )
    return dict(zip(INPUT_NAMES, values, strict=True))


def arrays_to_table(arrays: Arrays, spec: FeatureSpec, split: str | Sequence[str]) -> pa.Table:
    """:class:`Arrays` -> a pyarrow table in the column layout (with ``split``; ``seq`` compact)."""
    n = arrays.n_rows
    columns: dict[str, pa.Array] = {
        name: pa.array(arrays.tab[:, j]) for j, name in enumerate(spec.tab_features)
    }
    columns[SEQ_COLUMN] = compact_sequences(arrays.seq, arrays.seq_len)
    columns[SEQ_LEN_COLUMN] = pa.array(arrays.seq_len.astype(np.int32))
    for j, name in enumerate(spec.label_names):
        columns[name] = pa.array(arrays.labels[:, j].astype(np.int32))
    columns[SPLIT_COLUMN] = pa.array([split] * n if isinstance(split, str) else list(split), pa.string())
    return pa.table(columns)


# --- the exported model's metadata --------------------------------------------------------------


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The tracelake metadata embedded in an exported model (``feature_spec``, ``thresholds``, ...)."""
    import onnx  # only the reader of a model file needs it

    model = onnx.load(str(path), load_external_data=False)
    return {
        prop.key[len(METADATA_PREFIX) :]: json.loads(prop.value)
        for prop in model.metadata_props
        if prop.key.startswith(METADATA_PREFIX)
    }
