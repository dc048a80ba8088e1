import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from tracelake.model_io import read_metadata
from training import onnx_export
from training.data import synthetic_arrays, synthetic_feature_spec
from training.model import ModelConfig, PreprocessingStats, SequenceAnomalyModel
from training.onnx_export import OnnxParityError, export_onnx, onnx_feeds, run_onnx

LABELS = ("epc_fake", "epc_dup", "loc_err", "evt_order_err", "jump")
SPEC = synthetic_feature_spec(n_seq=5, n_tab=4, seq_len=25, label_names=LABELS)
THRESHOLDS = {name: 0.1 * (i + 1) for i, name in enumerate(LABELS)}


def fitted_model(cell):
    torch.manual_seed(3)
    model = SequenceAnomalyModel(
        ModelConfig(SPEC, cell=cell, hidden_size=16, num_layers=2, tab_hidden_size=8, head_hidden_size=8)
    )
    stats = PreprocessingStats(SPEC)
    train = synthetic_arrays(200, SPEC, seed=1)
    train.seq[...] = train.seq * 3 + 1  # non-trivial standardisation inside the graph
    stats.update(train.to_batch())
    model.set_preprocessing(stats, pos_weight_cap=50.0)
    return model.eval()


@pytest.mark.parametrize("cell, exporter", [("lstm", "dynamo"), ("gru", "torchscript")])
def test_onnx_parity_on_dynamic_batches_and_metadata(tmp_path, cell, exporter):
    model = fitted_model(cell)
    rows = synthetic_arrays(80, SPEC, seed=9)
    rows.tab[0, 1] = np.nan  # missing value: imputed in both runtimes alike
    path = tmp_path / "model.onnx"
    metadata = export_onnx(
        model,
        path,
        rows,
        thresholds=THRESHOLDS,
        exporter=exporter,
        tolerance=1e-4,
        parity_batch_sizes=(1, 37),
        extra_metadata={"model_name": "tracelake-anomaly-lstm"},
    )
    assert metadata["max_abs_diff"] < 1e-4 and metadata["parity_rows"] == 80
    assert read_metadata(path) == metadata
    assert metadata["thresholds"] == THRESHOLDS and metadata["label_names"] == list(LABELS)
    assert metadata["tab_features"] == list(SPEC.tab_features) and metadata["seq_len"] == 25
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["seq", "seq_len", "tab"]
    assert [o.name for o in session.get_outputs()] == ["probabilities"]
    with torch.no_grad():
        for size in (1, 37):
            batch = rows.take(slice(0, size))
            (probs,) = session.run(None, onnx_feeds(batch))
            expected = torch.sigmoid(model(*batch.to_batch()[:3])).numpy()
            assert probs.shape == (size, len(LABELS))
            assert np.abs(probs - expected).max() < 1e-4
    onnx.checker.check_model(onnx.load(str(path)))


def test_parity_failure_leaves_no_model(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_export, "parity", lambda *a, **k: 0.5)
    path = tmp_path / "model.onnx"
    with pytest.raises(OnnxParityError, match="differs from torch by 0.5"):
        export_onnx(fitted_model("gru"), path, synthetic_arrays(5, SPEC, seed=0), exporter="torchscript")
    assert list(tmp_path.iterdir()) == []


def test_run_onnx_matches_rows_in_layout_order(tmp_path):
    model = fitted_model("gru")
    rows = synthetic_arrays(30, SPEC, seed=4)
    path = tmp_path / "m.onnx"
    export_onnx(model, path, rows, exporter="torchscript")
    whole, chunked = run_onnx(path, rows), run_onnx(path, rows, batch_size=7)
    np.testing.assert_array_equal(whole.shape, (30, len(LABELS)))
    assert np.abs(whole - chunked).max() < 1e-6


def test_parity_tolerance_cannot_be_loosened_past_1e_4(tmp_path):
    from pydantic import ValidationError

    from tracelake.config import TrainingSettings

    assert TrainingSettings().onnx_parity_tolerance == onnx_export.MAX_PARITY_TOLERANCE == 1e-4
    assert TrainingSettings(onnx_parity_tolerance=1e-6).onnx_parity_tolerance == 1e-6  # tighter is fine
    with pytest.raises(ValidationError, match="onnx_parity_tolerance"):
        TrainingSettings(onnx_parity_tolerance=1e-3)
    with pytest.raises(ValueError, match=r"parity tolerance 0.001 must lie in \(0, 0.0001\]"):
        export_onnx(
            fitted_model("gru"),
            tmp_path / "m.onnx",
            synthetic_arrays(5, SPEC, seed=0),
            exporter="torchscript",
            tolerance=1e-3,
        )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_onnx_parity_with_categorical_embeddings(tmp_path, exporter):
    from tracelake.model_io import FeatureSpec

    spec = FeatureSpec(
        ("gap_log", "event_type_idx", "tier", "business_step_idx"), ("t0", "t1", "t2"), 8, LABELS
    )
    torch.manual_seed(4)
    model = SequenceAnomalyModel(
        ModelConfig(
            spec,
            hidden_size=12,
            tab_hidden_size=8,
            head_hidden_size=8,
            categorical_features={"event_type_idx": 12, "business_step_idx": 7},
            embedding_dim=4,
        )
    )
    rows = synthetic_arrays(
        64, synthetic_feature_spec(n_seq=4, n_tab=3, seq_len=8, label_names=LABELS), seed=5
    )
    rng = np.random.default_rng(0)
    rows.seq[:, :, 1] = rng.integers(0, 14, size=rows.seq.shape[:2])  # 12, 13: outside the vocabulary
    rows.seq[:, :, 3] = rng.integers(0, 7, size=rows.seq.shape[:2])
    rows.seq[0, 0, 1] = np.nan
    stats = PreprocessingStats(spec)
    stats.update(rows.to_batch())
    model.set_preprocessing(stats, pos_weight_cap=50.0)
    metadata = export_onnx(
        model.eval(),
        tmp_path / "model.onnx",
        rows,
        thresholds=THRESHOLDS,
        exporter=exporter,
        tolerance=1e-4,
        parity_batch_sizes=(1, 37),
    )
    assert metadata["max_abs_diff"] < 1e-4
