"""Training data: batches sharded by rank, and a synthetic set.

The column layout the training set is written in, the feature spec and the
conversion of rows to numpy arrays are the model's input contract and live in
:mod:`tracelake.model_io` (no torch); this module adds torch on top:
:class:`Arrays` that become :class:`Batch` tensors, and the data sources.
Right padding of ``seq`` lets a unidirectional RNN read the output at step
``seq_len-1``, which no padding can influence, without packed sequences
(which ONNX export handles badly).

Three sources give the train function its batches, all sharded by rank with
the same number of training steps on every rank (DDP needs that):
- :class:`training.staging.StagedSource` (the default, every Spark line): the
  training set's Parquet files read with pyarrow, each rank's contiguous block
  staged on the device, in pinned host memory or streamed.
- :class:`InMemorySource`: every rank loads the whole split and takes its share
  of a permutation that is a function of (seed, epoch) only (kept for tests
  and comparisons).
- :class:`PetastormSource`: the parquet files that petastorm's
  ``make_spark_converter`` materialises (``converter.file_urls``), read through
  the converter's ``make_torch_dataloader`` sharded by row group.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlparse

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import torch

from tracelake import model_io, storage

# Training code and the Spark jobs also read these contract names from this module.
from tracelake.model_io import (
    SPLIT_COLUMN,
    SPLITS,
    TEST,
    TRAIN,
    VALIDATION,
    DataError,
    FeatureSpec,
    arrays_to_table,
)


def default_label_names() -> tuple[str, ...]:
    """The anomaly types of schemas/domain.yaml, in order."""
    return model_io.label_names()


class Arrays(model_io.Arrays):
    """:class:`tracelake.model_io.Arrays` that can become a torch :class:`Batch`."""

    __slots__ = ()

    def to_batch(self) -> Batch:
        return Batch(*(torch.from_numpy(np.ascontiguousarray(a)) for a in self))


class Batch(NamedTuple):
    """One batch as tensors, in the model's argument order plus the labels."""

    seq: torch.Tensor
    seq_len: torch.Tensor
    tab: torch.Tensor
    labels: torch.Tensor

    @property
    def n_rows(self) -> int:
        return int(self.seq_len.shape[0])

    def to(self, device: torch.device | str) -> Batch:
        non_blocking = torch.device(device).type == "cuda"
        return Batch(*(t.to(device, non_blocking=non_blocking) for t in self))


def columns_to_arrays(columns: Mapping[str, Any], spec: FeatureSpec) -> Arrays:
    """:func:`tracelake.model_io.columns_to_arrays` as training :class:`Arrays`."""
    return Arrays(*model_io.columns_to_arrays(columns, spec))


def read_split(path: str | os.PathLike[str] | Sequence[str], split: str, spec: FeatureSpec) -> Arrays:
    """All rows of one split of a parquet dataset in the model_io layout (pyarrow, no Spark).

    ``path`` is a folder of parquet files or the list of files to read (e.g. the data files of a
    Delta snapshot, :func:`tracelake.tables.snapshot_files`).
    """
    from training.staging import parquet_files  # staging imports this module

    files = parquet_files(path)
    filesystem, _ = storage.filesystem(files[0])
    dataset = pads.dataset([storage.filesystem(f)[1] for f in files], format="parquet", filesystem=filesystem)
    table = dataset.to_table(columns=spec.columns, filter=pc.field(SPLIT_COLUMN) == split)
    return columns_to_arrays(table, spec)


def _local_path(url: str | os.PathLike[str]) -> str:
    text = str(url)
    if text.startswith("file:"):
        return urlparse(text).path
    return text


def epoch_order(n_rows: int, seed: int, epoch: int) -> np.ndarray:
    """The training order of an epoch: a permutation that depends on (seed, epoch) only."""
    return np.random.default_rng([seed, epoch]).permutation(n_rows)


class DataSource(ABC):
    """Batches for one rank. Every rank gets the same number of training steps per epoch."""

    def __init__(self, spec: FeatureSpec, *, rank: int, world_size: int, batch_size: int, seed: int):
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is outside a world of size {world_size}")
        self.spec, self.rank, self.world_size = spec, rank, world_size
        self.batch_size, self.seed = batch_size, seed

    @abstractmethod
    def steps_per_epoch(self) -> int:
        """Training batches per rank and epoch (equal on all ranks)."""

    @abstractmethod
    def train_batches(self, epoch: int, skip: int = 0) -> Iterator[Batch]:
        """This rank's training batches of ``epoch`` in a (seed, epoch)-determined order, the first ``skip`` left out."""

    @abstractmethod
    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        """This rank's share of ``split``: over all ranks every row exactly once, unshuffled."""

    def stats_batches(self, batch_size: int) -> Iterator[Batch]:
        """This rank's share of the training split, each row once (for preprocessing statistics)."""
        return self.eval_batches(TRAIN, batch_size)

    def close(self) -> None:  # noqa: B027 - a source without readers has nothing to release
        """Release readers and memory."""


