"""Model quality: the LSTM against the MLlib baseline on the test split of a training set built from generated data.

Runs the training job (``spark_jobs.train.execute``: both models, the LSTM
through petastorm + TorchDistributor) on ``training/sets/<name>`` of a lake
built by ``tracelake demo`` and writes the per-label test figures (ROC-AUC,
PR-AUC, F1 at the validation-chosen threshold, bootstrap CIs) with the command
and the machine load to a markdown file. These are quality figures, not
timings: the wall time it prints is only indicative (run it under
``flock /tmp/tracelake-bench.lock`` when others measure time).

    .venv/bin/tracelake demo --lake-root /tmp/tl-train-lake --master 'local[2]' --set spark.driver_memory=3g
    .venv/bin/python benchmarks/model_quality.py \
        --lake-root /tmp/tl-train-lake --training-set demo --out benchmarks/results/model_quality.md
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.petastorm_loader import _uptime  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lake-root", required=True)
    parser.add_argument("--training-set", default="demo")
    parser.add_argument("--num-processes", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra TrainingSettings field, e.g. --set early_stopping_patience=3")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    from spark_jobs import train
    from tracelake.config import load_settings, parse_override
    from tracelake.runs import job_run

    settings = load_settings(None, [f"lake_root={args.lake_root}", "spark.master=local[2]", "spark.driver_memory=3g"])
    extra = dict(parse_override(item) for item in args.overrides)
    load_before = _uptime()
    started = time.perf_counter()
    with job_run("train", settings=settings) as run:
        summary = train.execute(run, args.training_set, models="lstm,baseline", num_processes=args.num_processes,
                                local_mode=True, use_gpu=False, epochs=args.epochs, batch_size=args.batch_size,
                                learning_rate=args.learning_rate, hidden_size=args.hidden_size, **extra)
    wall = time.perf_counter() - started
    lstm, base = summary["models"]["lstm"], summary["models"]["baseline"]
    labels = list(lstm["test_pr_auc"])
    command = " ".join([".venv/bin/python benchmarks/model_quality.py", *sys.argv[1:]])
    lines = [
        "# Model quality: LSTM vs MLlib baseline on the test split",
        "",
        f"Training set `{args.training_set}` version {summary['training_set_version']} of the lake at "
        f"`{args.lake_root}`, built by `tracelake demo` (generator defaults except 10,000 EPCs, 21 days, "
        "anomaly rate 0.02 per type; the last 7 days left out for label maturity; temporal split).",
        "",
        f"Command: `{command}`",
        "",
        f"LSTM: {args.num_processes} CPU processes through petastorm + TorchDistributor (local mode), up to "
        f"{args.epochs} epochs (stopped: {lstm['stop_reason']}, {len(lstm['history'])} epochs), batch "
        f"{args.batch_size}, lr {args.learning_rate}, hidden {args.hidden_size}{', ' + str(extra) if extra else ''}; "
        f"rows {lstm['rows']}; ONNX parity max |diff| {lstm['onnx_max_abs_diff']:.2e}. Baseline: MLlib logistic "
        "regression per label (class-weighted) on the tabular features. Thresholds chosen on validation (max F1).",
        "",
        f"Macro PR-AUC on test: **LSTM {lstm['test_macro']['pr_auc']:.4f}**, baseline "
        f"{base['test_macro']['pr_auc']:.4f} "
        f"({'LSTM better' if lstm['test_macro']['pr_auc'] > base['test_macro']['pr_auc'] else 'baseline better'}).",
        "",
        "| label | LSTM PR-AUC | baseline PR-AUC |",
        "| --- | --- | --- |",
        *(f"| {label} | {lstm['test_pr_auc'][label]:.4f} | {base['test_pr_auc'][label]:.4f} |" for label in labels),
        f"| macro | {lstm['test_macro']['pr_auc']:.4f} | {base['test_macro']['pr_auc']:.4f} |",
        "",
        "All metrics, value [95% bootstrap CI] (printed by the training job and logged to MLflow as "
        "`comparison/test_metrics.md`):",
        "",
        summary["comparison"],
        "",
        f"Wall time {wall:.0f} s (both models, evaluation, export, MLflow). Registered: LSTM v{lstm['version']}, "
        f"baseline v{base['version']} (alias challenger). Load before: `{load_before}`; after: `{_uptime()}`.",
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    print(json.dumps({k: v for k, v in summary.items() if k != "comparison"}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
