"""`tracelake <step> …`: one subcommand per pipeline step.

Each subcommand runs the very `main()` of the step's spark-submit entrypoint,
so `tracelake ingest --start-date D` and
`spark-submit spark_jobs/ingest.py --start-date D` are the same code.
Entrypoints are imported only when their command runs: ``--help`` and argument errors are answered
from :mod:`tracelake.arguments` (every command's parser, light) without them. Standard library only
at import time: the DAG files load this module from its file to find each step's entrypoint
(tracelake/pipeline.py).
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

# command -> (entrypoint module, one-line help). Later stages add theirs here.
COMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("spark_jobs.generate", "simulate the supply network and write landing files"),
    "ingest": ("spark_jobs.ingest", "landing files -> bronze (+ quarantine) -> silver"),
    "validate": ("spark_jobs.validate", "validate a table's partitions with Great Expectations"),
    "features": ("spark_jobs.build_features", "snapshot features and point-in-time event features"),
    "training-set": (
        "spark_jobs.build_training_set",
        "event features + labels known as of T, temporal split",
    ),
    "train": (
        "spark_jobs.train",
        "train the rules, MLlib baseline and LSTM (TorchDistributor), compare, register",
    ),
    "tune": ("spark_jobs.tune", "hyper-parameter search for the sequence model (Optuna, resumable)"),
    "promote": ("spark_jobs.promote", "move the champion alias to the challenger if it is better"),
    "rollback": ("spark_jobs.rollback", "move the champion alias back to the previous champion"),
    "score": (
        "batch_scoring.score",
        "score event features with the champion ONNX model -> gold/scored_events",
    ),
    "monitor": (
        "batch_scoring.monitor",
        "drift (PSI) of model inputs and scores vs the training set -> monitoring/drift",
    ),
    "query": (
        "tracelake.query",
        "read-only Spark SQL over the lake's tables (scored_events, scan_events, ...)",
    ),
    "cluster": ("tracelake.standalone", "start/stop a Spark standalone master and workers on loopback"),
    "demo": ("tracelake.demo", "run the whole pipeline on the embedded default"),
}


def entrypoint_module(command: str) -> ModuleType:
    """The entrypoint module of ``command`` (its ``main``, and the ``execute`` the demo runs in-process)."""
    return importlib.import_module(COMMANDS[command][0])


def entrypoint_file(command: str) -> str:
    """The spark-submit file of ``command``, relative to the project root: ``spark_jobs/ingest.py``."""
    return COMMANDS[command][0].replace(".", "/") + ".py"


def _usage() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return (
        "usage: tracelake <command> [options]\n\ncommands:\n"
        + "\n".join(lines)
        + ("\n\n`tracelake <command> --help` shows a command's options.")
    )


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"tracelake: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    # `--help` and bad arguments are answered here, from the light parsers, before the entrypoint
    # (and with it pyspark, pandas, pydantic, ...) is imported; the entrypoint parses the same way again.
    from tracelake.arguments import parse

    parse(command, rest)
    from tracelake.runs import run_entrypoint

    return run_entrypoint(entrypoint_module(command).main, rest)


if __name__ == "__main__":
    sys.exit(main())
