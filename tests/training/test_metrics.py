import json

import numpy as np
import pytest
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from training import evaluation, metrics, plots

LABELS = ("a", "b", "c")


@pytest.fixture(scope="module")
def arrays():
    rng = np.random.default_rng(7)
    n = 600
    y = (rng.random((n, 3)) < [0.1, 0.3, 0.05]).astype(float)
    # Rounded scores: many ties, which the rank-based code must treat like sklearn.
    p = np.clip(np.round(0.4 * rng.random((n, 3)) + 0.35 * y + 0.1 * rng.normal(size=(n, 3)), 2), 0, 1)
    return y, p


def test_auc_and_average_precision_equal_sklearn(arrays):
    y, p = arrays
    for j in range(3):
        assert metrics.roc_auc(y[:, j], p[:, j]) == pytest.approx(roc_auc_score(y[:, j], p[:, j]), abs=1e-12)
        assert metrics.pr_auc(y[:, j], p[:, j]) == pytest.approx(
            average_precision_score(y[:, j], p[:, j]), abs=1e-12
        )
    assert np.isnan(metrics.pr_auc(np.zeros(5), np.linspace(0, 1, 5)))


def test_bootstrap_weights_equal_sklearn_sample_weight(arrays):
    y, p = arrays
    weights = np.bincount(np.random.default_rng(1).integers(0, len(y), len(y)), minlength=len(y))
    ranked = metrics._Ranked(y[:, 1], p[:, 1])
    roc, ap = metrics._auc_ap(*ranked.curves(weights[None, :].astype(np.float32)))
    assert roc[0] == pytest.approx(roc_auc_score(y[:, 1], p[:, 1], sample_weight=weights), abs=1e-6)
    assert ap[0] == pytest.approx(average_precision_score(y[:, 1], p[:, 1], sample_weight=weights), abs=1e-6)


def test_thresholds_maximise_f1_on_validation(arrays):
    y, p = arrays
    thresholds = metrics.choose_thresholds(y, p, LABELS)
    for j, name in enumerate(LABELS):
        best = max(f1_score(y[:, j], p[:, j] >= t) for t in np.unique(p[:, j]))
        assert f1_score(y[:, j], p[:, j] >= thresholds[name]) == pytest.approx(best, abs=1e-12)


def test_evaluate_point_values_and_intervals(arrays):
    y, p = arrays
    thresholds = {"a": 0.5, "b": 0.45, "c": 0.6}
    report = metrics.evaluate(y, p, thresholds, LABELS, n_bootstrap=300, seed=3)
    for j, name in enumerate(LABELS):
        row, pred = report["labels"][name], p[:, j] >= thresholds[name]
        assert row["positives"] == int(y[:, j].sum())
        assert row["roc_auc"]["value"] == pytest.approx(roc_auc_score(y[:, j], p[:, j]), abs=1e-12)
        assert row["pr_auc"]["value"] == pytest.approx(average_precision_score(y[:, j], p[:, j]), abs=1e-12)
        assert row["precision"]["value"] == pytest.approx(precision_score(y[:, j], pred, zero_division=0))
        assert row["recall"]["value"] == pytest.approx(recall_score(y[:, j], pred))
        assert row["f1"]["value"] == pytest.approx(f1_score(y[:, j], pred))
        for metric in metrics.METRICS:
            assert row[metric]["ci_low"] <= row[metric]["value"] <= row[metric]["ci_high"]
    macro_pr = np.mean([average_precision_score(y[:, j], p[:, j]) for j in range(3)])
    assert report["macro"]["pr_auc"]["value"] == pytest.approx(macro_pr)
    # Seeded: the same seed gives the same intervals, another seed others.
    again = metrics.evaluate(y, p, thresholds, LABELS, n_bootstrap=300, seed=3)
    other = metrics.evaluate(y, p, thresholds, LABELS, n_bootstrap=300, seed=4)
    assert again == report
    assert other["macro"]["pr_auc"]["ci_low"] != report["macro"]["pr_auc"]["ci_low"]
    flat = metrics.flat_metrics(report)
    assert flat["test_macro_pr_auc"] == report["macro"]["pr_auc"]["value"]
    assert flat["test_f1_b"] == report["labels"]["b"]["f1"]["value"]


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="only 0 and 1"):
        metrics.choose_thresholds(np.full((3, 1), 2.0), np.zeros((3, 1)), ["x"])
    with pytest.raises(ValueError, match="non-finite"):
        metrics.choose_thresholds(np.zeros((3, 1)), np.full((3, 1), np.nan), ["x"])
    with pytest.raises(ValueError, match=r"no threshold for label\(s\) \['b'\]"):
        metrics.evaluate(np.zeros((3, 2)), np.zeros((3, 2)), {"a": 0.5}, ["a", "b"])


