"""Every command's options: the one home of each `tracelake <command>` argument parser.

    parser("ingest")                 -> the argparse.ArgumentParser of `tracelake ingest`
    parse("ingest", ["--start-date", "2025-07-01"])

Each entrypoint's ``parse_args`` is a call into :func:`parse`, so
`spark-submit spark_jobs/ingest.py …` and `tracelake ingest …` parse the same
way, and the CLI answers ``--help`` and rejects bad arguments from here
before it imports the entrypoint (and with it pyspark, pandas, pydantic, …).

Light at import time: the standard library and tracelake modules that import
only the standard library. Checks that need the configuration or the table
specs (a table's name, a setting's value) run in the job, after parsing.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path

from tracelake.model_registry import DEFAULT_DETECTORS, DETECTORS

DOMAIN_FILE = Path(__file__).resolve().parent.parent / "schemas" / "domain.yaml"

# Choices the parsers offer; tests/tracelake/test_arguments.py checks each against the code that uses it.
GENERATE_FORMATS = ("csv", "json", "parquet", "epcis")  # spark_jobs.generate.FORMATS
GENERATOR_PROFILES = ("realistic", "easy")  # tracelake.config.GENERATOR_PROFILES
PROMOTION_METRICS = ("macro_f1", "macro_pr_auc", "macro_roc_auc")  # spark_jobs.promote.METRIC_KEYS
QUERY_ENGINES = ("datafusion", "spark")  # tracelake.query.ENGINES
CLUSTER_PORT = 7077  # tracelake.standalone.DEFAULT_PORT
CLUSTER_WEBUI_PORT = 8090  # tracelake.standalone.DEFAULT_WEBUI_PORT

DEMO_DESCRIPTION = """\
`tracelake demo`: the whole pipeline on the embedded default, in one session.

generate → ingest → validate bronze and silver → features → validate features
→ training set (the days whose labels have had time to arrive) → validate it
→ train the sequence model (TorchDistributor), the MLlib baseline and the rules
(demo-sized) and print the three-way comparison on the mature test days
→ promotion gate → score every validated day with the champion (validated
before it counts) → drift monitoring → the top anomalies of the last day.

The daily steps, their order and gates come from tracelake/pipeline.py, the
declaration the Airflow DAG is built from. Each step is the same `execute` its
`tracelake` command (and spark-submit entrypoint) runs, found through the CLI's
command table and imported when it runs; a step only runs on the days the
previous check passed. It ends by printing where the lake is and what each
table holds (rows, Delta version).
"""

CLUSTER_DESCRIPTION = """\
A Spark standalone cluster on loopback, started from the installed pyspark.

`tracelake cluster start` launches one master and N workers (default 2) as
background processes bound to 127.0.0.1, `tracelake cluster stop` ends them.
The jobs then run unchanged with `--master spark://127.0.0.1:7077`. The
master's web UI listens on 8090 (workers 8091, 8092, ...), not Spark's 8080,
which is the Airflow API server's port in `airflow standalone`. Workers
are started from the same installation, so Delta's JARs (copied into
pyspark's jars folder by `make setup`) and the project's Python environment
reach the executors.
"""


def add_common_args(parser: argparse.ArgumentParser, *, dates: bool = True) -> None:
    """Options every job takes: date range, config file, overrides, lake, master."""
    if dates:
        parser.add_argument("--start-date", required=True, help="first day, YYYY-MM-DD (UTC)")
        parser.add_argument("--end-date", help="last day, inclusive (default: the start date)")
    parser.add_argument("--config", help="YAML config file (default: $TRACELAKE_CONFIG)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting, e.g. --set spark.shuffle_partitions=4 (repeatable)",
    )
    parser.add_argument(
        "--lake-root", help="lake folder or object-store URI, e.g. s3a://bucket/lake (overrides lake_root)"
    )
    parser.add_argument("--master", help="Spark master, e.g. local[2] or spark://host:7077")


@cache
def anomaly_types() -> tuple[str, ...]:
    """The anomaly types of ``schemas/domain.yaml`` (what ``tracelake.tables.domain()`` reads), read
    without the table module (and so without pydantic) for `tracelake generate`'s ``--rate-*`` options."""
    import yaml  # light, and only when a parser that needs it is built

    raw = yaml.safe_load(DOMAIN_FILE.read_text())
    return tuple(str(a) for a in raw["anomaly_types"])


