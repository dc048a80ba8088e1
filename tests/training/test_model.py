import numpy as np
import pytest
import torch

from training.data import synthetic_arrays, synthetic_feature_spec
from training.model import ModelConfig, PreprocessingStats, ProbabilityModel, SequenceAnomalyModel, predict

LABELS = ("epc_fake", "epc_dup", "loc_err", "evt_order_err", "jump")


@pytest.fixture(scope="module")
def spec():
    return synthetic_feature_spec(n_seq=5, n_tab=4, seq_len=25, label_names=LABELS)


def _model(spec, cell="lstm", **kwargs):
    torch.manual_seed(0)
    return SequenceAnomalyModel(
        ModelConfig(spec, cell=cell, hidden_size=16, tab_hidden_size=8, head_hidden_size=8, **kwargs)
    ).eval()


def test_forward_shapes_and_probabilities(spec):
    batch = synthetic_arrays(7, spec, seed=1).to_batch()
    model = _model(spec)
    logits = model(batch.seq, batch.seq_len, batch.tab)
    probs = ProbabilityModel(model)(batch.seq, batch.seq_len, batch.tab)
    assert logits.shape == probs.shape == (7, len(LABELS))
    assert torch.all((probs > 0) & (probs < 1))
    assert torch.allclose(probs, torch.sigmoid(logits))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_padding_does_not_change_outputs(spec, cell):
    arrays = synthetic_arrays(16, spec, seed=2)
    model = _model(spec, cell=cell, num_layers=2)
    batch = arrays.to_batch()
    reference = model(batch.seq, batch.seq_len, batch.tab)
    garbage = batch.seq.clone()
    padded = torch.arange(spec.seq_len)[None, :] >= batch.seq_len[:, None]
    noise = torch.randn_like(garbage) * 1e3
    noise[..., 0] = float("nan")
    noise[..., 1] = float("inf")
    garbage[padded] = noise[padded]
    assert padded.any()
    assert torch.equal(model(garbage, batch.seq_len, batch.tab), reference)
    # ...while the real steps do matter.
    shorter = torch.clamp(batch.seq_len - 1, min=1)
    assert not torch.equal(model(batch.seq, shorter, batch.tab), reference)


