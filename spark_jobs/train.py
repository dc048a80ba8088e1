"""Train the sequence model (PyTorch through TorchDistributor) and the MLlib baseline on a training set.

    spark-submit spark_jobs/train.py --training-set weekly
    tracelake train --training-set weekly --models lstm,baseline --num-processes 2 --epochs 5

Reads ``training/sets/<name>`` at its latest Delta version (recorded), then:

- ``lstm``: with ``training.loader=arrow`` (the default) every training
  process reads the Parquet files of the training set's Delta snapshot at the
  recorded version with pyarrow; with ``petastorm`` (Spark 3.5 line) the
  splits go through petastorm's ``make_spark_converter`` (training/spark_data.py;
  cache under ``<lake>/_petastorm_cache/<run id>``, removed afterwards).
  ``TorchDistributor(num_processes, local_mode, use_gpu).run(train_fn, config)``
  trains on them (thresholds chosen on validation inside
  train_fn); the best model is scored on the test split, exported to ONNX
  (parity with torch checked on real test rows), logged to MLflow and
  registered as ``training.lstm_model_name`` with alias ``challenger``.
- ``baseline``: :mod:`training.baseline` (Spark MLlib, GBT by default), thresholds chosen on
  validation, scored on the same test split, the fitted pipeline logged as an
  artifact and registered as ``training.baseline_model_name`` (``challenger``).
- ``rules``: :mod:`training.rules`, the hand-written domain rules tuned on
  train + validation, scored on the same test split and registered as
  ``training.rules_model_name``; batch scoring can run it like the others.

Every detector's nested run carries the tag ``tracelake.detector``, the
training set's name and version, whether its labels were mature, and the
metrics ``test_pr_auc_<label>``, ``test_macro_pr_auc`` and
``test_positives_<label>``. Confidence intervals come from a bootstrap that
resamples whole EPCs (the events of one EPC are not independent).

One MLflow parent run per invocation with a nested run per model; the parent
holds the comparison table (printed too). ``--resume`` continues the latest
interrupted sequence-model run of this training set from its last checkpoint.

This module is the entrypoint: it reads the set, trains and registers. What is
recorded in MLflow is :mod:`training.tracking`, the plots :mod:`training.plots`,
the evaluation report :mod:`training.evaluation`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tracelake import storage
from tracelake.arguments import parse
from tracelake.config import PROJECT_ROOT, TrainingSettings
from tracelake.errors import TracelakeError
from tracelake.model_registry import IMMATURE_TAG, atomic_registration
from tracelake.runs import (
    JobRun,
    code_version,
    job_run,
    run_entrypoint,
)
from tracelake.tables import (
    commit_metadata,
    domain,
    latest_version,
    named_table_spec,
    read_table,
    snapshot_files,
    table_exists,
)
from training import evaluation, plots, tracking
from training.evaluation import EvaluationReport
from training.tracking import DETECTOR_TAG

__all__ = ["DETECTOR_TAG", "IMMATURE_TAG", "execute", "main"]

JOB = "train"
LSTM, BASELINE, RULES = "lstm", "baseline", "rules"
MODELS = (LSTM, BASELINE, RULES)
# Every evaluation run carries which detector it is (DETECTOR_TAG) and whether its labels were mature
# (IMMATURE_TAG); both imported above.
# Every metric of the evaluation, per label and macro, in the printed and logged comparison.
COMPARISON_METRICS = ("pr_auc", "roc_auc", "precision", "recall", "f1")
# Demo-sized settings (``execute(..., quick=True)``, ``--quick``): a few epochs of a small model, the
# fast ONNX exporter, fewer bootstrap draws; explicit options still win.
QUICK_TRAINING: dict[str, Any] = {
    "epochs": 3,
    "hidden_size": 32,
    "tab_hidden_size": 32,
    "head_hidden_size": 32,
    "batch_size": 256,
    "bootstrap_samples": 200,
    "baseline_max_iter": 30,
    "onnx_exporter": "torchscript",
    "log_every_steps": 20,
}


class TrainJobError(TracelakeError, ValueError):
    """The training job cannot run as asked."""


# --- settings and inputs -------------------------------------------------------------------------


def parse_models(value: str | Sequence[str] | None, default: Sequence[str]) -> list[str]:
    if value is None:
        return list(default)
    names = [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown or not names:
        raise TrainJobError(
            f"--models {value!r}: unknown model(s) {unknown or names}; use a comma list of {list(MODELS)}"
        )
    return list(dict.fromkeys(names))


def training_settings(base: TrainingSettings, **options: Any) -> TrainingSettings:
    """``base`` with the CLI's options applied (None leaves the configured value)."""
    update = {k: v for k, v in options.items() if v is not None}
    if not update:
        return base
    return TrainingSettings.model_validate({**base.model_dump(), **update})


