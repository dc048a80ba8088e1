"""The arrow loader: a training set's Parquet files staged per rank as contiguous tensors.

:class:`StagedSource` reads the data files of the training set's Delta
snapshot (the list :func:`tracelake.tables.snapshot_files` or
:func:`delta_snapshot_files` gives) with pyarrow, no Spark in the process.

Sharding: the rows of a split, in file and row-group order, are cut into
``world_size`` contiguous blocks (``N * r // world_size``); rank ``r`` reads
only the row groups that overlap its block. Blocks are disjoint and cover the
split; a rank whose block is one row short repeats its first row(s) of the
epoch, so every rank takes ``ceil(ceil(N / world_size) / batch_size)`` steps
(DDP needs equal step counts).

Placement (``training.data_placement``):

- ``device``: the block as contiguous tensors on the training device; the
  epoch order is computed there and batches are gathered there by index.
- ``host``: the block in host memory (pinned on CUDA); batches are gathered
  on the host into two pinned buffers used in turn and copied without
  blocking, so the gather of batch k+1 overlaps the GPU work of batch k.
- ``stream``: nothing staged; row groups are read in order by reader threads
  (a bounded number in flight) and rows are shuffled within windows of
  ``shuffle_buffer_rows``.
- ``auto``: device if the block fits ``device_memory_fraction`` of the free
  device memory, else host if it fits ``host_memory_fraction`` of the
  available host memory, else stream. On the CPU device and host are one.

The epoch order is :func:`epoch_permutation`: a pure function of (seed,
epoch, rows) computed with integer arithmetic and a stable sort, so it is the
same on the CPU and on any GPU, the same for ``device`` and ``host``, and the
same for ``stream`` when one window holds the whole block. Resume is exact:
the checkpoint records epoch and batches done, and the order is recomputed.

Decoding is vectorised (:func:`tracelake.model_io.columns_to_arrays`: the
compact ``seq`` list column is expanded to the padded [N, T, F] array from its
Arrow offsets in one numpy step, no Python per row).
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from tracelake import storage
from tracelake.model_io import SPLIT_COLUMN, SPLITS, TRAIN, VALIDATION, DataError, FeatureSpec
from training.data import Batch, DataSource, _local_path, columns_to_arrays

PLACEMENTS = ("auto", "device", "host", "stream")
_M31 = 2**31 - 1  # a prime: multiplication modulo it is a bijection on 1..M31-1


# --- the epoch order --------------------------------------------------------------------------


def _mix(*values: int) -> int:
    """A seed in [1, M31) from integers (host arithmetic, Python ints)."""
    state = 0x2545F491
    for value in values:
        state = (state * 6364136223846793005 + (int(value) & 0xFFFFFFFFFFFF) + 1442695040888963407) % (2**64)
        state ^= state >> 29
    return 1 + state % (_M31 - 1)


def epoch_permutation(
    n_rows: int, seed: int, epoch: int, window: int = 0, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """A permutation of ``range(n_rows)`` (int64, on ``device``), a pure function of its arguments.

    Keys are a few rounds of multiply-mod-prime and xor-shift over the row index (all products
    stay below 2**62, so int64 arithmetic is exact on every device), sorted stably: the result is
    identical on the CPU and on a GPU.
    """
    if n_rows == 0:
        return torch.zeros(0, dtype=torch.int64, device=device)
    key = torch.arange(1, n_rows + 1, dtype=torch.int64, device=device)
    for round_number, multiplier in enumerate((48271, 69621, 40692, 16807)):
        salt = _mix(seed, epoch, window, round_number)
        key = (key * multiplier + salt) % _M31
        key = key ^ (key >> 13)
    return torch.sort(key, stable=True).indices


# --- the files and their row groups -----------------------------------------------------------


def parquet_files(path: str | os.PathLike[str] | Sequence[str]) -> list[str]:
    """The Parquet files of a folder (sorted) or of a list of files, as local paths or object-store URIs."""
    if isinstance(path, (str, os.PathLike)):
        location = _local_path(path)
        if storage.is_file(location):
            return [location]
        if not storage.is_dir(location):
            raise DataError(f"training data {location!r} does not exist; write the training set first")
        files = [
            f
            for f in storage.list_files(location, ".parquet")
            if not any(part.startswith((".", "_")) for part in f[len(location) :].split("/"))
        ]
        if not files:
            raise DataError(f"training data folder {location!r} holds no parquet files")
        return files
    files = [_local_path(f) for f in path]
    absent = [f for f in files if not storage.is_file(f)]
    if not files or absent:
        raise DataError(
            f"training data file(s) {absent[:3] or '(none listed)'} do not exist; "
            "the training set's snapshot changed or was vacuumed: rebuild it"
        )
    return files


def open_parquet(file: str) -> pq.ParquetFile:
    """A Parquet file on the local disk or in the lake's object store."""
    filesystem, path = storage.filesystem(file)
    return pq.ParquetFile(filesystem.open_input_file(path))


