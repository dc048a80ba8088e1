#!/usr/bin/env bash
# Builds the benchmark-only environment for benchmarks/asof_join_family.py's
# Spark 4.3 side: a separate venv with pyspark 4.3.0 (its native ASOF JOIN),
# pyarrow and pandas, from PyPI. Not used by the project itself; no Delta.
#
#   bash benchmarks/asof_env.sh            # creates .venv-bench-spark43
#   BENCH_VENV=/path bash benchmarks/asof_env.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${BENCH_VENV:-.venv-bench-spark43}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
"$PY" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip
"$VENV/bin/pip" install --quiet -r benchmarks/requirements-asof-spark43.txt
"$VENV/bin/python" -c "import pyspark; print('pyspark', pyspark.__version__)"
