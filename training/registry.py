"""The run of a registry command (``tracelake promote``, ``tracelake rollback``): Spark only on demand.

Moving an alias is a few calls to the MLflow registry; starting a Spark session
(a JVM) for it costs more than the work. :func:`registry_run` gives such a
command what :func:`tracelake.runs.job_run` gives a Spark job (settings, run
id, logger, the logged start and end), with a session that is built only when
the command first touches ``run.spark`` (the promotion gate rebuilding a test
window does; rollback never does).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tracelake.config import Settings, load_settings
from tracelake.logs import JobLogger, job_logger
from tracelake.runs import code_version, new_run_id, settings_from_args
from tracelake.tables import CONFLICT_BACKOFF_CONF, CONFLICT_RETRIES_CONF

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


@dataclass
class RegistryRun:
    """One run of a registry command; ``spark`` starts a session the first time it is read."""

    job: str
    run_id: str
    settings: Settings
    log: JobLogger
    _spark: SparkSession | None = field(default=None, repr=False)

    @property
    def lake_root(self) -> str:
        return self.settings.lake_uri

    @property
    def spark_started(self) -> bool:
        return self._spark is not None

    @property
    def spark(self) -> SparkSession:
        if self._spark is None:
            from tracelake.spark import build_spark

            self.log.event("starting a Spark session")
            session = build_spark(self.settings, self.job)
            session.conf.set(CONFLICT_RETRIES_CONF, str(self.settings.tables.conflict_retries))
            session.conf.set(CONFLICT_BACKOFF_CONF, str(self.settings.tables.conflict_backoff_s))
            session.sparkContext.setJobGroup(self.run_id, self.job)
            self._spark = session
        return self._spark


@contextmanager
def registry_run(
    job: str, args: argparse.Namespace | None = None, *, settings: Settings | None = None
) -> Iterator[RegistryRun]:
    """Set up one registry command run from an entrypoint's ``args`` (or ``settings``); logs its start,
    end and duration like :func:`tracelake.runs.job_run`, without starting Spark."""
    if settings is None:
        settings = settings_from_args(args) if args is not None else load_settings()
    run_id = new_run_id(job)
    run = RegistryRun(job=job, run_id=run_id, settings=settings, log=job_logger(job, run_id=run_id))
    with run.log.step(job, lake_root=run.lake_root, code_version=code_version()):
        yield run
