"""`tracelake <command> --help` and bad arguments are answered before any heavy import (issue 21).

Every command's parser lives in tracelake/arguments.py; the CLI parses with it before it imports the
command's entrypoint, and each entrypoint's ``parse_args`` is the same parser.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tracelake import arguments
from tracelake.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[2]
# What makes a command slow to start; none of it may load to answer --help or a usage error.
HEAVY = (
    "pyspark",
    "pandas",
    "pyarrow",
    "numpy",
    "pydantic",
    "torch",
    "mlflow",
    "great_expectations",
    "onnxruntime",
    "delta",
    "deltalake",
    "datafusion",
    "optuna",
)


def _cli(*argv: str) -> tuple[subprocess.CompletedProcess[str], set[str], list[str]]:
    """Run ``python -X importtime -m tracelake.cli *argv``: the result, the top-level packages it
    imported, and its stderr without the import-time lines."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "100"}
    env.pop("TRACELAKE_CONFIG", None)
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "tracelake.cli", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    imported, other = set(), []
    for line in done.stderr.splitlines():
        if line.startswith("import time:"):
            name = line.rsplit("|", 1)[-1].strip()
            if name != "package":  # the header line
                imported.add(name.split(".")[0])
        else:
            other.append(line)
    return done, imported, other


def test_every_command_has_a_parser():
    assert set(arguments.PARSERS) == set(COMMANDS)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_prints_without_heavy_imports(command):
    done, imported, stderr = _cli(command, "--help")
    assert done.returncode == 0, "\n".join(stderr)[-2000:]
    assert done.stdout.startswith(f"usage: tracelake {command} "), done.stdout[:500]
    assert "options:" in done.stdout and "--help" in done.stdout
    assert "tracelake" in imported  # the -X importtime output was read
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))
    assert stderr == []


@pytest.mark.parametrize("command", ["ingest", "features", "score", "monitor", "training-set"])
def test_a_missing_start_date_is_one_usage_error_without_heavy_imports(command):
    extra = ["--as-of", "2025-07-09", "--name", "s"] if command == "training-set" else []
    done, imported, stderr = _cli(command, *extra)
    assert done.returncode == 2 and done.stdout == ""
    errors = [line for line in stderr if "error:" in line]
    assert errors == [f"tracelake {command}: error: the following arguments are required: --start-date"], (
        stderr
    )
    assert stderr[0].startswith(f"usage: tracelake {command} ") and stderr[-1] == errors[0]
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["tune", "--training-set", "s", "--trials", "0"], "--trials 0: give at least 1"),
        (["query"], "pass a SQL statement (or --tables)"),
        (["promote", "--metric", "accuracy"], "argument --metric: invalid choice: 'accuracy'"),
        (["generate", "--format", "xml"], "argument --format: invalid choice: 'xml'"),
        (["ingest", "--start-date", "2025-07-01", "--nope"], "unrecognized arguments: --nope"),
    ],
)
def test_bad_arguments_are_rejected_before_heavy_imports(argv, message):
    done, imported, stderr = _cli(*argv)
    errors = [line for line in stderr if "error:" in line]
    assert done.returncode == 2 and len(errors) == 1 and message in errors[0], stderr
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))


def test_the_parsers_offer_what_the_jobs_accept():
    """The choices arguments.py states without importing the jobs are the jobs' own."""
    from spark_jobs import generate, promote
    from tracelake import config, query, standalone
    from tracelake.model_registry import DETECTORS
    from tracelake.tables import domain

    assert arguments.GENERATE_FORMATS == generate.FORMATS
    assert arguments.GENERATOR_PROFILES == config.GENERATOR_PROFILES
    assert tuple(sorted(promote.METRIC_KEYS)) == arguments.PROMOTION_METRICS
    assert arguments.QUERY_ENGINES == query.ENGINES
    assert (arguments.CLUSTER_PORT, arguments.CLUSTER_WEBUI_PORT) == (
        standalone.DEFAULT_PORT,
        standalone.DEFAULT_WEBUI_PORT,
    )
    assert arguments.anomaly_types() == domain().anomaly_types
    assert promote.MODELS == DETECTORS
    rates = {f"rate_{a}" for a in domain().anomaly_types}
    assert rates <= set(vars(arguments.parse("generate", [])))


def test_entrypoints_parse_with_the_same_parser():
    from batch_scoring import monitor, score
    from spark_jobs import build_features, build_training_set, ingest, rollback, validate
    from tracelake import query, runs, standalone

    dated = ["--start-date", "2025-07-01", "--end-date", "2025-07-03", "--set", "a=1", "--lake-root", "x"]
    for command, module, argv in [
        ("ingest", ingest, dated),
        ("features", build_features, dated),
        ("score", score, [*dated, "--model-uri", "models:/m@champion"]),
        ("monitor", monitor, dated),
        ("validate", validate, [*dated, "--table", "silver_labels"]),
        ("training-set", build_training_set, [*dated, "--as-of", "2025-07-09", "--name", "s"]),
        ("rollback", rollback, ["--models", "lstm", "--to-version", "3"]),
        ("query", query, ["SELECT 1", "--engine", "spark"]),
        ("cluster", standalone, ["start", "--workers", "3"]),
    ]:
        assert module.parse_args(argv) == arguments.parse(command, argv), command
    assert runs.add_common_args is arguments.add_common_args
    with pytest.raises(SystemExit) as exit_:
        query.parse_args([])
    assert exit_.value.code == 2
    with pytest.raises(KeyError, match="no argument parser for command 'nope'"):
        arguments.parser("nope")
