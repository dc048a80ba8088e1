"""The training step on CUDA: graphed and eager steps agree, skipped steps, exact resume (skipped without CUDA)."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from tracelake.config import TrainingSettings
from training import data as data_module
from training.data import synthetic_feature_spec, write_synthetic_dataset
from training.staging import StagedSource, epoch_permutation
from training.train_fn import make_train_config, train_fn

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

LABELS = ("epc_fake", "epc_dup", "loc_err", "evt_order_err", "jump")
SPEC = synthetic_feature_spec(n_seq=6, n_tab=5, seq_len=10, label_names=LABELS)
FINDINGS: dict = {}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpu-data")
    path = write_synthetic_dataset(folder, SPEC, 8000, seed=1, fractions=(0.7, 0.15), row_group_rows=1000)
    yield path
    out = os.environ.get("OUT")
    if out and FINDINGS:  # what the asserts leave unsaid (exactness) for the benchmark record
        Path(out, "gpu_step_findings.json").write_text(json.dumps(FINDINGS, indent=2))


def settings(**overrides):
    values = dict(
        epochs=2,
        batch_size=256,
        hidden_size=32,
        num_layers=2,
        tab_hidden_size=16,
        head_hidden_size=16,
        dropout=0.0,
        learning_rate=3e-3,
        use_gpu=True,
        log_every_steps=5,
        checkpoint_every_steps=7,
        seed=3,
        early_stopping_patience=10,
        torch_threads=4,
    )
    values.update(overrides)
    return TrainingSettings(**values)


def _params(path):
    return torch.load(path, weights_only=True)["model"]["state_dict"]


def test_epoch_order_is_the_same_on_the_gpu_and_the_cpu():
    for n in (1, 1000, 123_457):
        assert torch.equal(epoch_permutation(n, 5, 2, device="cuda").cpu(), epoch_permutation(n, 5, 2))


def test_device_and_host_placements_give_identical_batches(dataset):
    def ids(placement):
        source = StagedSource(
            dataset, SPEC, placement=placement, device="cuda", rank=0, world_size=1, batch_size=300, seed=4
        )
        batches = list(source.train_batches(1))
        assert all(b.seq.is_cuda for b in batches) and source.placement == placement
        return [b.tab.cpu().numpy() for b in batches]

    device, host = ids("device"), ids("host")
    assert len(device) == len(host) and all(np.array_equal(a, b) for a, b in zip(device, host, strict=False))


def test_graphed_and_eager_steps_agree(dataset, tmp_path):
    data = {"kind": "parquet", "path": dataset}
    eager = train_fn(make_train_config(settings(cuda_graph=False), SPEC, data, tmp_path / "eager"))
    graphed = train_fn(make_train_config(settings(cuda_graph=True), SPEC, data, tmp_path / "graphed"))
    assert not eager["cuda_graph_captured"] and graphed["cuda_graph_captured"]
    assert eager["device_type"] == "cuda" and eager["data_placement"] == "device"
    for a, b in zip(eager["history"], graphed["history"], strict=False):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-3)
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-6)  # the scheduler reaches the captured step
    first, second = _params(eager["last_checkpoint"]), _params(graphed["last_checkpoint"])
    worst = max(float((first[k].float() - second[k].float()).abs().max()) for k in first)
    FINDINGS["graphed_vs_eager_max_abs_param_diff"] = worst
    FINDINGS["graphed_vs_eager_bitwise_equal"] = worst == 0.0
    assert worst < 1e-3


def test_non_finite_steps_are_skipped_inside_the_graph(dataset, tmp_path, monkeypatch):
    make = data_module.make_source

    class Poisoned:
        def __init__(self, source):
            self.source = source

        def __getattr__(self, name):
            return getattr(self.source, name)

        def train_batches(self, epoch, skip=0):
            for index, batch in enumerate(self.source.train_batches(epoch, skip), start=skip):
                if epoch == 0 and index in (1, 9):  # 1: an eager warm-up step; 9: a graph replay
                    batch = batch._replace(labels=torch.full_like(batch.labels, float("nan")))
                yield batch

    monkeypatch.setattr(data_module, "make_source", lambda *a, **k: Poisoned(make(*a, **k)))
    result = train_fn(
        make_train_config(settings(epochs=1), SPEC, {"kind": "parquet", "path": dataset}, tmp_path / "run")
    )
    assert result["cuda_graph_captured"] and result["nonfinite_steps_skipped"] == 2
    assert all(torch.isfinite(v.float()).all() for v in _params(result["last_checkpoint"]).values())
    assert np.isfinite(result["history"][0]["train_loss"])


def test_killed_and_resumed_run_matches_on_the_gpu(dataset, tmp_path):
    data = {"kind": "parquet", "path": dataset}
    full = train_fn(make_train_config(settings(epochs=3), SPEC, data, tmp_path / "full"))
    cut = full["steps_per_epoch"] + 10
    killed = train_fn(make_train_config(settings(epochs=3), SPEC, data, tmp_path / "cut", max_steps=cut))
    assert killed["stop_reason"] == "max_steps"
    resumed = train_fn(make_train_config(settings(epochs=3), SPEC, data, tmp_path / "cut", resume=True))
    assert resumed["global_step"] == full["global_step"] and resumed["resumed_from_step"] < cut
    a, b = _params(full["last_checkpoint"]), _params(resumed["last_checkpoint"])
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    FINDINGS["resume_max_abs_param_diff"] = worst
    FINDINGS["resume_bitwise_equal"] = worst == 0.0
    assert worst < 1e-4
    for x, y in zip(full["history"], resumed["history"], strict=False):
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=1e-4)
