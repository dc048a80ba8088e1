"""`tracelake demo`: the whole pipeline on the embedded default, in one session.

What it runs, in order, is its `--help` (``tracelake.arguments.DEMO_DESCRIPTION``, one text for both).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Callable, Sequence
from typing import Any

from tracelake.arguments import parse, parser
from tracelake.cli import entrypoint_module
from tracelake.config import Settings
from tracelake.dates import days_between, parse_date
from tracelake.errors import TracelakeError
from tracelake.pipeline import DAILY_STEPS, TRAINING_STEPS, Gate, Step, in_order
from tracelake.runs import JobRun, job_run, settings_from_args
from tracelake.spark import build_spark
from tracelake.tables import (
    TableSpec,
    all_table_specs,
    domain,
    latest_version,
    named_table_spec,
    read_table,
    table_exists,
)
from tracelake.tracking import tracking_target

DEMO_TRAINING_SET = "demo"


class DemoError(TracelakeError):
    """The demo cannot go on (e.g. validation held back the days it needs)."""


def build_parser() -> argparse.ArgumentParser:
    return parser("demo")


def _demo_settings(args: argparse.Namespace) -> tuple[Settings, dt.date, dt.date]:
    overrides = [
        f"generator.epcs={args.epcs}",
        f"generator.days={args.days}",
        f"generator.corrupt_rate={args.corrupt_rate}",
        *(f"generator.rates.{label}={args.anomaly_rate}" for label in domain().anomaly_types),
    ]
    if args.seed is not None:
        overrides.append(f"generator.seed={args.seed}")
    args.overrides = overrides + list(args.overrides or [])
    settings = settings_from_args(args)
    start = parse_date(args.start_date or settings.generator.start_date, "--start-date")
    return settings, start, start + dt.timedelta(days=args.days - 1)


class Pipeline:
    """Runs steps in one Spark session and keeps their summaries."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.spark = build_spark(settings, "demo")
        self.summaries: dict[str, Any] = {}

    def step(
        self, job: str, start: dt.date, end: dt.date, body: Callable[[JobRun], Any], label: str = ""
    ) -> Any:
        print(f"\n== {label or job} {start}..{end}", flush=True)
        with job_run(job, settings=self.settings, spark=self.spark, start=start, end=end) as run:
            result = body(run)
        self.summaries[label or job] = result
        return result

    def validate(self, table: str | TableSpec, start: dt.date, end: dt.date) -> list[tuple[dt.date, dt.date]]:
        """Validate and return the day ranges that passed (the next step runs only on those)."""
        from tracelake.validation import validate_table

        name = table if isinstance(table, str) else table.name
        report = self.step("validate", start, end, lambda run: validate_table(run, table), f"validate {name}")
        print(report.summary_text(), flush=True)
        ranges: list[tuple[dt.date, dt.date]] = report.passed_ranges()
        return ranges

    def run_steps(
        self, steps: Sequence[Step], ranges: list[tuple[dt.date, dt.date]], *, show_top: bool = False
    ) -> list[tuple[dt.date, dt.date]]:
        """Run declared steps in order on ``ranges``; returns the ranges that passed every check.

        A check keeps only the days that passed; any other step's failure stops the demo. With
        ``show_top``, scoring also prints the top anomalies of the range's last day.
        """
        for step in steps:
            if step.gate is Gate.CHECK:
                table = step.validates or step.name
                ranges = [r for s, e in ranges for r in self.validate(table, s, e)]
                continue
            if step.args:  # execute(run) takes the dates only; the arguments are the CLI's
                raise DemoError(f"step {step.name!r} has arguments {step.args}, which the demo cannot pass")
            module = entrypoint_module(step.command)
            body = module.score_and_show_top if show_top and step.command == "score" else module.execute
            for s, e in ranges:
                self.step(step.command, s, e, body)
        return ranges


