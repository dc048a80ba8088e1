"""The arrow loader (training/staging.py): placements, rank blocks, exact resume, Delta snapshots."""

import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from tracelake.config import TrainingSettings
from tracelake.model_io import TEST, TRAIN, VALIDATION, DataError, arrays_to_table
from training import data as data_module
from training.data import synthetic_arrays, synthetic_feature_spec
from training.staging import StagedSource, delta_snapshot_files, epoch_permutation
from training.train_fn import make_train_config, train_fn

LABELS = ("epc_fake", "epc_dup", "loc_err", "evt_order_err", "jump")
SPEC = synthetic_feature_spec(n_seq=4, n_tab=3, seq_len=6, label_names=LABELS)
ROWS = 1003


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Two files, row groups of 97 rows, splits mixed inside row groups; tab_f0 holds the row id."""
    folder = tmp_path_factory.mktemp("staged")
    arrays = synthetic_arrays(ROWS, SPEC, seed=4)
    arrays.tab[:, 0] = np.arange(ROWS)
    split = np.array([TRAIN, VALIDATION, TEST])[np.random.default_rng(1).choice(3, ROWS, p=[0.6, 0.25, 0.15])]
    for part, rows in enumerate((slice(0, 600), slice(600, ROWS))):
        table = arrays_to_table(arrays.take(rows), SPEC, list(split[rows]))
        pq.write_table(table, folder / f"part-{part}.parquet", row_group_size=97)
    return str(folder), split


def sources(path, world_size=1, **kwargs):
    options = {"batch_size": 16, "seed": 7, **kwargs}
    return [StagedSource(path, SPEC, rank=r, world_size=world_size, **options) for r in range(world_size)]


def ids(batches):
    return [b.tab[:, 0].long().tolist() for b in batches]


def test_epoch_permutation_is_a_pure_function_of_seed_and_epoch():
    order = epoch_permutation(1000, seed=3, epoch=2)
    assert sorted(order.tolist()) == list(range(1000))
    assert torch.equal(order, epoch_permutation(1000, seed=3, epoch=2))
    assert not torch.equal(order, epoch_permutation(1000, seed=3, epoch=3))
    assert not torch.equal(order, epoch_permutation(1000, seed=4, epoch=2))
    assert order[:20].tolist() != list(range(20))


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_ranks_are_disjoint_contiguous_blocks_covering_the_split(mixed, world_size):
    path, split = mixed
    train_ids = np.flatnonzero(split == TRAIN)
    per_rank = sources(path, world_size, placement="device")
    assert {s.steps_per_epoch() for s in per_rank} == {math.ceil(math.ceil(len(train_ids) / world_size) / 16)}
    seen = [sorted({i for batch in ids(s.train_batches(0)) for i in batch}) for s in per_rank]
    blocks = [train_ids[s.block(TRAIN)[0] : s.block(TRAIN)[1]].tolist() for s in per_rank]
    assert seen == blocks  # each rank trains on exactly its contiguous block
    assert sorted(i for block in seen for i in block) == train_ids.tolist()
    counts = {sum(len(b) for b in ids(s.train_batches(1))) for s in per_rank}
    assert counts == {math.ceil(len(train_ids) / world_size)}  # padded to the same number of rows
    evaluated = [i for s in per_rank for batch in ids(s.eval_batches(VALIDATION, 10)) for i in batch]
    assert evaluated == np.flatnonzero(split == VALIDATION).tolist()


def test_placements_give_identical_batches(mixed):
    path, _ = mixed
    device = ids(sources(path, 2, placement="device")[1].train_batches(3))
    host = ids(sources(path, 2, placement="host")[1].train_batches(3))  # on the CPU: the same staging
    whole_window = ids(sources(path, 2, placement="stream", shuffle_window_rows=10_000)[1].train_batches(3))
    assert device == host == whole_window
    auto = sources(path, 2, placement="auto")[1]
    assert auto.placement == "device" and ids(auto.train_batches(3)) == device
    # Values, not only ids: the staged tensors hold the Parquet rows.
    batch = next(sources(path, 1, placement="device")[0].train_batches(0))
    reference = synthetic_arrays(ROWS, SPEC, seed=4).take(batch.tab[:, 0].long().numpy())
    np.testing.assert_array_equal(batch.seq.numpy(), reference.seq)
    np.testing.assert_array_equal(batch.labels.numpy(), reference.labels)
    np.testing.assert_array_equal(batch.seq_len.numpy(), reference.seq_len)


def test_stream_with_a_small_window_sees_every_row_once_in_a_seeded_order(mixed):
    path, split = mixed
    source = sources(path, 1, placement="stream", shuffle_window_rows=64)[0]
    first = ids(source.train_batches(0))
    assert len(first) == source.steps_per_epoch()
    assert sorted(i for b in first for i in b) == np.flatnonzero(split == TRAIN).tolist()
    assert first == ids(source.train_batches(0)) and first != ids(source.train_batches(1))
    evaluated = [i for batch in ids(source.eval_batches(TEST, 33)) for i in batch]
    assert evaluated == np.flatnonzero(split == TEST).tolist()


@pytest.mark.parametrize("placement", ["device", "stream"])
def test_skip_resumes_the_epoch_exactly(mixed, placement):
    path, _ = mixed
    source = sources(path, 2, placement=placement, shuffle_window_rows=48)[0]
    full = ids(source.train_batches(5))
    assert full[3:] == ids(source.train_batches(5, skip=3))


def test_a_split_without_rows_and_missing_files_are_named(tmp_path):
    arrays = synthetic_arrays(20, SPEC, seed=0)
    pq.write_table(arrays_to_table(arrays, SPEC, TRAIN), tmp_path / "only-train.parquet")
    source = sources(str(tmp_path), 1)[0]
    with pytest.raises(DataError, match="split 'validation' .* has no rows"):
        list(source.eval_batches(VALIDATION, 8))
    with pytest.raises(DataError, match="do not exist"):
        StagedSource([str(tmp_path / "gone.parquet")], SPEC, rank=0, world_size=1, batch_size=4, seed=0)
    with pytest.raises(DataError, match="placement 'gpu' is unknown"):
        StagedSource(str(tmp_path), SPEC, placement="gpu", rank=0, world_size=1, batch_size=4, seed=0)


def _settings(**overrides):
    values = dict(
        epochs=2,
        batch_size=64,
        hidden_size=8,
        tab_hidden_size=8,
        head_hidden_size=8,
        dropout=0.2,
        learning_rate=5e-3,
        checkpoint_every_steps=3,
        log_every_steps=2,
        torch_threads=1,
        seed=9,
        early_stopping_patience=10,
    )
    values.update(overrides)
    return TrainingSettings(**values)


def _timeless(history):
    return [{k: v for k, v in h.items() if not k.endswith("_s") and k != "samples_per_s"} for h in history]


@pytest.mark.parametrize("placement", ["device", "stream"])
def test_train_fn_resumes_exactly_on_each_placement(mixed, tmp_path, placement):
    path, _ = mixed
    data = {"kind": "parquet", "path": path}
    settings = _settings(data_placement=placement, shuffle_buffer_rows=200)
    full = train_fn(make_train_config(settings, SPEC, data, tmp_path / "full"))
    killed = train_fn(
        make_train_config(settings, SPEC, data, tmp_path / "cut", max_steps=full["steps_per_epoch"] + 2)
    )
    assert killed["stop_reason"] == "max_steps"
    resumed = train_fn(make_train_config(settings, SPEC, data, tmp_path / "cut", resume=True))
    assert _timeless(resumed["history"]) == _timeless(full["history"])
    final_full = torch.load(full["last_checkpoint"], weights_only=True)["model"]["state_dict"]
    final_resumed = torch.load(resumed["last_checkpoint"], weights_only=True)["model"]["state_dict"]
    assert all(torch.equal(final_full[k], final_resumed[k]) for k in final_full)


def test_epoch_callback_sees_metrics_and_stops_the_run(mixed, tmp_path):
    path, _ = mixed
    seen = []

    def on_epoch_end(epoch, metrics):
        seen.append((epoch, metrics["val_macro_pr_auc"], metrics["val_loss"]))
        return epoch == 1

    result = train_fn(
        make_train_config(_settings(epochs=5), SPEC, {"kind": "parquet", "path": path}, tmp_path / "run"),
        on_epoch_end=on_epoch_end,
    )
    assert [e for e, _, _ in seen] == [0, 1]
    assert result["stop_reason"] == "stopped_by_callback" and result["epochs_completed"] == 2
    assert result["thresholds"] is not None and Path(result["model_path"]).is_file()
    assert result["best_metric_name"] == "val_macro_pr_auc"
    assert result["best_metric"] == max(v for _, v, _ in seen)


def _delta_training_set(spark, tmp_path, *, deletion_vectors):
    arrays = synthetic_arrays(60, SPEC, seed=2)
    arrays.tab[:, 0] = np.arange(60)
    frame = arrays_to_table(arrays, SPEC, [TRAIN] * 40 + [VALIDATION] * 10 + [TEST] * 10).to_pandas()
    location = str(tmp_path / "training_set")
    (
        spark.createDataFrame(frame)
        .repartition(3)
        .write.format("delta")
        .option("delta.enableDeletionVectors", str(deletion_vectors).lower())
        .save(location)
    )
    spark.sql(f"DELETE FROM delta.`{location}` WHERE tab_f0 < 5")
    return location


@pytest.mark.slow
def test_delta_snapshots_refuse_deletion_vectors_and_respect_the_version(request, tmp_path):
    pytest.importorskip("pyspark")
    pytest.importorskip("deltalake")
    spark = request.getfixturevalue("spark")
    with_vectors = _delta_training_set(spark, tmp_path / "dv", deletion_vectors=True)
    with pytest.raises(DataError, match="deletion vectors"):
        delta_snapshot_files(with_vectors)
    with pytest.raises(DataError, match="deletion vectors"):
        data_module.make_source(
            {"kind": "delta", "path": with_vectors}, SPEC, rank=0, world_size=1, batch_size=8, seed=0
        )
    plain = _delta_training_set(spark, tmp_path / "plain", deletion_vectors=False)
    latest = data_module.make_source(
        {"kind": "delta", "path": plain}, SPEC, rank=0, world_size=1, batch_size=8, seed=0
    )
    rows = sorted(int(i) for b in latest.eval_batches(TRAIN, 16) for i in b.tab[:, 0].tolist())
    assert rows == list(range(5, 40))  # the DELETE (a rewrite, no vectors) is respected
    first = data_module.make_source(
        {"kind": "delta", "path": plain, "version": 0}, SPEC, rank=0, world_size=1, batch_size=8, seed=0
    )
    assert sorted(int(i) for b in first.eval_batches(TRAIN, 16) for i in b.tab[:, 0].tolist()) == list(
        range(40)
    )


def test_auto_placement_follows_the_memory_there_is(mixed, monkeypatch):
    from training import staging

    path, _ = mixed
    assert sources(path, 1, placement="auto")[0].placement == "device"  # on the CPU: device == host
    monkeypatch.setattr(staging, "available_host_bytes", lambda: 10_000)  # far less than the split needs
    source = sources(path, 1, placement="auto", host_memory_fraction=0.5)[0]
    assert source.placement == "stream"
    assert sum(b.n_rows for b in source.train_batches(0)) == source.split_rows(TRAIN)


@pytest.mark.slow
def test_compiled_training_forward_matches_eager(mixed, tmp_path):
    path, _ = mixed
    data = {"kind": "parquet", "path": path}
    eager = train_fn(make_train_config(_settings(epochs=1, batch_size=128), SPEC, data, tmp_path / "eager"))
    compiled = train_fn(
        make_train_config(
            _settings(epochs=1, batch_size=128, compile=True), SPEC, data, tmp_path / "compiled"
        )
    )
    assert compiled["history"][0]["train_loss"] == pytest.approx(eager["history"][0]["train_loss"], rel=1e-3)
    assert compiled["history"][0]["val_loss"] == pytest.approx(eager["history"][0]["val_loss"], rel=1e-3)