def feature_spec(settings: Any) -> Any:
    """The model's inputs and outputs: features_event_features.yaml order, domain.yaml labels."""
    from spark_jobs.transforms.event_features import sequence_features, tabular_features
    from training.data import FeatureSpec

    return FeatureSpec(
        tuple(sequence_features()),
        tuple(tabular_features()),
        settings.features.sequence_length,
        tuple(domain().anomaly_types),
    )


# --- the sequence model --------------------------------------------------------------------------


def run_dir_for(run: JobRun, training_set: str, resume: bool) -> str:
    """This run's output folder (under the lake, local or object storage); with ``resume``, the
    latest interrupted one of the training set."""
    parent = storage.join(run.lake_root, run.settings.training.runs_dir, training_set)
    if resume:
        interrupted = sorted(
            (
                storage.join(parent, name)
                for name in storage.list_dir(parent)
                if storage.is_file(storage.join(parent, name, "checkpoints", "last.pt"))
                and not storage.exists(storage.join(parent, name, "result.json"))
            ),
            key=lambda folder: storage.mtime(storage.join(folder, "checkpoints", "last.pt")),
        )
        if interrupted:
            run.log.event("resuming an interrupted run", output_dir=interrupted[-1])
            return interrupted[-1]
        run.log.warning(
            "--resume: no interrupted run of this training set; starting a new one",
            extra={"searched": parent},
        )
    return storage.join(parent, run.run_id)


def run_train_fn(
    config: dict[str, Any], *, num_processes: int, local_mode: bool, use_gpu: bool, on_epoch_end: Any = None
) -> dict[str, Any]:
    """``TorchDistributor(...).run(train_fn, config[, on_epoch_end])``: rank 0's result."""
    from pyspark.ml.torch.distributor import TorchDistributor

    from training.train_fn import train_fn

    distributor = TorchDistributor(num_processes=num_processes, local_mode=local_mode, use_gpu=use_gpu)
    result = distributor.run(train_fn, config, *([on_epoch_end] if on_epoch_end is not None else []))
    if not isinstance(result, dict):
        # pyspark 3.5's local mode lets every process pickle its return value into the same output file, so
        # the last rank to finish wins (None from rank > 0). Rank 0 writes its result to output_dir before
        # returning: read it from there.
        written = storage.join(config["output_dir"], "result.json")
        if storage.is_file(written):
            result = json.loads(storage.read_text(written))
    if not isinstance(result, dict):
        raise TrainJobError(
            f"TorchDistributor returned {type(result).__name__}, not train_fn's result, and "
            f"{config['output_dir']}/result.json is missing; see the training processes' log above"
        )
    return result


def distribute(
    settings: TrainingSettings, config: dict[str, Any], on_epoch_end: Any = None
) -> dict[str, Any]:
    """The train function through TorchDistributor as ``settings`` say (processes, local/cluster mode, GPU)."""
    return run_train_fn(
        config,
        num_processes=settings.num_processes,
        local_mode=settings.local_mode,
        use_gpu=settings.use_gpu,
        on_epoch_end=on_epoch_end,
    )


