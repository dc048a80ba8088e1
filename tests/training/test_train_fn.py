import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tracelake.config import TrainingSettings
from tracelake.model_io import TRAIN, VALIDATION, DataError, arrays_to_table
from training import data as data_module
from training.checkpoint import CheckpointError
from training.data import (
    InMemorySource,
    PetastormSource,
    read_split,
    synthetic_arrays,
    synthetic_feature_spec,
    write_synthetic_dataset,
)
from training.model import SequenceAnomalyModel
from training.train_fn import TrainingError, make_train_config, train_fn

ROOT = Path(__file__).resolve().parents[2]
LABELS = ("epc_fake", "epc_dup", "loc_err", "evt_order_err", "jump")
SPEC = synthetic_feature_spec(n_seq=4, n_tab=4, seq_len=12, label_names=LABELS)
POSITIVE_RATE = 0.1


def tiny_settings(**overrides):
    values = dict(
        epochs=3,
        batch_size=64,
        hidden_size=24,
        tab_hidden_size=16,
        head_hidden_size=16,
        learning_rate=1e-2,
        warmup_fraction=0.1,
        log_every_steps=10,
        checkpoint_every_steps=1000,
        early_stopping_patience=5,
        torch_threads=1,
        seed=5,
    )
    values.update(overrides)
    return TrainingSettings(**values)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("trainset")
    return write_synthetic_dataset(folder, SPEC, 2000, seed=11, positive_rate=POSITIVE_RATE)


def test_train_fn_learns_the_synthetic_task(dataset, tmp_path):
    config = make_train_config(tiny_settings(), SPEC, {"kind": "parquet", "path": dataset}, tmp_path / "run")
    json.dumps(config)  # TorchDistributor and torchrun get it as JSON
    result = train_fn(config)
    history = result["history"]
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    # Chance level of PR-AUC is the positive rate.
    assert result["best_validation"]["val_macro_pr_auc"] > 2.5 * POSITIVE_RATE
    assert result["stop_reason"] == "completed" and result["world_size"] == 1
    assert result["steps_per_epoch"] == math.ceil(1200 / 64) and result["global_step"] == 3 * 19
    assert set(result["thresholds"]) == set(LABELS)
    assert result["samples_per_s"] > 0 and result["timing"]["total_s"] > 0
    for key in ("best_checkpoint", "last_checkpoint", "model_path"):
        assert Path(result[key]).is_file()
    assert json.loads((tmp_path / "run" / "result.json").read_text())["global_step"] == result["global_step"]
    model = SequenceAnomalyModel.load(result["model_path"])
    assert model.feature_spec == SPEC
    saved = torch.load(result["model_path"], weights_only=True)
    assert saved["extra"]["thresholds"] == result["thresholds"]
    # The preprocessing statistics come from the training split only.
    train = read_split(dataset, TRAIN, SPEC)
    np.testing.assert_allclose(model.tab_mean.numpy(), train.tab.mean(0), atol=1e-5)
    # A second run into the same folder must not overwrite it by accident.
    with pytest.raises(CheckpointError, match="set resume"):
        train_fn(config)


@pytest.mark.spark35
def test_train_fn_under_torchrun_two_processes(dataset, tmp_path):
    config = make_train_config(
        tiny_settings(epochs=2), SPEC, {"kind": "parquet", "path": dataset}, tmp_path / "run"
    )
    config_file, result_file = tmp_path / "config.json", tmp_path / "result.json"
    config_file.write_text(json.dumps(config))
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"}
    }
    torchrun = Path(sys.executable).with_name("torchrun")
    completed = subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "training.train_fn",
            "--config-json",
            str(config_file),
            "--result-json",
            str(result_file),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    result = json.loads(result_file.read_text())
    assert result["world_size"] == 2 and result["device"] == "cpu"
    # Twice the global batch of one process: the square-root rule raises the learning rate by sqrt(2).
    settings = tiny_settings(epochs=2)
    assert result["learning_rate"] == pytest.approx(settings.learning_rate * math.sqrt(2))
    # Each rank takes half of the 1200 training rows per epoch.
    assert result["steps_per_epoch"] == math.ceil(600 / 64)
    assert [h["samples"] for h in result["history"]] == [1200, 1200]
    assert result["epochs_completed"] == 2 and result["history"][-1]["val_macro_pr_auc"] > POSITIVE_RATE
    ranks = {json.loads(line).get("rank") for line in completed.stderr.splitlines() if line.startswith("{")}
    assert ranks >= {0, 1}