def delta_snapshot_files(table_uri: str, version: int | None = None) -> list[str]:
    """The data files of a Delta table's snapshot, read with delta-rs (no Spark).

    A snapshot with deletion vectors (or with them enabled) is refused: a Parquet reader would
    still see the rows they delete.
    """
    try:
        from deltalake import DeltaTable
    except ImportError as exc:  # the GPU hosts may lack it: pass the file list instead
        raise DataError(
            "reading a Delta snapshot without Spark needs the 'deltalake' package; install it or "
            "pass the snapshot's file list ({'kind': 'parquet', 'files': [...]})"
        ) from exc
    options = None if storage.is_local(table_uri) else storage.delta_rs_options()
    table = DeltaTable(storage.arrow_uri(table_uri), version=version, storage_options=options)
    configured = str(table.metadata().configuration.get("delta.enableDeletionVectors", "false")).lower()
    has_vectors = configured == "true"
    if not has_vectors:
        vectors = table.deletion_vectors()
        has_vectors = (vectors.read_all().num_rows if hasattr(vectors, "read_all") else len(vectors)) > 0
    if has_vectors:
        raise DataError(
            f"Delta table {table_uri} (version {table.version()}) has deletion vectors; its Parquet "
            "files cannot be read without Delta. Disable them (ALTER TABLE ... SET TBLPROPERTIES "
            "('delta.enableDeletionVectors' = false)) and rewrite the table"
        )
    return sorted(table.file_uris())


@dataclass(frozen=True)
class RowGroup:
    """One Parquet row group and how many rows of each split it holds."""

    file: str
    index: int
    rows: int
    split_rows: dict[str, int]


def _row_group_split_counts(parquet: pq.ParquetFile, index: int, file: str) -> dict[str, int]:
    meta = parquet.metadata.row_group(index)
    column = parquet.schema_arrow.get_field_index(SPLIT_COLUMN)
    if column < 0:
        raise DataError(
            f"training data file {file!r} lacks the {SPLIT_COLUMN!r} column; it is not a training set "
            "in the layout of training/data.py (a table partitioned by split is not either)"
        )
    stats = meta.column(column).statistics
    if stats is not None and stats.has_min_max and stats.null_count == 0 and stats.min == stats.max:
        value = stats.min.decode() if isinstance(stats.min, bytes) else str(stats.min)
        return {value: meta.num_rows}  # one split only: no need to read the column
    values = parquet.read_row_group(index, columns=[SPLIT_COLUMN])[SPLIT_COLUMN]
    counts = pc.value_counts(values.combine_chunks())
    return {str(v["values"]): int(v["counts"]) for v in counts.to_pylist() if v["values"] is not None}


def row_groups(files: Sequence[str], threads: int = 2) -> list[RowGroup]:
    """Every row group of ``files`` in order, with its rows per split (footers; split column only when mixed)."""

    def one_file(file: str) -> list[RowGroup]:
        parquet = open_parquet(file)
        return [
            RowGroup(
                file, i, parquet.metadata.row_group(i).num_rows, _row_group_split_counts(parquet, i, file)
            )
            for i in range(parquet.metadata.num_row_groups)
        ]

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return [group for groups in pool.map(one_file, files) for group in groups]


@dataclass(frozen=True)
class Piece:
    """Rows ``[start, stop)`` (counted within the split) of one row group."""

    group: RowGroup
    start: int
    stop: int