def rate_option(anomaly: str) -> str:
    """``epc_fake`` -> ``--rate-epc-fake``."""
    return "--rate-" + anomaly.replace("_", "-")


# ---------------------------------------------------------------- one parser per command


def _generate() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tracelake generate",
        description="Simulate EPC journeys through a supply network and write the landing files "
        "(scans, delayed labels, reference). Options default from the generator configuration.",
    )
    parser.add_argument("--start-date", help="first day of the window, YYYY-MM-DD (UTC)")
    parser.add_argument("--days", type=int, help="days in the window")
    parser.add_argument("--epcs", type=int, help="EPCs whose journeys start in the window")
    parser.add_argument("--seed", type=int, help="random seed: the same options give identical files")
    parser.add_argument("--format", choices=GENERATE_FORMATS, help="landing file format")
    parser.add_argument(
        "--profile",
        choices=GENERATOR_PROFILES,
        help="realistic (default: legitimate confounders, harder anomalies) or easy (none, for quick "
        "tests); fills the generator settings not given explicitly",
    )
    for anomaly in anomaly_types():
        parser.add_argument(
            rate_option(anomaly),
            type=float,
            dest=f"rate_{anomaly}",
            metavar="SHARE",
            help=f"share of EPCs with a {anomaly} anomaly",
        )
    parser.add_argument(
        "--corrupt-rate",
        type=float,
        help="share of landing rows of genuine EPCs made unreadable (data-quality errors)",
    )
    add_common_args(parser, dates=False)
    return parser


def _ingest() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tracelake ingest",
        description="Landing files -> bronze (+ quarantine) -> silver for a range of days; idempotent per range.",
    )
    add_common_args(parser)
    return parser


def _validate() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tracelake validate",
        description="Validate a table's partitions with its Great Expectations suite.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # The name is checked against the table specs by the job (one line, exit 2), not here.
    parser.add_argument(
        "--table",
        required=True,
        help="table to validate, e.g. bronze_scan_events, silver_scan_events, silver_labels",
    )
    parser.add_argument("--name", help="which table of a named family, e.g. the training set's --name")
    add_common_args(parser)
    return parser


def _features() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tracelake features",
        description="Daily snapshot features and point-in-time event features for a range of days, in one "
        "Spark job; replaces exactly the range's partitions.",
    )
    add_common_args(parser)
    return parser


def _training_set() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tracelake training-set",
        description="Event features of a range + labels confirmed at or before --as-of + a temporal split, "
        "written to training/sets/<name>.",
    )
    add_common_args(parser)
    parser.add_argument(
        "--as-of",
        required=True,
        help="cut-off time T (UTC): labels confirmed after it and events after it are left out",
    )
    parser.add_argument("--name", required=True, help="set name: written to training/sets/<name>")
    parser.add_argument(
        "--allow-immature-labels",
        action="store_true",
        help="build a set whose last days have labels still to come (marked; never promoted)",
    )
    return parser