class _PoisonedSource:
    """Wraps a source; the labels of the listed (epoch, batch) become NaN."""

    def __init__(self, source, poisoned):
        self.source, self.poisoned = source, poisoned

    def __getattr__(self, name):
        return getattr(self.source, name)

    def train_batches(self, epoch, skip=0):
        for index, batch in enumerate(self.source.train_batches(epoch, skip), start=skip):
            if (epoch, index) in self.poisoned or "all" in self.poisoned:
                batch = batch._replace(labels=torch.full_like(batch.labels, float("nan")))
            yield batch


def _poison(monkeypatch, poisoned):
    make = data_module.make_source
    monkeypatch.setattr(data_module, "make_source", lambda *a, **k: _PoisonedSource(make(*a, **k), poisoned))


def test_non_finite_loss_skips_the_step(dataset, tmp_path, monkeypatch):
    _poison(monkeypatch, {(0, 3), (1, 0)})
    result = train_fn(
        make_train_config(
            tiny_settings(epochs=2), SPEC, {"kind": "parquet", "path": dataset}, tmp_path / "run"
        )
    )
    assert result["nonfinite_steps_skipped"] == 2
    model = SequenceAnomalyModel.load(result["model_path"])
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(math.isfinite(h["train_loss"]) for h in result["history"])


def test_non_finite_steps_in_a_row_abort(dataset, tmp_path, monkeypatch):
    _poison(monkeypatch, {"all"})
    config = make_train_config(
        tiny_settings(max_nonfinite_steps=4), SPEC, {"kind": "parquet", "path": dataset}, tmp_path / "run"
    )
    with pytest.raises(TrainingError, match="4 steps in a row had a non-finite loss"):
        train_fn(config)


def test_in_memory_shards_cover_every_row_once_with_equal_steps():
    arrays = synthetic_arrays(101, SPEC, seed=0)
    arrays.tab[:, 0] = np.arange(101)  # row ids
    sources = [
        InMemorySource.from_arrays(
            {TRAIN: arrays, VALIDATION: arrays}, SPEC, rank=r, world_size=3, batch_size=8, seed=1
        )
        for r in range(3)
    ]
    steps = {s.steps_per_epoch() for s in sources}
    assert steps == {math.ceil(34 / 8)}
    seen = np.concatenate([b.tab[:, 0].numpy() for s in sources for b in s.train_batches(epoch=0)])
    assert set(seen) == set(range(101)) and len(seen) == 102  # one row repeated to even the shards
    evaluated = np.concatenate([b.tab[:, 0].numpy() for s in sources for b in s.eval_batches(VALIDATION, 10)])
    np.testing.assert_array_equal(evaluated, np.arange(101))
    # The order is a function of (seed, epoch): the same again, another for the next epoch; skip drops a prefix.
    first = [b.tab[:, 0].tolist() for b in sources[1].train_batches(epoch=0)]
    assert first == [b.tab[:, 0].tolist() for b in sources[1].train_batches(epoch=0)]
    assert first != [b.tab[:, 0].tolist() for b in sources[1].train_batches(epoch=1)]
    assert first[2:] == [b.tab[:, 0].tolist() for b in sources[1].train_batches(epoch=0, skip=2)]


