"""TorchDistributor overhead: the same train_fn and data through TorchDistributor and through plain torchrun.

Both launch ``training.train_fn.train_fn`` with the same config (2 CPU
processes, gloo, the same synthetic parquet set in the training set's layout,
the same seed and epochs):

- ``torchrun --standalone --nproc_per_node 2 -m training.train_fn``;
- ``TorchDistributor(num_processes=2, local_mode=True, use_gpu=False).run(train_fn, config)``
  from a local[2] Spark session (the session is started before the clock).

Reported per launcher: wall seconds of the launch call (process start-up,
rendezvous, training, evaluation, teardown) and train_fn's own training
seconds; the ratio TorchDistributor / torchrun of both. The two runs alternate
``--repeats`` times so that load from other users of the machine hits both.

    flock /tmp/tracelake-bench.lock .venv/bin/python benchmarks/distributor_overhead.py \
        --rows 40000 --epochs 2 --out benchmarks/results/distributor_overhead.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.petastorm_loader import LABELS, _uptime, bench_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=40_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)

    from spark_jobs.train import run_train_fn
    from tracelake.config import TrainingSettings
    from tracelake.spark import build_spark
    from training.data import synthetic_feature_spec, write_synthetic_dataset
    from training.train_fn import make_train_config

    spec = synthetic_feature_spec(n_seq=14, n_tab=50, seq_len=25, label_names=LABELS)
    work = Path(tempfile.mkdtemp(prefix="distributor_bench_"))
    data = write_synthetic_dataset(work / "data", spec, args.rows, seed=1)
    cores = os.cpu_count() or 1
    # Same threads per process under both launchers (TorchDistributor would otherwise set OMP_NUM_THREADS=1).
    threads = max(1, cores // args.nproc)
    settings = TrainingSettings(
        epochs=args.epochs,
        batch_size=args.batch_size,
        eval_batch_size=4096,
        seed=3,
        torch_threads=threads,
        checkpoint_every_steps=100_000,
        log_every_steps=1000,
        early_stopping_patience=args.epochs + 1,
    )

    def config(name: str) -> dict:
        return make_train_config(settings, spec, {"kind": "parquet", "path": data}, work / name, run_id=name)

    load_before = _uptime()
    spark = build_spark(bench_settings(work / "lake"), "bench-distributor-overhead")
    runs: dict[str, list[dict]] = {"torchrun": [], "torch_distributor": []}
    try:
        for repeat in range(args.repeats):
            name = f"torchrun-{repeat}"
            config_file = work / f"{name}.json"
            config_file.write_text(json.dumps(config(name)))
            result_file = work / f"{name}-result.json"
            started = time.perf_counter()
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "torch.distributed.run",
                    "--standalone",
                    "--nproc_per_node",
                    str(args.nproc),
                    "-m",
                    "training.train_fn",
                    "--config-json",
                    str(config_file),
                    "--result-json",
                    str(result_file),
                ],
                cwd=ROOT,
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            wall = time.perf_counter() - started
            result = json.loads(result_file.read_text())
            runs["torchrun"].append(
                {
                    "wall_s": round(wall, 2),
                    "train_s": round(result["timing"]["train_s"], 2),
                    "val_macro_pr_auc": round(result["history"][-1]["val_macro_pr_auc"], 5),
                }
            )
            print("torchrun", runs["torchrun"][-1], flush=True)

            name = f"distributor-{repeat}"
            started = time.perf_counter()
            result = run_train_fn(config(name), num_processes=args.nproc, local_mode=True, use_gpu=False)
            wall = time.perf_counter() - started
            runs["torch_distributor"].append(
                {
                    "wall_s": round(wall, 2),
                    "train_s": round(result["timing"]["train_s"], 2),
                    "val_macro_pr_auc": round(result["history"][-1]["val_macro_pr_auc"], 5),
                }
            )
            print("TorchDistributor", runs["torch_distributor"][-1], flush=True)
    finally:
        spark.stop()
    median = {
        k: {m: statistics.median(r[m] for r in v) for m in ("wall_s", "train_s")} for k, v in runs.items()
    }
    summary = {
        "benchmark": "distributor_overhead",
        "rows": args.rows,
        "train_rows": int(args.rows * 0.6),
        "epochs": args.epochs,
        "nproc": args.nproc,
        "threads_per_process": threads,
        "batch_size": args.batch_size,
        "runs": runs,
        "median": median,
        "ratio_wall": round(median["torch_distributor"]["wall_s"] / median["torchrun"]["wall_s"], 3),
        "ratio_train": round(median["torch_distributor"]["train_s"] / median["torchrun"]["train_s"], 3),
        "same_result": [
            a["val_macro_pr_auc"] == b["val_macro_pr_auc"]
            for a, b in zip(runs["torchrun"], runs["torch_distributor"], strict=False)
        ],
        "uptime_before": load_before,
        "uptime_after": _uptime(),
        "cores": cores,
    }
    print(json.dumps(summary, indent=1), flush=True)
    with open(args.out, "a") as handle:
        handle.write(json.dumps(summary) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