def train_lstm(
    run: JobRun,
    settings: TrainingSettings,
    df: Any,
    spec: Any,
    context: dict[str, Any],
    *,
    resume: bool,
    workdir: Path,
) -> dict[str, Any]:
    import mlflow

    from tracelake.model_registry import register_onnx_model
    from training.data import read_split
    from training.model import SequenceAnomalyModel
    from training.onnx_export import export_onnx, torch_probabilities
    from training.spark_data import (
        cache_url,
        petastorm_data_config,
        spark_converters,
        split_counts,
    )
    from training.train_fn import make_train_config

    output_dir = run_dir_for(run, context["training_set"], resume)
    files = context["snapshot_files"]
    if not settings.local_mode and settings.torch_threads == 0:
        # In cluster mode each Spark task is one training process: give it the task's cores, not the host's.
        settings = settings.model_copy(
            update={"torch_threads": int(run.spark.conf.get("spark.task.cpus", "1"))}
        )

    def launch(data: dict[str, Any]) -> tuple[dict[str, Any], float]:
        config = make_train_config(settings, spec, data, output_dir, resume=resume, run_id=run.run_id)
        with run.log.step(
            "TorchDistributor",
            num_processes=settings.num_processes,
            local_mode=settings.local_mode,
            use_gpu=settings.use_gpu,
            loader=settings.loader,
            output_dir=str(output_dir),
        ) as step:
            started = time.perf_counter()
            result = distribute(settings, config)
            step.update(stop_reason=result["stop_reason"], epochs=result["epochs_completed"])
        if not result.get("model_path") or not result.get("thresholds"):
            raise TrainJobError(
                f"training stopped ({result.get('stop_reason')}) before a best model was chosen; "
                f"rerun with --resume to continue {output_dir}"
            )
        return result, time.perf_counter() - started

    if settings.loader == "petastorm":
        cache = cache_url(run.lake_root, run.run_id, settings.petastorm_cache_url)
        with (
            run.log.step("petastorm converters", cache=cache) as step,
            spark_converters(
                df, spec, cache_dir_url=cache, row_group_bytes=settings.petastorm_row_group_bytes
            ) as converted,
        ):
            rows = {split: item.rows for split, item in converted.items()}
            step.update(rows=rows, files={split: len(item.file_urls) for split, item in converted.items()})
            result, wall_s = launch(
                petastorm_data_config({split: converted[split] for split in ("train", "validation")})
            )
    else:
        rows = split_counts(df)
        run.log.event("arrow loader", rows=rows, files=len(files), version=context["training_set_version"])
        result, wall_s = launch({"kind": "parquet", "files": files})
    # The test split straight from the snapshot's files, with each row's EPC for the grouped bootstrap.
    test = read_split(files, "test", spec)
    test_epcs = split_column_values(files, "test", "epc_code")
    parity_rows = test.take(slice(0, settings.onnx_parity_rows or test.n_rows))

    with storage.local_copy(result["model_path"]) as model_file:
        model = SequenceAnomalyModel.load(model_file)
    thresholds = {k: float(v) for k, v in result["thresholds"].items()}
    labels = list(spec.label_names)
    probs = torch_probabilities(model, test, settings.eval_batch_size)
    report = evaluate_test(settings, test.labels, probs, thresholds, labels, test_epcs)
    onnx_path = workdir / "lstm" / "model.onnx"
    with run.log.step("export ONNX", exporter=settings.onnx_exporter, rows=parity_rows.n_rows) as step:
        onnx_meta = export_onnx(
            model,
            onnx_path,
            parity_rows,
            thresholds=thresholds,
            tolerance=settings.onnx_parity_tolerance,
            opset=settings.onnx_opset,
            exporter=settings.onnx_exporter,
            extra_metadata={
                "model_name": settings.lstm_model_name,
                "training_set": context["training_set"],
                "training_set_version": context["training_set_version"],
                "run_id": run.run_id,
                "code_version": code_version(),
            },
        )
        step.update(max_abs_diff=onnx_meta["max_abs_diff"])

    macro_pr_auc = report.macro_value("pr_auc")
    report_file = workdir / "lstm" / "evaluation.json"
    tracking.write_json(
        report_file,
        {"thresholds": thresholds, "test_report": report.to_dict(), "feature_spec": spec.to_dict()},
    )
    with tracking.detector_run(LSTM, context["training_set"], context["tags"]) as ml_run:
        mlflow.log_params(
            {
                **tracking.flat_params(settings),
                "feature_spec.n_seq": spec.n_seq,
                "feature_spec.n_tab": spec.n_tab,
                "feature_spec.seq_len": spec.seq_len,
                "world_size": result["world_size"],
                "device": result["device"],
                "output_dir": str(output_dir),
            }
        )
        tracking.log_history(result["history"])
        tracking.log_evaluation(
            report,
            onnx_max_abs_diff=onnx_meta["max_abs_diff"],
            train_wall_s=wall_s,
            samples_per_s=result.get("samples_per_s"),
        )
        tracking.log_json(
            {"result": result, "test_report": report.to_dict(), "thresholds": thresholds},
            "evaluation",
            "lstm.json",
        )
        plots.log_plots(
            workdir / "lstm_plots", result["history"], test.labels, probs, thresholds, labels, "lstm"
        )
        version = register_onnx_model(
            settings.lstm_model_name,
            onnx_path,
            run_id=ml_run.info.run_id,
            extra_files=[report_file],
            tags={
                **context["registry_tags"],
                "test_macro_pr_auc": f"{macro_pr_auc:.6f}",
                "test_macro_roc_auc": f"{report.macro_value('roc_auc'):.6f}",
                "onnx_max_abs_diff": f"{onnx_meta['max_abs_diff']:.3g}",
                "thresholds": json.dumps(thresholds),
            },
        )
    run.log.event(
        "registered",
        model=settings.lstm_model_name,
        version=version.version,
        test_macro_pr_auc=macro_pr_auc,
        onnx_max_abs_diff=onnx_meta["max_abs_diff"],
    )
    return {
        "model_name": settings.lstm_model_name,
        "version": str(version.version),
        "mlflow_run_id": ml_run.info.run_id,
        "report": report,
        "thresholds": thresholds,
        "onnx_max_abs_diff": onnx_meta["max_abs_diff"],
        "parity_rows": onnx_meta["parity_rows"],
        "history": result["history"],
        "stop_reason": result["stop_reason"],
        "output_dir": str(output_dir),
        "train_wall_s": wall_s,
        "rows": rows,
        "samples_per_s": result.get("samples_per_s"),
    }