def rank_block(total: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rank's contiguous block ``[lo, hi)`` of a split of ``total`` rows."""
    return total * rank // world_size, total * (rank + 1) // world_size


def block_pieces(groups: Sequence[RowGroup], split: str, lo: int, hi: int) -> list[Piece]:
    """The row-group pieces that hold rows ``[lo, hi)`` of ``split``."""
    pieces, offset = [], 0
    for group in groups:
        n = group.split_rows.get(split, 0)
        start, stop = max(lo, offset), min(hi, offset + n)
        if start < stop:
            pieces.append(Piece(group, start - offset, stop - offset))
        offset += n
    return pieces


# --- the source -------------------------------------------------------------------------------


@dataclass
class Staged:
    """A block of one split as contiguous tensors (same layout as :class:`training.data.Batch`)."""

    seq: torch.Tensor
    seq_len: torch.Tensor
    tab: torch.Tensor
    labels: torch.Tensor

    @property
    def n_rows(self) -> int:
        return int(self.seq_len.shape[0])

    def rows(self, start: int, stop: int) -> Batch:
        return Batch(
            self.seq[start:stop], self.seq_len[start:stop], self.tab[start:stop], self.labels[start:stop]
        )

    def gather(self, index: torch.Tensor) -> Batch:
        return Batch(
            self.seq.index_select(0, index),
            self.seq_len.index_select(0, index),
            self.tab.index_select(0, index),
            self.labels.index_select(0, index),
        )


def _row_bytes(spec: FeatureSpec) -> int:
    return 4 * (spec.seq_len * spec.n_seq + spec.n_tab + spec.n_labels) + 8


def available_host_bytes() -> int:
    """Host memory available to new allocations (MemAvailable), or 0 when unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


class StagedSource(DataSource):
    """A training set's Parquet files, this rank's block of each split staged where ``placement`` says.

    Batches come out on ``device`` (the training device) for ``device`` and ``host``
    placements; ``stream`` yields host tensors (pinned on CUDA) for the trainer to move.
    """

    def __init__(
        self,
        files: str | os.PathLike[str] | Sequence[str],
        spec: FeatureSpec,
        *,
        placement: str = "auto",
        device: torch.device | str = "cpu",
        device_memory_fraction: float = 0.5,
        host_memory_fraction: float = 0.5,
        reader_threads: int = 2,
        shuffle_window_rows: int = 50_000,
        **kwargs: Any,
    ):
        super().__init__(spec, **kwargs)
        if placement not in PLACEMENTS:
            raise DataError(f"data placement {placement!r} is unknown; use one of {PLACEMENTS}")
        self.files = parquet_files(files)
        self.device = torch.device(device)
        self.requested_placement = placement
        self.device_memory_fraction, self.host_memory_fraction = device_memory_fraction, host_memory_fraction
        self.reader_threads = reader_threads
        self.shuffle_window_rows = max(shuffle_window_rows, self.batch_size)
        self._groups: list[RowGroup] | None = None
        self._staged: dict[str, Staged] = {}
        self._placement: str | None = None
        self._buffers: list[tuple[Staged, Any]] = []

    # --- layout ---------------------------------------------------------------------------------

    @property
    def groups(self) -> list[RowGroup]:
        if self._groups is None:
            self._groups = row_groups(self.files, self.reader_threads)
        return self._groups

    def split_rows(self, split: str) -> int:
        return sum(g.split_rows.get(split, 0) for g in self.groups)

    def block(self, split: str) -> tuple[int, int]:
        """This rank's rows ``[lo, hi)`` of ``split`` (disjoint across ranks, covering the split)."""
        total = self.split_rows(split)
        if total == 0:
            raise DataError(
                f"split {split!r} of {len(self.files)} file(s) from {self.files[0]!r} has no rows; "
                f"the training set needs all of {SPLITS}"
            )
        return rank_block(total, self.rank, self.world_size)

    def _rows_per_rank(self) -> int:
        return math.ceil(self.split_rows(TRAIN) / self.world_size)

    def steps_per_epoch(self) -> int:
        return math.ceil(self._rows_per_rank() / self.batch_size)

    @property
    def placement(self) -> str:
        """The placement in use (``auto`` resolved from the block's size and free memory)."""
        if self._placement is None:
            self._placement = self._resolve_placement()
        return self._placement

    def _resolve_placement(self) -> str:
        choice = self.requested_placement
        if choice != "auto":
            return "device" if choice == "host" and self.device.type == "cpu" else choice
        needed = sum(
            math.ceil(self.split_rows(s) / self.world_size) for s in (TRAIN, VALIDATION)
        ) * _row_bytes(self.spec)
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            if needed <= self.device_memory_fraction * free:
                return "device"
        host = available_host_bytes()
        if host == 0 or needed <= self.host_memory_fraction * host:
            return "host" if self.device.type == "cuda" else "device"
        return "stream"

    # --- reading --------------------------------------------------------------------------------

    def _read_piece(self, piece: Piece, split: str) -> Batch:
        """One row-group piece decoded to CPU tensors (float32, int64)."""
        group = piece.group
        table = open_parquet(group.file).read_row_group(
            group.index, columns=[*self.spec.columns, SPLIT_COLUMN]
        )
        if len(group.split_rows) > 1 or split not in group.split_rows:
            table = table.filter(pc.equal(table[SPLIT_COLUMN], pa.scalar(split)))
        table = table.slice(piece.start, piece.stop - piece.start)
        return columns_to_arrays(table, self.spec).to_batch()

    def _pieces(self, split: str, pieces: Sequence[Piece]) -> Iterator[Batch]:
        """Decoded pieces in order, at most ``reader_threads + 1`` in flight (bounded prefetch)."""
        with ThreadPoolExecutor(max_workers=self.reader_threads) as pool:
            pending: deque[Future[Batch]] = deque()
            todo = iter(pieces)
            for piece in todo:
                pending.append(pool.submit(self._read_piece, piece, split))
                if len(pending) > self.reader_threads:
                    break
            while pending:
                yield pending.popleft().result()
                piece = next(todo, None)
                if piece is not None:
                    pending.append(pool.submit(self._read_piece, piece, split))

    def _stage(self, split: str) -> Staged:
        """This rank's block of ``split`` as contiguous tensors on the device or in (pinned) host memory."""
        if split in self._staged:
            return self._staged[split]
        lo, hi = self.block(split)
        n, spec = hi - lo, self.spec
        on_device = self.placement == "device"
        target = self.device if on_device else torch.device("cpu")
        pin = not on_device and self.device.type == "cuda"

        def empty(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
            return torch.empty(shape, dtype=dtype, device=target, pin_memory=pin)

        staged = Staged(
            empty(n, spec.seq_len, spec.n_seq),
            empty(n, dtype=torch.int64),
            empty(n, spec.n_tab),
            empty(n, spec.n_labels),
        )
        at = 0
        for part in self._pieces(split, block_pieces(self.groups, split, lo, hi)):
            m = part.n_rows
            for dest, src in zip((staged.seq, staged.seq_len, staged.tab, staged.labels), part, strict=False):
                dest[at : at + m].copy_(src)
            at += m
        if at != n:
            raise DataError(
                f"split {split!r}: read {at} rows of this rank's block of {n}; the files changed "
                "while they were read"
            )
        self._staged[split] = staged
        return staged

    # --- batches --------------------------------------------------------------------------------

    def epoch_order(self, epoch: int, n_rows: int, device: torch.device) -> torch.Tensor:
        """This rank's row order of ``epoch`` (its block, padded to the common length by wrapping)."""
        order = epoch_permutation(n_rows, self.seed, epoch, device=device)
        pad = self._rows_per_rank() - n_rows
        return torch.cat([order, order[:pad]]) if pad > 0 else order

    def train_batches(self, epoch: int, skip: int = 0) -> Iterator[Batch]:
        if self.placement == "stream":
            yield from self._stream_train(epoch, skip)
            return
        staged = self._stage(TRAIN)
        order = self.epoch_order(epoch, staged.n_rows, staged.seq.device)
        starts = range(skip * self.batch_size, order.shape[0], self.batch_size)
        if self.placement == "device":
            for start in starts:
                yield staged.gather(order[start : start + self.batch_size])
            return
        yield from self._host_batches(staged, order, starts)

    def _host_batches(self, staged: Staged, order: torch.Tensor, starts: range) -> Iterator[Batch]:
        """Gather on the host into two pinned buffers used in turn; copy each to the device without blocking."""
        if not self._buffers:
            b, spec = self.batch_size, self.spec
            for _ in range(2):
                buffer = Staged(
                    *(
                        torch.empty(shape, dtype=dtype, pin_memory=True)
                        for shape, dtype in (
                            ((b, spec.seq_len, spec.n_seq), torch.float32),
                            ((b,), torch.int64),
                            ((b, spec.n_tab), torch.float32),
                            ((b, spec.n_labels), torch.float32),
                        )
                    )
                )
                self._buffers.append((buffer, None))
        for number, start in enumerate(starts):
            slot = number % 2
            buffer, copied = self._buffers[slot]
            if copied is not None:
                copied.synchronize()  # the copy that last read this buffer is done
            index = order[start : start + self.batch_size]
            m = int(index.shape[0])
            parts = []
            for dest, src in zip(
                (buffer.seq, buffer.seq_len, buffer.tab, buffer.labels),
                (staged.seq, staged.seq_len, staged.tab, staged.labels),
                strict=False,
            ):
                torch.index_select(src, 0, index, out=dest[:m])
                parts.append(dest[:m].to(self.device, non_blocking=True))
            event = torch.cuda.Event()
            event.record()
            self._buffers[slot] = (buffer, event)
            yield Batch(*parts)

    def _stream_train(self, epoch: int, skip: int) -> Iterator[Batch]:
        """Row groups in order, rows shuffled within windows seeded by (seed, epoch, window)."""
        lo, hi = self.block(TRAIN)
        target, pad = self._rows_per_rank(), self._rows_per_rank() - (hi - lo)
        pieces = self._pieces(TRAIN, block_pieces(self.groups, TRAIN, lo, hi))
        carried: list[Batch] = []
        held = emitted_rows = number = window = 0
        exhausted = False
        while emitted_rows < target:
            while not exhausted and held < self.shuffle_window_rows:
                part = next(pieces, None)
                if part is None:
                    exhausted = True
                else:
                    carried.append(part)
                    held += part.n_rows
            pool = Staged(*(torch.cat(column) for column in zip(*carried, strict=False)))
            order = epoch_permutation(pool.n_rows, self.seed, epoch, window)
            if exhausted and pad > 0:
                order = torch.cat([order, order[:pad]])
            full = order.shape[0] if exhausted else order.shape[0] // self.batch_size * self.batch_size
            for start in range(0, full, self.batch_size):
                if number >= skip:
                    yield self._pinned(pool.gather(order[start : start + self.batch_size]))
                number += 1
                emitted_rows += min(self.batch_size, full - start)
            rest = order[full:]
            carried = [pool.gather(rest)] if rest.numel() else []
            held = int(rest.shape[0])
            window += 1
            if exhausted and not carried:
                break

    def _pinned(self, batch: Batch) -> Batch:
        return Batch(*(t.pin_memory() for t in batch)) if self.device.type == "cuda" else batch

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        if self.placement == "stream":
            lo, hi = self.block(split)
            pending: list[Batch] = []
            count = 0
            for part in self._pieces(split, block_pieces(self.groups, split, lo, hi)):
                pending.append(part)
                count += part.n_rows
                if count >= batch_size:
                    pool = Staged(*(torch.cat(column) for column in zip(*pending, strict=False)))
                    full = count // batch_size * batch_size
                    for start in range(0, full, batch_size):
                        yield self._pinned(pool.rows(start, start + batch_size))
                    pending, count = ([pool.rows(full, count)] if full < count else []), count - full
            if count:
                yield self._pinned(
                    Staged(*(torch.cat(column) for column in zip(*pending, strict=False))).rows(0, count)
                )
            return
        staged = self._stage(split)
        for start in range(0, staged.n_rows, batch_size):
            batch = staged.rows(start, start + batch_size)
            yield batch if self.placement == "device" else batch.to(self.device)

    def close(self) -> None:
        self._staged.clear()
        self._buffers.clear()
