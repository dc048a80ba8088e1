"""Evaluation plots as PNG files, and their logging as MLflow artifacts.

Loss curves of the sequence model, precision-recall curves and confusion
matrices per label, drawn on matplotlib's Agg canvas directly (no global
backend switch). matplotlib is optional: without it the training job logs no
plots (:func:`log_plots`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training.metrics import check_arrays, pr_auc, precision_recall_curve


def matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Any, path: str | Path) -> str:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(target, format="png")
    return str(target)


def plot_loss_curves(history: Sequence[Mapping[str, Any]], path: str | Path) -> str:
    """Train and validation loss (and validation macro PR-AUC) per epoch."""
    from matplotlib.ticker import MaxNLocator

    figure = _figure(7, 4)
    axes = figure.add_subplot(1, 1, 1)
    epochs = [h["epoch"] for h in history]
    axes.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train loss")
    axes.plot(epochs, [h["val_loss"] for h in history], marker="o", label="validation loss")
    axes.set_xlabel("epoch")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel("loss (BCE, pos-weighted)")
    right = axes.twinx()
    right.plot(
        epochs,
        [h.get("val_macro_pr_auc", np.nan) for h in history],
        color="tab:green",
        marker="s",
        label="validation macro PR-AUC",
    )
    right.set_ylabel("macro PR-AUC")
    lines = axes.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    axes.legend(lines, [line.get_label() for line in lines], loc="best")
    return _save(figure, path)


def plot_pr_curves(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    label_names: Sequence[str],
    path: str | Path,
    title: str = "precision-recall",
) -> str:
    """One precision-recall curve per label, its PR-AUC in the legend."""
    y_true, y_prob = check_arrays(y_true, y_prob, label_names)
    figure = _figure(7, 5)
    axes = figure.add_subplot(1, 1, 1)
    for j, name in enumerate(label_names):
        curve = precision_recall_curve(y_true[:, j], y_prob[:, j])
        if curve is None:
            continue
        axes.plot(
            *curve,
            drawstyle="steps-post",
            label=f"{name} (PR-AUC {pr_auc(y_true[:, j], y_prob[:, j]):.3f})",
        )
    axes.set_xlabel("recall")
    axes.set_ylabel("precision")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.02)
    axes.set_title(title)
    axes.legend(loc="lower left")
    return _save(figure, path)


def plot_confusion_matrices(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    thresholds: Mapping[str, float],
    label_names: Sequence[str],
    path: str | Path,
) -> str:
    """A 2x2 confusion matrix per label at its threshold (rows: actual, columns: predicted)."""
    y_true, y_prob = check_arrays(y_true, y_prob, label_names)
    figure = _figure(3.2 * len(label_names), 3.4)
    for j, name in enumerate(label_names):
        axes = figure.add_subplot(1, len(label_names), j + 1)
        actual, predicted = y_true[:, j] == 1, y_prob[:, j] >= thresholds[name]
        matrix = np.array(
            [
                [np.sum(~actual & ~predicted), np.sum(~actual & predicted)],
                [np.sum(actual & ~predicted), np.sum(actual & predicted)],
            ]
        )
        axes.imshow(matrix, cmap="Blues")
        for (r, c), count in np.ndenumerate(matrix):
            axes.text(
                c,
                r,
                str(count),
                ha="center",
                va="center",
                color="white" if count > matrix.max() / 2 else "black",
            )
        axes.set_xticks([0, 1], ["0", "1"])
        axes.set_yticks([0, 1], ["0", "1"])
        axes.set_xlabel("predicted")
        axes.set_ylabel("actual")
        axes.set_title(f"{name} @ {thresholds[name]:.3f}")
    return _save(figure, path)


def log_plots(
    folder: Path,
    history: Sequence[Mapping[str, Any]] | None,
    y: np.ndarray,
    p: np.ndarray,
    thresholds: Mapping[str, float],
    labels: Sequence[str],
    model: str,
) -> None:
    """Loss curves (sequence model), PR curves and confusion matrices per label, drawn into ``folder`` and
    logged as the active MLflow run's ``plots`` artifacts; nothing without matplotlib."""
    import mlflow

    if not matplotlib_available():
        return
    if history:
        plot_loss_curves(history, folder / "loss_curves.png")
    plot_pr_curves(y, p, labels, folder / "pr_curves_test.png", title=f"{model}: test precision-recall")
    plot_confusion_matrices(y, p, thresholds, labels, folder / "confusion_matrices_test.png")
    mlflow.log_artifacts(str(folder), "plots")
