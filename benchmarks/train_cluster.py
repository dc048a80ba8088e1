"""Cluster proof: TorchDistributor in cluster mode (``local_mode=False``) on a Spark standalone cluster on loopback.

Starts a master and two workers (1 core each) with ``tracelake.standalone``
(what ``tracelake cluster start`` runs), connects a session to
``spark://127.0.0.1:<port>``, materialises a synthetic training set (training
set layout, 14 x 25 sequence + 50 tabular features, 5 labels) with petastorm's
``make_spark_converter`` (training/spark_data.py) on the cluster's executors,
and runs ``TorchDistributor(num_processes=2, local_mode=False,
use_gpu=False).run(train_fn, config)``: the two training processes are Spark
barrier tasks on the two workers (gloo over loopback), reading the converter's
files sharded by rank. The cluster is stopped afterwards, also on error.

Recorded: the executors registered, which worker's executor log holds
each rank's "train_fn started" line, world size, wall and training
seconds, samples/s, the validation metric, and the same run in local mode for
comparison.

    flock /tmp/tracelake-bench.lock .venv/bin/python benchmarks/train_cluster.py \
        --out benchmarks/results/train_cluster.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--port", type=int, default=7177)
    parser.add_argument("--webui-port", type=int, default=8180)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)

    from spark_jobs.train import run_train_fn
    from tracelake import standalone
    from tracelake.config import TrainingSettings
    from tracelake.spark import build_spark
    from training.data import synthetic_feature_spec, write_synthetic_dataset
    from training.spark_data import cache_url, petastorm_data_config, spark_converters
    from training.train_fn import make_train_config

    spec = synthetic_feature_spec(n_seq=14, n_tab=50, seq_len=25, label_names=LABELS)
    work = Path(tempfile.mkdtemp(prefix="train_cluster_"))
    data = write_synthetic_dataset(work / "data", spec, args.rows, seed=1)
    training = TrainingSettings(
        epochs=args.epochs,
        batch_size=args.batch_size,
        eval_batch_size=4096,
        seed=3,
        torch_threads=1,
        checkpoint_every_steps=100_000,
        log_every_steps=50,
        early_stopping_patience=args.epochs + 1,
    )
    load_before = _uptime()
    state_dir = work / "cluster"
    record: dict = {
        "benchmark": "train_cluster",
        "rows": args.rows,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "uptime_before": load_before,
    }
    started = time.perf_counter()
    state = standalone.start(
        state_dir,
        workers=2,
        cores_per_worker=1,
        memory_per_worker="1500m",
        port=args.port,
        webui_port=args.webui_port,
        timeout_s=120,
    )
    record["cluster_start_s"] = round(time.perf_counter() - started, 1)
    record["master"] = state.master_url
    spark = None
    try:
        settings = bench_settings(work / "lake")
        settings = settings.model_copy(
            update={
                "spark": settings.spark.model_copy(
                    update={
                        "master": state.master_url,
                        "driver_memory": "1g",
                        "conf": {
                            **settings.spark.conf,
                            "spark.executor.memory": "1g",
                            "spark.executor.cores": "1",
                            "spark.task.cpus": "1",
                            "spark.executorEnv.PYTHONPATH": str(ROOT),
                        },
                    }
                )
            }
        )
        spark = build_spark(settings, "bench-train-cluster")
        sc = spark.sparkContext
        deadline = time.monotonic() + 60
        while sc._jsc.sc().getExecutorIds().size() < 2 and time.monotonic() < deadline:
            time.sleep(1)
        ids = sc._jsc.sc().getExecutorIds()
        record["executors"] = sorted(str(ids.apply(i)) for i in range(ids.size()))
        df = spark.read.parquet(data)
        with spark_converters(
            df, spec, cache_dir_url=cache_url(settings.lake_root, "cluster"), splits=("train", "validation")
        ) as converted:
            data_config = petastorm_data_config(converted)
            for mode, local_mode in (("cluster", False), ("local", True)):
                config = make_train_config(
                    training, spec, data_config, work / f"run-{mode}", run_id=f"cluster-{mode}"
                )
                started = time.perf_counter()
                result = run_train_fn(config, num_processes=2, local_mode=local_mode, use_gpu=False)
                wall = time.perf_counter() - started
                record[mode] = {
                    "local_mode": local_mode,
                    "world_size": result["world_size"],
                    "device": result["device"],
                    "wall_s": round(wall, 1),
                    "train_s": round(result["timing"]["train_s"], 1),
                    "samples_per_s": round(result["samples_per_s"], 1),
                    "val_macro_pr_auc": [round(h["val_macro_pr_auc"], 4) for h in result["history"]],
                    "stop_reason": result["stop_reason"],
                }
                print(mode, json.dumps(record[mode]), flush=True)
        # Where the barrier tasks of the cluster-mode run went: the executors' logs name train_fn's ranks.
        ranks = {}
        for log in sorted(state_dir.glob("worker-*/app-*/*/std*")):
            text = log.read_text(errors="replace")
            for rank in ("0", "1"):
                if '"msg": "train_fn started"' in text and f'"rank": {rank},' in text:
                    ranks.setdefault(f"rank {rank}", []).append(str(log.relative_to(state_dir)).split("/")[0])
        record["rank_placement"] = ranks
    finally:
        if spark is not None:
            spark.stop()
        stopped = standalone.stop(state_dir)
        record["cluster_stopped"] = stopped
    record["uptime_after"] = _uptime()
    print(json.dumps(record, indent=1), flush=True)
    with open(args.out, "a") as handle:
        handle.write(json.dumps(record) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
