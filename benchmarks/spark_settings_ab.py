"""A/B of Spark settings or code on the pipeline's stages: each stage run as A and as B, alternately.

    flock /tmp/tracelake-bench.lock .venv/bin/python benchmarks/spark_settings_ab.py \
        --lake-root /tmp/pls21/lake-10000x21 --days 21 \
        --a 'spark.conf={"spark.databricks.delta.snapshotPartitions": "50"}' \
        --b 'spark.conf={"spark.databricks.delta.snapshotPartitions": "2"}'

(The recorded run compared Delta's default, 50, with 2 before 2 became the local-mode default; since
then "defaults" on side A means one task per local core, so name 50 explicitly to repeat it.)

The lake is one that ``benchmarks/pipeline_scale.py`` built (every stage ran, a champion is
registered). Each stage is the same ``tracelake`` subprocess as there (``--set`` overrides
appended), run with A (``--a``, default: no override) and B (``--b``) back to back, the order
alternating from stage to stage and round to round so that a drift of the machine's load hits
both sides alike. Stages rewrite their own days, which is what a rerun of a day does anyway.
Results: benchmarks/results/spark_settings_ab.json (keyed by the B settings, appended) and .md.

Code instead of settings: ``--a-code DIR`` / ``--b-code DIR`` run that side's stages from another
checkout of this repository (e.g. a ``git worktree`` of the commit before a change), with the same
virtual environment; the JSON then also records each side's checkout and commit:

    git worktree add /tmp/before <commit>
    flock /tmp/tracelake-bench.lock .venv/bin/python benchmarks/spark_settings_ab.py \
        --lake-root /tmp/pl1m/lake-100000x30 --days 30 --a-code /tmp/before --b-code . \
        --stages features,monitor
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pipeline_scale  # the stage definitions and the sampled runner

RESULTS = pipeline_scale.RESULTS
# Stages that only rewrite their own days of an existing lake (generation and training left out).
STAGES = ("ingest", "validate_bronze", "validate_silver", "features", "validate_features", "score", "monitor")


def run_pair(
    stage: pipeline_scale.Stage,
    lake: Path,
    sides: dict[str, list[str]],
    first: str,
    logs: Path,
    code: dict[str, Path | None],
) -> dict:
    """One run per side, ``first`` side first; wall and CPU seconds of each."""
    out: dict[str, Any] = {}
    for side in (first, "b" if first == "a" else "a"):
        record = pipeline_scale.run_stage(stage, lake, sides[side], logs, code[side])
        (logs / f"{stage.name}-{side}.err").write_text((logs / f"{stage.name}.err").read_text())
        if record["rc"]:
            raise SystemExit(f"{stage.name} ({side}) failed: {record['error_tail']}")
        out[side] = {
            "wall_s": record["wall_s"],
            "cpu_s": max(record["cpu_s_rusage"], record["cpu_s_sampled"]),
            "startup_s": record["startup_s"],
            "load": record["load_before"][0],
        }
    return out


def lake_events(lake: Path) -> int | None:
    """Silver rows after the ingest stage pipeline_scale.py ran on ``lake`` (its stages.json)."""
    path = lake.parent / f"{lake.name}-logs" / "stages.json"
    return pipeline_scale.silver_rows(json.loads(path.read_text())) if path.exists() else None


def summarise(
    rows: list[dict[str, Any]],
    wanted: list[str],
    args: argparse.Namespace,
    lake: Path,
    argv: list[str] | None,
) -> dict[str, Any]:
    """Per stage: the summed seconds of each side over the rounds and B / A; the same for all stages."""
    per_stage = {}
    for name in wanted:
        runs = [x for x in rows if x["stage"] == name]
        a = sum(x["a"]["wall_s"] for x in runs)
        b = sum(x["b"]["wall_s"] for x in runs)
        per_stage[name] = {"a_s": round(a, 2), "b_s": round(b, 2), "b_over_a": round(b / a, 3)}
    total_a = sum(v["a_s"] for v in per_stage.values())
    total_b = sum(v["b_s"] for v in per_stage.values())
    return {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": "flock /tmp/tracelake-bench.lock .venv/bin/python benchmarks/spark_settings_ab.py "
        + shlex.join(argv if argv is not None else sys.argv[1:]),
        "commit": pipeline_scale.commit(),
        "machine": pipeline_scale.machine(),
        "lake": str(lake),
        "events": lake_events(lake),
        "a": args.a,
        "b": args.b,
        **{
            f"{side}_code": {"checkout": str(path), "commit": pipeline_scale.commit(path)}
            for side, path in (("a", args.a_code), ("b", args.b_code))
            if path is not None
        },
        "runs": rows,
        "per_stage": per_stage,
        "total_b_over_a": round(total_b / total_a, 3),
    }


def _side(record: dict[str, Any], side: str) -> str:
    """A side's settings, and its code when it ran another checkout."""
    code = record.get(f"{side}_code")
    return " ".join([*record[side], *([f"code at {code['commit']}"] if code else [])])


