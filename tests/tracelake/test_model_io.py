"""The model's input/output contract (tracelake/model_io.py): names from schemas/, the array layout."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import yaml

from tracelake import model_io
from tracelake.model_io import (
    SEQ_COLUMN,
    SEQ_LEN_COLUMN,
    SPLIT_COLUMN,
    DataError,
    FeatureSpec,
    arrays_to_table,
    columns_to_arrays,
    model_inputs,
)
from tracelake.tables import SCHEMAS_DIR, domain, table_spec

ROOT = Path(__file__).resolve().parents[2]
SPEC = FeatureSpec(("a", "b"), ("x", "y", "z"), 3, ("l1", "l2"))


def _schema(table: str) -> dict:
    return yaml.safe_load((SCHEMAS_DIR / "tables" / f"{table}.yaml").read_text())


def test_roles_are_read_from_the_feature_table_schema():
    raw = _schema(model_io.FEATURES_TABLE)
    roles = {c["name"]: c.get("role") for c in raw["columns"]}
    assert model_io.tabular_features() == [name for name, role in roles.items() if role == "feature"]
    assert model_io.sequence_features() == [f["name"] for f in raw["sequence_features"]]
    assert roles[SEQ_COLUMN] == "sequence" and roles[SEQ_LEN_COLUMN] == "sequence_length"
    spec = FeatureSpec.from_schema(25)
    assert spec.seq_features == tuple(model_io.sequence_features())
    assert spec.tab_features == tuple(model_io.tabular_features())
    assert spec.label_names == tuple(domain().anomaly_types) == model_io.label_names()


def test_labels_split_and_keys_match_the_other_table_schemas():
    training_set = _schema("training_set")
    labels = [c["name"] for c in training_set["columns"] if c.get("role") == "label"]
    assert labels == list(model_io.label_names())
    assert SPLIT_COLUMN in [c["name"] for c in training_set["columns"]]
    gold = table_spec("gold_scored_events").column_names
    assert tuple(gold[: len(model_io.KEY_COLUMNS)]) == model_io.KEY_COLUMNS
    assert set(model_io.KEY_COLUMNS) <= set(table_spec(model_io.FEATURES_TABLE).column_names)


def test_roles_match_what_the_spark_transform_computes(spark, test_settings):
    """The feature table's roles name exactly the features spark_jobs/transforms/event_features.py builds."""
    from pyspark.sql import functions as F

    from spark_jobs.transforms.event_features import _step_values, event_features, scan_steps

    def empty(table):
        return spark.createDataFrame([], table_spec(table).schema)

    settings = test_settings.features
    out = event_features(  # raises FeatureDefinitionError when schema and code disagree
        scan_steps(empty("silver_scan_events"), settings),
        empty("features_location_daily"),
        empty("features_route_daily"),
        start=dt.date(2025, 7, 1),
        end=dt.date(2025, 7, 1),
        settings=settings,
    )
    assert out.columns == table_spec(model_io.FEATURES_TABLE).column_names
    assert [c for c in out.columns if c in set(model_io.tabular_features())] == model_io.tabular_features()
    assert {SEQ_COLUMN, SEQ_LEN_COLUMN} <= set(out.columns)
    computed_steps = _step_values(F.col("step"), F.lit(0))
    assert sorted(computed_steps) == sorted(model_io.sequence_features())


def _tiny_table(seq_len=(1, 3), labels=((0, 1), (1, 0))) -> pa.Table:
    """Two rows: row r's seq (compact, seq_len[r] steps) element t * 2 + f is 100 r + 10 t + f; tab x has a null."""
    flat = [
        [100.0 * r + 10 * t + f for t in range(min(n, 3)) for f in range(2)] for r, n in enumerate(seq_len)
    ]
    return pa.table(
        {
            "x": pa.array([1.5, None], pa.float64()),
            "y": pa.array([2.0, 3.0], pa.float64()),
            "z": pa.array([4.0, 5.0], pa.float64()),
            SEQ_COLUMN: pa.array(flat, pa.list_(pa.float32())),
            SEQ_LEN_COLUMN: pa.array(list(seq_len), pa.int32()),
            "l1": pa.array([row[0] for row in labels], pa.int32()),
            "l2": pa.array([row[1] for row in labels], pa.int32()),
        }
    )


