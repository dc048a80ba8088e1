"""The CPU training path before and after a change: two checkouts' ``train_fn`` on one training set, interleaved.

``--base`` is a git revision (default ``main``); it is checked out as a
detached git worktree in a temporary folder and removed afterwards. Each run
is a fresh process (``PYTHONPATH`` = the checkout under test) training the
same synthetic training set in the real layout (25 steps x 14 sequence
features, 50 tabular features, 5 labels) with the same settings, one thread;
runs alternate base, head, base, head, ... so that load drifts on a shared
machine hit both alike. Reported per side: training samples/s (median over
rounds; train time only, as train_fn measures it), wall seconds of the whole
call, and the validation macro PR-AUC after the same epochs (quality must
not drop); and head / base. Record ``uptime`` with the numbers.

    python benchmarks/train_ab.py --rows 10000 --rounds 2 --out benchmarks/results/train_ab_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LABELS = ("epc_fake", "epc_dup", "loc_err", "evt_order_err", "jump")

# Settings both sides know (the base may predate newer fields); the rest stay at each side's defaults.
SETTINGS = {
    "epochs": 2,
    "batch_size": 512,
    "hidden_size": 64,
    "num_layers": 1,
    "torch_threads": 1,
    "seed": 7,
    "log_every_steps": 1000,
    "checkpoint_every_steps": 10**6,
    "early_stopping_metric": "val_loss",
    "early_stopping_patience": 5,
}

RUN = """
import json, sys
from tracelake.config import TrainingSettings
from training.data import synthetic_feature_spec
from training.train_fn import make_train_config, train_fn
spec = synthetic_feature_spec(n_seq=14, n_tab=50, seq_len=25, label_names={labels!r})
config = make_train_config(TrainingSettings(**{settings!r}), spec, {{"kind": "parquet", "path": {data!r}}}, {out!r})
result = train_fn(config)
json.dump({{"samples_per_s": result["samples_per_s"], "val_macro_pr_auc": result["history"][-1]["val_macro_pr_auc"],
           "train_s": result["timing"]["train_s"], "total_s": result["timing"]["total_s"]}}, open({result!r}, "w"))
"""


def run_once(checkout: Path, data: str, work: Path, name: str) -> dict[str, float]:
    result = work / f"{name}.json"
    code = RUN.format(labels=LABELS, settings=SETTINGS, data=data, out=str(work / name), result=str(result))
    env = {**os.environ, "PYTHONPATH": str(checkout), "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=checkout, env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{done.stderr[-3000:]}")
    return {**json.loads(result.read_text()), "wall_s": time.perf_counter() - started}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", default="main", help="git revision to compare against")
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from training.data import synthetic_feature_spec, write_synthetic_dataset

    work = Path(tempfile.mkdtemp(prefix="train-ab-"))
    base = work / "base"
    rev = subprocess.run(
        ["git", "rev-parse", args.base], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(base), rev], cwd=ROOT, check=True, capture_output=True
    )
    try:
        spec = synthetic_feature_spec(n_seq=14, n_tab=50, seq_len=25, label_names=LABELS)
        data = write_synthetic_dataset(work / "data", spec, args.rows, seed=3, row_group_rows=4096)
        runs: dict[str, list[dict[str, float]]] = {"base": [], "head": []}
        for number in range(args.rounds):
            for side, checkout in (("base", base), ("head", ROOT)):
                runs[side].append(run_once(checkout, data, work, f"{side}-{number}"))
                print(side, number, json.dumps(runs[side][-1]), flush=True)
        summary = {
            side: {key: statistics.median(r[key] for r in rs) for key in rs[0]} for side, rs in runs.items()
        }
        record = {
            "base_rev": rev,
            "rows": args.rows,
            "rounds": args.rounds,
            "settings": SETTINGS,
            "uptime": subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip(),
            "runs": runs,
            "median": summary,
            "head_over_base_samples_per_s": summary["head"]["samples_per_s"]
            / summary["base"]["samples_per_s"],
            "head_over_base_wall": summary["head"]["wall_s"] / summary["base"]["wall_s"],
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(record, indent=2))
        print(
            json.dumps(
                {k: record[k] for k in ("uptime", "head_over_base_samples_per_s", "head_over_base_wall")}
            )
        )
    finally:
        subprocess.run(
            ["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, capture_output=True, check=False
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