def test_preprocessing_fit_on_real_steps_only(spec):
    arrays = synthetic_arrays(300, spec, seed=3)
    arrays.tab[0, 0] = np.nan  # missing values do not count
    arrays.seq[1, 0, 2] = np.inf
    stats = PreprocessingStats(spec)
    for start in range(0, 300, 64):
        stats.update(arrays.take(slice(start, start + 64)).to_batch())
    seq_mean, seq_std, tab_mean, tab_std = stats.mean_std()
    valid = np.arange(spec.seq_len)[None, :] < arrays.seq_len[:, None]
    real = np.where(valid[..., None] & np.isfinite(arrays.seq), arrays.seq, np.nan)
    np.testing.assert_allclose(seq_mean, np.nanmean(real, axis=(0, 1)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(seq_std, np.nanstd(real, axis=(0, 1)), rtol=1e-4)
    np.testing.assert_allclose(tab_mean, np.nanmean(arrays.tab, axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tab_std, np.nanstd(arrays.tab, axis=0), rtol=1e-4)
    positives = arrays.labels.sum(0)
    expected = np.minimum((300 - positives) / positives, 5.0)
    np.testing.assert_allclose(stats.pos_weight(cap=5.0), expected, rtol=1e-6)


def test_missing_and_infinite_inputs_stay_finite(spec):
    model = _model(spec, feature_clip=3.0)
    batch = synthetic_arrays(4, spec, seed=4).to_batch()
    batch.tab[0, :] = float("nan")
    batch.tab[1, 0] = float("inf")
    batch.seq[2, 0, :] = float("-inf")
    assert torch.isfinite(model(batch.seq, batch.seq_len, batch.tab)).all()
    # NaN is imputed with the training mean: the same as feeding the mean itself.
    with_mean = batch.tab.clone()
    with_mean[0, :] = model.tab_mean
    assert torch.equal(
        model(batch.seq, batch.seq_len, batch.tab)[0], model(batch.seq, batch.seq_len, with_mean)[0]
    )


def test_save_and_load_round_trip(spec, tmp_path):
    model = _model(spec, cell="gru")
    stats = PreprocessingStats(spec)
    arrays = synthetic_arrays(50, spec, seed=5)
    stats.update(arrays.to_batch())
    model.set_preprocessing(stats, pos_weight_cap=10.0)
    path = model.save(tmp_path / "model.pt", extra={"thresholds": dict.fromkeys(LABELS, 0.5)})
    loaded = SequenceAnomalyModel.load(path).eval()
    assert loaded.config == model.config
    assert torch.equal(loaded.pos_weight, model.pos_weight)
    probs, labels = predict(loaded, [arrays.to_batch()])
    expected, _ = predict(model, [arrays.to_batch()])
    np.testing.assert_array_equal(probs, expected)
    np.testing.assert_array_equal(labels, arrays.labels)


def _categorical_spec():
    from tracelake.model_io import FeatureSpec

    return FeatureSpec(("gap_log", "event_type_idx", "tier", "business_step_idx"), ("t0", "t1"), 6, LABELS)


def _categorical_rows(spec, n=40, seed=2):
    arrays = synthetic_arrays(
        n, synthetic_feature_spec(n_seq=4, n_tab=3, seq_len=6, label_names=LABELS), seed=seed
    )
    rng = np.random.default_rng(seed)
    seq = arrays.seq.copy()
    seq[:, :, 1] = rng.integers(0, 12, size=seq.shape[:2])  # 1 + position in domain.yaml event_types
    seq[:, :, 3] = rng.integers(0, 7, size=seq.shape[:2])
    return arrays._replace(seq=seq, tab=arrays.tab[:, :2].copy())


def test_event_type_and_business_step_enter_through_embeddings(tmp_path):
    from tracelake.config import TrainingSettings
    from training.model import MODEL_FORMAT, domain_vocabulary_sizes

    spec = _categorical_spec()
    config = ModelConfig.from_settings(
        spec,
        TrainingSettings(hidden_size=8, tab_hidden_size=4, head_hidden_size=4, categorical_embedding_dim=3),
    )
    sizes = domain_vocabulary_sizes()
    assert config.categorical_features == {
        "event_type_idx": sizes["event_type_idx"],
        "business_step_idx": sizes["business_step_idx"],
    }
    torch.manual_seed(0)
    model = SequenceAnomalyModel(config).eval()
    assert [e.embedding_dim for e in model.embeddings] == [3, 3] and model.rnn.input_size == 2 + 2 * 3
    batch = _categorical_rows(spec).to_batch()
    base = model(batch.seq, batch.seq_len, batch.tab)
    # An index the vocabulary does not know (e.g. a type added later) or NaN reads as 0 ("unknown").
    unknown = batch.seq.clone()
    unknown[:, :, 1] = 0
    odd = batch.seq.clone()
    odd[:, :, 1] = torch.where(torch.arange(odd.shape[1]) % 2 == 0, 999.0, float("nan"))
    assert torch.allclose(model(odd, batch.seq_len, batch.tab), model(unknown, batch.seq_len, batch.tab))
    assert not torch.allclose(base, model(unknown, batch.seq_len, batch.tab))
    payload = model.payload()
    assert payload["format"] == MODEL_FORMAT
    loaded = SequenceAnomalyModel.load(model.save(tmp_path / "m.pt")).eval()
    assert torch.equal(loaded(batch.seq, batch.seq_len, batch.tab), base)


def test_format_1_model_files_still_load(spec, tmp_path):
    model = _model(spec)
    payload = model.payload()
    payload["format"] = "tracelake-sequence-model/1"
    del payload["config"]["categorical_features"], payload["config"]["embedding_dim"]
    torch.save(payload, tmp_path / "old.pt")
    loaded = SequenceAnomalyModel.load(tmp_path / "old.pt").eval()
    batch = synthetic_arrays(5, spec, seed=3).to_batch()
    assert torch.equal(
        loaded(batch.seq, batch.seq_len, batch.tab), model(batch.seq, batch.seq_len, batch.tab)
    )
