"""Structured JSON-lines logging with run id, job and dates on every line."""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["error"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def configure_logging(level: int = logging.INFO) -> None:
    """Send tracelake's logs as JSON lines to stderr (idempotent)."""
    root = logging.getLogger("tracelake")
    if not any(getattr(h, "_tracelake", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        handler._tracelake = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False


class JobLogger(logging.LoggerAdapter[logging.Logger]):
    """Adds the run's context (run_id, job, dates) to every record."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = dict(self.extra or {})
        extra.update(kwargs.pop("extra", {}) or {})
        kwargs["extra"] = extra
        return msg, kwargs

    def event(self, msg: str, **fields: Any) -> None:
        self.info(msg, extra=fields)

    @contextmanager
    def step(self, name: str, **fields: Any) -> Iterator[dict[str, Any]]:
        """Log the start and end (with duration) of a unit of work; yields a dict for result fields."""
        result: dict[str, Any] = {}
        started = time.perf_counter()
        self.info(f"{name}: started", extra={"step": name, **fields})
        try:
            yield result
        except BaseException:
            self.error(
                f"{name}: failed",
                extra={"step": name, "duration_s": round(time.perf_counter() - started, 3), **fields},
                exc_info=True,
            )
            raise
        self.info(
            f"{name}: done",
            extra={"step": name, "duration_s": round(time.perf_counter() - started, 3), **fields, **result},
        )


def job_logger(job: str, **context: Any) -> JobLogger:
    configure_logging()
    return JobLogger(logging.getLogger(f"tracelake.{job}"), {"job": job, **context})