class InMemorySource(DataSource):
    """A parquet dataset in the model_io layout, loaded per split with pyarrow."""

    def __init__(self, path: str | Sequence[str], spec: FeatureSpec, **kwargs: Any):
        super().__init__(spec, **kwargs)
        self.path = path if isinstance(path, str) else list(path)
        self._splits: dict[str, Arrays] = {}

    @classmethod
    def from_arrays(cls, splits: Mapping[str, Arrays], spec: FeatureSpec, **kwargs: Any) -> InMemorySource:
        source = cls("<memory>", spec, **kwargs)
        source._splits.update(splits)
        return source

    def split(self, name: str) -> Arrays:
        if name not in self._splits:
            arrays = read_split(self.path, name, self.spec)
            if arrays.n_rows == 0:
                where = (
                    self.path
                    if isinstance(self.path, str)
                    else f"{len(self.path)} file(s) from {self.path[0]!r}"
                )
                raise DataError(
                    f"split {name!r} of {where} has no rows; the training set needs all of {SPLITS}"
                )
            self._splits[name] = arrays
        return self._splits[name]

    def _rows_per_rank(self) -> int:
        return math.ceil(self.split(TRAIN).n_rows / self.world_size)

    def steps_per_epoch(self) -> int:
        return math.ceil(self._rows_per_rank() / self.batch_size)

    def train_batches(self, epoch: int, skip: int = 0) -> Iterator[Batch]:
        data = self.split(TRAIN)
        order = epoch_order(data.n_rows, self.seed, epoch)
        # Like DistributedSampler: wrap around so that every rank gets as many rows.
        padded = np.resize(order, self._rows_per_rank() * self.world_size)
        mine = padded[self.rank :: self.world_size]
        for start in range(skip * self.batch_size, len(mine), self.batch_size):
            yield data.take(np.sort(mine[start : start + self.batch_size])).to_batch()

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        data = self.split(split)
        bounds = np.linspace(0, data.n_rows, self.world_size + 1).astype(int)
        lo, hi = bounds[self.rank], bounds[self.rank + 1]
        for start in range(lo, hi, batch_size):
            yield data.take(slice(start, min(start + batch_size, hi))).to_batch()

    def close(self) -> None:
        self._splits.clear()


