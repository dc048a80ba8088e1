"""The MLlib baseline: one classifier per label on the tabular point-in-time features.

Pipeline (fit on the training split only): non-finite values -> null
(:func:`clean_features`), ``Imputer`` (training mean), ``VectorAssembler``,
``StandardScaler``, then one ``LogisticRegression`` (or ``GBTClassifier``) per
label with a per-row weight column that weights positives by
negatives/positives (at most ``pos_weight_cap``). The probabilities of the
validation and test splits are collected to the driver and scored by
:mod:`training.metrics`, the same code that scores the sequence model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.classification import GBTClassifier, LogisticRegression
from pyspark.ml.feature import Imputer, StandardScaler, VectorAssembler
from pyspark.ml.functions import vector_to_array
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from tracelake.config import TrainingSettings
from training.data import SPLIT_COLUMN

IMPUTED_SUFFIX = "__imputed"
FEATURES_COLUMN = "features_vec"
SCALED_COLUMN = "features_scaled"
ROW_ID = "_row_id"


def weight_column(label: str) -> str:
    return f"_weight_{label}"


def probability_column(label: str) -> str:
    return f"_prob_{label}"


def clean_features(df: DataFrame, features: Sequence[str]) -> DataFrame:
    """Tabular features as double, with NaN and +-infinity turned into null (the imputer fills them)."""

    def clean(name: str) -> Column:
        value = F.col(name).cast("double")
        finite = ~(F.isnan(value) | value.isin(float("inf"), float("-inf")))
        return F.when(finite, value).alias(name)

    others = [c for c in df.columns if c not in set(features)]
    return df.select(*others, *(clean(name) for name in features))


def class_weights(train: DataFrame, labels: Sequence[str], cap: float) -> dict[str, float]:
    """Per label, the weight of a positive row: negatives / positives, at most ``cap`` (1 without positives)."""
    row = train.agg(
        F.count(F.lit(1)).alias("_n"), *[F.sum(F.col(l).cast("double")).alias(l) for l in labels]
    ).first()
    n = float(row["_n"] or 0)
    weights = {}
    for label in labels:
        positives = float(row[label] or 0)
        weights[label] = min(cap, (n - positives) / positives) if positives > 0 else 1.0
    return weights


def with_weights(df: DataFrame, weights: dict[str, float]) -> DataFrame:
    """One weight column per label: the positive weight on positive rows, 1 elsewhere."""
    return df.select(
        "*",
        *[
            F.when(F.col(l) == 1, F.lit(w)).otherwise(F.lit(1.0)).alias(weight_column(l))
            for l, w in weights.items()
        ],
    )


def build_pipeline(features: Sequence[str], labels: Sequence[str], settings: TrainingSettings) -> Pipeline:
    imputed = [f"{name}{IMPUTED_SUFFIX}" for name in features]
    stages: list[Any] = [
        Imputer(inputCols=list(features), outputCols=imputed, strategy="mean"),
        VectorAssembler(inputCols=imputed, outputCol=FEATURES_COLUMN, handleInvalid="keep"),
        StandardScaler(inputCol=FEATURES_COLUMN, outputCol=SCALED_COLUMN, withMean=True, withStd=True),
    ]
    for label in labels:
        common = {"featuresCol": SCALED_COLUMN, "labelCol": label, "predictionCol": f"_pred_{label}"}
        outputs = {"probabilityCol": probability_column(label), "rawPredictionCol": f"_raw_{label}"}
        if settings.baseline_classifier == "gbt":
            # GBTClassifier's constructor does not take the output columns: set them after.
            stages.append(
                GBTClassifier(
                    weightCol=weight_column(label),
                    maxIter=settings.baseline_max_iter,
                    maxDepth=settings.baseline_gbt_max_depth,
                    seed=settings.seed,
                    **common,
                )
                .setProbabilityCol(outputs["probabilityCol"])
                .setRawPredictionCol(outputs["rawPredictionCol"])
            )
        else:
            stages.append(
                LogisticRegression(
                    weightCol=weight_column(label),
                    maxIter=settings.baseline_max_iter,
                    regParam=settings.baseline_reg_param,
                    elasticNetParam=settings.baseline_elastic_net,
                    **common,
                    **outputs,
                )
            )
    return Pipeline(stages=stages)


def prepare(
    df: DataFrame, features: Sequence[str], labels: Sequence[str], keep: Sequence[str] = ()
) -> DataFrame:
    """The columns the baseline reads: features (cleaned), labels as double, split (and ``keep``)."""
    selected = df.select(*keep, *features, *[F.col(l).cast("double").alias(l) for l in labels], SPLIT_COLUMN)
    return clean_features(selected, features)


@dataclass
class BaselineFit:
    model: PipelineModel
    class_weights: dict[str, float]
    train_rows: int


def fit(
    df: DataFrame, features: Sequence[str], labels: Sequence[str], settings: TrainingSettings
) -> BaselineFit:
    """Fit the pipeline on the ``train`` split of ``df`` (a training set)."""
    train = prepare(df, features, labels).where(F.col(SPLIT_COLUMN) == "train").cache()
    try:
        weights = class_weights(train, labels, settings.pos_weight_cap)
        rows = train.count()
        model = build_pipeline(features, labels, settings).fit(with_weights(train, weights))
    finally:
        train.unpersist()
    return BaselineFit(model, weights, rows)


def predict_split(
    model: PipelineModel,
    df: DataFrame,
    split: str,
    features: Sequence[str],
    labels: Sequence[str],
    group_column: str | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(labels [N, L], probabilities [N, L], ``group_column``'s values or None) of one split, on the driver."""
    rows = prepare(df, features, labels, keep=[group_column] if group_column else []).where(
        F.col(SPLIT_COLUMN) == split
    )
    scored = (
        model.transform(rows)
        .select(
            *([F.col(group_column).alias("_group")] if group_column else []),
            *[F.col(l).alias(f"y_{i}") for i, l in enumerate(labels)],
            *[vector_to_array(probability_column(l))[1].alias(f"p_{i}") for i, l in enumerate(labels)],
        )
        .toPandas()
    )
    y = scored[[f"y_{i}" for i in range(len(labels))]].to_numpy(dtype=np.float64).reshape(-1, len(labels))
    p = scored[[f"p_{i}" for i in range(len(labels))]].to_numpy(dtype=np.float64).reshape(-1, len(labels))
    return y, p, (scored["_group"].to_numpy() if group_column else None)


def save(model: PipelineModel, folder: str | Path) -> str:
    """Write the fitted pipeline (Spark ML format) to a local folder."""
    target = Path(folder)
    model.write().overwrite().save(str(target))
    return str(target)
