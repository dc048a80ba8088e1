"""Roll a registered model's ``champion`` alias back to the previous champion.

    spark-submit spark_jobs/rollback.py --models lstm
    tracelake rollback --models lstm,baseline
    tracelake rollback --models lstm --to-version 3

The previous champion is the version recorded in the current champion's
``previous_champion`` tag when ``tracelake promote`` promoted it (or
``--to-version``). The version rolled back from is tagged ``rolled_back``, so
the promotion gate does not promote it again without ``--force``. Running it
again rolls back one more step along the chain of promotions.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from spark_jobs.promote import PREVIOUS_CHAMPION_TAG, ROLLED_BACK_TAG, PromotionError, _now, model_names
from tracelake.runs import JobRun, add_common_args, job_run, run_entrypoint

JOB = "rollback"


class RollbackError(PromotionError):
    """There is nothing to roll back to."""


def rollback_one(name: str, to_version: str | None = None) -> dict[str, Any]:
    from mlflow import MlflowClient

    from tracelake.model_registry import CHAMPION, get_version

    client = MlflowClient()
    current = get_version(name, alias=CHAMPION)
    target = to_version or (current.tags or {}).get(PREVIOUS_CHAMPION_TAG)
    if not target:
        raise RollbackError(
            f"{name}: champion version {current.version} records no previous champion (it was the "
            "first one); pass --to-version N to choose the version to go back to"
        )
    previous = get_version(name, version=str(target))  # a clear error if it does not exist
    if str(previous.version) == str(current.version):
        raise RollbackError(f"{name}: version {target} is already the champion")
    client.set_registered_model_alias(name, CHAMPION, previous.version)
    client.set_model_version_tag(
        name, current.version, ROLLED_BACK_TAG, f"{_now()} to version {previous.version}"
    )
    return {"model": name, "from_version": str(current.version), "champion": str(previous.version)}


def execute(
    run: JobRun, *, models: Sequence[str] | None = None, to_version: str | None = None
) -> dict[str, Any]:
    """Move each model's champion back; returns ``{model name: {from_version, champion}}``."""
    from tracelake.tracking import configure_mlflow

    configure_mlflow(run.settings)
    names = model_names(run, models)
    if to_version is not None and len(names) != 1:
        raise RollbackError(
            "--to-version names a version of one model; pass --models lstm or --models baseline"
        )
    outcomes = {}
    for name in names.values():
        outcome = rollback_one(name, to_version)
        run.log.event("rolled back", **outcome)
        print(f"{name}: champion v{outcome['from_version']} -> v{outcome['champion']}")
        outcomes[name] = outcome
    return outcomes


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tracelake rollback", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", help="comma list of lstm,baseline (default: both)")
    parser.add_argument(
        "--to-version", help="go back to this version instead of the recorded previous champion"
    )
    add_common_args(parser, dates=False)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    with job_run(JOB, args) as run:
        outcomes = execute(run, models=models, to_version=args.to_version)
    print(json.dumps(outcomes, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(run_entrypoint(main))
