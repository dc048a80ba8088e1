"""The rules detector on a tiny hand-made frame of event features."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training import metrics, rules
from training.rules import RulesDetector

LABELS = ["epc_fake", "epc_dup", "loc_err", "evt_order_err", "jump"]
FEATURES = [
    "has_prev",
    "same_location",
    "speed_log",
    "tier_change",
    "air_lane",
    "is_return",
    "out_without_in",
    "prev_inbound_here",
    "is_inbound",
    "prev_event_type_idx",
    "epc_format_valid",
    "epc_company_known",
    "epc_product_known",
    "epc_manufacture_date_valid",
    "serial_issued",
]


def row(split, labels=(), **values):
    base = {
        "has_prev": 1.0,
        "same_location": 0.0,
        "speed_log": math.log1p(50.0),
        "tier_change": 1.0,
        "air_lane": 0.0,
        "is_return": 0.0,
        "out_without_in": 0.0,
        "prev_inbound_here": 0.0,
        "is_inbound": 1.0,
        "prev_event_type_idx": 0.0,
        "epc_format_valid": 1.0,
        "epc_company_known": 1.0,
        "epc_product_known": 1.0,
        "epc_manufacture_date_valid": 1.0,
        "serial_issued": 1.0,
    }
    base.update(values)
    return (split, "E", *[base[f] for f in FEATURES], *[int(label in labels) for label in LABELS])


def frame(spark, rows_):
    ddl = ", ".join(
        [
            "split string",
            "epc_code string",
            *[f"{f} double" for f in FEATURES],
            *[f"{label} int" for label in LABELS],
        ]
    )
    return spark.createDataFrame(rows_, ddl)


def tuned(spark, rows_):
    return rules.tune(
        frame(spark, rows_),
        LABELS,
        pr_auc=metrics.pr_auc,
        choose_threshold=lambda y, s: metrics.choose_thresholds(y[:, None], s[:, None], ["_"])["_"],
    )


def world():
    """Anomalies and their look-alike confounders, in train and validation (one test row that must be ignored)."""
    fast = math.log1p(800.0)
    out = []
    for split in ("train", "validation"):
        out += [
            row(split),  # a normal scan
            row(split, speed_log=fast, air_lane=1.0),  # air freight: legitimate
            row(split, ["jump"], speed_log=math.log1p(3000.0)),  # a jump by road
            row(split, ["jump"], speed_log=fast),  # 800 km/h off any lane
            row(split, ["epc_fake"], serial_issued=0.0),  # well formed, never issued
            row(split, ["epc_fake"], epc_company_known=0.0),
            row(split, tier_change=-2.0, is_return=1.0),  # a return: legitimate
            row(split, ["loc_err"], tier_change=-2.0),
            row(split, ["loc_err"], tier_change=3.0),
            row(split, ["epc_dup"], tier_change=0.0, speed_log=math.log1p(400.0)),  # clone at a far place
            row(split, tier_change=2.0, speed_log=math.log1p(400.0)),  # not a clone: tier moved on
            row(split, ["evt_order_err"], same_location=1.0, is_inbound=1.0, prev_event_type_idx=2.0),
            row(split, ["evt_order_err"], out_without_in=1.0, is_inbound=0.0),
        ]
    # A test row that would flip the choice if tuning looked at it.
    out.append(row("test", ["loc_err"], tier_change=-2.0, is_return=1.0))
    return out


def test_tuning_prefers_the_rule_that_knows_the_confounders(spark):
    detector = tuned(spark, world())
    assert detector.variants["jump"] == "faster_than_200_air_lanes_1000"
    assert detector.variants["epc_fake"] == "plus_issued_serial"
    assert detector.variants["loc_err"] in ("returns_exempt", "returns_exempt_one_missed_read")
    assert detector.variants["evt_order_err"].startswith("plus_inbound_after_outbound")
    assert detector.variants["epc_dup"].startswith("same_tier")
    assert all(detector.tuning[label]["rows"] == 26 for label in LABELS)  # the test row was not used


def test_scores_rank_each_anomaly_above_its_confounder_and_round_trip(spark):
    detector = tuned(spark, world())
    again = RulesDetector.from_json(detector.to_json())
    assert again == detector
    scored = again.scores(frame(spark, world())).where("split = 'train'").toPandas()
    for label in LABELS:
        y, p = scored[label].to_numpy(), scored[f"p_{label}"].to_numpy()
        assert np.all((p >= 0) & (p <= 1))
        assert metrics.pr_auc(y, p) == pytest.approx(1.0), label
        assert (p[y == 1] >= detector.thresholds[label]).all(), label


def test_an_unknown_variant_or_format_is_refused():
    with pytest.raises(ValueError, match="unknown rule variants"):
        RulesDetector.from_json(
            '{"format": "rules-json", "variants": {"jump": "teleport"}, "thresholds": {}}'
        )
    with pytest.raises(ValueError, match="not a rules detector"):
        RulesDetector.from_json('{"format": "onnx"}')