# --- the baseline --------------------------------------------------------------------------------


def train_baseline(
    run: JobRun, settings: TrainingSettings, df: Any, spec: Any, context: dict[str, Any], *, workdir: Path
) -> dict[str, Any]:
    import mlflow

    from tracelake.model_registry import FORMAT_TAG, register_artifacts
    from training import baseline, metrics

    features, labels = list(spec.tab_features), list(spec.label_names)
    with run.log.step("fit MLlib baseline", classifier=settings.baseline_classifier) as step:
        started = time.perf_counter()
        fitted = baseline.fit(df, features, labels, settings)
        wall_s = time.perf_counter() - started
        step.update(train_rows=fitted.train_rows, class_weights=fitted.class_weights)
    y_val, p_val, _ = baseline.predict_split(fitted.model, df, "validation", features, labels)
    thresholds = metrics.choose_thresholds(y_val, p_val, labels, settings.threshold_rule)
    y_test, p_test, test_epcs = baseline.predict_split(
        fitted.model, df, "test", features, labels, group_column="epc_code"
    )
    report = evaluate_test(settings, y_test, p_test, thresholds, labels, test_epcs)
    macro_pr_auc = report.macro_value("pr_auc")
    model_dir = workdir / "baseline_model"
    baseline.save(fitted.model, model_dir / "sparkml")
    tracking.write_json(
        model_dir / "baseline.json",
        {
            "features": features,
            "labels": labels,
            "thresholds": thresholds,
            "class_weights": fitted.class_weights,
            "test_report": report.to_dict(),
        },
    )
    with tracking.detector_run(BASELINE, context["training_set"], context["tags"]) as ml_run:
        mlflow.log_params(
            {
                "classifier": settings.baseline_classifier,
                "max_iter": settings.baseline_max_iter,
                "reg_param": settings.baseline_reg_param,
                "elastic_net": settings.baseline_elastic_net,
                "gbt_max_depth": settings.baseline_gbt_max_depth,
                "pos_weight_cap": settings.pos_weight_cap,
                "n_features": len(features),
                "train_rows": fitted.train_rows,
            }
        )
        tracking.log_evaluation(
            report, train_wall_s=wall_s, **{f"val_threshold_{k}": v for k, v in thresholds.items()}
        )
        plots.log_plots(workdir / "baseline_plots", None, y_test, p_test, thresholds, labels, "baseline")
        mlflow.log_artifacts(str(model_dir), "model")
        version = register_artifacts(
            settings.baseline_model_name,
            ml_run.info.run_id,
            "model",
            tags={
                **context["registry_tags"],
                FORMAT_TAG: "spark-ml",
                "test_macro_pr_auc": f"{macro_pr_auc:.6f}",
                "test_macro_roc_auc": f"{report.macro_value('roc_auc'):.6f}",
                "test_macro_f1": f"{report.macro_value('f1'):.6f}",
                "thresholds": json.dumps(thresholds),
            },
            description="Spark MLlib baseline: one classifier per anomaly type on the tabular features",
        )
    run.log.event(
        "registered",
        model=settings.baseline_model_name,
        version=version.version,
        test_macro_pr_auc=macro_pr_auc,
    )
    return {
        "model_name": settings.baseline_model_name,
        "version": str(version.version),
        "mlflow_run_id": ml_run.info.run_id,
        "report": report,
        "thresholds": thresholds,
        "class_weights": fitted.class_weights,
        "train_wall_s": wall_s,
    }


