"""Roll a registered model's ``champion`` alias back to the previous champion.

    spark-submit spark_jobs/rollback.py --models lstm
    tracelake rollback --models lstm,baseline
    tracelake rollback --models lstm --to-version 3

The previous champion is the version recorded in the current champion's
``previous_champion`` tag when ``tracelake promote`` promoted it (or
``--to-version``). The version rolled back from is tagged ``rolled_back``, so
the promotion gate does not promote it again without ``--force``. Running it
again rolls back one more step along the chain of promotions.

Registry calls only: no Spark session is started.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from tracelake.arguments import parse
from tracelake.model_registry import RollbackError, registered_model_names, roll_back_champion
from tracelake.runs import JobRun, run_entrypoint
from training.registry import RegistryRun, registry_run

JOB = "rollback"


def execute(
    run: RegistryRun | JobRun, *, models: Sequence[str] | None = None, to_version: str | None = None
) -> dict[str, Any]:
    """Move each model's champion back; returns ``{model name: {from_version, champion}}``."""
    from tracelake.tracking import configure_mlflow

    configure_mlflow(run.settings)
    names = registered_model_names(run.settings.training, models)
    if to_version is not None and len(names) != 1:
        raise RollbackError(
            "--to-version names a version of one model; pass --models lstm or --models baseline"
        )
    outcomes = {}
    for name in names.values():
        outcome = roll_back_champion(name, to_version)
        run.log.event("rolled back", **outcome)
        print(f"{name}: champion v{outcome['from_version']} -> v{outcome['champion']}")
        outcomes[name] = outcome
    return outcomes


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return parse("rollback", argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    with registry_run(JOB, args) as run:
        outcomes = execute(run, models=models, to_version=args.to_version)
    print(json.dumps(outcomes, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(run_entrypoint(main))