@pytest.mark.spark35
@pytest.mark.parametrize("row_group_rows", [10, 200])  # 10 row groups, or fewer row groups than ranks
def test_petastorm_source_shards_by_rank(tmp_path, row_group_rows, monkeypatch):
    pytest.importorskip("petastorm", reason="petastorm is the loader of the Spark 3.5 line only")
    from petastorm.spark.spark_dataset_converter import SparkDatasetConverter

    calls = []  # the real make_torch_dataloader, its arguments recorded
    real = SparkDatasetConverter.make_torch_dataloader

    def recorded(self, *args, **kwargs):
        calls.append((list(self.file_urls), kwargs))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(SparkDatasetConverter, "make_torch_dataloader", recorded)
    arrays = synthetic_arrays(100, SPEC, seed=0)
    arrays.tab[:, 0] = np.arange(100)
    folder = tmp_path / "converted"
    folder.mkdir()
    table = arrays_to_table(arrays, SPEC, TRAIN)
    # What spark_converters materialises: seq padded to seq_len x F values (spark_data.padded_model_columns).
    padded = pa.array(list(arrays.seq.reshape(len(arrays.seq), -1)), pa.list_(pa.float32()))
    table = table.set_column(table.column_names.index("seq"), "seq", padded)
    pq.write_table(table, folder / "part-0.parquet", row_group_size=row_group_rows)
    urls = {TRAIN: [f"file://{folder}/part-0.parquet"], VALIDATION: f"file://{folder}"}
    sources = [
        data_module.make_source(
            {"kind": "petastorm", "urls": urls},
            SPEC,
            rank=r,
            world_size=2,
            batch_size=16,
            seed=3,
            shuffle_buffer_rows=32,
        )
        for r in range(2)
    ]
    assert all(isinstance(s, PetastormSource) for s in sources)
    evaluated = np.concatenate([b.tab[:, 0].numpy() for s in sources for b in s.eval_batches(VALIDATION, 7)])
    assert sorted(evaluated.tolist()) == list(range(100))
    batch = next(sources[0].eval_batches(VALIDATION, 7))
    reference = arrays.take(batch.tab[:, 0].numpy().astype(int))
    np.testing.assert_array_equal(batch.seq.numpy(), reference.seq)
    np.testing.assert_array_equal(batch.labels.numpy(), reference.labels)
    assert {s.steps_per_epoch() for s in sources} == {100 // (2 * 16)}
    for source in sources:
        batches = [b.tab[:, 0].tolist() for b in source.train_batches(epoch=0)]
        assert len(batches) == 3 and all(len(b) == 16 for b in batches)
        assert batches == [b.tab[:, 0].tolist() for b in source.train_batches(epoch=0)]
        assert batches[1:] == [b.tab[:, 0].tolist() for b in source.train_batches(epoch=0, skip=1)]
    # Every read went through the converter's torch loader, row-group sharded by rank when there are enough
    # row groups, with petastorm's own (global-RNG) shuffling queue off; folders are expanded to their files.
    assert calls and all(files == [f"file://{folder}/part-0.parquet"] for files, _ in calls)
    assert all(
        kwargs["shuffling_queue_capacity"] == 0 and kwargs["workers_count"] == 1 for _, kwargs in calls
    )
    sharded = {(kwargs.get("cur_shard"), kwargs.get("shard_count")) for _, kwargs in calls}
    assert sharded == ({(0, 2), (1, 2)} if row_group_rows == 10 else {(None, None)})


def test_layout_errors_name_the_problem(tmp_path):
    arrays = synthetic_arrays(5, SPEC, seed=0)
    table = arrays_to_table(arrays, SPEC, TRAIN)
    short = table.set_column(
        table.column_names.index("seq"), "seq", pa.array([[0.0] * 3] * 5, pa.list_(pa.float32()))
    )
    with pytest.raises(
        DataError, match=r"'seq' must hold seq_len x 4 values per row .* row 0 has 3 for seq_len"
    ):
        data_module.columns_to_arrays(short, SPEC)
    with pytest.raises(DataError, match=r"lacks column\(s\) \['jump'\]"):
        data_module.columns_to_arrays(table.drop(["jump"]), SPEC)
    bad_label = table.set_column(table.column_names.index("loc_err"), "loc_err", pa.array([0, 1, None, 0, 2]))
    with pytest.raises(DataError, match="'loc_err' must be 0 or 1; row 2"):
        data_module.columns_to_arrays(bad_label, SPEC)
    with pytest.raises(DataError, match="does not exist"):
        read_split(tmp_path / "nowhere", TRAIN, SPEC)


@pytest.mark.parametrize(
    ("rule", "world_size", "reference", "factor"),
    [
        ("sqrt", 1, None, 1.0),
        ("sqrt", 4, None, 2.0),
        ("linear", 4, None, 4.0),
        ("none", 8, None, 1.0),
        ("sqrt", 2, 256, 2.0),  # tuned for a global batch of 256; 2 x 512 = 4x that
        ("linear", 1, 1024, 0.5),
    ],
)
def test_learning_rate_follows_the_global_batch(rule, world_size, reference, factor):
    from training.train_fn import scaled_learning_rate

    settings = tiny_settings().model_copy(
        update={"lr_scaling": rule, "lr_reference_batch": reference, "batch_size": 512, "learning_rate": 1e-3}
    )
    assert scaled_learning_rate(settings, world_size) == pytest.approx(1e-3 * factor)