# --- the rules detector --------------------------------------------------------------------------


def train_rules(
    run: JobRun, settings: TrainingSettings, df: Any, spec: Any, context: dict[str, Any], *, workdir: Path
) -> dict[str, Any]:
    """Tune the rules on train + validation, score the test split, log and register them."""
    import mlflow
    from pyspark.sql import functions as F

    from tracelake.model_registry import (
        CHECKSUM_TAG,
        FORMAT_TAG,
        register_artifacts,
        sha256_of,
    )
    from training import metrics, rules

    labels = list(spec.label_names)

    def one_threshold(y: np.ndarray, score: np.ndarray) -> float:
        return metrics.choose_thresholds(y[:, None], score[:, None], ["_"], settings.threshold_rule)["_"]

    with run.log.step("tune rules") as step:
        started = time.perf_counter()
        detector = rules.tune(
            df.where(F.col("split").isin("train", "validation")),
            labels,
            pr_auc=metrics.pr_auc,
            choose_threshold=one_threshold,
        )
        wall_s = time.perf_counter() - started
        step.update(variants=dict(detector.variants))
    y_test, p_test, test_epcs = detector.labels_and_scores(df.where(F.col("split") == "test"), "epc_code")
    report = evaluate_test(settings, y_test, p_test, dict(detector.thresholds), labels, test_epcs)
    macro_pr_auc = report.macro_value("pr_auc")
    model_dir = workdir / "rules_model"
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "rules.json").write_text(detector.to_json())
    with tracking.detector_run(RULES, context["training_set"], context["tags"]) as ml_run:
        mlflow.log_params({f"variant_{label}": variant for label, variant in detector.variants.items()})
        tracking.log_evaluation(
            report, train_wall_s=wall_s, **{f"val_threshold_{k}": v for k, v in detector.thresholds.items()}
        )
        plots.log_plots(
            workdir / "rules_plots", None, y_test, p_test, dict(detector.thresholds), labels, "rules"
        )
        mlflow.log_artifacts(str(model_dir), "model")
        version = register_artifacts(
            settings.rules_model_name,
            ml_run.info.run_id,
            "model",
            tags={
                **context["registry_tags"],
                FORMAT_TAG: rules.FORMAT,
                CHECKSUM_TAG: sha256_of(model_dir / "rules.json"),
                "test_macro_pr_auc": f"{macro_pr_auc:.6f}",
                "thresholds": json.dumps(dict(detector.thresholds)),
            },
            description="Hand-written domain rules, one per anomaly type, tuned on train + validation",
        )
    run.log.event(
        "registered", model=settings.rules_model_name, version=version.version, test_macro_pr_auc=macro_pr_auc
    )
    return {
        "model_name": settings.rules_model_name,
        "version": str(version.version),
        "mlflow_run_id": ml_run.info.run_id,
        "report": report,
        "thresholds": dict(detector.thresholds),
        "variants": dict(detector.variants),
        "train_wall_s": wall_s,
    }


