"""Model quality: the three detectors (rules, MLlib baseline, LSTM) on the same mature test window.

Builds a lake from the default (realistic) generator -- generate, ingest,
features, a training set whose test window ends ``labels.max_delay_days``
before the cut-off, so every label of it has arrived -- then trains and
evaluates the three detectors with ``spark_jobs.train.execute`` and writes
the per-label test PR-AUC (EPC-grouped bootstrap CIs), the mature test
positives per label, and the targets of the model-quality work to a markdown
file with the command, data size, seed and machine load. Quality figures,
not timings: the wall time is only indicative.

    .venv/bin/python benchmarks/model_quality.py --lake-root /tmp/tl-quality \\
        --epcs 30000 --days 45 --seed 7 --out benchmarks/results/model_quality.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.petastorm_loader import _uptime

TARGET_PER_LABEL, TARGET_MACRO, TARGET_MARGIN, MIN_POSITIVES = 0.90, 0.95, 0.10, 100
SET_NAME = "quality"


def build_lake(args: argparse.Namespace, settings: Any) -> tuple[Any, dt.date, dt.date, dt.datetime]:
    """generate -> ingest -> features over the whole window; returns (pipeline, set start, set end, as-of)."""
    from spark_jobs import build_features, generate, ingest
    from tracelake.demo import Pipeline

    pipeline = Pipeline(settings)
    start = dt.date.fromisoformat(settings.generator.start_date)
    end = start + dt.timedelta(days=args.days - 1)
    if not args.reuse_lake:
        pipeline.step("generate", start, end, generate.execute)
        pipeline.step("ingest", start, end, ingest.execute)
        pipeline.step("features", start, end, build_features.execute)
    as_of = dt.datetime.combine(end + dt.timedelta(days=1), dt.time.min, tzinfo=dt.UTC)
    set_end = end - dt.timedelta(days=settings.label_max_delay_days)
    return pipeline, start, set_end, as_of


def table(summary: dict[str, Any]) -> list[str]:
    names = [n for n in ("rules", "baseline", "lstm") if n in summary["models"]]
    labels = list(summary["models"][names[0]]["test_pr_auc"])
    rows = [
        "| label | mature test positives | " + " | ".join(f"{n} PR-AUC" for n in names) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in names) + " |",
    ]
    for label in labels:
        rows.append(
            f"| {label} | {summary['test_positives'][label]} | "
            + " | ".join(f"{summary['models'][n]['test_pr_auc'][label]:.4f}" for n in names)
            + " |"
        )
    rows.append(
        "| macro | | "
        + " | ".join(f"{summary['models'][n]['test_macro']['pr_auc']:.4f}" for n in names)
        + " |"
    )
    return rows


def verdicts(summary: dict[str, Any]) -> list[str]:
    models, positives = summary["models"], summary["test_positives"]
    out = []
    few = {label: n for label, n in positives.items() if n < MIN_POSITIVES}
    out.append(
        f"- ≥ {MIN_POSITIVES} mature test positives per label: "
        + ("met" if not few else f"**missed** for {few}")
    )
    if "lstm" in models:
        lstm = models["lstm"]
        low = {label: round(v, 4) for label, v in lstm["test_pr_auc"].items() if not v >= TARGET_PER_LABEL}
        out.append(
            f"- LSTM PR-AUC ≥ {TARGET_PER_LABEL} on every label: "
            + ("met" if not low else f"**missed** on {low}")
        )
        macro = lstm["test_macro"]["pr_auc"]
        out.append(
            f"- LSTM macro PR-AUC ≥ {TARGET_MACRO}: {'met' if macro >= TARGET_MACRO else '**missed**'} "
            f"({macro:.4f}, {macro - TARGET_MACRO:+.4f})"
        )
        if "rules" in models:
            rules = models["rules"]["test_macro"]["pr_auc"]
            out.append(
                f"- LSTM macro ≥ rules macro + {TARGET_MARGIN}: "
                f"{'met' if macro >= rules + TARGET_MARGIN else '**missed**'} "
                f"(LSTM {macro:.4f} − rules {rules:.4f} = {macro - rules:+.4f})"
            )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lake-root", required=True)
    parser.add_argument("--epcs", type=int, default=30_000)
    parser.add_argument("--days", type=int, default=45)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--models", default="rules,baseline,lstm")
    parser.add_argument("--num-processes", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument(
        "--reuse-lake", action="store_true", help="the lake is already built: only rebuild the set and train"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting, e.g. --set training.hidden_size=128 or --set generator.rates.jump=0.02",
    )
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    from spark_jobs import build_training_set, train
    from tracelake.config import load_settings

    settings = load_settings(
        None,
        [
            f"lake_root={args.lake_root}",
            "spark.master=local[2]",
            "spark.driver_memory=4g",
            f"generator.epcs={args.epcs}",
            f"generator.days={args.days}",
            f"generator.seed={args.seed}",
            *args.overrides,
        ],
    )
    load_before = _uptime()
    started = time.perf_counter()
    pipeline, set_start, set_end, as_of = build_lake(args, settings)
    built = pipeline.step(
        "training-set", set_start, set_end, lambda run: build_training_set.execute(run, as_of, SET_NAME)
    )
    summary = pipeline.step(
        "train",
        set_start,
        set_end,
        lambda run: train.execute(
            run,
            SET_NAME,
            models=args.models,
            num_processes=args.num_processes,
            local_mode=True,
            use_gpu=False,
            epochs=args.epochs,
            batch_size=args.batch_size,
        ),
    )
    wall = time.perf_counter() - started
    command = " ".join([".venv/bin/python benchmarks/model_quality.py", *sys.argv[1:]])
    splits = built["splits"]
    lines = [
        "# Model quality: rules vs MLlib baseline vs LSTM on one mature test window",
        "",
        f"Command: `{command}`",
        "",
        f"Data: the default generator profile, {args.epcs:,} EPCs over {args.days} days from "
        f"{settings.generator.start_date}, seed {args.seed}; training set `{SET_NAME}` = days {set_start}..{set_end} "
        f"cut at {as_of.isoformat()} (labels.max_delay_days = {settings.label_max_delay_days}: every label of the "
        f"set had arrived), split {built['split']}; events per split "
        f"{ {k: v['events'] for k, v in splits.items()} }.",
        "",
        *table(summary),
        "",
        "Targets:",
        "",
        *verdicts(summary),
        "",
        "All metrics, value [95% bootstrap CI, whole EPCs resampled] as the training job prints them:",
        "",
        summary["comparison"],
        "",
        f"Rules chosen on train + validation: {summary['models'].get('rules', {}).get('variants')}.",
        "",
        f"Wall time {wall:.0f} s (lake, set, three detectors). Load before: `{load_before}`; after: `{_uptime()}`.",
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    print(json.dumps({k: v for k, v in summary.items() if k != "comparison"}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
