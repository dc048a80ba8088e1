"""`tracelake <command> --help` wall time for every command, this checkout vs a reference checkout.

Each figure is the wall time of one subprocess (`tracelake <command> --help`, the venv's console
script, stdout discarded), best of ``--repeats``. The same script and interpreter time both
checkouts, chosen by PYTHONPATH: "after" is this repository, "before" is ``--before`` (default
/work/main, which still imports the entrypoint to parse). The two alternate within each round, so
load falls on both alike. Every run must exit 0 and print the command's usage.

Run (serialized with other benchmarks):
    flock /tmp/tracelake-bench.lock .venv/bin/python benchmarks/cli_help.py

Results and the command used: benchmarks/results/cli_help.md (+ .json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tracelake.cli import COMMANDS  # standard library only

TARGET_S = 1.0


def git_commit(root: Path) -> str:
    done = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() or "unknown"


def memory_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def cli_command() -> list[str]:
    """The console script next to this interpreter (what users type), else ``python -m tracelake.cli``."""
    script = Path(sys.executable).parent / "tracelake"
    return [str(script)] if script.exists() else [sys.executable, "-m", "tracelake.cli"]


def time_help(cli: list[str], root: Path, command: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(root)}
    env.pop("TRACELAKE_CONFIG", None)
    started = time.perf_counter()
    done = subprocess.run(
        [*cli, command, "--help"], cwd=root, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0 or not done.stdout.startswith("usage: "):
        raise SystemExit(f"{command} --help under {root} failed ({done.returncode}): {done.stderr[-1000:]}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per command and checkout (best is kept)")
    parser.add_argument(
        "--before", default="/work/main", help="reference checkout timed as 'before' ('' to skip it)"
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cli_help"))
    parser.add_argument("--note", default="", help="a sentence on the conditions, written into the results")
    args = parser.parse_args(argv)

    cli = cli_command()
    sides = {"after": ROOT}
    if args.before:
        sides = {"before": Path(args.before).resolve(), **sides}
    commits = {side: git_commit(root) for side, root in sides.items()}
    load_start = os.getloadavg()
    machine = (
        f"{platform.node()}, {os.cpu_count()} cpus (nproc {len(os.sched_getaffinity(0))}), "
        f"{memory_gib():.1f} GiB memory, Python {platform.python_version()}"
    )
    print(f"# cli --help: {machine}; commits {commits}; load average at start {load_start}", flush=True)
    runs: dict[str, dict[str, list[float]]] = {c: {side: [] for side in sides} for c in COMMANDS}
    for round_ in range(args.repeats):
        for command in COMMANDS:
            order = list(sides) if round_ % 2 == 0 else list(reversed(sides))
            for side in order:
                runs[command][side].append(round(time_help(cli, sides[side], command), 3))
            print(json.dumps({"round": round_, "command": command, **runs[command]}), flush=True)
    load_end = os.getloadavg()

    rows = []
    for command in COMMANDS:
        best = {side: min(times) for side, times in runs[command].items()}
        rows.append({"command": command, "best_s": best, "runs_s": runs[command]})
    record = {
        "command_line": shlex.join(
            [".venv/bin/python", "benchmarks/cli_help.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "note": args.note,
        "timed": shlex.join([*cli, "<command>", "--help"]),
        "commits": commits,
        "checkouts": {side: str(root) for side, root in sides.items()},
        "machine": machine,
        "nproc": len(os.sched_getaffinity(0)),
        "memory_gib": round(memory_gib(), 1),
        "load_average_start": load_start,
        "load_average_end": load_end,
        "repeats": args.repeats,
        "target_s": TARGET_S,
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(record))
    print(markdown(record))
    return 0


def markdown(record: dict) -> str:
    sides = list(record["checkouts"])
    slowest = max(r["best_s"]["after"] for r in record["rows"])
    misses = [r["command"] for r in record["rows"] if r["best_s"]["after"] >= record["target_s"]]
    lines = [
        "# `tracelake <command> --help` wall time",
        "",
        f"Command (commit {record['commits']['after']}; {record['machine']}):",
        "",
        f"    {record['command_line']}",
        "",
        f"Timed: `{record['timed']}`, one subprocess per run, best of {record['repeats']} (all runs in "
        f"the .json). Load average {tuple(round(x, 2) for x in record['load_average_start'])} at the start, "
        f"{tuple(round(x, 2) for x in record['load_average_end'])} at the end.",
        "",
    ]
    if record["note"]:
        lines += [record["note"], ""]
    if "before" in sides:
        lines += [
            f"before: {record['checkouts']['before']} at commit {record['commits']['before']} (the CLI "
            "imports the command's entrypoint, and with it pyspark, pandas, pydantic, ..., to parse); "
            f"after: this checkout (parsers in tracelake/arguments.py, entrypoint imported only to run). "
            "Same interpreter and venv, the checkout chosen by PYTHONPATH, the two alternating.",
            "",
        ]
    header = (
        "| command | "
        + " | ".join(f"{s} s" for s in sides)
        + (" | after / before |" if len(sides) > 1 else " |")
    )
    lines += [header, "| --- |" + " ---: |" * (len(sides) + (1 if len(sides) > 1 else 0))]
    for r in record["rows"]:
        cells = [f"{r['best_s'][s]:.2f}" for s in sides]
        if len(sides) > 1:
            cells.append(f"{r['best_s']['after'] / r['best_s']['before']:.2f}")
        lines.append(f"| `{r['command']}` | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Target: every command under {record['target_s']:.0f} s. Slowest after: {slowest:.2f} s; "
        + (f"over the target: {', '.join(misses)}." if misses else "every command is under it."),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
