"""The promotion gate: move a registered model's ``champion`` alias to its ``challenger`` only if it is better.

    spark-submit spark_jobs/promote.py
    tracelake promote --models lstm,baseline --metric macro_pr_auc --margin 0.01

For each model (``tracelake-anomaly-lstm``, ``tracelake-anomaly-baseline``):

- no ``champion`` yet: the challenger becomes champion (the first model);
- a challenger trained on a set built with ``--allow-immature-labels`` is
  never promoted;
- else both versions are scored on the same rows: the test window (days) of
  the training set the challenger was trained on, rebuilt *now* from the
  current event features and the current ``silver/labels`` -- the labels
  known at gate time, spread over their incidents as for a training set --
  and only once that window's labels are mature (``labels.max_delay_days``
  after its last day). The LSTM
  versions run their registered ONNX files in ONNX Runtime (the bytes scoring
  will use, checksum verified); the baseline versions their Spark ML
  pipelines. Thresholds are each version's own (chosen on its validation split).
- the challenger is promoted only when ``metric(challenger) - metric(champion)
  > margin`` (``training.promotion_metric``, default macro PR-AUC, and
  ``training.promotion_margin``); the decision and the numbers are printed and
  recorded as tags on the challenger version (``promotion_decision``) and, when
  promoted, ``previous_champion`` (which ``tracelake rollback`` goes back to).

A version that was rolled back (tag ``rolled_back``) is not promoted again
unless ``--force`` is given.

Registry moves need no Spark: the command starts a session only when it must
rebuild a test window to score a challenger against a champion (see
:mod:`training.registry`); the alias moves and tags are
:mod:`tracelake.model_registry`'s.

All or nothing: every requested model is checked (it has a challenger, its
tags name a training set) and scored before any alias moves; a model that
cannot be judged fails the run with nothing promoted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tracelake.arguments import parse
from tracelake.errors import TracelakeError
from tracelake.model_registry import (
    CHALLENGER,
    CHAMPION,
    DECISION_TAG,
    DEFAULT_DETECTORS,
    DETECTORS,
    IMMATURE_TAG,
    PREVIOUS_CHAMPION_TAG,
    ROLLED_BACK_TAG,
    AliasChanges,
    alias_version,
    decision_time,
    get_version,
    registered_model_names,
)
from tracelake.runs import JobRun, run_entrypoint
from training.registry import RegistryRun, registry_run

JOB = "promote"
MODELS, DEFAULT_MODELS = DETECTORS, DEFAULT_DETECTORS
METRIC_KEYS = {"macro_pr_auc": "pr_auc", "macro_roc_auc": "roc_auc", "macro_f1": "f1"}
# Re-exported: the tags a decision leaves (tests and operators read them from here).
__all__ = ["DECISION_TAG", "IMMATURE_TAG", "PREVIOUS_CHAMPION_TAG", "ROLLED_BACK_TAG", "execute", "main"]

# The gate reads the run's settings and log; ``run.spark`` only when it rebuilds a test window.
Run = RegistryRun | JobRun


class PromotionError(TracelakeError, RuntimeError):
    """The promotion gate cannot decide (missing tags, training set or artifacts)."""


# --- scoring a registered version on a training set's test split ----------------------------------


def gate_window(
    run: Run, training_set: str, version: int | None, now: dt.datetime
) -> tuple[Any, dict[str, str]]:
    """The challenger's test window rebuilt at gate time: (rows with labels known ``now``, window info).

    The days are the training set's test days (its commit info); the features are the current
    ones of those days; the labels are every label of silver/labels confirmed by ``now``.
    Raises :class:`ImmatureLabelsError` when the window's labels are not all in yet.
    """
    from pyspark.sql import functions as F

    from spark_jobs.transforms.training_set import check_mature
    from spark_jobs.transforms.training_set import training_set as build_set
    from tracelake.tables import (
        commit_metadata,
        latest_version,
        named_table_spec,
        read_table,
        table_spec,
    )

    spec = named_table_spec("training_set", name=training_set)
    try:
        if version is None:
            version = latest_version(run.spark, spec, run.lake_root)
        meta = commit_metadata(run.spark, spec, run.lake_root, version if version is not None else 0)
        first, last = (
            dt.date.fromisoformat(meta["split"]["test_start"]),
            dt.date.fromisoformat(meta["last_day"]),
        )
    except Exception as exc:
        raise PromotionError(
            f"cannot read the test window of training set {training_set!r} version {version} at "
            f"{spec.location(run.lake_root)} ({exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0][:200]}); rebuild it or promote by retraining"
        ) from None
    check_mature(last, now, run.settings.label_max_delay_days, what=f"gate ({training_set} test)")
    features = read_table(run.spark, table_spec("features_event_features"), run.lake_root).where(
        F.col("event_date").between(F.lit(first), F.lit(last))
    )
    labels = read_table(run.spark, table_spec("silver_labels"), run.lake_root)
    window = build_set(features, labels, as_of=now, validation_start=first, test_start=first)
    return window, {
        "first_day": first.isoformat(),
        "last_day": last.isoformat(),
        "labels_as_of": now.isoformat(),
    }


def score_lstm(
    run: Run, name: str, version: Any, test_df: Any, workdir: Path
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """(labels, probabilities, thresholds) of an ONNX version on the test rows (ONNX Runtime)."""
    from tracelake.model_registry import fetch_onnx_model
    from training.data import FeatureSpec, columns_to_arrays
    from training.onnx_export import read_metadata, run_onnx
    from training.spark_data import model_columns

    resolved = fetch_onnx_model(f"models:/{name}/{version.version}", workdir / f"{name}-{version.version}")
    meta = read_metadata(resolved.path)
    spec = FeatureSpec.from_dict(meta["feature_spec"])
    if not meta.get("thresholds"):
        raise PromotionError(f"{name} version {version.version} carries no thresholds in its ONNX metadata")
    arrays = columns_to_arrays(model_columns(test_df, spec).toPandas(), spec)
    return arrays.labels.astype(np.float64), run_onnx(resolved.path, arrays), dict(meta["thresholds"])


def score_baseline(
    run: Run, name: str, version: Any, test_df: Any, workdir: Path
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """(labels, probabilities, thresholds) of a Spark ML baseline version on the test rows."""
    import mlflow
    from pyspark.ml import PipelineModel

    from training import baseline

    local = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=version.source, dst_path=str(workdir / f"{name}-{version.version}")
        )
    )
    info_file = local / "baseline.json"
    if not info_file.is_file():
        raise PromotionError(
            f"{name} version {version.version} ({version.source}) holds no baseline.json; "
            "it was not registered by tracelake train"
        )
    info = json.loads(info_file.read_text())
    model = PipelineModel.load(str(local / "sparkml"))
    y, p, _ = baseline.predict_split(model, test_df, "test", info["features"], info["labels"])
    return y, p, dict(info["thresholds"])


def score_rules(
    run: Run, name: str, version: Any, test_df: Any, workdir: Path
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """(labels, scores, thresholds) of a registered rules detector on the test rows."""
    import mlflow

    from training.rules import RulesDetector

    local = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=version.source, dst_path=str(workdir / f"{name}-{version.version}")
        )
    )
    detector = RulesDetector.from_json((local / "rules.json").read_text())
    y, p, _ = detector.labels_and_scores(test_df)
    return y, p, dict(detector.thresholds)


def score_version(
    run: Run, kind: str, name: str, version: Any, test_df: Any, metric: str, workdir: Path
) -> dict[str, Any]:
    from training import evaluation

    scorer = {"lstm": score_lstm, "baseline": score_baseline, "rules": score_rules}[kind]
    y, p, thresholds = scorer(run, name, version, test_df, workdir)
    report = evaluation.evaluate(y, p, thresholds, list(thresholds), n_bootstrap=0)
    key = METRIC_KEYS[metric]
    return {
        "version": str(version.version),
        "rows": len(y),
        metric: report.macro_value(key),
        "per_label": report.label_values(key),
    }


# --- the gate --------------------------------------------------------------------------------------


def decide(challenger: float, champion: float, margin: float) -> bool:
    """Promote only when the challenger beats the champion by more than ``margin``."""
    return bool(np.isfinite(challenger) and (not np.isfinite(champion) or challenger - champion > margin))


def check_promotable(name: str) -> None:
    """Fail before anything moves when ``name`` has no challenger, or one without a training_set tag
    while a champion exists (it could not be judged)."""
    challenger = get_version(name, alias=CHALLENGER)
    champion = alias_version(name, CHAMPION)
    if (
        champion is not None
        and str(champion.version) != str(challenger.version)
        and not (challenger.tags or {}).get("training_set")
    ):
        raise PromotionError(
            f"{name} version {challenger.version} has no training_set tag; "
            "register models with tracelake train"
        )


def promote_one(
    run: Run, kind: str, name: str, *, metric: str, margin: float, force: bool, client: Any = None
) -> dict[str, Any]:
    """Decide for one model; the alias and tag changes go to ``client`` (:func:`execute` passes a
    :class:`~tracelake.model_registry.AliasChanges`, applied once every model is decided; default: the registry at once)."""
    from mlflow import MlflowClient

    client = client if client is not None else MlflowClient()
    challenger = get_version(name, alias=CHALLENGER)
    champion = alias_version(name, CHAMPION)
    outcome: dict[str, Any] = {
        "model": name,
        "challenger": str(challenger.version),
        "champion_before": str(champion.version) if champion else None,
        "metric": metric,
        "margin": margin,
    }
    tags = dict(challenger.tags or {})
    if champion is not None and str(champion.version) == str(challenger.version):
        outcome.update(
            promoted=False,
            champion=str(champion.version),
            reason=f"version {challenger.version} is already the champion",
        )
        return outcome
    if tags.get(ROLLED_BACK_TAG) and not force:
        outcome.update(
            promoted=False,
            champion=str(champion.version) if champion else None,
            reason=f"version {challenger.version} was rolled back ({tags[ROLLED_BACK_TAG]}); "
            "pass --force to promote it again",
        )
        return outcome
    if str(tags.get(IMMATURE_TAG, "false")).lower() == "true":
        outcome.update(
            promoted=False,
            champion=str(champion.version) if champion else None,
            reason=f"version {challenger.version} was trained on a set built with --allow-immature-labels; "
            "its test figures undercount anomalies: retrain on a set with mature labels",
        )
        client.set_model_version_tag(
            name, challenger.version, DECISION_TAG, f"{decision_time()} refused: {outcome['reason']}"
        )
        return outcome
    if champion is None:
        client.set_registered_model_alias(name, CHAMPION, challenger.version)
        reason = f"no champion yet: version {challenger.version} becomes the first champion"
        client.set_model_version_tag(
            name, challenger.version, DECISION_TAG, f"{decision_time()} promoted: {reason}"
        )
        outcome.update(promoted=True, champion=str(challenger.version), reason=reason)
        return outcome
    training_set = tags.get("training_set")
    if not training_set:
        raise PromotionError(
            f"{name} version {challenger.version} has no training_set tag; "
            "register models with tracelake train"
        )
    set_version = tags.get("training_set_version")
    from spark_jobs.transforms.training_set import ImmatureLabelsError

    gate_time = dt.datetime.now(dt.UTC)
    try:
        test_df, window = gate_window(
            run, training_set, int(set_version) if set_version not in (None, "", "None") else None, gate_time
        )
    except ImmatureLabelsError as exc:
        outcome.update(promoted=False, champion=str(champion.version), reason=f"cannot judge yet: {exc}")
        return outcome
    test_df = test_df.cache()
    with tempfile.TemporaryDirectory(prefix="tracelake-promote-") as tmp:
        scores = {
            role: score_version(run, kind, name, version, test_df, metric, Path(tmp))
            for role, version in (("challenger", challenger), ("champion", champion))
        }
    new, old = scores["challenger"][metric], scores["champion"][metric]
    promoted = decide(new, old, margin)
    verdict = "better" if promoted else "not better"
    test_df.unpersist()
    reason = (
        f"on the test days {window['first_day']}..{window['last_day']} of training set {training_set} "
        f"(version {set_version}, {scores['challenger']['rows']} rows, labels as of {window['labels_as_of']}) "
        f"{metric} of challenger v{challenger.version} = {new:.4f}, "
        f"champion v{champion.version} = {old:.4f}: difference {new - old:+.4f} is {verdict} than the "
        f"margin {margin:g}"
    )
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, challenger.version)
        client.set_model_version_tag(name, challenger.version, PREVIOUS_CHAMPION_TAG, str(champion.version))
    client.set_model_version_tag(
        name,
        challenger.version,
        DECISION_TAG,
        f"{decision_time()} {'promoted' if promoted else 'refused'}: {reason}",
    )
    outcome.update(
        promoted=promoted,
        champion=str(challenger.version if promoted else champion.version),
        reason=reason,
        scores=scores,
        training_set=training_set,
        training_set_version=set_version,
        window=window,
    )
    return outcome


def execute(
    run: Run,
    *,
    models: Sequence[str] | None = None,
    metric: str | None = None,
    margin: float | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Run the gate for each model; returns ``{model name: outcome}`` (promoted, champion, reason, scores)."""
    from tracelake.tracking import configure_mlflow

    configure_mlflow(run.settings)
    metric = metric or run.settings.training.promotion_metric
    if metric not in METRIC_KEYS:
        raise PromotionError(f"--metric {metric!r} is unknown; use one of {', '.join(METRIC_KEYS)}")
    margin = run.settings.training.promotion_margin if margin is None else margin
    if margin < 0:
        raise PromotionError(f"--margin {margin} must be >= 0")
    names = registered_model_names(run.settings.training, models)
    for name in names.values():  # every model is checked before any is scored or moved
        check_promotable(name)
    outcomes, changes = {}, AliasChanges()
    for kind, name in names.items():
        outcomes[name] = promote_one(
            run, kind, name, metric=metric, margin=margin, force=force, client=changes
        )
    changes.apply()
    for name, outcome in outcomes.items():
        run.log.event("promotion decision", **{k: v for k, v in outcome.items() if k != "scores"})
        print(
            f"{name}: {'PROMOTED' if outcome['promoted'] else 'kept champion'} "
            f"v{outcome['champion']} — {outcome['reason']}"
        )
    return outcomes


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return parse("promote", argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    with registry_run(JOB, args) as run:
        outcomes = execute(run, models=models, metric=args.metric, margin=args.margin, force=args.force)
    print(json.dumps(outcomes, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(run_entrypoint(main))
