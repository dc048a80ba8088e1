"""Full-state training checkpoints: atomic writes, RNG capture, resume.

A checkpoint holds everything the loop needs to continue as if never
stopped: model (config + weights), optimizer, scheduler, AMP scaler (None:
bf16 needs none), loop position (epoch, batches done in it, global step),
early-stopping state, the epoch history, every rank's RNG states (python,
numpy, torch, cuda) and the run's config. Files are written to a temporary
name in the same folder, fsynced and renamed over the old one, so a run
killed mid-write leaves the previous checkpoint intact. Everything in them
loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import random
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tracelake.errors import TracelakeError

CHECKPOINT_FORMAT = "tracelake-train-checkpoint/1"
LAST, BEST = "last.pt", "best.pt"


class CheckpointError(TracelakeError, RuntimeError):
    """A checkpoint is missing, unreadable or belongs to a different run."""


@dataclass
class TrainState:
    """Where the loop is, and what it has learnt about its own progress."""

    epoch: int = 0  # the epoch in progress (== epochs when done)
    batches_done: int = 0  # batches of `epoch` already trained
    global_step: int = 0  # optimizer steps attempted (skipped non-finite ones included)
    best_metric: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0  # epochs since the best one
    nonfinite_in_row: int = 0
    nonfinite_total: int = 0
    # Running sums of the epoch in progress (so a mid-epoch resume reports the same epoch loss).
    epoch_loss_sum: float = 0.0
    epoch_loss_steps: int = 0
    epoch_samples: int = 0
    epoch_train_s: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        return cls(**data)


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` to a temporary file beside ``path``, fsync, then rename over ``path``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def load_payload(path: str | os.PathLike[str]) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise CheckpointError(f"checkpoint or model file {str(file)!r} does not exist")
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise CheckpointError(
            f"cannot read {str(file)!r} ({exc}); it is not a tracelake checkpoint or model file"
        ) from exc


def capture_rng(device: torch.device | None = None) -> dict[str, Any]:
    """This process's RNG states (numpy's as a tensor, so that weights_only loading accepts it)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": None,
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, Any], device: torch.device | None = None) -> None:
    random.setstate(_tuples(state["python"]))
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["kind"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if device is not None and device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def _tuples(value: Any) -> Any:
    """random.setstate wants tuples all the way down; pickling round trips may give lists."""
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def checkpoint_payload(
    *,
    model_payload: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: TrainState,
    rng_per_rank: list[dict[str, Any]],
    config: dict[str, Any],
    scaler: Any = None,
) -> dict[str, Any]:
    return {
        "format": CHECKPOINT_FORMAT,
        "model": model_payload,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "state": state.to_dict(),
        "rng": rng_per_rank,
        "world_size": len(rng_per_rank),
        "config": config,
    }


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    payload = load_payload(path)
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{str(path)!r} is not a training checkpoint (format {payload.get('format')!r})"
        )
    return payload