def test_conversion_layout_of_a_tiny_arrow_table():
    arrays = columns_to_arrays(_tiny_table(), SPEC)
    assert arrays.seq.shape == (2, 3, 2) and arrays.seq.dtype == np.float32
    for r, n in enumerate((1, 3)):
        for t in range(3):
            for f in range(2):
                # time-major: element t * F + f; right-padded with 0 after the row's seq_len steps
                assert arrays.seq[r, t, f] == (100 * r + 10 * t + f if t < n else 0.0)
    assert arrays.seq_len.tolist() == [1, 3] and arrays.seq_len.dtype == np.int64
    assert arrays.tab.dtype == np.float32 and arrays.tab[0].tolist() == [1.5, 2.0, 4.0]
    assert np.isnan(arrays.tab[1, 0]) and arrays.tab[1, 1:].tolist() == [3.0, 5.0]  # null -> NaN
    assert arrays.labels.tolist() == [[0.0, 1.0], [1.0, 0.0]]
    assert arrays.seq.flags.writeable
    assert arrays.take(slice(1, 2)).seq_len.tolist() == [3]


def test_model_inputs_need_no_labels_and_match_the_training_arrays():
    table = _tiny_table()
    feeds = model_inputs(table.drop(["l1", "l2"]), SPEC)
    assert list(feeds) == list(model_io.INPUT_NAMES)
    arrays = columns_to_arrays(table, SPEC)
    for name, expected in zip(model_io.INPUT_NAMES, (arrays.seq, arrays.seq_len, arrays.tab), strict=True):
        assert feeds[name].flags.c_contiguous
        np.testing.assert_array_equal(feeds[name], expected)
    assert feeds["seq_len"].dtype == np.int64 and feeds["tab"].dtype == feeds["seq"].dtype == np.float32
    pandas_feeds = model_inputs(table.to_pandas(), SPEC)  # what a mapInPandas batch looks like
    for name in model_io.INPUT_NAMES:
        np.testing.assert_array_equal(pandas_feeds[name], feeds[name])


def test_conversion_refuses_rows_that_break_the_layout():
    with pytest.raises(DataError, match=r"lacks column\(s\) \['l2'\]"):
        columns_to_arrays(_tiny_table().drop(["l2"]), SPEC)
    with pytest.raises(DataError, match=r"lacks column\(s\) \['y'\]"):
        model_inputs(_tiny_table().drop(["y"]), SPEC)
    with pytest.raises(DataError, match=r"'seq_len' must lie in 1..3; row 1 has 4"):
        columns_to_arrays(_tiny_table(seq_len=(1, 4)), SPEC)
    with pytest.raises(DataError, match=r"label column 'l1' must be 0 or 1; row 0 has 2"):
        columns_to_arrays(_tiny_table(labels=((2, 0), (0, 0))), SPEC)
    short = _tiny_table().set_column(3, SEQ_COLUMN, pa.array([[1.0, 2.0], [2.0]], pa.list_(pa.float32())))
    with pytest.raises(
        DataError, match=r"'seq' must hold seq_len x 2 values per row .*row 1 has 1 for seq_len 3"
    ):
        columns_to_arrays(short, SPEC)


def test_a_row_of_the_wrong_length_is_named_in_one_line():
    """The old padded layout (T * F values whatever seq_len) is refused, from Arrow and from pandas alike."""
    padded = [[0.0] * 6, [1.0] * 6]
    table = _tiny_table().set_column(3, SEQ_COLUMN, pa.array(padded, pa.list_(pa.float32())))
    message = r"^column 'seq' must hold seq_len x 2 values .*row 0 has 6 for seq_len 1$"
    for frame in (table, table.to_pandas()):
        with pytest.raises(DataError, match=message):
            columns_to_arrays(frame, SPEC)
    for frame in (table, table.to_pandas(), table.to_batches()[0]):
        with pytest.raises(DataError, match=message):
            model_inputs(frame, SPEC)
    nulls = _tiny_table().set_column(3, SEQ_COLUMN, pa.array([None, [1.0] * 6], pa.list_(pa.float32())))
    with pytest.raises(DataError, match=r"'seq' is null in row 0"):
        columns_to_arrays(nulls, SPEC)


