"""The project's training step against a bare reference on one GPU, on the same synthetic data.

Reference: a cuDNN LSTM + MLP head in the training set's shapes (25 steps x 14
sequence features, 50 tabular features, 5 labels), the training split already
on the GPU, random batches indexed on the device, fused AdamW, bf16 autocast:
what the hardware does with no pipeline around it. Project: ``train_fn``
unchanged, reading the same rows from Parquet through the arrow loader
(``data_placement`` auto), eager and with the step captured as a CUDA graph.

Per cell (hidden x layers, batch size): samples/s, ms per step, peak GPU
memory, GPU busy % (NVML utilisation sampled every 50 ms while the cell runs;
coarse: the driver averages over 1/6..1 s windows, and the project's window
includes its per-epoch validation and checkpoint), and the ratio project /
reference. The project's rate is taken over its epochs after the first
(which holds cuDNN set-up and the graph capture). Also: the epoch time over
10M rows of the configured production model (default TrainingSettings) and
the loader alone (rows/s staged to the device, through the host path, and
streamed). Results go to ``--out`` as JSON after every cell, so a run cut
short keeps what it measured; ``--budget-s`` stops starting new cells.

    python benchmarks/gpu_reference.py --rows 160000 --out results/gpu_reference.json --budget-s 90
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np
import torch
from torch import nn

LABELS = ("epc_fake", "epc_dup", "loc_err", "evt_order_err", "jump")
MODELS = {"64x1": (64, 1), "128x2": (128, 2)}


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Utilisation:
    """NVML GPU utilisation sampled in a thread (empty when NVML is missing)."""

    def __init__(self, period_s: float = 0.05):
        self.period_s, self.samples, self._stop = period_s, [], threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle, self._nvml = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device()), pynvml
        except Exception:
            self._nvml = None

    def __enter__(self) -> Utilisation:
        if self._nvml is not None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu)
            time.sleep(self.period_s)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._nvml is not None:
            self._thread.join()

    @property
    def mean(self) -> float | None:
        return round(float(np.mean(self.samples)), 1) if self.samples else None


class Reference(nn.Module):
    def __init__(self, n_seq: int, n_tab: int, n_labels: int, hidden: int, layers: int):
        super().__init__()
        self.rnn = nn.LSTM(n_seq, hidden, num_layers=layers, batch_first=True)
        self.tab = nn.Sequential(nn.Linear(n_tab, 64), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(hidden + 64, 64), nn.ReLU(), nn.Linear(64, n_labels))

    def forward(self, seq: torch.Tensor, seq_len: torch.Tensor, tab: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(seq)
        index = (seq_len - 1).view(-1, 1, 1).expand(-1, 1, out.shape[2])
        last = out.gather(1, index).squeeze(1)
        return self.head(torch.cat([last, self.tab(tab).to(last.dtype)], dim=1))


def reference_cell(train: Any, hidden: int, layers: int, batch: int, steps: int) -> dict[str, Any]:
    device = torch.device("cuda")
    seq, seq_len, tab, labels = (torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in train)
    torch.manual_seed(0)
    model = Reference(seq.shape[2], tab.shape[1], labels.shape[1], hidden, layers).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    loss_fn = nn.BCEWithLogitsLoss()

    def step() -> None:
        index = torch.randint(0, seq.shape[0], (batch,), device=device)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(seq[index], seq_len[index], tab[index])
        loss = loss_fn(logits.float(), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(10):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with Utilisation() as busy:
        start.record()
        for _ in range(steps):
            step()
        end.record()
        torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1000
    return {
        "samples_per_s": batch * steps / seconds,
        "ms_per_step": 1000 * seconds / steps,
        "steps": steps,
        "gpu_busy_pct": busy.mean,
        "peak_gpu_mem_mb": torch.cuda.max_memory_allocated() / 2**20,
    }


def project_cell(
    path: str,
    spec: Any,
    hidden: int,
    layers: int,
    batch: int,
    graph: bool,
    work: Path,
    min_steps: int = 240,
    **extra: Any,
) -> dict[str, Any]:
    from tracelake.config import TrainingSettings
    from training.train_fn import make_train_config, train_fn

    train_rows = int(extra.pop("train_rows"))
    steps_per_epoch = -(-train_rows // batch)
    epochs = max(3, -(-min_steps // steps_per_epoch) + 1)
    settings = TrainingSettings(
        hidden_size=hidden,
        num_layers=layers,
        batch_size=batch,
        epochs=epochs,
        use_gpu=True,
        cuda_graph=graph,
        log_every_steps=10_000,
        checkpoint_every_steps=10**9,
        early_stopping_patience=epochs + 1,
        eval_batch_size=16384,
        torch_threads=8,
        stream_reader_threads=8,
        **extra,
    )
    torch.cuda.reset_peak_memory_stats()
    out = work / f"run-{hidden}x{layers}-{batch}-{'graph' if graph else 'eager'}-{time.monotonic_ns()}"
    with Utilisation() as busy:
        result = train_fn(make_train_config(settings, spec, {"kind": "parquet", "path": path}, out))
    later = result["history"][1:]
    samples = sum(h["samples"] for h in later)
    seconds = sum(h["train_s"] for h in later)
    steps = sum(steps_per_epoch for _ in later)
    return {
        "samples_per_s": samples / seconds,
        "ms_per_step": 1000 * seconds / steps,
        "steps": steps,
        "epochs": epochs,
        "gpu_busy_pct": busy.mean,
        "peak_gpu_mem_mb": torch.cuda.max_memory_allocated() / 2**20,
        "cuda_graph_captured": result["cuda_graph_captured"],
        "data_placement": result["data_placement"],
        "val_macro_pr_auc_last": result["history"][-1]["val_macro_pr_auc"],
    }


def loader_cells(path: str, spec: Any, device: str = "cuda") -> dict[str, Any]:
    from training.data import TRAIN
    from training.staging import StagedSource

    results = {}
    for placement in ("device", "host", "stream"):
        source = StagedSource(
            path,
            spec,
            placement=placement,
            device=device,
            rank=0,
            world_size=1,
            batch_size=4096,
            seed=0,
            reader_threads=4,
            shuffle_window_rows=65536,
        )
        started = time.perf_counter()
        rows = sum(b.n_rows for b in source.train_batches(0))
        _sync()
        first = time.perf_counter() - started
        started = time.perf_counter()
        rows_again = sum(b.n_rows for b in source.train_batches(1))
        _sync()
        again = time.perf_counter() - started
        results[placement] = {
            "rows": rows,
            "first_epoch_rows_per_s": rows / first,
            "later_epoch_rows_per_s": rows_again / again,
            "note": "first epoch includes reading and staging the Parquet files",
        }
        source.close()
    results["split_rows"] = StagedSource(path, spec, rank=0, world_size=1, batch_size=1, seed=0).split_rows(
        TRAIN
    )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=160_000)
    parser.add_argument("--batches", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument(
        "--budget-s", type=float, default=90.0, help="start no new cell after this many seconds"
    )
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_reference: needs a CUDA device", file=sys.stderr)
        return 2
    from tracelake.config import TrainingSettings
    from training.data import (
        TRAIN,
        read_split,
        synthetic_feature_spec,
        write_synthetic_dataset,
    )

    began = time.perf_counter()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "rows": args.rows,
        "shapes": "25 steps x 14 seq features, 50 tabular, 5 labels",
        "reference": {},
        "project_eager": {},
        "project_graph": {},
        "ratio": {},
    }
    spec = synthetic_feature_spec(n_seq=14, n_tab=50, seq_len=25, label_names=LABELS)
    work = Path(tempfile.mkdtemp(prefix="gpu-reference-"))
    path = write_synthetic_dataset(
        work / "data", spec, args.rows, seed=0, fractions=(0.8, 0.1), row_group_rows=32768
    )
    train = read_split(path, TRAIN, spec)
    record["data_written_s"] = round(time.perf_counter() - began, 1)

    def save() -> None:
        out.write_text(json.dumps(record, indent=2))

    for name in args.models:
        hidden, layers = MODELS[name]
        for batch in args.batches:
            if time.perf_counter() - began > args.budget_s:
                record.setdefault("skipped_for_time", []).append(f"{name}/{batch}")
                continue
            key = f"{name}/{batch}"
            steps = 100 if batch <= 4096 else 40
            record["reference"][key] = reference_cell(train, hidden, layers, batch, steps)
            for graph in (False, True):
                label = "project_graph" if graph else "project_eager"
                record[label][key] = project_cell(
                    path, spec, hidden, layers, batch, graph, work, train_rows=train.n_rows
                )
            best = max(
                record["project_eager"][key]["samples_per_s"], record["project_graph"][key]["samples_per_s"]
            )
            record["ratio"][key] = {
                "eager": record["project_eager"][key]["samples_per_s"]
                / record["reference"][key]["samples_per_s"],
                "graph": record["project_graph"][key]["samples_per_s"]
                / record["reference"][key]["samples_per_s"],
                "best": best / record["reference"][key]["samples_per_s"],
            }
            save()
            print(key, json.dumps(record["ratio"][key]), flush=True)
    if time.perf_counter() - began < args.budget_s:
        production = TrainingSettings()
        cell = project_cell(
            path,
            spec,
            production.hidden_size,
            production.num_layers,
            production.batch_size,
            True,
            work,
            min_steps=400,
            train_rows=train.n_rows,
        )
        cell["epoch_10m_rows_s"] = 10_000_000 / cell["samples_per_s"]
        cell["settings"] = {
            "hidden_size": production.hidden_size,
            "num_layers": production.num_layers,
            "batch_size": production.batch_size,
        }
        record["production_model"] = cell
        save()
    if time.perf_counter() - began < args.budget_s + 15:
        record["loader"] = loader_cells(path, spec)
        save()
    record["total_s"] = round(time.perf_counter() - began, 1)
    save()
    print(json.dumps({k: record[k] for k in ("ratio", "total_s")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
