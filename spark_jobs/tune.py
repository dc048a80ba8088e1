"""Hyper-parameter search for the sequence model with Optuna.

    spark-submit spark_jobs/tune.py --training-set weekly --trials 20
    tracelake tune --training-set weekly --trials 20 [--study NAME] [--num-processes 2] [--epochs 8]

Each trial trains the sequence model with ``training.train_fn.train_fn`` --
through TorchDistributor, exactly as ``tracelake train`` does -- on the
training set's train split and reports the validation macro PR-AUC after
every epoch (``train_fn``'s ``on_epoch_end`` hook, called in the training
process). The study uses Optuna's TPE sampler (seeded by ``training.seed``)
and its median pruner: a trial whose validation figure falls below the
median of earlier trials at the same epoch is stopped early.

The study lives under the lake (``<lake>/_tuning/<study>/journal.log``,
Optuna's journal storage), so an interrupted search resumes where it stopped
when run again with the same ``--study``: ``--trials`` is the total to reach.
Each trial is an MLflow child run of one parent run. The best configuration
is printed and written as a config file (``--out``, default
``<lake>/_tuning/<study>/best.yaml``) that ``tracelake train --config`` takes.

The test split is never looked at: trials are judged on validation only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tracelake import storage
from tracelake.arguments import parse
from tracelake.config import PROJECT_ROOT, TrainingSettings
from tracelake.errors import TracelakeError
from tracelake.runs import JobRun, job_run, run_entrypoint
from tracelake.tables import (
    latest_version,
    named_table_spec,
    snapshot_files,
    table_exists,
)

JOB = "tune"
OBJECTIVE = "val_macro_pr_auc"
JOURNAL = "journal.log"


class TuneError(TracelakeError, ValueError):
    """The search cannot run as asked."""


def search_space(trial: Any) -> dict[str, Any]:
    """The training settings a trial tries (names of :class:`tracelake.config.TrainingSettings`)."""
    return {
        "learning_rate": trial.suggest_float("learning_rate", 3e-4, 1e-2, log=True),
        "hidden_size": trial.suggest_categorical("hidden_size", [32, 64, 128]),
        "num_layers": trial.suggest_int("num_layers", 1, 2),
        "dropout": trial.suggest_float("dropout", 0.0, 0.3),
        "weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-3, log=True),
        "batch_size": trial.suggest_categorical("batch_size", [256, 512, 1024]),
        "pos_weight_cap": trial.suggest_categorical("pos_weight_cap", [10.0, 30.0, 100.0]),
    }


def study_dir(lake_root: str, study: str) -> str:
    """The study's folder under the lake (journal, trials' run folders, best.yaml)."""
    return storage.join(lake_root, "_tuning", study)


def journal_file(lake_root: str, study: str) -> Path:
    """The local journal Optuna appends to (it needs file locks): in the study's folder when the lake
    is local; for a lake on object storage, a driver-local copy that :func:`sync_journal` publishes."""
    if storage.is_local(lake_root):
        return storage.local_path(study_dir(lake_root, study)) / JOURNAL
    key = hashlib.sha256(lake_root.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / "tracelake-tuning" / key / study / JOURNAL


def sync_journal(lake_root: str, study: str, *, restore: bool = False) -> None:
    """Object-store lake: copy the journal from the lake (``restore``, to resume) or back to it."""
    if storage.is_local(lake_root):
        return
    remote, local = storage.join(study_dir(lake_root, study), JOURNAL), journal_file(lake_root, study)
    if restore:
        if storage.is_file(remote) and not local.is_file():
            storage.download(remote, local)
    elif local.is_file():
        storage.upload(local, remote)


def open_study(lake_root: str, study: str, seed: int) -> Any:
    """The study of the lake (created on first use, resumed afterwards)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journal = journal_file(lake_root, study)
    journal.parent.mkdir(parents=True, exist_ok=True)
    journal_storage = JournalStorage(JournalFileBackend(str(journal)))
    return optuna.create_study(
        study_name=study,
        storage=journal_storage,
        direction="maximize",
        load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
    )


@dataclass(frozen=True)
class TrialReporter:
    """``train_fn``'s ``on_epoch_end``: reports the epoch's validation figure to the trial, asks to prune.

    Runs in the training process (rank 0), which opens the study from its journal file:
    plain fields, so it pickles into TorchDistributor's processes.
    """

    lake_root: str
    study: str
    seed: int
    trial_number: int

    def __call__(self, epoch: int, metrics: dict[str, Any]) -> bool:
        import math

        import optuna

        study = open_study(self.lake_root, self.study, self.seed)
        trial_id = next(
            t._trial_id for t in study.get_trials(deepcopy=False) if t.number == self.trial_number
        )
        trial = optuna.trial.Trial(study, trial_id)
        value = float(metrics.get(OBJECTIVE, float("nan")))
        if math.isfinite(value):
            trial.report(value, epoch)
        return bool(trial.should_prune())


def best_config(params: dict[str, Any]) -> dict[str, Any]:
    """A config file body that ``--config`` takes: the best trial's training settings."""
    return {"training": dict(params)}


