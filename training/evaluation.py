"""The evaluation report as types: per-label and macro metrics with their bootstrap CIs.

:func:`training.metrics.evaluate` computes the report as the JSON document that
the training job writes and logs (``evaluation.json``, ``baseline.json``);
:class:`EvaluationReport` is the same report with attributes, for the code that
reads it, and :meth:`EvaluationReport.to_dict` gives the document back unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from training import metrics


@dataclass(frozen=True)
class Estimate:
    """A metric's value on the evaluated rows and its bootstrap CI (NaN where undefined)."""

    value: float
    ci_low: float
    ci_high: float

    @classmethod
    def from_dict(cls, entry: Mapping[str, float]) -> Estimate:
        return cls(float(entry["value"]), float(entry["ci_low"]), float(entry["ci_high"]))

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, "ci_low": self.ci_low, "ci_high": self.ci_high}


@dataclass(frozen=True)
class LabelEvaluation:
    """One label: its threshold, its positive rows and every metric of :data:`training.metrics.METRICS`."""

    threshold: float
    positives: int
    metrics: Mapping[str, Estimate]

    @property
    def pr_auc(self) -> Estimate:
        return self.metrics["pr_auc"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "positives": self.positives,
            **{name: estimate.to_dict() for name, estimate in self.metrics.items()},
        }


@dataclass(frozen=True)
class EvaluationReport:
    """Per-label and macro metrics of one detector on one split (see :func:`training.metrics.evaluate`)."""

    n_rows: int
    n_bootstrap: int
    ci_level: float
    labels: Mapping[str, LabelEvaluation]
    macro: Mapping[str, Estimate]
    bootstrap_unit: str

    @classmethod
    def from_dict(cls, report: Mapping[str, Any]) -> EvaluationReport:
        return cls(
            n_rows=int(report["n_rows"]),
            n_bootstrap=int(report["n_bootstrap"]),
            ci_level=float(report["ci_level"]),
            labels={
                name: LabelEvaluation(
                    threshold=float(entry["threshold"]),
                    positives=int(entry["positives"]),
                    metrics={m: Estimate.from_dict(entry[m]) for m in metrics.METRICS},
                )
                for name, entry in report["labels"].items()
            },
            macro={m: Estimate.from_dict(report["macro"][m]) for m in metrics.METRICS},
            bootstrap_unit=str(report["bootstrap_unit"]),
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON document :func:`training.metrics.evaluate` returns (same keys, same order)."""
        return {
            "n_rows": self.n_rows,
            "n_bootstrap": self.n_bootstrap,
            "ci_level": self.ci_level,
            "labels": {name: label.to_dict() for name, label in self.labels.items()},
            "macro": {name: estimate.to_dict() for name, estimate in self.macro.items()},
            "bootstrap_unit": self.bootstrap_unit,
        }

    def macro_value(self, metric: str) -> float:
        return self.macro[metric].value

    def label_values(self, metric: str) -> dict[str, float]:
        """``metric``'s value per label, e.g. the per-label PR-AUC."""
        return {name: label.metrics[metric].value for name, label in self.labels.items()}

    def positives(self) -> dict[str, int]:
        return {name: label.positives for name, label in self.labels.items()}

    def flat_metrics(self, prefix: str = "test") -> dict[str, float]:
        """The tracker's metrics (see :func:`training.metrics.flat_metrics`)."""
        return metrics.flat_metrics(self.to_dict(), prefix)


def evaluate(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    thresholds: Mapping[str, float],
    label_names: Sequence[str],
    *,
    n_bootstrap: int = 1000,
    ci_level: float = 0.95,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> EvaluationReport:
    """:func:`training.metrics.evaluate` as an :class:`EvaluationReport`."""
    return EvaluationReport.from_dict(
        metrics.evaluate(
            y_true,
            y_prob,
            thresholds,
            label_names,
            n_bootstrap=n_bootstrap,
            ci_level=ci_level,
            seed=seed,
            groups=groups,
        )
    )


def comparison_table(
    reports: Mapping[str, EvaluationReport], metric_names: Sequence[str] = metrics.METRICS
) -> str:
    """:func:`training.metrics.comparison_table` of typed reports."""
    return metrics.comparison_table({name: r.to_dict() for name, r in reports.items()}, metric_names)