def _train() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tracelake train",
        description="Train the sequence model (TorchDistributor) and the MLlib baseline on a training set; "
        "evaluate on its test split, log to MLflow, export ONNX, register as challenger.",
    )
    add_common_args(parser, dates=False)
    parser.add_argument("--training-set", required=True, help="name of training/sets/<name>")
    parser.add_argument("--models", help=f"comma list of {','.join(DETECTORS)} (default: training.models)")
    parser.add_argument(
        "--num-processes", type=int, help="training processes (default: training.num_processes)"
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--local-mode",
        dest="local_mode",
        action="store_true",
        default=None,
        help="run the training processes on the driver (default: training.local_mode)",
    )
    mode.add_argument(
        "--cluster-mode",
        dest="local_mode",
        action="store_false",
        help="run the training processes as Spark tasks on the executors",
    )
    parser.add_argument(
        "--use-gpu",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="train on GPUs (NCCL, bf16) or, with --no-use-gpu, on CPUs (default: training.use_gpu)",
    )
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int, help="rows per process and step")
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--hidden-size", type=int, help="RNN hidden size")
    parser.add_argument("--patience", type=int, help="early stopping patience in epochs")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--baseline-classifier", choices=["logistic", "gbt"])
    parser.add_argument("--quick", action="store_true", help="demo-sized settings (few epochs, small model)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the latest interrupted sequence-model run of this training set",
    )
    return parser


def _tune() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tracelake tune", description="Hyper-parameter search for the sequence model with Optuna."
    )
    add_common_args(parser, dates=False)
    parser.add_argument("--training-set", required=True, help="name of training/sets/<name>")
    parser.add_argument("--trials", type=int, required=True, help="total trials the study should hold")
    parser.add_argument(
        "--study", help="study name (default: <training set>-v<its Delta version>); reuse it to resume"
    )
    parser.add_argument("--epochs", type=int, help="epochs per trial (default: training.epochs)")
    parser.add_argument(
        "--num-processes", type=int, help="training processes per trial (default: training.num_processes)"
    )
    parser.add_argument("--out", help="where to write the best configuration (YAML for --config)")
    return parser


def _check_tune(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.trials < 1:
        parser.error(f"--trials {args.trials}: give at least 1")


def _promote() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tracelake promote",
        description="The promotion gate: move a registered model's ``champion`` alias to its ``challenger`` "
        "only if it is better.",
    )
    parser.add_argument(
        "--models", help=f"comma list of {','.join(DETECTORS)} (default: {','.join(DEFAULT_DETECTORS)})"
    )
    parser.add_argument("--metric", choices=PROMOTION_METRICS, help="default: training.promotion_metric")
    parser.add_argument(
        "--margin", type=float, help="required improvement (default: training.promotion_margin)"
    )
    parser.add_argument("--force", action="store_true", help="also promote a version that was rolled back")
    add_common_args(parser, dates=False)
    return parser


def _rollback() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tracelake rollback",
        description="Roll a registered model's ``champion`` alias back to the previous champion.",
    )
    parser.add_argument("--models", help="comma list of lstm,baseline (default: both)")
    parser.add_argument(
        "--to-version", help="go back to this version instead of the recorded previous champion"
    )
    add_common_args(parser, dates=False)
    return parser


def _score() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tracelake score",
        description="Score the event features of a range of days with a registered ONNX model, in one Spark "
        "job; replaces exactly the range's partitions of gold/scored_events and validates them.",
    )
    add_common_args(parser)
    parser.add_argument(
        "--model-uri", help="models:/<name>@<alias> or models:/<name>/<version> (default: scoring.model_uri)"
    )
    return parser


def _monitor() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tracelake monitor",
        description="PSI of each model input and score of a range of days against the model's training set; "
        "writes monitoring/drift, whose drifted days trigger retraining.",
    )
    add_common_args(parser)
    return parser