def execute(
    run: JobRun,
    training_set: str,
    *,
    trials: int,
    study: str | None = None,
    epochs: int | None = None,
    num_processes: int | None = None,
    out: str | None = None,
) -> dict[str, Any]:
    import mlflow
    import optuna

    from spark_jobs.train import distribute, feature_spec
    from tracelake.tracking import configure_mlflow
    from training.train_fn import make_train_config

    spec_table = named_table_spec("training_set", name=training_set)
    if not table_exists(run.spark, spec_table, run.lake_root):
        raise TuneError(
            f"training set {training_set!r} does not exist at {spec_table.location(run.lake_root)}"
        )
    version = latest_version(run.spark, spec_table, run.lake_root)
    files = snapshot_files(run.spark, spec_table, run.lake_root, version)
    study_name = study or f"{training_set}-v{version}"
    base = run.settings.training
    fixed = {k: v for k, v in {"epochs": epochs, "num_processes": num_processes}.items() if v is not None}
    # Trials compare on validation PR-AUC, so early stopping watches the same figure.
    fixed["early_stopping_metric"] = OBJECTIVE
    spec = feature_spec(run.settings)
    lake_root = str(run.lake_root)
    sync_journal(lake_root, study_name, restore=True)
    optuna_study = open_study(lake_root, study_name, base.seed)
    done = len([t for t in optuna_study.trials if t.state.is_finished()])
    configure_mlflow(run.settings)

    def objective(trial: Any) -> float:
        params = search_space(trial)
        settings = TrainingSettings.model_validate({**base.model_dump(), **fixed, **params})
        output_dir = storage.join(study_dir(lake_root, study_name), f"trial-{trial.number:04d}")
        config = make_train_config(
            settings,
            spec,
            {"kind": "parquet", "files": files},
            output_dir,
            resume=False,
            run_id=f"{run.run_id}-trial{trial.number}",
        )
        with mlflow.start_run(run_name=f"trial {trial.number}", nested=True):
            mlflow.set_tags(
                {
                    "training_set": training_set,
                    "training_set_version": str(version),
                    "optuna_study": study_name,
                    "optuna_trial": str(trial.number),
                }
            )
            mlflow.log_params(params)
            try:
                result = distribute(
                    settings,
                    config,
                    on_epoch_end=TrialReporter(lake_root, study_name, base.seed, trial.number),
                )
            finally:
                sync_journal(lake_root, study_name)
            values = [float(r[OBJECTIVE]) for r in result["history"] if OBJECTIVE in r]
            for record in result["history"]:
                if OBJECTIVE in record:
                    mlflow.log_metric(OBJECTIVE, float(record[OBJECTIVE]), step=int(record["epoch"]))
            best = max(values) if values else float("nan")
            mlflow.log_metric(f"best_{OBJECTIVE}", best)
            mlflow.set_tag("stop_reason", result["stop_reason"])
        run.log.event(
            "trial finished", trial=trial.number, value=best, stop_reason=result["stop_reason"], **params
        )
        if result["stop_reason"] == "stopped_by_callback":
            raise optuna.TrialPruned(f"pruned after epoch {len(values) - 1}: {best:.4f}")
        return best

    with mlflow.start_run(run_name=f"tune {training_set}"):
        mlflow.set_tags(
            {"training_set": training_set, "training_set_version": str(version), "optuna_study": study_name}
        )
        remaining = max(0, trials - done)
        if remaining:
            optuna_study.optimize(objective, n_trials=remaining, catch=())
        completed = [t for t in optuna_study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if not completed:
            raise TuneError(f"study {study_name!r} has no completed trial yet; run more --trials")
        best = optuna_study.best_trial
        mlflow.log_metric(f"best_{OBJECTIVE}", float(best.value))
        mlflow.log_params({f"best.{k}": v for k, v in best.params.items()})
    sync_journal(lake_root, study_name)
    target = out or storage.join(study_dir(lake_root, study_name), "best.yaml")
    storage.write_text(target, yaml.safe_dump(best_config(best.params), sort_keys=True))
    states: dict[str, int] = {}
    for t in optuna_study.trials:
        states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
    return {
        "study": study_name,
        "storage": storage.join(study_dir(lake_root, study_name), JOURNAL),
        "trials": states,
        "resumed_from": done,
        "best_trial": best.number,
        f"best_{OBJECTIVE}": best.value,
        "best_params": best.params,
        "config_file": str(target),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return parse("tune", argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    named_table_spec("training_set", name=args.training_set)  # a bad name fails before Spark starts
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH")) if p
    )
    with job_run(JOB, args) as run:
        summary = execute(
            run,
            args.training_set,
            trials=args.trials,
            study=args.study,
            epochs=args.epochs,
            num_processes=args.num_processes,
            out=args.out,
        )
    print(
        f"best trial {summary['best_trial']}: {OBJECTIVE} {summary[f'best_{OBJECTIVE}']:.4f} "
        f"with {summary['best_params']}; config written to {summary['config_file']} "
        f"(tracelake train --config {summary['config_file']} ...)"
    )
    print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(run_entrypoint(main))