def split_column_values(files: Sequence[str], split: str, column: str) -> np.ndarray:
    """One column of a split's rows, in the order :func:`training.data.read_split` reads them."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    from training.data import SPLIT_COLUMN, _local_path

    filesystem, _ = storage.filesystem(_local_path(files[0]))
    dataset = pads.dataset(
        [storage.filesystem(_local_path(f))[1] for f in files], format="parquet", filesystem=filesystem
    )
    return (
        dataset.to_table(columns=[column], filter=pc.field(SPLIT_COLUMN) == split).column(column).to_numpy()
    )


def evaluate_test(
    settings: TrainingSettings,
    y: np.ndarray,
    p: np.ndarray,
    thresholds: dict[str, float],
    labels: list[str],
    epcs: np.ndarray | None,
) -> EvaluationReport:
    """A detector's test-split report: bootstrap CIs resampling whole EPCs, as the settings say."""
    return evaluation.evaluate(
        y,
        p,
        thresholds,
        labels,
        n_bootstrap=settings.bootstrap_samples,
        ci_level=settings.ci_level,
        seed=settings.seed,
        groups=epcs,
    )


def petastorm_available() -> bool:
    try:
        import petastorm  # noqa: F401
    except ImportError:
        return False
    return True


# --- the job -------------------------------------------------------------------------------------


def execute(
    run: JobRun,
    training_set: str,
    *,
    models: str | Sequence[str] | None = None,
    num_processes: int | None = None,
    local_mode: bool | None = None,
    use_gpu: bool | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    learning_rate: float | None = None,
    resume: bool = False,
    quick: bool = False,
    **overrides: Any,
) -> dict[str, Any]:
    """Train the chosen models on ``training/sets/<training_set>``, evaluate, log, register; see the module doc.

    ``overrides``: further ``TrainingSettings`` fields (e.g. ``onnx_exporter="torchscript"``); ``quick``
    applies :data:`QUICK_TRAINING` under them (demo-sized run).
    """
    from tracelake.tracking import configure_mlflow

    base = training_settings(run.settings.training, **QUICK_TRAINING) if quick else run.settings.training
    settings = training_settings(
        base,
        num_processes=num_processes,
        local_mode=local_mode,
        use_gpu=use_gpu,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        **overrides,
    )
    chosen = parse_models(models, settings.models)
    if LSTM in chosen and settings.loader == "petastorm" and not petastorm_available():
        raise TrainJobError(
            "training.loader=petastorm needs petastorm, which runs only on the Spark 3.5 line "
            "(make setup SPARK=3.5); use training.loader=arrow on this line"
        )
    spec_table = named_table_spec("training_set", name=training_set)
    if not table_exists(run.spark, spec_table, run.lake_root):
        raise TrainJobError(
            f"training set {training_set!r} does not exist at {spec_table.location(run.lake_root)}; "
            f"build it first: tracelake training-set --name {training_set} ..."
        )
    version = latest_version(run.spark, spec_table, run.lake_root)
    run.inputs[spec_table.name + f"[{training_set}]"] = version
    df = read_table(run.spark, spec_table, run.lake_root, version=version)
    spec = feature_spec(run.settings)
    immature = bool(commit_metadata(run.spark, spec_table, run.lake_root, version).get("immature_labels"))
    if immature:
        run.log.warning(
            "the training set was built with --allow-immature-labels: its test figures undercount "
            "anomalies and its models cannot be promoted",
            extra={"training_set": training_set},
        )
    tags = {
        "training_set": training_set,
        "training_set_version": str(version),
        "code_version": code_version(),
        "tracelake_run_id": run.run_id,
        IMMATURE_TAG: str(immature).lower(),
    }
    files = snapshot_files(run.spark, spec_table, run.lake_root, version) if LSTM in chosen else []
    context = {
        "training_set": training_set,
        "training_set_version": version,
        "tags": tags,
        "snapshot_files": files,
        "registry_tags": {
            "training_set": training_set,
            "training_set_version": str(version),
            "code_version": code_version(),
            "tracelake_run_id": run.run_id,
            IMMATURE_TAG: str(immature).lower(),
        },
    }
    if BASELINE in chosen:
        check_baseline_features(df, list(spec.tab_features), training_set)
    target = configure_mlflow(run.settings)
    results: dict[str, Any] = {}
    # All or nothing at the registry: a run that fails unregisters the versions it registered.
    with (
        tempfile.TemporaryDirectory(prefix="tracelake-train-") as tmp,
        atomic_registration(),
        tracking.parent_run(training_set, version=version, models=chosen, tags=tags) as parent,
    ):
        workdir = Path(tmp)
        if LSTM in chosen:
            results[LSTM] = train_lstm(run, settings, df, spec, context, resume=resume, workdir=workdir)
        if BASELINE in chosen:
            results[BASELINE] = train_baseline(run, settings, df, spec, context, workdir=workdir)
        if RULES in chosen:
            results[RULES] = train_rules(run, settings, df, spec, context, workdir=workdir)
        # The practical reference first, the learned detectors after it.
        reports: dict[str, EvaluationReport] = {
            name: results[name]["report"] for name in (RULES, BASELINE, LSTM) if name in results
        }
        table = evaluation.comparison_table(reports, COMPARISON_METRICS)
        positives = next(iter(reports.values())).positives()
        tracking.log_comparison(table, reports)
        parent_id = parent.info.run_id
    print(
        f"\nTest split of training set {training_set!r} (version {version}"
        f"{', IMMATURE labels' if immature else ''}); value [{int(settings.ci_level * 100)}% "
        f"bootstrap CI, EPCs resampled]; test positives {positives}:\n{table}\n"
    )
    summary = {
        "training_set": training_set,
        "training_set_version": version,
        "mlflow_run_id": parent_id,
        "tracking_uri": target.tracking_uri,
        "models": {
            name: {k: v for k, v in r.items() if k != "report"}
            | {
                "test_macro": {m: r["report"].macro_value(m) for m in ("pr_auc", "roc_auc", "f1")},
                "test_pr_auc": r["report"].label_values("pr_auc"),
            }
            for name, r in results.items()
        },
        "comparison": table,
        "test_positives": positives,
        "immature_labels": immature,
    }
    run.record_output(
        "models", **{name: {"name": r["model_name"], "version": r["version"]} for name, r in results.items()}
    )
    return summary