def _random_rows(n: int, steps: int, n_features: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded [n, steps, n_features] sequences of random lengths 1..steps (padding 0)."""
    rng = np.random.default_rng(seed)
    seq_len = rng.integers(1, steps + 1, size=n)
    seq = rng.normal(size=(n, steps, n_features)).astype(np.float32)
    seq[np.arange(steps)[None, :] >= seq_len[:, None]] = 0.0
    return seq, seq_len


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_compact_and_padded_sequences_round_trip(seed):
    spec = FeatureSpec(tuple(f"s{i}" for i in range(4)), ("x",), 7, ("l1",))
    seq, seq_len = _random_rows(257, spec.seq_len, spec.n_seq, seed)
    column = model_io.compact_sequences(seq, seq_len)
    assert column.type == pa.list_(pa.float32())
    assert pc.list_value_length(column).to_numpy().tolist() == (seq_len * spec.n_seq).tolist()
    for r in (0, 100, 256):  # each row holds its real steps only, oldest first
        np.testing.assert_array_equal(column[r].values.to_numpy(), seq[r, : seq_len[r]].ravel())
    np.testing.assert_array_equal(
        model_io.pad_sequences(column.flatten().to_numpy(), seq_len, spec.seq_len, spec.n_seq), seq
    )
    table = pa.table(
        {"x": np.zeros(len(seq_len)), SEQ_COLUMN: column, SEQ_LEN_COLUMN: seq_len.astype(np.int32)}
    )
    padded_table = table.set_column(  # today's padded layout, as a fixed-size list
        1, SEQ_COLUMN, pa.FixedSizeListArray.from_arrays(pa.array(seq.ravel()), spec.seq_len * spec.n_seq)
    )
    for frame in (
        table,
        table.to_pandas(),
        table.to_batches()[0],
        pa.Table.from_batches(table.slice(50).to_batches(max_chunksize=60)),  # sliced, several chunks
        padded_table,
        {"x": np.zeros(len(seq_len)), SEQ_COLUMN: seq.reshape(len(seq_len), -1), SEQ_LEN_COLUMN: seq_len},
    ):
        feeds = model_inputs(frame, spec)
        rows = slice(50, None) if len(feeds["seq"]) != len(seq) else slice(None)
        np.testing.assert_array_equal(feeds["seq"], seq[rows])
        np.testing.assert_array_equal(feeds["seq_len"], seq_len[rows])
        assert feeds["seq"].dtype == np.float32 and feeds["seq"].flags.writeable


def test_arrays_to_table_round_trips():
    arrays = columns_to_arrays(_tiny_table(), SPEC)
    table = arrays_to_table(arrays, SPEC, ["train", "test"])
    assert table.column(SPLIT_COLUMN).to_pylist() == ["train", "test"]
    back = columns_to_arrays(table, SPEC)
    for got, expected in zip(back, arrays, strict=True):
        np.testing.assert_array_equal(got, expected)


def test_feature_spec_checks_names_and_round_trips():
    assert FeatureSpec.from_dict(SPEC.to_dict()) == SPEC
    assert SPEC.columns == ["x", "y", "z", SEQ_COLUMN, SEQ_LEN_COLUMN, "l1", "l2"]
    with pytest.raises(DataError, match="not one of"):
        FeatureSpec(("a",), ("x", SPLIT_COLUMN), 2, ("l1",))
    with pytest.raises(DataError, match="lacks"):
        FeatureSpec.from_dict({"seq_features": ["a"]})


def test_importing_the_contract_loads_neither_torch_nor_pyspark():
    code = (
        "import sys, tracelake.model_io as m; m.FeatureSpec.from_schema(25); "
        "print(sorted({'torch', 'pyspark'} & {n.split('.')[0] for n in sys.modules}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == "[]"
