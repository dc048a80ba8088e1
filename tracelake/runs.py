"""One run of one job: its id, dates, settings, logger, session and lineage.

Every entrypoint (spark-submit script, `tracelake` subcommand, DAG task) goes
through :func:`job_run`, so all of them log, trace and fail the same way.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from tracelake import __version__

# The options every job takes live with every command's parser; kept importable from here.
from tracelake.arguments import add_common_args as add_common_args
from tracelake.config import PROJECT_ROOT, Settings, load_settings
from tracelake.dates import check_range, parse_date
from tracelake.logs import JobLogger, job_logger
from tracelake.tables import (
    CONFLICT_BACKOFF_CONF,
    CONFLICT_RETRIES_CONF,
    TableSpec,
    latest_version,
)

if TYPE_CHECKING:  # pyspark loads when a job starts its session, not when a command parses its arguments
    from pyspark.sql import SparkSession


@lru_cache(maxsize=1)
def code_version() -> str:
    """Git commit of the code (with '-dirty' for local changes), else the package version."""
    try:
        sha = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        return f"{sha}-dirty" if dirty else sha
    except (OSError, subprocess.SubprocessError):
        return f"tracelake-{__version__}"


def new_run_id(job: str) -> str:
    """The run id: TRACELAKE_RUN_ID when an orchestrator sets one, else a fresh one."""
    return (
        os.environ.get("TRACELAKE_RUN_ID")
        or f"{job}-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    )


@dataclass
class JobRun:
    job: str
    run_id: str
    settings: Settings
    log: JobLogger
    spark: SparkSession
    start: dt.date | None = None
    end: dt.date | None = None
    inputs: dict[str, int | None] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def lake_root(self) -> str:
        return self.settings.lake_uri

    def record_input(self, spec: TableSpec) -> None:
        """Remember the Delta version of an input table, for lineage."""
        self.inputs[spec.name] = latest_version(self.spark, spec, self.lake_root)

    def commit_metadata(self, **extra: Any) -> dict[str, Any]:
        """What a Delta commit of this run records: run id, job, dates, inputs, code."""
        return {
            "run_id": self.run_id,
            "job": self.job,
            "start_date": self.start.isoformat() if self.start else None,
            "end_date": self.end.isoformat() if self.end else None,
            "input_versions": dict(self.inputs),
            "code_version": code_version(),
            **extra,
        }

    def record_output(self, name: str, **fields: Any) -> None:
        self.outputs[name] = fields
        self.log.event(f"wrote {name}", table=name, **fields)


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides = list(getattr(args, "overrides", []) or [])
    if getattr(args, "lake_root", None):
        overrides.append(f"lake_root={args.lake_root}")
    if getattr(args, "master", None):
        overrides.append(f"spark.master={args.master}")
    return load_settings(getattr(args, "config", None), overrides)


def dates_from_args(args: argparse.Namespace) -> tuple[dt.date | None, dt.date | None]:
    if getattr(args, "start_date", None) is None:
        return None, None
    start = parse_date(args.start_date, "--start-date")
    end = parse_date(args.end_date, "--end-date") if getattr(args, "end_date", None) else start
    check_range(start, end)
    return start, end


@contextmanager
def job_run(
    job: str,
    args: argparse.Namespace | None = None,
    *,
    settings: Settings | None = None,
    spark: SparkSession | None = None,
    start: dt.date | None = None,
    end: dt.date | None = None,
) -> Iterator[JobRun]:
    """Set up one run: settings, dates, logger and session; log its start, end and duration.

    Pass ``args`` from an entrypoint, or ``settings``/``spark``/dates when
    calling a job from Python (tests, the demo), which reuses the session.
    """
    if args is not None:
        settings = settings or settings_from_args(args)
        start, end = dates_from_args(args)
    if settings is None:
        settings = load_settings()
    run_id = new_run_id(job)
    log = job_logger(
        job,
        run_id=run_id,
        start_date=start.isoformat() if start else None,
        end_date=end.isoformat() if end else None,
    )
    from tracelake.spark import build_spark

    session = spark or build_spark(settings, job)
    session.conf.set(CONFLICT_RETRIES_CONF, str(settings.tables.conflict_retries))
    session.conf.set(CONFLICT_BACKOFF_CONF, str(settings.tables.conflict_backoff_s))
    session.sparkContext.setJobGroup(run_id, f"{job} {start or ''}..{end or ''}")
    run = JobRun(job=job, run_id=run_id, settings=settings, log=log, spark=session, start=start, end=end)
    with log.step(job, lake_root=run.lake_root, code_version=code_version()):
        yield run


def run_entrypoint(main: Any, argv: list[str] | None = None) -> int:
    """Run an entrypoint's ``main``; user errors become one clear line and exit code 2."""
    import sys

    from tracelake.errors import TracelakeError

    try:
        return int(main(argv) or 0)
    except TracelakeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
