"""Evaluation of per-label probabilities: thresholds, metrics with bootstrap CIs, tables.

Works on plain arrays (``y_true``, ``y_prob``: [rows, labels]), so the MLlib
baseline and the sequence model are scored by the same code. Thresholds are
chosen on validation (:func:`choose_thresholds`) and applied unchanged to the
test split (:func:`evaluate`).

ROC-AUC and PR-AUC (average precision) are computed here from one sort per
label, with bootstrap resamples as row weights over that sort; the values
equal scikit-learn's ``roc_auc_score`` and ``average_precision_score``
(tests check it) at a fraction of the cost of calling them once per
resample. A metric that is undefined on a sample (e.g. no positives) is NaN
and left out of macro averages and confidence intervals. Plots of the same
arrays are in :mod:`training.plots`; the typed report in :mod:`training.evaluation`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

METRICS = ("roc_auc", "pr_auc", "precision", "recall", "f1")
# Bootstrap rows processed at once: resamples x rows stays below this many cells.
_BOOTSTRAP_CELLS = 20_000_000


def check_arrays(
    y_true: np.ndarray, y_prob: np.ndarray, label_names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """``y_true`` and ``y_prob`` as float [rows, labels] arrays; a clear error when they do not fit."""
    y_true, y_prob = np.asarray(y_true, dtype=np.float64), np.asarray(y_prob, dtype=np.float64)
    if y_true.ndim == 1:
        y_true, y_prob = y_true[:, None], y_prob.reshape(-1, 1)
    if y_true.shape != y_prob.shape or y_true.shape[1] != len(label_names):
        raise ValueError(
            f"y_true {y_true.shape} and y_prob {y_prob.shape} must both be [rows, {len(label_names)}] "
            f"for labels {list(label_names)}"
        )
    if not np.isin(y_true, (0.0, 1.0)).all():
        raise ValueError("y_true must hold only 0 and 1")
    if not np.isfinite(y_prob).all():
        raise ValueError("y_prob holds NaN or infinite values; a model produced non-finite scores")
    return y_true, y_prob


class _Ranked:
    """One label's rows sorted by decreasing score, with the ends of tied-score groups."""

    def __init__(self, y: np.ndarray, score: np.ndarray):
        self.order = np.argsort(-score, kind="mergesort")
        self.y = y[self.order]
        s = score[self.order]
        self.ends = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]

    def curves(self, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cumulative (tp, fp) at each distinct threshold; weights [B, N] in original row order."""
        w = weights[:, self.order]
        tp = np.cumsum(w * self.y.astype(w.dtype), axis=1)[:, self.ends]
        fp = np.cumsum(w, axis=1)[:, self.ends] - tp
        return tp, fp


def _auc_ap(tp: np.ndarray, fp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC-AUC (trapezoids, ties as sklearn) and average precision per resample row."""
    pos, neg = tp[:, -1], fp[:, -1]
    dtp = np.diff(tp, axis=1, prepend=0)
    dfp = np.diff(fp, axis=1, prepend=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        # Trapezoid between consecutive ROC points: dfp * (tp_prev + tp) / 2, with tp_prev = tp - dtp.
        roc = np.sum(dfp * (tp - dtp / 2), axis=1) / (pos * neg)
        ap = np.sum(dtp * (tp / np.maximum(tp + fp, 1)), axis=1) / pos
    roc[(pos == 0) | (neg == 0)] = np.nan
    ap[pos == 0] = np.nan
    return roc, ap


def _at_threshold(
    y: np.ndarray, score: np.ndarray, threshold: float, weights: np.ndarray
) -> dict[str, np.ndarray]:
    predicted = score >= threshold
    tp = weights @ (y * predicted)
    fp = weights @ ((1.0 - y) * predicted)
    fn = weights @ (y * ~predicted)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = np.where(tp + fn > 0, tp / (tp + fn), np.nan)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    f1 = np.where(np.isnan(recall), np.nan, f1)
    return {"precision": precision, "recall": recall, "f1": f1}


def _label_metrics(
    y: np.ndarray, score: np.ndarray, threshold: float, weights: np.ndarray
) -> dict[str, np.ndarray]:
    ranked = _Ranked(y, score)
    roc, ap = _auc_ap(*ranked.curves(weights))
    return {"roc_auc": roc, "pr_auc": ap, **_at_threshold(y, score, threshold, weights)}


def roc_auc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    y, s = np.asarray(y_true, np.float64), np.asarray(y_score, np.float64)
    return float(_auc_ap(*_Ranked(y, s).curves(np.ones((1, len(y)))))[0][0])


def pr_auc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Average precision (scikit-learn's definition); NaN without positives."""
    y, s = np.asarray(y_true, np.float64), np.asarray(y_score, np.float64)
    return float(_auc_ap(*_Ranked(y, s).curves(np.ones((1, len(y)))))[1][0])


def precision_recall_curve(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(recall, precision) at each distinct threshold, from (0, 1); None without positives."""
    y, s = np.asarray(y_true, np.float64), np.asarray(y_score, np.float64)
    tp, fp = (c[0] for c in _Ranked(y, s).curves(np.ones((1, len(y)))))
    if tp[-1] == 0:
        return None
    return np.r_[0.0, tp / tp[-1]], np.r_[1.0, tp / (tp + fp)]


def per_label_pr_auc(y_true: np.ndarray, y_prob: np.ndarray, label_names: Sequence[str]) -> dict[str, float]:
    y_true, y_prob = check_arrays(y_true, y_prob, label_names)
    return {name: pr_auc(y_true[:, j], y_prob[:, j]) for j, name in enumerate(label_names)}


def macro(values: Mapping[str, float] | Sequence[float]) -> float:
    """Mean over labels where the metric is defined (NaN when none is)."""
    array = np.asarray(list(values.values()) if isinstance(values, Mapping) else values, dtype=np.float64)
    return float(np.nanmean(array)) if np.isfinite(array).any() else float("nan")


def choose_thresholds(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    label_names: Sequence[str],
    rule: str = "max_f1",
    default: float = 0.5,
) -> dict[str, float]:
    """Per label, the probability threshold (predict positive when prob >= threshold) that the rule picks.

    ``max_f1``: the threshold with the highest F1 on these (validation) rows. A
    label without positives gets ``default``.
    """
    if rule != "max_f1":
        raise ValueError(f"threshold rule {rule!r} is unknown; use 'max_f1'")
    y_true, y_prob = check_arrays(y_true, y_prob, label_names)
    thresholds: dict[str, float] = {}
    for j, name in enumerate(label_names):
        ranked = _Ranked(y_true[:, j], y_prob[:, j])
        tp, fp = (c[0] for c in ranked.curves(np.ones((1, len(y_true)))))
        if tp[-1] == 0:
            thresholds[name] = default
            continue
        f1 = 2 * tp / (tp + fp + tp[-1])  # 2PR/(P+R) = 2tp / (predicted + actual positives)
        best = int(np.argmax(f1))
        thresholds[name] = float(y_prob[ranked.order, j][ranked.ends[best]])
    return thresholds


def _bootstrap_weights(
    n_rows: int, n_samples: int, rng: np.random.Generator, groups: np.ndarray | None = None
) -> Any:
    """Yields [b, n_rows] row-count matrices of multinomial resamples, in chunks.

    With ``groups`` (one key per row, e.g. the EPC), whole groups are resampled: a row's
    weight is how often its group was drawn. Events of one EPC are not independent (one
    fake EPC is many positive rows), so a row bootstrap would give too narrow intervals.
    """
    if groups is None:
        units, unit_of_row = n_rows, None
    else:
        _, unit_of_row = np.unique(np.asarray(groups), return_inverse=True)
        units = int(unit_of_row.max()) + 1 if n_rows else 0
    chunk = max(1, _BOOTSTRAP_CELLS // max(n_rows, units, 1))
    done = 0
    while done < n_samples:
        b = min(chunk, n_samples - done)
        index = rng.integers(0, units, size=(b, units)) + (np.arange(b) * units)[:, None]
        # float32 counts: exact below 2**24 rows, and half the memory traffic of float64.
        counts = np.bincount(index.ravel(), minlength=b * units).reshape(b, units).astype(np.float32)
        yield counts if unit_of_row is None else counts[:, unit_of_row]
        done += b


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
) -> dict[str, Any]:
    """Per-label and macro ROC-AUC, PR-AUC, precision, recall, F1 (at ``thresholds``) with bootstrap CIs.

    ``groups``: one key per row (the EPC); the bootstrap then resamples whole groups.

    Returns ``{"n_rows", "n_bootstrap", "ci_level", "labels": {label: {"threshold", "positives",
    metric: {"value", "ci_low", "ci_high"}}}, "macro": {metric: {...}}}``. The same resampled rows
    serve every label, so the macro CI is a CI of the macro average.
    """
    y_true, y_prob = check_arrays(y_true, y_prob, label_names)
    missing = [name for name in label_names if name not in thresholds]
    if missing:
        raise ValueError(f"no threshold for label(s) {missing}; choose them on validation first")
    n_rows = len(y_true)
    ones = np.ones((1, n_rows))
    point = {
        name: _label_metrics(y_true[:, j], y_prob[:, j], thresholds[name], ones)
        for j, name in enumerate(label_names)
    }
    samples: dict[str, dict[str, list[np.ndarray]]] = {name: {m: [] for m in METRICS} for name in label_names}
    if n_bootstrap > 0 and n_rows > 0:
        ranked = [_Ranked(y_true[:, j], y_prob[:, j]) for j in range(len(label_names))]
        for weights in _bootstrap_weights(n_rows, n_bootstrap, np.random.default_rng(seed), groups):
            for j, name in enumerate(label_names):
                roc, ap = _auc_ap(*ranked[j].curves(weights))
                values = {
                    "roc_auc": roc,
                    "pr_auc": ap,
                    **_at_threshold(y_true[:, j], y_prob[:, j], thresholds[name], weights),
                }
                for metric in METRICS:
                    samples[name][metric].append(values[metric])
    tail = (1.0 - ci_level) / 2.0 * 100.0

    def summary(value: float, draws: np.ndarray | None) -> dict[str, float]:
        low = high = float("nan")
        if draws is not None and np.isfinite(draws).any():
            low, high = (float(x) for x in np.nanpercentile(draws, [tail, 100.0 - tail]))
        return {"value": float(value), "ci_low": low, "ci_high": high}

    labels: dict[str, Any] = {}
    stacked: dict[str, dict[str, np.ndarray | None]] = {}
    for j, name in enumerate(label_names):
        stacked[name] = {m: (np.concatenate(samples[name][m]) if samples[name][m] else None) for m in METRICS}
        labels[name] = {
            "threshold": float(thresholds[name]),
            "positives": int(y_true[:, j].sum()),
            **{m: summary(point[name][m][0], stacked[name][m]) for m in METRICS},
        }
    macro_summary: dict[str, Any] = {}
    for metric in METRICS:
        value = macro([labels[name][metric]["value"] for name in label_names])
        draws = None
        if n_bootstrap > 0 and n_rows > 0:
            matrix = np.stack([stacked[name][metric] for name in label_names])  # [labels, B]
            with warnings.catch_warnings():  # all-NaN resamples stay NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                draws = np.nanmean(matrix, axis=0)
        macro_summary[metric] = summary(value, draws)
    return {
        "n_rows": n_rows,
        "n_bootstrap": n_bootstrap,
        "ci_level": ci_level,
        "labels": labels,
        "macro": macro_summary,
        "bootstrap_unit": "row" if groups is None else "group",
    }


def flat_metrics(report: Mapping[str, Any], prefix: str = "test") -> dict[str, float]:
    """``{"test_pr_auc_jump": 0.8, "test_macro_pr_auc": 0.7, "test_positives_jump": 120, ...}`` for a tracker."""
    flat: dict[str, float] = {}
    for metric in METRICS:
        flat[f"{prefix}_macro_{metric}"] = report["macro"][metric]["value"]
        for name, values in report["labels"].items():
            flat[f"{prefix}_{metric}_{name}"] = values[metric]["value"]
    for name, values in report["labels"].items():
        flat[f"{prefix}_positives_{name}"] = float(values["positives"])
    return flat


def _cell(entry: Mapping[str, float]) -> str:
    value, low, high = entry["value"], entry["ci_low"], entry["ci_high"]
    if not np.isfinite(value):
        return "n/a"
    if np.isfinite(low) and np.isfinite(high):
        return f"{value:.3f} [{low:.3f}, {high:.3f}]"
    return f"{value:.3f}"


def comparison_rows(
    reports: Mapping[str, Mapping[str, Any]], metrics: Sequence[str] = METRICS
) -> list[dict[str, str]]:
    """One row per (label, metric), then the macro rows; a column per model."""
    names = list(reports)
    labels = list(next(iter(reports.values()))["labels"])
    rows = []
    for label in [*labels, "macro"]:
        for metric in metrics:
            row = {"label": label, "metric": metric}
            for model in names:
                section = reports[model]["macro"] if label == "macro" else reports[model]["labels"][label]
                row[model] = _cell(section[metric])
            rows.append(row)
    return rows


def comparison_table(reports: Mapping[str, Mapping[str, Any]], metrics: Sequence[str] = METRICS) -> str:
    """A markdown table comparing models side by side (value [CI low, CI high])."""
    rows = comparison_rows(reports, metrics)
    header = ["label", "metric", *reports]
    widths = [max(len(h), *(len(r[h]) for r in rows)) for h in header]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=False)) + " |",
        "| " + " | ".join("-" * w for w in widths) + " |",
    ]
    lines += [
        "| " + " | ".join(r[h].ljust(w) for h, w in zip(header, widths, strict=False)) + " |" for r in rows
    ]
    return "\n".join(lines)