def check_baseline_features(df: Any, features: Sequence[str], training_set: str) -> None:
    """Stop before training when the train split has no rows, or a feature no value to impute from."""
    from pyspark.sql import functions as F

    value = {c: F.col(c).cast("double") for c in features}
    counts = (
        df.where(F.col("split") == "train")
        .select(
            F.count(F.lit(1)).alias("_rows"),
            *[F.count(F.when(value[c].isNotNull() & ~F.isnan(value[c]), 1)).alias(c) for c in features],
        )
        .first()
    )
    empty = [c for c in features if not counts[c]]
    if not counts["_rows"] or empty:
        what = "no rows" if not counts["_rows"] else f"no value in feature(s) {empty}"
        raise TrainJobError(
            f"training set {training_set!r}: the train split has {what} ({counts['_rows']} rows); "
            "too little data to train the baseline. Build the set over more days or events, or "
            "train only the LSTM (--models lstm)"
        )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return parse("train", argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    named_table_spec("training_set", name=args.training_set)  # a bad name fails before Spark starts
    models = parse_models(args.models, ["lstm"]) if args.models else None
    extra = {
        field: value
        for field, value in (
            ("hidden_size", args.hidden_size),
            ("early_stopping_patience", args.patience),
            ("seed", args.seed),
            ("baseline_classifier", args.baseline_classifier),
        )
        if value is not None
    }
    # TorchDistributor's processes (and executors) import training.* from the project.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH")) if p
    )
    with job_run(JOB, args) as run:
        summary = execute(
            run,
            args.training_set,
            models=models,
            num_processes=args.num_processes,
            local_mode=args.local_mode,
            use_gpu=args.use_gpu,
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            resume=args.resume,
            quick=args.quick,
            **extra,
        )
    summary.pop("comparison", None)
    print(json.dumps(summary, indent=2, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(run_entrypoint(main))
