import math
from pathlib import Path

import pytest
import torch

from tracelake.config import TrainingSettings
from training import checkpoint
from training.checkpoint import CheckpointError, atomic_torch_save, load_checkpoint
from training.data import synthetic_feature_spec, write_synthetic_dataset
from training.model import SequenceAnomalyModel
from training.train_fn import make_train_config, train_fn

LABELS = ("epc_fake", "epc_dup", "loc_err", "evt_order_err", "jump")
SPEC = synthetic_feature_spec(n_seq=4, n_tab=3, seq_len=10, label_names=LABELS)
ROWS = 700  # 420 training rows: 7 batches of 64 per epoch


def settings(**overrides):
    # Dropout and a 2-layer LSTM: the resumed run must restore the RNG state to match.
    values = dict(
        epochs=3,
        batch_size=64,
        hidden_size=16,
        num_layers=2,
        tab_hidden_size=8,
        head_hidden_size=8,
        dropout=0.2,
        learning_rate=5e-3,
        checkpoint_every_steps=4,
        log_every_steps=100,
        torch_threads=1,
        seed=123,
        early_stopping_patience=10,
    )
    values.update(overrides)
    return TrainingSettings(**values)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("resume-data"), SPEC, ROWS, seed=2)


def _timeless(history):
    return [{k: v for k, v in h.items() if not k.endswith("_s") and k != "samples_per_s"} for h in history]


def test_killed_and_resumed_run_equals_uninterrupted_run(dataset, tmp_path):
    data = {"kind": "parquet", "path": dataset}
    full = train_fn(make_train_config(settings(), SPEC, data, tmp_path / "full"))
    steps_per_epoch = math.ceil(420 / 64)
    assert full["global_step"] == 3 * steps_per_epoch

    # "Killed" after step 10 (mid-epoch 1); the last checkpoint is from step 8, so steps 9-10 are redone.
    run_dir = tmp_path / "interrupted"
    killed = train_fn(make_train_config(settings(), SPEC, data, run_dir, max_steps=10))
    assert killed["stop_reason"] == "max_steps" and killed["global_step"] == 10
    saved = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert (saved["state"]["global_step"], saved["state"]["epoch"], saved["state"]["batches_done"]) == (
        8,
        1,
        1,
    )
    assert set(saved) >= {"model", "optimizer", "scheduler", "scaler", "state", "rng", "config"}
    assert set(saved["rng"][0]) == {"python", "numpy", "torch", "cuda"}

    resumed = train_fn(
        make_train_config(settings(checkpoint_every_steps=5), SPEC, data, run_dir, resume=True)
    )
    assert resumed["resumed_from_step"] == 8 and resumed["global_step"] == full["global_step"]
    final_full = SequenceAnomalyModel.load(Path(full["last_checkpoint"])).state_dict()
    final_resumed = SequenceAnomalyModel.load(Path(resumed["last_checkpoint"])).state_dict()
    assert final_full.keys() == final_resumed.keys()
    for name in final_full:
        assert torch.equal(final_full[name], final_resumed[name]), name
    assert _timeless(resumed["history"]) == _timeless(full["history"])
    assert resumed["thresholds"] == full["thresholds"]
    full_opt = load_checkpoint(full["last_checkpoint"])["optimizer"]["state"]
    resumed_opt = load_checkpoint(resumed["last_checkpoint"])["optimizer"]["state"]
    assert all(torch.equal(full_opt[k]["exp_avg_sq"], resumed_opt[k]["exp_avg_sq"]) for k in full_opt)


def test_resume_refuses_changed_settings(dataset, tmp_path):
    data = {"kind": "parquet", "path": dataset}
    train_fn(make_train_config(settings(epochs=1), SPEC, data, tmp_path / "run", max_steps=4))
    with pytest.raises(CheckpointError, match=r"learning_rate 0\.005 -> 0\.001"):
        train_fn(
            make_train_config(
                settings(epochs=1, learning_rate=1e-3), SPEC, data, tmp_path / "run", resume=True
            )
        )


def test_atomic_write_keeps_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "ckpt" / "last.pt"
    atomic_torch_save({"step": 1}, target)

    def broken_save(obj, handle):
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_torch_save({"step": 2}, target)
    monkeypatch.undo()
    assert torch.load(target, weights_only=True) == {"step": 1}
    assert [p.name for p in target.parent.iterdir()] == ["last.pt"]
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a tracelake checkpoint"):
        load_checkpoint(tmp_path / "garbage.pt")