def write_results(record: dict[str, Any], key: str) -> None:
    """Append ``record`` under ``key`` to the JSON and rewrite the Markdown from every record."""
    path = RESULTS / "spark_settings_ab.json"
    stored = json.loads(path.read_text()) if path.exists() else {}
    stored[key] = record
    path.write_text(json.dumps(stored, indent=2) + "\n")
    lines = ["# Spark settings A/B on the pipeline's stages", ""]
    for name, rec in stored.items():
        lines += [
            f"## B = `{name}` (A = `{_side(rec, 'a') or 'defaults'}`)",
            "",
            f"`{rec['command']}` at {rec['when']}, commit {rec['commit']}; {rec['machine']}; lake {rec['lake']} "
            f"({rec['events']} events).",
            "",
            "| stage | A s | B s | B / A | which ran first | load average at each run (A/B) |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for stage, v in rec["per_stage"].items():
            runs = [x for x in rec["runs"] if x["stage"] == stage]
            loads = ", ".join(f"{x['a']['load']}/{x['b']['load']}" for x in runs)
            first = ", ".join(x["first"].upper() for x in runs)
            lines.append(f"| {stage} | {v['a_s']} | {v['b_s']} | {v['b_over_a']} | {first} | {loads} |")
        lines += ["", f"All stages: B / A = {rec['total_b_over_a']}.", *rec.get("notes", []), ""]
    (RESULTS / "spark_settings_ab.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lake-root", required=True, help="a lake pipeline_scale.py built and kept")
    parser.add_argument("--days", type=int, required=True, help="the --days that lake was built with")
    parser.add_argument(
        "--a", action="append", default=[], metavar="KEY=VALUE", help="side A's --set (default none)"
    )
    parser.add_argument("--b", action="append", default=[], metavar="KEY=VALUE", help="side B's --set")
    parser.add_argument("--a-code", type=Path, help="a checkout whose code side A runs (default: this one)")
    parser.add_argument("--b-code", type=Path, help="a checkout whose code side B runs (default: this one)")
    parser.add_argument("--stages", default=",".join(STAGES), help="comma list, in pipeline order")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args(argv)
    if not (args.b or args.a_code or args.b_code):
        parser.error("give side B's settings (--b) or a checkout for a side (--a-code, --b-code)")
    code = {"a": args.a_code and args.a_code.resolve(), "b": args.b_code and args.b_code.resolve()}
    lake = Path(args.lake_root)
    logs = lake.parent / f"{lake.name}-ab-logs"
    logs.mkdir(exist_ok=True)
    wanted = args.stages.split(",")
    by_name = {s.name: s for s in pipeline_scale.stages(1, args.days, 1)}
    sides = {"a": args.a, "b": args.b}
    rows = []
    for r in range(args.rounds):
        for i, name in enumerate(wanted):
            first = "a" if (i + r) % 2 == 0 else "b"
            print(f"round {r + 1} {name} ({first} first) ...", flush=True)
            pair = run_pair(by_name[name], lake, sides, first, logs, code)
            rows.append({"round": r + 1, "stage": name, "first": first, **pair})
            print(f"  a {pair['a']['wall_s']} s  b {pair['b']['wall_s']} s", flush=True)
            # Kept after every pair: a run stopped or failed later still has what it measured.
            (logs / "ab_runs.json").write_text(json.dumps(rows, indent=2))
    record = summarise(rows, wanted, args, lake, argv)
    write_results(record, _side(record, "b"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