def test_comparison_table_and_plots(arrays, tmp_path):
    y, p = arrays
    thresholds = metrics.choose_thresholds(y, p, LABELS)
    lstm = metrics.evaluate(y, p, thresholds, LABELS, n_bootstrap=50, seed=0)
    baseline = metrics.evaluate(y, np.sqrt(p), thresholds, LABELS, n_bootstrap=50, seed=0)
    table = metrics.comparison_table({"lstm": lstm, "baseline": baseline})
    lines = table.splitlines()
    assert lines[0].split("|")[3].strip() == "lstm" and lines[0].split("|")[4].strip() == "baseline"
    assert len(lines) == 2 + (len(LABELS) + 1) * len(metrics.METRICS)
    assert any(line.startswith("| macro") and "pr_auc" in line for line in lines)
    history = [
        {"epoch": e, "train_loss": 1 / (e + 1), "val_loss": 1.1 / (e + 1), "val_macro_pr_auc": 0.1 * e}
        for e in range(4)
    ]
    paths = [
        plots.plot_loss_curves(history, tmp_path / "loss.png"),
        plots.plot_pr_curves(y, p, LABELS, tmp_path / "plots" / "pr.png"),
        plots.plot_confusion_matrices(y, p, thresholds, LABELS, tmp_path / "confusion.png"),
    ]
    for path in paths:
        with open(path, "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


def test_grouped_bootstrap_draws_whole_epcs_and_widens_the_interval_of_correlated_rows():
    # 40 EPCs of 20 events each; all events of an EPC share its label and score: the
    # information is 40 units, not 800 rows.
    rng = np.random.default_rng(11)
    epc_label = (rng.random(40) < 0.3).astype(float)
    epc_score = np.clip(0.5 * epc_label + 0.6 * rng.random(40), 0, 1)
    groups = np.repeat([f"epc{i}" for i in range(40)], 20)
    y = np.repeat(epc_label, 20)[:, None]
    p = np.repeat(epc_score, 20)[:, None]
    weights = next(metrics._bootstrap_weights(len(y), 5, np.random.default_rng(0), groups))
    for draw in weights:
        per_epc = draw.reshape(40, 20)
        assert (per_epc == per_epc[:, :1]).all()  # every event of an EPC drawn equally often
        assert per_epc[:, 0].sum() == 40  # 40 EPCs drawn with replacement
    by_row = metrics.evaluate(y, p, {"a": 0.5}, ["a"], n_bootstrap=400, seed=2)
    by_epc = metrics.evaluate(y, p, {"a": 0.5}, ["a"], n_bootstrap=400, seed=2, groups=groups)
    assert by_epc["bootstrap_unit"] == "group" and by_row["bootstrap_unit"] == "row"
    width = {
        name: r["labels"]["a"]["pr_auc"]["ci_high"] - r["labels"]["a"]["pr_auc"]["ci_low"]
        for name, r in (("row", by_row), ("epc", by_epc))
    }
    assert width["epc"] > 2 * width["row"]
    assert by_epc["labels"]["a"]["pr_auc"]["value"] == by_row["labels"]["a"]["pr_auc"]["value"]


def test_the_typed_report_reads_the_document_and_writes_it_back_unchanged(arrays):
    y, p = arrays
    thresholds = {"a": 0.5, "b": 0.45, "c": 0.6}
    document = metrics.evaluate(y, p, thresholds, LABELS, n_bootstrap=50, seed=1)
    report = evaluation.evaluate(y, p, thresholds, LABELS, n_bootstrap=50, seed=1)
    # The JSON the training job writes and logs is the same, key order included.
    assert json.dumps(report.to_dict()) == json.dumps(document)
    assert report.macro_value("pr_auc") == document["macro"]["pr_auc"]["value"]
    assert report.label_values("pr_auc") == {n: document["labels"][n]["pr_auc"]["value"] for n in LABELS}
    assert report.positives() == {n: document["labels"][n]["positives"] for n in LABELS}
    assert report.labels["b"].pr_auc.ci_low == document["labels"]["b"]["pr_auc"]["ci_low"]
    assert report.flat_metrics() == metrics.flat_metrics(document)
    assert evaluation.comparison_table({"m": report}) == metrics.comparison_table({"m": document})