class PetastormSource(DataSource):
    """Parquet files materialised by petastorm's ``make_spark_converter``, read through ``make_torch_dataloader``.

    ``urls`` maps each split to its dataset URL or list of file URLs
    (``converter.file_urls`` or ``converter.cache_dir_url``; ``file://`` for
    local folders). In each training process the split's converter is rebuilt
    from its file URLs (``SparkDatasetConverter(cache_dir_url, file_urls,
    rows)``: plain strings, so nothing of Spark travels to the process) and read
    with ``converter.make_torch_dataloader`` (petastorm's
    ``BatchedDataLoader``), sharded by row group with ``cur_shard=rank,
    shard_count=world_size``. Training reads row-group-shuffled passes, one
    reader per pass seeded by (seed, epoch, pass), and stops after
    ``rows // (world_size * batch_size)`` batches, so every rank takes the
    same number of steps even when row groups are uneven; rows are shuffled
    further in a buffer of ``shuffle_buffer_rows`` with a generator seeded by
    (seed, epoch, rank). With one reader worker the order is reproducible,
    which mid-epoch resume relies on.

    The loader's own shuffling queue stays off (``shuffling_queue_capacity=0``):
    it draws on torch's global RNG, which would tie the data order to the
    model's random state and make a mid-epoch resume replay another order.
    The ``seq`` column, padded to T*F values when materialised
    (:func:`training.spark_data.padded_model_columns`), arrives as a [B, T*F]
    tensor and is reshaped to [B, T, F] by :func:`columns_to_arrays`.
    """

    def __init__(
        self,
        urls: Mapping[str, str | Sequence[str]],
        spec: FeatureSpec,
        *,
        rows: Mapping[str, int] | None = None,
        workers: int = 1,
        shuffle_buffer_rows: int = 0,
        **kwargs: Any,
    ):
        super().__init__(spec, **kwargs)
        self.urls = {split: ([url] if isinstance(url, str) else list(url)) for split, url in urls.items()}
        self.rows = dict(rows or {})
        self.workers = workers
        self.shuffle_buffer_rows = shuffle_buffer_rows
        self._layout: dict[str, tuple[list[str], int, int]] = {}

    def _urls(self, split: str) -> list[str]:
        if split not in self.urls:
            raise DataError(f"no petastorm URL for split {split!r}; known: {sorted(self.urls)}")
        return self.urls[split]

    def _files(self, split: str) -> tuple[list[str], int, int]:
        """A split's parquet file URLs (folders expanded), row groups and rows, from the footers."""
        if split in self._layout:
            return self._layout[split]
        from pyarrow import fs as pafs

        urls: list[str] = []
        groups = rows = 0
        for url in self._urls(split):
            filesystem, path = storage.filesystem(url)
            info = filesystem.get_file_info(path)
            if info.type == pafs.FileType.NotFound:
                raise DataError(f"petastorm data {url!r} for split {split!r} does not exist")
            if info.type == pafs.FileType.File:
                files, base = [info], url
            else:
                files = sorted(
                    (
                        f
                        for f in filesystem.get_file_info(pafs.FileSelector(path, recursive=True))
                        if f.type == pafs.FileType.File and f.path.endswith(".parquet")
                    ),
                    key=lambda f: f.path,
                )
                base = None
            for file in files:
                with filesystem.open_input_file(file.path) as handle:
                    meta = pq.ParquetFile(handle).metadata
                groups, rows = groups + meta.num_row_groups, rows + meta.num_rows
                urls.append(
                    base
                    or (
                        f"{url.rstrip('/')}/{file.path[len(path) :].lstrip('/')}"
                        if "://" in url
                        else file.path
                    )
                )
        if not urls:
            raise DataError(f"petastorm data {self._urls(split)} for split {split!r} holds no parquet files")
        self._layout[split] = (urls, groups, rows)
        return self._layout[split]

    def _row_groups_and_rows(self, split: str) -> tuple[int, int]:
        """Row groups and rows of a split, from the parquet footers (any URL pyarrow.fs can open)."""
        _, groups, rows = self._files(split)
        return groups, rows

    def steps_per_epoch(self) -> int:
        rows = self.rows.get(TRAIN)
        if rows is None:
            rows = self.rows[TRAIN] = self._row_groups_and_rows(TRAIN)[1]
        return max(1, rows // (self.world_size * self.batch_size))

    def _loader(
        self, split: str, *, chunk_rows: int, num_epochs: int | None, seed: int | None, shuffle: bool
    ) -> tuple[Any, bool]:
        """``make_torch_dataloader`` over this rank's row groups, and whether rows must still be dealt out by position."""
        from petastorm.pytorch import BatchedDataLoader
        from petastorm.spark.spark_dataset_converter import SparkDatasetConverter

        # petastorm 0.12 trips over many pyarrow deprecations; they say nothing about our data.
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm(\.|$)")
        # BatchedDataLoader wraps Arrow's read-only buffers in tensors; nothing writes to them.
        warnings.filterwarnings(
            "ignore", message="The given NumPy array is not writable", category=UserWarning
        )
        files, groups, rows = self._files(split)
        shard = {}
        if self.world_size > 1 and groups >= self.world_size:
            shard = {"cur_shard": self.rank, "shard_count": self.world_size}
        converter = SparkDatasetConverter(files[0].rsplit("/", 1)[0], files, self.rows.get(split, rows))
        loader = converter.make_torch_dataloader(
            batch_size=chunk_rows,
            num_epochs=num_epochs,
            workers_count=self.workers,
            shuffling_queue_capacity=0,
            data_loader_fn=BatchedDataLoader,
            schema_fields=self.spec.columns,
            seed=seed,
            shuffle_row_groups=shuffle,
            **shard,
        )
        return loader, self.world_size > 1 and not shard

    def _stream(
        self, split: str, *, chunk_rows: int, num_epochs: int | None, seed: int | None, shuffle: bool
    ) -> Iterator[Arrays]:
        """Chunks of this rank's share (rows are dealt out by position when row groups are too few)."""
        context, manual_shard = self._loader(
            split, chunk_rows=chunk_rows, num_epochs=num_epochs, seed=seed, shuffle=shuffle
        )
        position = 0
        with context as loader:
            for chunk in loader:
                arrays = columns_to_arrays(
                    {name: tensor.numpy() for name, tensor in chunk.items()}, self.spec
                )
                if manual_shard:
                    index = np.arange(position, position + arrays.n_rows)
                    position += arrays.n_rows
                    arrays = arrays.take(np.flatnonzero(index % self.world_size == self.rank))
                if arrays.n_rows:
                    yield arrays

    def _passes(self, epoch: int, *, chunk_rows: int) -> Iterator[Arrays]:
        """This rank's training rows of ``epoch``: one shuffled pass over its row groups after another.

        Each pass is its own reader of one pass (``num_epochs=1``) seeded by (seed, epoch, pass): an endless
        petastorm reader re-shuffles at its pass boundary in an order that varies from read to read, which
        broke exact resume when an epoch's batches crossed that boundary.
        """
        for number in itertools.count():
            seed = int(np.random.default_rng([self.seed, epoch, number]).integers(2**31 - 1))
            passed = 0
            with contextlib.closing(
                self._stream(TRAIN, chunk_rows=chunk_rows, num_epochs=1, seed=seed, shuffle=True)
            ) as stream:
                for chunk in stream:
                    passed += chunk.n_rows
                    yield chunk
            if not passed:
                raise DataError(
                    f"this rank's share of the training split is empty (rank {self.rank} of "
                    f"{self.world_size}); write the training set with more rows or row groups"
                )

    @staticmethod
    def _concat(parts: list[Arrays]) -> Arrays:
        return Arrays(*(np.concatenate(column) for column in zip(*parts, strict=False)))

    def train_batches(self, epoch: int, skip: int = 0) -> Iterator[Batch]:
        steps = self.steps_per_epoch()
        rng = np.random.default_rng([self.seed, epoch, self.rank])
        target = max(self.shuffle_buffer_rows, self.batch_size)
        stream = self._passes(epoch, chunk_rows=target)
        buffer: list[Arrays] = []
        buffered = emitted = 0
        try:
            while emitted < steps:
                while buffered < target:
                    chunk = next(stream)
                    buffer.append(chunk)
                    buffered += chunk.n_rows
                pool = self._concat(buffer)
                pool = pool.take(rng.permutation(pool.n_rows))
                n_batches = min(pool.n_rows // self.batch_size, steps - emitted)
                for b in range(n_batches):
                    if emitted >= skip:
                        yield pool.take(slice(b * self.batch_size, (b + 1) * self.batch_size)).to_batch()
                    emitted += 1
                rest = pool.take(slice(n_batches * self.batch_size, None))
                buffer, buffered = [rest], rest.n_rows
        finally:
            stream.close()

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        pending: list[Arrays] = []
        count = 0
        for chunk in self._stream(split, chunk_rows=batch_size, num_epochs=1, seed=None, shuffle=False):
            pending.append(chunk)
            count += chunk.n_rows
            if count >= batch_size:
                pool = self._concat(pending)
                full = pool.n_rows // batch_size * batch_size
                for start in range(0, full, batch_size):
                    yield pool.take(slice(start, start + batch_size)).to_batch()
                rest = pool.take(slice(full, None))
                pending, count = [rest], rest.n_rows
        if count:
            yield self._concat(pending).to_batch()


def make_source(
    data: Mapping[str, Any],
    spec: FeatureSpec,
    *,
    rank: int,
    world_size: int,
    batch_size: int,
    seed: int,
    loader_workers: int = 1,
    shuffle_buffer_rows: int = 0,
    placement: str = "auto",
    device: torch.device | str = "cpu",
    device_memory_fraction: float = 0.5,
    host_memory_fraction: float = 0.5,
    reader_threads: int = 2,
) -> DataSource:
    """The source a ``data`` config names.

    - ``{"kind": "parquet", "path": "/data/folder"}`` or ``{"kind": "parquet", "files": [...]}`` (the
      training set's Delta snapshot files): :class:`training.staging.StagedSource`, this rank's
      block staged as ``placement`` says (``auto | device | host | stream``).
    - ``{"kind": "delta", "path": table_uri, "version": n}``: the same, the snapshot's files listed
      by delta-rs (no Spark; deletion vectors refused).
    - ``{"kind": "petastorm", "urls": {"train": [...], "validation": [...], "test": [...]},
      "rows": {"train": n, ...}}``: :class:`PetastormSource` (``rows`` optional, else read
      from the parquet footers).
    """
    common = {"rank": rank, "world_size": world_size, "batch_size": batch_size, "seed": seed}
    kind = data.get("kind")
    if kind in ("parquet", "delta"):
        from training.staging import (  # staging imports this module
            StagedSource,
            delta_snapshot_files,
        )

        if kind == "delta":
            if not data.get("path"):
                raise DataError(f"data config {dict(data)!r} needs 'path' (the Delta table's URI)")
            files: Any = delta_snapshot_files(str(data["path"]), data.get("version"))
        elif data.get("files"):
            files = list(data["files"])
        elif data.get("path"):
            files = str(data["path"])
        else:
            raise DataError(
                f"data config {dict(data)!r} needs 'path' (a parquet folder in the layout of "
                "tracelake/model_io.py) or 'files' (its parquet files)"
            )
        return StagedSource(
            files,
            spec,
            placement=str(data.get("placement", placement)),
            device=device,
            device_memory_fraction=device_memory_fraction,
            host_memory_fraction=host_memory_fraction,
            reader_threads=reader_threads,
            shuffle_window_rows=shuffle_buffer_rows,
            **common,
        )
    if kind == "petastorm":
        if not data.get("urls"):
            raise DataError(
                f"data config {dict(data)!r} needs 'urls' (split -> petastorm converter file URLs)"
            )
        return PetastormSource(
            data["urls"],
            spec,
            rows=data.get("rows"),
            workers=loader_workers,
            shuffle_buffer_rows=shuffle_buffer_rows,
            **common,
        )
    raise DataError(f"data kind {kind!r} is unknown; use 'parquet', 'delta' or 'petastorm'")


# --- synthetic data (tests, benchmarks) ---------------------------------------------------------


def synthetic_feature_spec(
    n_seq: int = 6, n_tab: int = 8, seq_len: int = 25, label_names: Sequence[str] | None = None
) -> FeatureSpec:
    if n_seq < 4 or n_tab < 3:
        raise DataError("the synthetic task needs at least 4 sequence and 3 tabular features")
    return FeatureSpec(
        tuple(f"seq_f{i}" for i in range(n_seq)),
        tuple(f"tab_f{i}" for i in range(n_tab)),
        seq_len,
        tuple(label_names) if label_names is not None else default_label_names(),
    )


def synthetic_arrays(
    n_rows: int, spec: FeatureSpec, seed: int = 0, positive_rate: float = 0.08, label_noise: float = 0.01
) -> Arrays:
    """Random rows whose labels depend learnably on the sequence and tabular features.

    Each label is a thresholded score (top ``positive_rate`` of rows, a few
    flipped at random): some scores need the sequence (a maximum or count over
    the real steps, the last step against the one before), others the
    tabular features, so both halves of the model have to work.
    """
    rng = np.random.default_rng(seed)
    t, f = spec.seq_len, spec.n_seq
    seq_len = rng.integers(1, t + 1, size=n_rows)
    seq = rng.normal(size=(n_rows, t, f)).astype(np.float32)
    valid = np.arange(t)[None, :] < seq_len[:, None]
    seq[~valid] = 0.0
    tab = rng.normal(size=(n_rows, spec.n_tab)).astype(np.float32)
    last = seq[np.arange(n_rows), seq_len - 1]
    prev = seq[np.arange(n_rows), np.maximum(seq_len - 2, 0)]
    scores = [
        tab[:, 0] + tab[:, 1],
        np.where(valid, seq[:, :, 0], -np.inf).max(axis=1) + 0.3 * tab[:, 2],
        last[:, 1] - prev[:, 1],
        (np.where(valid, seq[:, :, 2], 0) > 1.0).sum(axis=1) / np.sqrt(seq_len) + 0.5 * tab[:, 2],
        last[:, 3] * np.sign(tab[:, 0]) + 0.5 * tab[:, 1],
    ]
    labels = np.zeros((n_rows, spec.n_labels), dtype=np.float32)
    for j in range(spec.n_labels):
        score = scores[j % len(scores)] + 0.1 * rng.normal(size=n_rows)
        labels[:, j] = score > np.quantile(score, 1 - positive_rate)
        flip = rng.random(n_rows) < label_noise
        labels[flip, j] = 1 - labels[flip, j]
    return Arrays(seq, seq_len.astype(np.int64), tab, labels)


def write_synthetic_dataset(
    path: str | os.PathLike[str],
    spec: FeatureSpec,
    n_rows: int,
    *,
    seed: int = 0,
    fractions: tuple[float, float] = (0.6, 0.2),
    positive_rate: float = 0.08,
    row_group_rows: int | None = None,
) -> str:
    """Write a synthetic training set (train, validation, test in row order) as parquet; returns the folder."""
    arrays = synthetic_arrays(n_rows, spec, seed=seed, positive_rate=positive_rate)
    n_train, n_val = int(n_rows * fractions[0]), int(n_rows * fractions[1])
    split = [TRAIN] * n_train + [VALIDATION] * n_val + [TEST] * (n_rows - n_train - n_val)
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        arrays_to_table(arrays, spec, split),
        folder / "part-00000.parquet",
        row_group_size=row_group_rows or n_rows,
    )
    return str(folder)
