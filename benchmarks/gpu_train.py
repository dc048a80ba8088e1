"""Throughput of the training function on one device: CPU or CUDA (bf16 autocast), 1 or N processes.

Runs the project's ``train_fn`` unchanged (plain ``torchrun`` for several
processes, as the accelerator machine has no Spark) on a synthetic training
set in the training set's layout, shaped like the real one (14 sequence
features x 25 steps, 50 tabular features, 5 labels), and writes one JSON line
per run with samples/s (total and per process), seconds per epoch and, on
CUDA, the GPU utilisation sampled by ``nvidia-smi`` every 200 ms.

    python benchmarks/gpu_train.py --rows 400000 --device cuda --nproc 1 --out results.jsonl
    python benchmarks/gpu_train.py --rows 400000 --device cuda --nproc 2 --out results.jsonl
    python benchmarks/gpu_train.py --rows 100000 --device cpu --nproc 1 --epochs 1 --out results.jsonl
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LABELS = ("epc_fake", "epc_dup", "loc_err", "evt_order_err", "jump")


def _gpu_sampler(path: Path) -> subprocess.Popen | None:
    try:
        return subprocess.Popen(
            [
                "nvidia-smi",
                "--query-gpu=index,utilization.gpu,memory.used",
                "--format=csv,noheader,nounits",
                "-lms",
                "200",
            ],
            stdout=path.open("w"),
            stderr=subprocess.DEVNULL,
        )
    except OSError:
        return None


def _utilisation(path: Path) -> dict[str, float]:
    per_gpu: dict[str, list[float]] = {}
    for line in path.read_text().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3 and parts[1].isdigit():
            per_gpu.setdefault(parts[0], []).append(float(parts[1]))
    out = {}
    for gpu, values in per_gpu.items():
        busy = [v for v in values if v > 0]  # samples while training (start-up and data writing are idle)
        out[f"gpu{gpu}_util_mean_busy"] = round(sum(busy) / len(busy), 1) if busy else 0.0
        out[f"gpu{gpu}_util_samples"] = len(values)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=400_000, help="rows of the synthetic set (60%% train)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    parser.add_argument("--nproc", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--data", help="parquet folder, written first if missing (default: a temp dir)")
    parser.add_argument("--out", required=True, help="append one JSON line per run here")
    args = parser.parse_args(argv)

    from tracelake.config import TrainingSettings
    from training.data import synthetic_feature_spec, write_synthetic_dataset
    from training.train_fn import make_train_config

    spec = synthetic_feature_spec(n_seq=14, n_tab=50, seq_len=25, label_names=LABELS)
    work = Path(tempfile.mkdtemp(prefix="gpu_train_"))
    data = args.data
    if not data or not Path(data).exists():
        started = time.perf_counter()
        data = write_synthetic_dataset(data or work / "data", spec, args.rows, seed=1, row_group_rows=65_536)
        print(f"wrote {args.rows} rows in {time.perf_counter() - started:.1f}s", flush=True)
    settings = TrainingSettings(
        epochs=args.epochs,
        batch_size=args.batch_size,
        eval_batch_size=8192,
        hidden_size=args.hidden_size,
        learning_rate=3e-3,
        use_gpu=args.device == "cuda",
        mixed_precision=True,
        seed=3,
        torch_threads=0,
        checkpoint_every_steps=10_000,
        log_every_steps=100,
        early_stopping_patience=args.epochs + 1,
    )
    config_path = work / "config.json"
    config_path.write_text(
        json.dumps(make_train_config(settings, spec, {"kind": "parquet", "path": data}, work / "run"))
    )
    result_path = work / "result.json"
    smi_path = (
        Path(os.environ.get("OUT", str(work))) / f"smi_{args.device}_{args.nproc}x{args.batch_size}.csv"
    )
    sampler = _gpu_sampler(smi_path) if args.device == "cuda" else None
    started = time.perf_counter()
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(args.nproc),
        "-m",
        "training.train_fn",
        "--config-json",
        str(config_path),
        "--result-json",
        str(result_path),
    ]
    if args.nproc == 1:
        command = [
            sys.executable,
            "-m",
            "training.train_fn",
            "--config-json",
            str(config_path),
            "--result-json",
            str(result_path),
        ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    completed = subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    if sampler is not None:
        sampler.terminate()
        sampler.wait()
    if completed.returncode != 0:
        print(f"train_fn failed with exit code {completed.returncode}", file=sys.stderr)
        return completed.returncode
    result = json.loads(result_path.read_text())
    record = {
        "device": args.device,
        "nproc": args.nproc,
        "rows": args.rows,
        "train_rows": int(args.rows * 0.6),
        "batch_size": args.batch_size,
        "hidden_size": args.hidden_size,
        "epochs": result["epochs_completed"],
        "result_device": result["device"],
        "world_size": result["world_size"],
        "samples_per_s": round(result["samples_per_s"], 1),
        "samples_per_s_per_process": round(result["samples_per_s_per_process"], 1),
        "per_epoch_train_s": [round(s, 2) for s in result["timing"]["per_epoch_train_s"]],
        "eval_s": round(result["timing"]["eval_s"], 2),
        "wall_s": round(wall, 1),
        "val_macro_pr_auc": [round(h["val_macro_pr_auc"], 4) for h in result["history"]],
        **(_utilisation(smi_path) if sampler is not None else {}),
    }
    if args.device == "cuda":
        with contextlib.suppress(OSError, IndexError):
            record["gpu_name"] = (
                subprocess.run(
                    ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                    capture_output=True,
                    text=True,
                )
                .stdout.strip()
                .splitlines()[0]
            )
    else:
        record["threads_per_process"] = max(1, (os.cpu_count() or 1) // args.nproc)
    print(json.dumps(record), flush=True)
    with open(args.out, "a") as handle:
        handle.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