def table_summary(spark: Any, specs: list[TableSpec], lake_root: str) -> list[tuple[str, int, int | None]]:
    rows = []
    for spec in specs:
        if spec.format == "delta" and "{" not in spec.path and table_exists(spark, spec, lake_root):
            rows.append(
                (
                    spec.path,
                    read_table(spark, spec, lake_root).count(),
                    latest_version(spark, spec, lake_root),
                )
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse("demo", argv)
    settings, start, end = _demo_settings(args)
    print(
        f"tracelake demo: lake at {settings.lake_uri} ({start}..{end}, {args.epcs} EPCs, master {settings.spark.master})"
    )
    pipeline = Pipeline(settings)
    # The daily steps up to the first that needs a model run on every day; a model is trained
    # in between; the rest run per validated range.
    steps = in_order(DAILY_STEPS)
    first_scoring = next(i for i, step in enumerate(steps) if step.needs_champion)

    pipeline.step("generate", start, end, entrypoint_module("generate").execute)
    ranges = pipeline.run_steps(steps[:first_scoring], [(start, end)])

    # Labels arrive up to labels.max_delay_days after the event: a training set cut at the end
    # of the data is judged only on the days whose labels have all arrived by then.
    as_of = dt.datetime.combine(end + dt.timedelta(days=1), dt.time.min, tzinfo=dt.UTC)
    maturity = settings.label_max_delay_days if args.label_maturity_days is None else args.label_maturity_days
    set_end = end - dt.timedelta(days=maturity)
    usable = [(s, min(e, set_end)) for s, e in ranges if s <= set_end]
    if len(usable) != 1:
        raise DemoError(
            f"the training set needs one unbroken run of validated days up to {set_end}; "
            f"validated ranges: {ranges}"
        )
    set_start, set_end = usable[0]
    # The training steps in their declared order; what the DAG templates, the demo passes itself.
    bodies: dict[str, Callable[[Any], Any]] = {
        "build_training_set": lambda run: entrypoint_module("training-set").execute(
            run, as_of, DEMO_TRAINING_SET, allow_immature_labels=maturity < settings.label_max_delay_days
        ),
        "train": lambda run: entrypoint_module("train").execute(
            run, DEMO_TRAINING_SET, quick=not args.full_training
        ),
        "promote": lambda run: entrypoint_module("promote").execute(run),
    }
    for training_step in in_order(TRAINING_STEPS):
        if training_step.gate is Gate.CHECK:
            checked = named_table_spec(str(training_step.validates), name=DEMO_TRAINING_SET)
            if not pipeline.validate(checked, set_start, set_end):
                raise DemoError(f"training set {DEMO_TRAINING_SET!r} failed validation; see the report above")
        else:
            pipeline.step(training_step.command, set_start, set_end, bodies[training_step.name])
    # Scoring validates each scored day before the run succeeds; the last
    # range's step also prints the top anomalies of its last day.
    for i, (s, e) in enumerate(ranges):
        pipeline.run_steps(steps[first_scoring:], [(s, e)], show_top=i == len(ranges) - 1)

    specs = [*all_table_specs(), named_table_spec("training_set", name=DEMO_TRAINING_SET)]
    summary = table_summary(pipeline.spark, specs, settings.lake_uri)
    print(f"\nlake: {settings.lake_uri}")
    target = tracking_target(settings)
    print(
        f"MLflow: {target.tracking_uri} (experiment {target.experiment}; "
        f"`mlflow ui --backend-store-uri {target.tracking_uri}` to browse)"
    )
    width = max(len(path) for path, _, _ in summary)
    print(f"{'table'.ljust(width)}  {'rows':>10}  version")
    for path, count, version in summary:
        print(f"{path.ljust(width)}  {count:>10}  {version}")
    kept = {d for s, e in ranges for d in days_between(s, e)}
    held_back = [d.isoformat() for d in days_between(start, end) if d not in kept]
    if held_back:
        print(f"days held back by a failed validation (not featurised): {', '.join(held_back)}")
    return 1 if held_back else 0


if __name__ == "__main__":
    sys.exit(main())