def _query() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tracelake query",
        description="Run one read-only SQL statement over the lake's tables (views named like scored_events, "
        "scan_events, event_features, quarantine, labels, drift); print a table.",
    )
    parser.add_argument("sql", nargs="?", help='the statement, e.g. "SELECT * FROM scored_events LIMIT 10"')
    parser.add_argument(
        "--engine",
        choices=QUERY_ENGINES,
        help="datafusion (default: no JVM, starts at once) or spark (heavy queries)",
    )
    parser.add_argument(
        "--csv", metavar="PATH", help="also write every row of the result to this CSV file (outside the lake)"
    )
    parser.add_argument("--force", action="store_true", help="let --csv overwrite an existing file")
    parser.add_argument("--rows", type=int, help="rows to print (default: query.show_rows)")
    parser.add_argument("--tables", action="store_true", help="list the views and the tables behind them")
    add_common_args(parser, dates=False)
    return parser


def _check_query(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not args.sql and not args.tables:
        parser.error("pass a SQL statement (or --tables)")


def _cluster() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tracelake cluster", description=CLUSTER_DESCRIPTION)
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--state-dir", default=".spark-cluster", help="where pids and logs are kept")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cores-per-worker", type=int, default=1)
    parser.add_argument("--memory-per-worker", default="2g")
    parser.add_argument("--port", type=int, default=CLUSTER_PORT, help="master port (default %(default)s)")
    parser.add_argument(
        "--webui-port",
        type=int,
        default=CLUSTER_WEBUI_PORT,
        help="master web UI port; workers use the next ones (default %(default)s)",
    )
    return parser


def _demo() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tracelake demo", description=DEMO_DESCRIPTION)
    add_common_args(parser, dates=False)
    parser.add_argument("--start-date", help="first simulated day (default: generator.start_date)")
    parser.add_argument(
        "--days",
        type=int,
        default=35,
        help="simulated days (default: 35: labels.max_delay_days of them wait for their labels, "
        "the rest make the training set)",
    )
    parser.add_argument(
        "--label-maturity-days",
        type=int,
        default=None,
        help="the training set leaves out the last N days, whose labels may still be on their "
        "way (default: labels.max_delay_days)",
    )
    parser.add_argument("--epcs", type=int, default=10_000, help="EPCs to simulate (default: 10000)")
    parser.add_argument("--seed", type=int, help="generator seed (default: generator.seed)")
    parser.add_argument(
        "--anomaly-rate",
        type=float,
        default=0.04,
        help="share of EPCs carrying each anomaly type (default: 0.04, above the generator's "
        "0.01 so that the demo's mature test days hold some 50 positives per type)",
    )
    parser.add_argument(
        "--corrupt-rate",
        type=float,
        default=0.001,
        help="share of landing rows made unreadable, to show quarantine (default: 0.001)",
    )
    parser.add_argument(
        "--full-training",
        action="store_true",
        help="train with the configured training settings instead of the demo-sized ones",
    )
    return parser


# command (as in tracelake.cli.COMMANDS) -> its parser, and the checks argparse cannot express
PARSERS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "generate": _generate,
    "ingest": _ingest,
    "validate": _validate,
    "features": _features,
    "training-set": _training_set,
    "train": _train,
    "tune": _tune,
    "promote": _promote,
    "rollback": _rollback,
    "score": _score,
    "monitor": _monitor,
    "query": _query,
    "cluster": _cluster,
    "demo": _demo,
}
_CHECKS: dict[str, Callable[[argparse.ArgumentParser, argparse.Namespace], None]] = {
    "tune": _check_tune,
    "query": _check_query,
}


def parser(command: str) -> argparse.ArgumentParser:
    """A fresh argument parser of ``command`` (a key of ``tracelake.cli.COMMANDS``)."""
    try:
        build = PARSERS[command]
    except KeyError:
        raise KeyError(f"no argument parser for command {command!r}; known: {', '.join(PARSERS)}") from None
    return build()


def parse(command: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``command``'s arguments (``sys.argv[1:]`` when ``argv`` is None); on ``--help`` or a bad argument
    argparse prints the help or a one-line usage error and exits (0 or 2)."""
    command_parser = parser(command)
    args = command_parser.parse_args(argv)
    check = _CHECKS.get(command)
    if check is not None:
        check(command_parser, args)
    return args
