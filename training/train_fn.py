"""The train function: what TorchDistributor launches and what plain ``torchrun`` runs.

``train_fn(config)`` reads its place in the job from the environment that
torchrun (and TorchDistributor, which uses it) sets: ``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``; without them it is a world of one and
needs no launcher. It trains on ``cuda:LOCAL_RANK`` when ``use_gpu`` is set
and CUDA is there (NCCL between processes, bf16 autocast), else on the CPU
(gloo). The config is one JSON-serialisable dict (see :class:`TrainJob` and
:func:`make_train_config`), so TorchDistributor can pickle it to the workers
and ``python -m training.train_fn --config-json FILE`` can read it.

Threads: TorchDistributor exports ``OMP_NUM_THREADS=1`` to every training
process, which would leave CPU training on one core per process. train_fn
therefore always sets ``torch.set_num_threads`` itself: ``torch_threads``
from the config, or (0) this host's usable cores divided by the processes on
this host (``LOCAL_WORLD_SIZE``). In cluster mode, where several Spark tasks
may share a host, set ``torch_threads`` to ``spark.task.cpus``.

Resume: with ``resume`` set, the run continues from ``<output_dir>/checkpoints/last.pt``
at the exact batch where it stopped: the data order of an epoch is a function
of (seed, epoch) only, the batches done in the epoch are skipped, and every
rank's RNG states are restored, so the result equals an uninterrupted run.
Steps after the last checkpoint are trained again.

Data: ``{"kind": "parquet", "files": [...]}`` (the training set's Delta snapshot files) or
``{"kind": "delta", "path": ..., "version": n}`` is read by the arrow loader
(training/staging.py): each rank stages its contiguous block of the split on the
device, in pinned host memory or streams it (``training.data_placement``). No
Spark is imported on this path.

The step has no per-step host sync on CUDA: losses, step counts and
non-finite flags are summed into device tensors and read at log intervals,
checkpoints and epoch ends; a non-finite loss or gradient skips the update
inside the fused AdamW kernel (its ``found_inf``), and the abort after
``max_nonfinite_steps`` skipped steps in a row is raised at the next read.
On the CPU the optimizer is AdamW's foreach variant and a skipped step is
decided on the host (a CPU has nothing to overlap). Evaluation runs on the
device and copies probabilities to the host once per split.

Epoch hook: ``train_fn(config, on_epoch_end=callable)`` calls
``on_epoch_end(epoch, metrics)`` on rank 0 after each epoch's validation and
checkpoint, with the epoch's history record (``train_loss``, ``val_loss``,
``val_macro_pr_auc``, ``val_pr_auc_<label>``, ...). Returning True stops the run
on every rank (``stop_reason`` "stopped_by_callback"; the best model so far is
saved with its thresholds, as after early stopping) — e.g. a hyper-parameter
search reporting intermediate values and pruning a trial. The callable runs in
the training process: under TorchDistributor in cluster mode it must pickle.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
import os
import random
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from tracelake import storage
from tracelake.config import TrainingSettings
from tracelake.errors import TracelakeError
from tracelake.logs import JobLogger, job_logger
from training import data as data_module
from training import metrics
from training.checkpoint import (
    BEST,
    LAST,
    CheckpointError,
    TrainState,
    atomic_torch_save,
    capture_rng,
    checkpoint_payload,
    load_checkpoint,
    restore_rng,
)
from training.data import VALIDATION, DataSource, FeatureSpec
from training.model import ModelConfig, PreprocessingStats, SequenceAnomalyModel

# Eager steps before a step is captured as a CUDA graph (cuDNN workspaces and optimizer state settle).
GRAPH_WARMUP_STEPS = 3

# Settings a resumed run may change: they do not alter what is computed.
RESUMABLE_CHANGES = {
    "log_every_steps",
    "checkpoint_every_steps",
    "torch_threads",
    "loader_workers",
    "eval_batch_size",
    "data_placement",
    "device_memory_fraction",
    "host_memory_fraction",
    "stream_reader_threads",
    "cuda_graph",
    "compile",
    "num_processes",
    "local_mode",
    "max_nonfinite_steps",
    "bootstrap_samples",
    "ci_level",
    "onnx_parity_tolerance",
    "onnx_opset",
    "onnx_exporter",
    "threshold_rule",
}


EpochCallback = Callable[[int, dict[str, Any]], bool]


class TrainingError(TracelakeError, RuntimeError):
    """Training cannot go on (diverged, misconfigured, or its checkpoints disagree with it)."""


class TrainJob(BaseModel):
    """The config dict of :func:`train_fn`."""

    model_config = ConfigDict(extra="forbid")

    training: TrainingSettings = Field(default_factory=TrainingSettings)
    feature_spec: dict[str, Any]
    # {"kind": "parquet", "path": ...} or {"kind": "petastorm", "urls": {split: [...]}, "rows": {...}}
    data: dict[str, Any]
    output_dir: str
    resume: bool = False
    # Stop (as if killed, without a final checkpoint) once this many steps are done; the schedule is
    # unchanged, so a later `resume` continues the same run. None: train to the end.
    max_steps: int | None = Field(None, ge=1)
    run_id: str = ""
    # The object store the lake is on (endpoint, addressing, region; never credentials), for
    # training processes on hosts that never loaded the settings.
    object_store: dict[str, Any] = Field(default_factory=dict)


def make_train_config(
    settings: TrainingSettings,
    feature_spec: FeatureSpec,
    data: dict[str, Any],
    output_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    max_steps: int | None = None,
    run_id: str = "",
) -> dict[str, Any]:
    """The JSON-serialisable config dict for :func:`train_fn`."""
    job = TrainJob(
        training=settings,
        feature_spec=feature_spec.to_dict(),
        data=dict(data),
        output_dir=str(output_dir),
        resume=resume,
        max_steps=max_steps,
        run_id=run_id,
        object_store=dataclasses.asdict(storage.current()),
    )
    return job.model_dump(mode="json")


@dataclass(frozen=True)
class DistEnv:
    rank: int
    local_rank: int
    world_size: int
    local_world_size: int

    @classmethod
    def from_environ(cls) -> DistEnv:
        def read(name: str, default: int) -> int:
            value = os.environ.get(name, "")
            try:
                return int(value) if value else default
            except ValueError as exc:
                raise TrainingError(f"environment variable {name}={value!r} must be an integer") from exc

        world = read("WORLD_SIZE", 1)
        return cls(read("RANK", 0), read("LOCAL_RANK", 0), world, read("LOCAL_WORLD_SIZE", world))

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def configure_threads(settings: TrainingSettings, env: DistEnv) -> int:
    threads = settings.torch_threads or max(1, _usable_cores() // max(1, env.local_world_size))
    torch.set_num_threads(threads)
    return threads


def select_device(settings: TrainingSettings, env: DistEnv, log: JobLogger) -> torch.device:
    if settings.use_gpu:
        if torch.cuda.is_available():
            if env.local_rank >= torch.cuda.device_count():
                raise TrainingError(
                    f"LOCAL_RANK {env.local_rank} has no GPU: this host has {torch.cuda.device_count()}; "
                    "start at most that many processes per host"
                )
            device = torch.device("cuda", env.local_rank)
            torch.cuda.set_device(device)
            return device
        log.warning("use_gpu is set but CUDA is not available; training on the CPU")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def scaled_learning_rate(settings: TrainingSettings, world_size: int) -> float:
    """The learning rate for ``world_size`` processes of ``batch_size`` rows (``training.lr_scaling``)."""
    reference = settings.lr_reference_batch or settings.batch_size
    ratio = settings.batch_size * max(1, world_size) / reference
    factor = {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[settings.lr_scaling]
    return settings.learning_rate * factor


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    settings: TrainingSettings,
    total_steps: int,
    max_lr: float | None = None,
) -> Any:
    warmup = int(settings.warmup_fraction * total_steps)
    if settings.lr_schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=max_lr or settings.learning_rate,
            total_steps=max(total_steps, 2),
            pct_start=max(settings.warmup_fraction, 1.0 / max(total_steps, 2)),
        )

    def factor(step: int) -> float:
        if settings.lr_schedule == "constant":
            return 1.0
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class _Collective:
    """The few collectives the loop needs, as no-ops in a world of one."""

    def __init__(self, env: DistEnv, device: torch.device):
        self.env, self.device = env, device
        self.active = env.world_size > 1

    def sum(self, values: list[float]) -> list[float]:
        if not self.active:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.tolist()

    def any_tensor(self, flag: torch.Tensor) -> torch.Tensor:
        """``flag`` (0-dim bool) OR-ed over ranks, as a device tensor (no host sync on NCCL)."""
        if not self.active:
            return flag
        value = flag.to(torch.int32).reshape(1)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return value.reshape(()) > 0

    def gather(self, obj: Any) -> list[Any]:
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.env.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (files rank 0 wrote need no shared filesystem)."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def sum_tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.active:
            moved = tensor.to(self.device)
            dist.all_reduce(moved, op=dist.ReduceOp.SUM)
            tensor = moved.cpu()
        return tensor


def _check_resumable(saved: dict[str, Any], job: TrainJob) -> None:
    if saved["feature_spec"] != job.feature_spec:
        raise CheckpointError(
            "the checkpoint was trained on other features; resume needs the same feature_spec"
        )
    now = job.training.model_dump(mode="json")
    changed = sorted(
        k for k, v in saved["training"].items() if now.get(k) != v and k not in RESUMABLE_CHANGES
    )
    if changed:
        raise CheckpointError(
            "cannot resume: these training settings differ from the checkpoint's: "
            + ", ".join(f"{k} {saved['training'][k]!r} -> {now.get(k)!r}" for k in changed)
            + "; use the original values or start a new run in a new output_dir"
        )


class Trainer:
    """One process's share of a training run. Use through :func:`train_fn`."""

    def __init__(
        self,
        job: TrainJob,
        env: DistEnv,
        device: torch.device,
        log: JobLogger,
        on_epoch_end: EpochCallback | None = None,
    ):
        self.job, self.env, self.device, self.log = job, env, device, log
        self.on_epoch_end = on_epoch_end
        self.settings = job.training
        self.spec = FeatureSpec.from_dict(job.feature_spec)
        self.comm = _Collective(env, device)
        self.autocast = device.type == "cuda" and self.settings.mixed_precision
        # output_dir may be on object storage: files are written locally and published there.
        self.folder = storage.WorkingFolder(job.output_dir)
        out = self.folder.local
        self.checkpoint_dir = out / "checkpoints"
        self.last_path, self.best_path = self.checkpoint_dir / LAST, self.checkpoint_dir / BEST
        self.model_path = out / "model.pt"

    # --- setup -----------------------------------------------------------------------------------

    def build(self) -> None:
        settings, env = self.settings, self.env
        seed_everything(settings.seed)  # same initial weights on every rank (DDP also broadcasts rank 0's)
        self.model = SequenceAnomalyModel(ModelConfig.from_settings(self.spec, settings))
        self.source: DataSource = data_module.make_source(
            self.job.data,
            self.spec,
            rank=env.rank,
            world_size=env.world_size,
            batch_size=settings.batch_size,
            seed=settings.seed,
            loader_workers=settings.loader_workers,
            shuffle_buffer_rows=settings.shuffle_buffer_rows,
            placement=settings.data_placement,
            device=self.device,
            device_memory_fraction=settings.device_memory_fraction,
            host_memory_fraction=settings.host_memory_fraction,
            reader_threads=settings.stream_reader_threads,
        )
        self.steps_per_epoch = self.source.steps_per_epoch()
        self.total_steps = settings.epochs * self.steps_per_epoch
        self.state = TrainState()
        self.resumed_from: int | None = None
        checkpoint = self._resume_checkpoint()
        if checkpoint is None:
            self._fit_preprocessing()
        else:
            self.model.load_state_dict(checkpoint["model"]["state_dict"])
        self.model.to(self.device)
        # Fused on CUDA: one kernel for all parameters, and a skipped step (found_inf) without a host sync.
        # A captured step reads the learning rate from a device tensor the scheduler fills in place.
        self.use_graph = (
            settings.cuda_graph
            and self.device.type == "cuda"
            and env.world_size == 1
            and settings.lr_schedule != "onecycle"  # onecycle also moves betas: not capturable
            and not settings.compile
        )
        variant: dict[str, Any] = {"fused": True} if self.device.type == "cuda" else {"foreach": True}
        self.learning_rate = scaled_learning_rate(settings, env.world_size)
        lr: Any = self.learning_rate
        if self.use_graph:
            variant["capturable"] = True
            lr = torch.tensor(self.learning_rate, dtype=torch.float32, device=self.device)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=lr, weight_decay=settings.weight_decay, **variant
        )
        self.scheduler = make_scheduler(self.optimizer, settings, self.total_steps, self.learning_rate)
        if checkpoint is not None:
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            if self.use_graph:  # a checkpoint written without graphs holds plain floats
                for group in self.optimizer.param_groups:
                    group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float32, device=self.device)
            self.scheduler.load_state_dict(checkpoint["scheduler"])
            if (
                self.use_graph
            ):  # as a fresh run has them: float32 on the device (the lr is computed from them)
                self.scheduler.base_lrs = [
                    torch.tensor(float(v), dtype=torch.float32, device=self.device)
                    if not isinstance(v, torch.Tensor)
                    else v.to(self.device)
                    for v in self.scheduler.base_lrs
                ]
            self.state = TrainState.from_dict(checkpoint["state"])
            self.resumed_from = self.state.global_step
            if checkpoint["world_size"] == env.world_size:
                restore_rng(checkpoint["rng"][env.rank], self.device)
            else:
                self.log.warning(
                    "resuming with another number of processes: data shards and random streams differ "
                    "from the interrupted run",
                    extra={"saved_world_size": checkpoint["world_size"]},
                )
                torch.manual_seed(settings.seed + 7919 * (env.rank + 1) + self.state.global_step)
        else:
            # Dropout streams differ per rank but are fixed by (seed, rank).
            torch.manual_seed(settings.seed + 7919 * (env.rank + 1))
        self.net: nn.Module = self.model
        if env.world_size > 1:
            self.net = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        if settings.compile:  # evaluation keeps the eager model: its batch sizes vary
            self.net = torch.compile(self.net)
        self.loss_fn = self.model.loss_fn()
        self.graph: torch.cuda.CUDAGraph | None = None
        self.graph_warmup_left = GRAPH_WARMUP_STEPS
        self.static_batch: data_module.Batch | None = None
        self.static_loss: torch.Tensor | None = None
        self.acc_loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.acc_ok_steps, self.acc_bad_total, self.acc_in_row, self.acc_max_in_row = (
            torch.zeros((), dtype=torch.int64, device=self.device) for _ in range(4)
        )
        self._reset_accumulators()

    def _reset_accumulators(self) -> None:
        """Device-side running sums of the epoch in progress, set from the loop state (exact on resume).

        Filled in place: a captured step holds their addresses.
        """
        state = self.state
        self.acc_loss_sum.fill_(state.epoch_loss_sum)
        self.acc_ok_steps.fill_(state.epoch_loss_steps)
        self.acc_bad_total.fill_(state.nonfinite_total)
        self.acc_in_row.fill_(state.nonfinite_in_row)
        self.acc_max_in_row.fill_(state.nonfinite_in_row)
        self._reported_bad = state.nonfinite_total

    def _fold(self) -> None:
        """Read the device-side sums into the loop state (one host sync); abort after too many bad steps."""
        state = self.state
        values = torch.stack(
            [
                self.acc_loss_sum,
                self.acc_ok_steps.double(),
                self.acc_bad_total.double(),
                self.acc_in_row.double(),
                self.acc_max_in_row.double(),
            ]
        ).tolist()
        state.epoch_loss_sum, state.epoch_loss_steps = values[0], int(values[1])
        state.nonfinite_total, state.nonfinite_in_row, max_in_row = (
            int(values[2]),
            int(values[3]),
            int(values[4]),
        )
        self.acc_max_in_row.copy_(self.acc_in_row)
        if state.nonfinite_total > self._reported_bad:
            self.log.warning(
                "non-finite loss or gradient: steps skipped",
                extra={
                    "global_step": state.global_step,
                    "epoch": state.epoch,
                    "skipped_since_last_report": state.nonfinite_total - self._reported_bad,
                    "in_a_row": state.nonfinite_in_row,
                    "total": state.nonfinite_total,
                },
            )
            self._reported_bad = state.nonfinite_total
        if max_in_row >= self.settings.max_nonfinite_steps:
            raise TrainingError(
                f"at least {self.settings.max_nonfinite_steps} steps in a row had a non-finite loss or gradient "
                f"(by global step {state.global_step}); lower learning_rate or grad_clip_norm, or check the "
                "training data for extreme values"
            )

    def _resume_checkpoint(self) -> dict[str, Any] | None:
        """Rank 0 reads the checkpoint to resume from (or finds the reason not to); every rank gets it."""
        outcome: tuple[str, Any] = ("ok", None)
        if self.env.is_main:
            try:
                outcome = ("ok", self._read_resume_checkpoint())
            except TracelakeError as exc:
                outcome = ("error", exc)
        status, value = self.comm.broadcast(outcome)
        if status == "error":
            raise value
        return value

    def _read_resume_checkpoint(self) -> dict[str, Any] | None:
        exists = self.folder.fetch(self.last_path)
        if not self.job.resume:
            if exists:
                raise CheckpointError(
                    f"{self.folder.uri_of(self.checkpoint_dir)!r} already holds checkpoints of an earlier run; "
                    "set resume to continue it, or choose a new output_dir"
                )
            return None
        if not exists:
            self.log.warning(
                "resume asked for but no checkpoint exists yet; starting from scratch",
                extra={"checkpoint": self.folder.uri_of(self.last_path)},
            )
            return None
        checkpoint = load_checkpoint(self.last_path)
        _check_resumable(checkpoint["config"], self.job)
        self.folder.fetch(self.best_path)  # the best model so far, chosen again at the end
        self.log.event(
            "resuming",
            checkpoint=self.folder.uri_of(self.last_path),
            global_step=checkpoint["state"]["global_step"],
            epoch=checkpoint["state"]["epoch"],
            batches_done=checkpoint["state"]["batches_done"],
        )
        return checkpoint

    def _fit_preprocessing(self) -> None:
        """Feature means/stds and label frequencies of the training split (all ranks' shares)."""
        started = time.perf_counter()
        stats = PreprocessingStats(self.spec)
        for batch in self.source.stats_batches(self.settings.eval_batch_size):
            stats.update(batch)
        stats.vector = stats.vector.cpu()
        stats.vector = self.comm.sum_tensor(stats.vector)
        if stats.n_rows == 0:
            raise TrainingError(
                "the training split has no rows; build a training set with a train split first"
            )
        self.model.set_preprocessing(stats, self.settings.pos_weight_cap)
        self.stats_s = time.perf_counter() - started
        self.log.event(
            "preprocessing fit on the training split",
            rows=stats.n_rows,
            pos_weight=[round(v, 3) for v in self.model.pos_weight.tolist()],
            duration_s=round(self.stats_s, 3),
        )

    # --- checkpoints -----------------------------------------------------------------------------

    def save_checkpoint(self, *paths: Path) -> None:
        """Collective: every rank hands its RNG states to rank 0, which writes ``paths``."""
        self._fold()
        rng = self.comm.gather(capture_rng(self.device))
        if not self.env.is_main:
            return
        payload = checkpoint_payload(
            model_payload=self.model.payload(),
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            state=self.state,
            rng_per_rank=rng,
            config=self.job.model_dump(mode="json"),
        )
        for path in paths:
            atomic_torch_save(payload, path)
            self.folder.publish(path)
        self.log.event(
            "checkpoint written",
            paths=[self.folder.uri_of(p) for p in paths],
            global_step=self.state.global_step,
        )

    # --- loop ------------------------------------------------------------------------------------

    def train_step(self, batch: data_module.Batch) -> torch.Tensor:
        """One optimizer step; returns the loss (a device tensor). Non-finite loss or gradient skips the update.

        Nothing here waits for the device on CUDA: the skip flag goes to the fused optimizer as
        ``found_inf`` and the running sums stay on the device (read by :meth:`_fold`). With
        ``cuda_graph`` (one process on CUDA), full batches run as one captured graph after
        ``GRAPH_WARMUP_STEPS`` eager steps; a short last batch runs eagerly.
        """
        batch = batch.to(self.device)
        if self.use_graph and batch.n_rows == self.settings.batch_size:
            loss = self._graphed_step(batch)
        else:
            loss = self._step(batch)
        if self.device.type == "cpu" and bool(self.skipped):
            with warnings.catch_warnings():  # the schedule advances by batch, stepped or not
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)`")
                self.scheduler.step()
        else:
            self.scheduler.step()
        return loss

    def _step(self, batch: data_module.Batch) -> torch.Tensor:
        """Forward, backward, clip, optimizer step and the running sums (what a graph captures)."""
        with torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=self.autocast, cache_enabled=not self.use_graph
        ):
            logits = self.net(batch.seq, batch.seq_len, batch.tab)
        loss = self.loss_fn(logits.float(), batch.labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # always: DDP's gradient all-reduce needs every rank to take part
        max_norm = self.settings.grad_clip_norm or float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm, foreach=True)
        loss = loss.detach()
        bad = self.comm.any_tensor(~(torch.isfinite(loss) & torch.isfinite(grad_norm)))
        if self.device.type == "cuda":
            self.optimizer.found_inf = bad.float()  # fused AdamW leaves parameters and state alone when set
            self.optimizer.step()
        elif bool(bad):
            self.optimizer.zero_grad(set_to_none=True)
        else:
            self.optimizer.step()
        self.skipped = bad
        ok = ~bad
        self.acc_loss_sum.add_(torch.where(ok, loss.double(), 0.0))
        self.acc_ok_steps.add_(ok)
        self.acc_bad_total.add_(bad)
        self.acc_in_row.copy_(torch.where(bad, self.acc_in_row + 1, 0))
        torch.maximum(self.acc_max_in_row, self.acc_in_row, out=self.acc_max_in_row)
        return loss

    def _graphed_step(self, batch: data_module.Batch) -> torch.Tensor:
        """The step through static input buffers: eager warm-up steps on a side stream, then capture and replays."""
        if self.static_batch is None:
            self.static_batch = data_module.Batch(*(torch.empty_like(t) for t in batch))
        for static, value in zip(self.static_batch, batch, strict=False):
            static.copy_(value)
        if self.graph is not None:
            self.graph.replay()
            return self.static_loss
        current = torch.cuda.current_stream(self.device)
        if self.graph_warmup_left > 0:  # real steps: cuDNN, autocast and the optimizer state settle
            side = torch.cuda.Stream(self.device)
            side.wait_stream(current)
            with torch.cuda.stream(side):
                loss = self._step(self.static_batch)
            current.wait_stream(side)
            self.graph_warmup_left -= 1
            return loss
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.static_loss = self._step(self.static_batch)
        except RuntimeError as exc:  # an op that cannot be captured: nothing ran, so train on eagerly
            self.log.warning(
                "the training step cannot be captured as a CUDA graph; training on without one",
                extra={"error": str(exc)[:500], "global_step": self.state.global_step},
            )
            self.use_graph = False
            torch.cuda.synchronize(self.device)
            return self._step(self.static_batch)
        self.graph = graph
        graph.replay()  # capturing ran nothing: this is the step
        self.log.event(
            "training step captured as a CUDA graph",
            global_step=self.state.global_step,
            batch_size=self.settings.batch_size,
        )
        return self.static_loss

    def evaluate(self, split: str) -> tuple[float, np.ndarray, np.ndarray]:
        """Mean loss over all ranks, and every rank's probabilities and labels (gathered).

        Batches are scored on the device; probabilities and labels reach the host once.
        """
        self.model.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        elements, probs, labels = 0, [], []
        loss_fn = self.model.loss_fn(reduction="sum")
        with torch.no_grad():
            for batch in self.source.eval_batches(split, self.settings.eval_batch_size):
                batch = batch.to(self.device)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                    logits = self.model(batch.seq, batch.seq_len, batch.tab).float()
                loss_sum += loss_fn(logits, batch.labels).double()
                elements += batch.labels.numel()
                probs.append(torch.sigmoid(logits))
                labels.append(batch.labels)
        self.model.train()
        empty = np.zeros((0, self.spec.n_labels), np.float32)
        mine_probs = torch.cat(probs).cpu().numpy() if probs else empty
        mine_labels = torch.cat(labels).float().cpu().numpy() if labels else empty
        loss_total, elements = self.comm.sum([float(loss_sum), float(elements)])
        parts = self.comm.gather((mine_probs, mine_labels))
        all_probs = np.concatenate([p for p, _ in parts])
        all_labels = np.concatenate([y for _, y in parts])
        if elements == 0:
            raise TrainingError(f"the {split} split has no rows; the training set needs one")
        return loss_total / elements, all_probs, all_labels

    def _improved(self, value: float) -> bool:
        best = self.state.best_metric
        if not math.isfinite(value):
            return False
        if best is None:
            return True
        delta = self.settings.early_stopping_min_delta
        if self.settings.early_stopping_metric == "val_loss":
            return value < best - delta
        return value > best + delta

    def run(self) -> dict[str, Any]:
        settings, state, env = self.settings, self.state, self.env
        started = time.perf_counter()
        eval_s = 0.0
        stop_reason = "completed"
        self.log.event(
            "training started",
            world_size=env.world_size,
            device=str(self.device),
            steps_per_epoch=self.steps_per_epoch,
            total_steps=self.total_steps,
            resumed_from=self.resumed_from,
            threads=torch.get_num_threads(),
            autocast_bf16=self.autocast,
        )
        self.model.train()
        while state.epoch < settings.epochs:
            epoch = state.epoch
            window_t, window_samples = time.perf_counter(), 0
            mark = time.perf_counter()  # train time counts data loading, not checkpoints or logging
            for batch in self.source.train_batches(epoch, skip=state.batches_done):
                loss = self.train_step(batch)
                state.global_step += 1
                state.batches_done += 1
                state.epoch_samples += batch.n_rows
                window_samples += batch.n_rows
                if state.global_step % settings.log_every_steps == 0:
                    self._fold()  # every rank: the abort on non-finite steps must happen everywhere
                state.epoch_train_s += time.perf_counter() - mark
                if env.is_main and state.global_step % settings.log_every_steps == 0:
                    elapsed = time.perf_counter() - window_t
                    done = state.global_step / max(1, self.total_steps)
                    self.log.event(
                        "train step",
                        epoch=epoch,
                        step=state.global_step,
                        batch=state.batches_done,
                        loss=round(float(loss), 6),
                        lr=float(self.scheduler.get_last_lr()[0]),
                        samples_per_s=round(window_samples * env.world_size / max(elapsed, 1e-9), 1),
                        progress=round(done, 4),
                        eta_s=round((time.perf_counter() - started) * (1 - done) / max(done, 1e-9), 1),
                    )
                    window_t, window_samples = time.perf_counter(), 0
                if state.global_step % settings.checkpoint_every_steps == 0:
                    self.save_checkpoint(self.last_path)
                if self.job.max_steps is not None and state.global_step >= self.job.max_steps:
                    stop_reason = "max_steps"
                    break
                mark = time.perf_counter()
            mark = time.perf_counter()
            self._fold()  # waits for the epoch's last steps: their time counts as training
            state.epoch_train_s += time.perf_counter() - mark
            if stop_reason == "max_steps":
                break
            eval_started = time.perf_counter()
            val_loss, val_probs, val_labels = self.evaluate(VALIDATION)
            per_label = metrics.per_label_pr_auc(val_labels, val_probs, self.spec.label_names)
            eval_s += time.perf_counter() - eval_started
            train_loss_sum, train_steps, samples = self.comm.sum(
                [state.epoch_loss_sum, float(state.epoch_loss_steps), float(state.epoch_samples)]
            )
            train_s = max(self.comm.gather(state.epoch_train_s))
            record = {
                "epoch": epoch,
                "train_loss": train_loss_sum / train_steps if train_steps else float("nan"),
                "val_loss": val_loss,
                "val_macro_pr_auc": metrics.macro(per_label),
                **{f"val_pr_auc_{name}": value for name, value in per_label.items()},
                "lr": float(self.scheduler.get_last_lr()[0]),
                "steps": state.global_step,
                "samples": int(samples),
                "train_s": train_s,
                "samples_per_s": samples / train_s if train_s > 0 else float("nan"),
                "eval_s": time.perf_counter() - eval_started,
            }
            state.history.append(record)
            metric = record[settings.early_stopping_metric]
            improved = self._improved(metric)
            if improved:
                state.best_metric, state.best_epoch, state.bad_epochs = metric, epoch, 0
            else:
                state.bad_epochs += 1
            state.epoch, state.batches_done = epoch + 1, 0
            state.epoch_loss_sum, state.epoch_loss_steps, state.epoch_samples, state.epoch_train_s = (
                0.0,
                0,
                0,
                0.0,
            )
            self._reset_accumulators()
            if env.is_main:
                self.log.event(
                    "epoch done",
                    **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in record.items()},
                    improved=improved,
                    bad_epochs=state.bad_epochs,
                    progress=round(state.global_step / max(1, self.total_steps), 4),
                )
            self.save_checkpoint(self.last_path, *([self.best_path] if improved else []))
            if self._callback_says_stop(epoch, record):
                stop_reason = "stopped_by_callback"
                self.log.event("stopped by the epoch callback", epoch=epoch, best_epoch=state.best_epoch)
                break
            if state.bad_epochs >= settings.early_stopping_patience:
                stop_reason = "early_stopping"
                self.log.event(
                    "early stopping",
                    epoch=epoch,
                    best_epoch=state.best_epoch,
                    metric=settings.early_stopping_metric,
                    best=state.best_metric,
                )
                break
        return self._finish(stop_reason, time.perf_counter() - started, eval_s)

    def _callback_says_stop(self, epoch: int, record: dict[str, Any]) -> bool:
        """Rank 0 asks ``on_epoch_end``; every rank gets its answer (or its exception)."""
        if self.on_epoch_end is None:
            return False
        outcome: tuple[str, Any] = ("ok", False)
        if self.env.is_main:
            try:
                outcome = ("ok", bool(self.on_epoch_end(epoch, dict(record))))
            except Exception as exc:
                outcome = ("error", exc)
        status, value = self.comm.broadcast(outcome)
        if status == "error":
            raise value
        return value

    def _finish(self, stop_reason: str, total_s: float, eval_s: float) -> dict[str, Any]:
        """Choose thresholds with the best model on validation; rank 0 writes the model file."""
        state = self.state
        thresholds: dict[str, float] | None = None
        best_val: dict[str, Any] | None = None
        if state.best_epoch is not None and stop_reason != "max_steps":
            best = load_checkpoint(self.best_path)["model"]["state_dict"] if self.env.is_main else None
            self.model.load_state_dict(self.comm.broadcast(best))
            _, val_probs, val_labels = self.evaluate(VALIDATION)
            thresholds = metrics.choose_thresholds(
                val_labels, val_probs, self.spec.label_names, self.settings.threshold_rule
            )
            best_val = {k: v for k, v in state.history[state.best_epoch].items() if k.startswith("val_")}
            if self.env.is_main:
                self.model.save(
                    self.model_path,
                    extra={
                        "thresholds": thresholds,
                        "best_epoch": state.best_epoch,
                        "validation": best_val,
                        "run_id": self.job.run_id,
                        "saved_at": dt.datetime.now(dt.UTC).isoformat(),
                    },
                )
                self.folder.publish(self.model_path)
        samples = sum(h["samples"] for h in state.history)
        train_s = sum(h["train_s"] for h in state.history)
        result = {
            "run_id": self.job.run_id,
            "stop_reason": stop_reason,
            "epochs_completed": len(state.history),
            "global_step": state.global_step,
            "steps_per_epoch": self.steps_per_epoch,
            "best_epoch": state.best_epoch,
            "best_metric_name": self.settings.early_stopping_metric,
            "best_metric": state.best_metric,
            "best_validation": best_val,
            "thresholds": thresholds,
            "best_checkpoint": self.folder.uri_of(self.best_path) if state.best_epoch is not None else None,
            "last_checkpoint": self.folder.uri_of(self.last_path) if self.last_path.is_file() else None,
            "model_path": self.folder.uri_of(self.model_path) if thresholds is not None else None,
            "history": state.history,
            "samples_per_s": samples / train_s if train_s > 0 else None,
            "samples_per_s_per_process": samples / train_s / self.env.world_size if train_s > 0 else None,
            "nonfinite_steps_skipped": state.nonfinite_total,
            "resumed_from_step": self.resumed_from,
            "world_size": self.env.world_size,
            "learning_rate": self.learning_rate,
            "device": str(self.device),
            "device_type": self.device.type,
            "data_placement": getattr(self.source, "placement", None),
            "cuda_graph_captured": self.graph is not None,
            "timing": {
                "total_s": total_s,
                "train_s": train_s,
                "eval_s": eval_s,
                "preprocessing_s": getattr(self, "stats_s", 0.0),
                "per_epoch_train_s": [h["train_s"] for h in state.history],
            },
        }
        self.log.event(
            "training finished",
            stop_reason=stop_reason,
            global_step=state.global_step,
            best_epoch=state.best_epoch,
            best_metric=state.best_metric,
        )
        return result


def train_fn(config: dict[str, Any], on_epoch_end: EpochCallback | None = None) -> dict[str, Any] | None:
    """Train the sequence model; returns the run's result on rank 0 (None on other ranks).

    See :class:`TrainJob` for the config keys and :meth:`Trainer._finish` for the result.
    ``on_epoch_end(epoch: int, metrics: dict) -> bool``, optional, is called on rank 0 after every
    epoch (validation done, checkpoint written) with that epoch's history record; returning True
    stops the run on all ranks (stop_reason "stopped_by_callback"), e.g. to prune a search trial.
    """
    job = TrainJob.model_validate(config)
    if job.object_store:
        storage.use(storage.ObjectStore(**job.object_store))
    env = DistEnv.from_environ()
    if not job.run_id:
        job.run_id = os.environ.get("TRACELAKE_RUN_ID") or os.environ.get("TORCHELASTIC_RUN_ID") or "train"
    log = job_logger("train", run_id=job.run_id, rank=env.rank)
    threads = configure_threads(job.training, env)
    device = select_device(job.training, env, log)
    owns_group = env.world_size > 1 and not dist.is_initialized()
    if owns_group:
        if device.type == "cuda":  # binding the device lets NCCL set up eagerly and barriers know their GPU
            dist.init_process_group(
                backend="nccl", rank=env.rank, world_size=env.world_size, device_id=device
            )
        else:
            dist.init_process_group(backend="gloo", rank=env.rank, world_size=env.world_size)
    log.event(
        "train_fn started",
        local_rank=env.local_rank,
        world_size=env.world_size,
        device=str(device),
        threads=threads,
        output_dir=job.output_dir,
        resume=job.resume,
    )
    trainer = Trainer(job, env, device, log, on_epoch_end)
    try:
        trainer.build()
        result = trainer.run()
        if env.is_main:
            storage.write_text(
                storage.join(job.output_dir, "result.json"), json.dumps(result, indent=2, default=str)
            )
        return result if env.is_main else None
    finally:
        if hasattr(trainer, "source"):
            trainer.source.close()
        trainer.folder.close()
        if owns_group:
            dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.train_fn",
        description="Run the train function (under torchrun for several processes).",
    )
    parser.add_argument(
        "--config-json",
        required=True,
        help="the config: a JSON file, or the JSON text itself (see training.train_fn.TrainJob)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from the last checkpoint in output_dir"
    )
    parser.add_argument("--result-json", help="rank 0 writes the result here too")
    args = parser.parse_args(argv)
    text = args.config_json
    try:
        config = json.loads(text if text.lstrip().startswith("{") else Path(text).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        print(f"train_fn: cannot read --config-json {text[:200]!r}: {exc}", file=sys.stderr)
        return 2
    if args.resume:
        config["resume"] = True
    try:
        result = train_fn(config)
    except TracelakeError as exc:
        print(f"train_fn: {exc}", file=sys.stderr)
        return 1
    if result is not None and args.result_json:
        Path(args.result_json).write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
