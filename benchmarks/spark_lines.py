"""The same benchmarks on the Spark 4.2 line (.venv) and the Spark 3.5 line (.venv-spark3.5), interleaved.

    flock /tmp/tracelake-bench.lock python3 benchmarks/spark_lines.py --rounds 2

Each round runs every case once per line, alternating the lines (3.5, 4.2, then 4.2,
3.5 in the next round), so a change in the machine's load touches both alike; the
figure of a line is its best run. Cases (each the project's own benchmark script with
a smaller size, so that both lines fit in one sitting):

- ingest: one landing day of ~100k events (`ingest_throughput.py --range-days 0`);
- as-of join: 2M events x 12k daily snapshots, noop sink (`asof_join_vs_tempo.py`,
  the project's join only; tempo is a separate benchmark);
- scoring: Spark + ONNX Runtime on 60k/120k/240k feature rows against one ORT
  process (`scoring_throughput.py --skip-range`).

Writes benchmarks/results/spark_lines.json and prints a Markdown table (the .md beside it
is written by hand from that output, with the machine's load).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
LINES = {"3.5": ROOT / ".venv-spark3.5" / "bin" / "python", "4.2": ROOT / ".venv" / "bin" / "python"}
WORK = Path("/tmp/tracelake-bench/spark_lines")


def _ingest(work: Path) -> tuple[list[str], Callable[[], dict[str, Any]]]:
    args = ["benchmarks/ingest_throughput.py", "--range-days", "0", "--repeats", "2", "--work-dir", str(work)]

    def read() -> dict[str, Any]:
        day = json.loads((work / "results.json").read_text())["one_day"]
        return {"ingest_events_per_s": max(day["events_per_s"]), "ingest_landing_rows": day["landing_rows"]}

    return args, read


def _asof(work: Path) -> tuple[list[str], Callable[[], dict[str, Any]]]:
    args = [
        "benchmarks/asof_join_vs_tempo.py",
        "--events",
        "2000000",
        "--tempo-events",
        "--repeats",
        "3",
        "--work-dir",
        str(work),
    ]

    def read() -> dict[str, Any]:
        rows = json.loads((work / "results_noop.json").read_text())
        return {f"asof_median_s[{r['method']}]": r["median_s"] for r in rows}

    return args, read


def _scoring(work: Path) -> tuple[list[str], Callable[[], dict[str, Any]]]:
    out = work / "scoring.json"
    args = [
        "benchmarks/scoring_throughput.py",
        "--rows",
        "60000",
        "--skip-range",
        "--repeats",
        "2",
        "--lake",
        str(work / "lake"),
        "--out",
        str(out),
    ]

    def read() -> dict[str, Any]:
        result = json.loads(out.read_text())
        figures = {
            f"scoring_rows_per_s[{size}]": round(case["rows_per_s"])
            for size, case in result["spark_ort"].items()
        }
        figures["scoring_one_ort_process_rows_per_s"] = round(result["ort_single"]["ort_only_rows_per_s"])
        figures["scoring_job_rows_per_s"] = round(result["job"]["rows_per_s"])
        return figures

    return args, read


CASES = {"ingest": _ingest, "asof": _asof, "scoring": _scoring}


def run_case(line: str, case: str, round_no: int) -> dict[str, Any]:
    work = WORK / f"{case}-spark{line}"
    args, read = CASES[case](work)
    started = time.perf_counter()
    done = subprocess.run([str(LINES[line]), *args], cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    (WORK / f"{case}-spark{line}-round{round_no}.log").write_text(done.stdout + "\n" + done.stderr)
    if done.returncode != 0:
        raise SystemExit(
            f"{case} on Spark {line} failed (exit {done.returncode}); see "
            f"{WORK / f'{case}-spark{line}-round{round_no}.log'}"
        )
    return {
        "line": line,
        "case": case,
        "round": round_no,
        "wall_s": round(seconds, 1),
        "load_average": os.getloadavg(),
        **read(),
    }


def best(runs: list[dict[str, Any]], key: str) -> float:
    values = [r[key] for r in runs if key in r]
    return min(values) if key.startswith("asof_median_s") else max(values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    args = parser.parse_args(argv)
    missing = [str(python) for python in LINES.values() if not python.exists()]
    if missing:
        raise SystemExit(f"missing environment(s) {missing}: run `make setup-all` first")
    WORK.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(
        ["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    runs: list[dict[str, Any]] = []
    for round_no in range(args.rounds):
        order = ["3.5", "4.2"] if round_no % 2 == 0 else ["4.2", "3.5"]
        for case in args.cases:
            for line in order:
                runs.append(run_case(line, case, round_no))
                print(json.dumps(runs[-1]), flush=True)
    keys = sorted({k for r in runs for k in r if "[" in k or k.endswith("_per_s")})
    table = {key: {line: best([r for r in runs if r["line"] == line], key) for line in LINES} for key in keys}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "spark_lines.json").write_text(
        json.dumps(
            {
                "command": " ".join(["python3", "benchmarks/spark_lines.py", *(argv or sys.argv[1:])]),
                "commit": commit,
                "cpus": os.cpu_count(),
                "runs": runs,
                "best": table,
            },
            indent=2,
        )
    )
    print("\n| figure | Spark 3.5 | Spark 4.2 | 4.2 / 3.5 |\n| --- | ---: | ---: | ---: |")
    for key, values in table.items():
        ratio = values["4.2"] / values["3.5"] if values["3.5"] else float("nan")
        print(f"| {key} | {values['3.5']} | {values['4.2']} | {ratio:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
