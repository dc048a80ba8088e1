"""The rules detector: hand-written domain rules on the event features.

This is what an operator would deploy first, and the reference every learned
detector must beat. Each anomaly type has one rule that turns the event's
point-in-time features into a score in [0, 1] (higher = more suspicious);
the rules are Spark column expressions, so the same code scores a training
set's test split and a whole day of events in ``gold/scored_events``.

A rule has a few named variants (e.g. "a jump is faster than 200 km/h" or
"... faster than 200 km/h unless the hop is a designated air lane");
:func:`tune` picks, per type, the variant with the highest PR-AUC on the train
and validation splits, and a flag threshold that maximises F1 on validation.
The test split is never looked at. The chosen variants and thresholds are the
detector's whole state (:class:`RulesDetector`, a small JSON document).

The rules read only model-input columns of ``features_event_features``
(``*_log`` features are ``log1p`` of the quantity):

- ``epc_fake``: an EPC validity check fails (format, company, product,
  manufacture date, serial outside the issued ranges);
- ``epc_dup``: a move to another place of the same tier faster than a truck
  can drive -- a cloned tag read elsewhere;
- ``loc_err``: a tier change other than 0 or +1 (a skipped or backward
  step) that is not a return or recall;
- ``evt_order_err``: an Outbound whose place saw no Inbound right before, or an
  Inbound right after an Outbound at the same place;
- ``jump``: a hop faster than ground transport allows (air lanes excepted).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

DETECTOR = "rules"
FORMAT = "rules-json"

_Rule = Callable[[], Column]


def _col(name: str) -> Column:
    return F.coalesce(F.col(name).cast("double"), F.lit(0.0))


def _is(name: str) -> Column:
    """A 0/1 flag feature as exactly 0.0 or 1.0 (null: 0), whatever else the column holds."""
    return F.when(F.col(name).cast("double") > 0.5, F.lit(1.0)).otherwise(F.lit(0.0))


def _speed_kmh(log_column: str) -> Column:
    return F.expm1(_col(log_column))


def _unit(score: Column) -> Column:
    return F.least(F.greatest(score, F.lit(0.0)), F.lit(1.0))


def _squash(ratio: Column) -> Column:
    """A positive ratio (1 = at the rule's limit) to a score in [0, 1): 0.5 at the limit, ordered like the ratio."""
    r = F.greatest(ratio, F.lit(0.0))
    return r / (r + F.lit(1.0))


def _jump(limit_kmh: float, air_kmh: float | None) -> _Rule:
    def rule() -> Column:
        limit = (
            F.lit(limit_kmh)
            if air_kmh is None
            else F.when(_is("air_lane") > 0, F.lit(air_kmh)).otherwise(limit_kmh)
        )
        moved = 1.0 - _is("same_location")
        return _squash(_speed_kmh("speed_log") * moved / limit)

    return rule


def _dup(limit_kmh: float, same_tier_only: bool, air_kmh: float | None) -> _Rule:
    def rule() -> Column:
        limit = (
            F.lit(limit_kmh)
            if air_kmh is None
            else F.when(_is("air_lane") > 0, F.lit(air_kmh)).otherwise(limit_kmh)
        )
        moved = (1.0 - _is("same_location")) * _is("has_prev")
        if same_tier_only:
            moved = moved * F.when(_col("tier_change") == 0, F.lit(1.0)).otherwise(F.lit(0.0))
        return _squash(_speed_kmh("speed_log") * moved / limit)

    return rule


def _loc(skip_allowed: int, returns_exempt: bool) -> _Rule:
    def rule() -> Column:
        change = _col("tier_change") * _is("has_prev")
        backward = F.greatest(-change, F.lit(0.0))
        skipped = F.greatest(change - F.lit(float(skip_allowed)), F.lit(0.0))
        score = _squash(backward + skipped)
        return score * (1.0 - _is("is_return")) if returns_exempt else score

    return rule


def _order(use_inbound_after_outbound: bool, use_prev_inbound: bool) -> _Rule:
    def rule() -> Column:
        outbound_alone = _is("out_without_in")
        if use_prev_inbound:
            outbound_alone = outbound_alone * (1.0 - _is("prev_inbound_here"))
        score = outbound_alone
        if use_inbound_after_outbound:
            # prev scan at this place was its Outbound, and this is the Inbound: the pair is swapped.
            swapped = (
                _is("is_inbound")
                * _is("same_location")
                * F.when(_col("prev_event_type_idx").isin(*_outbound_indexes()), F.lit(1.0)).otherwise(
                    F.lit(0.0)
                )
            )
            score = F.greatest(score, swapped)
        return score

    return rule


def _fake(use_serial: bool, use_manufacture: bool) -> _Rule:
    def rule() -> Column:
        checks = [
            1.0 - _is("epc_format_valid"),
            1.0 - _is("epc_company_known"),
            1.0 - _is("epc_product_known"),
        ]
        if use_manufacture:
            checks.append(1.0 - _is("epc_manufacture_date_valid"))
        if use_serial:
            checks.append(F.when(F.col("serial_issued") == 0, F.lit(1.0)).otherwise(F.lit(0.0)))
        return F.greatest(*checks)

    return rule


def _outbound_indexes() -> list[int]:
    from tracelake.tables import domain

    return [i + 1 for i, name in enumerate(domain().event_types) if str(name).endswith("_Outbound")]


# Per anomaly type: variant name -> rule. The first variant is the naive one-line rule.
VARIANTS: dict[str, dict[str, _Rule]] = {
    "epc_fake": {
        "format_company_product": _fake(use_serial=False, use_manufacture=False),
        "plus_manufacture_date": _fake(use_serial=False, use_manufacture=True),
        "plus_issued_serial": _fake(use_serial=True, use_manufacture=True),
    },
    "epc_dup": {
        "faster_than_truck_100": _dup(100.0, same_tier_only=False, air_kmh=None),
        "same_tier_faster_than_truck_100": _dup(100.0, same_tier_only=True, air_kmh=None),
        "same_tier_faster_than_truck_100_air_lanes_1000": _dup(100.0, same_tier_only=True, air_kmh=1000.0),
    },
    "loc_err": {
        "tier_change_not_0_or_1": _loc(skip_allowed=1, returns_exempt=False),
        "returns_exempt": _loc(skip_allowed=1, returns_exempt=True),
        "returns_exempt_one_missed_read": _loc(skip_allowed=2, returns_exempt=True),
    },
    "evt_order_err": {
        "outbound_without_inbound": _order(use_inbound_after_outbound=False, use_prev_inbound=False),
        "plus_inbound_after_outbound": _order(use_inbound_after_outbound=True, use_prev_inbound=False),
        "plus_inbound_after_outbound_prev_inbound": _order(
            use_inbound_after_outbound=True, use_prev_inbound=True
        ),
    },
    "jump": {
        "faster_than_200": _jump(200.0, air_kmh=None),
        "faster_than_200_air_lanes_1000": _jump(200.0, air_kmh=1000.0),
        "faster_than_120_air_lanes_1000": _jump(120.0, air_kmh=1000.0),
    },
}


def variant_column(label: str, variant: str) -> str:
    return f"_rule_{label}__{variant}"


def all_variant_scores(features: DataFrame, labels: Sequence[str]) -> DataFrame:
    """``features`` plus one score column per (label, variant) (:func:`variant_column`)."""
    return features.select(
        "*",
        *[
            _unit(rule()).alias(variant_column(label, name))
            for label in labels
            for name, rule in VARIANTS[label].items()
        ],
    )


@dataclass(frozen=True)
class RulesDetector:
    """The tuned rule set: one variant and one flag threshold per label."""

    variants: Mapping[str, str]
    thresholds: Mapping[str, float]
    tuning: Mapping[str, Any] = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        return list(self.variants)

    def scores(self, features: DataFrame, prefix: str = "p_") -> DataFrame:
        """``features`` plus one ``<prefix><label>`` score column per label, in [0, 1]."""
        return features.select(
            "*",
            *[
                _unit(VARIANTS[label][variant]()).alias(f"{prefix}{label}")
                for label, variant in self.variants.items()
            ],
        )

    def labels_and_scores(self, rows: DataFrame, group_column: str | None = None) -> tuple[Any, Any, Any]:
        """(labels [N, L], scores [N, L], ``group_column``'s values or None) of ``rows``, on the driver."""
        import numpy as np

        labels = self.labels
        local = (
            self.scores(rows)
            .select(*([group_column] if group_column else []), *labels, *[f"p_{label}" for label in labels])
            .toPandas()
        )
        y = local[labels].to_numpy(dtype=np.float64).reshape(-1, len(labels))
        p = local[[f"p_{label}" for label in labels]].to_numpy(dtype=np.float64).reshape(-1, len(labels))
        return y, p, (local[group_column].to_numpy() if group_column else None)

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": FORMAT,
                "variants": dict(self.variants),
                "thresholds": dict(self.thresholds),
                "tuning": dict(self.tuning),
            },
            indent=2,
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> RulesDetector:
        data = json.loads(text)
        if data.get("format") != FORMAT:
            raise ValueError(
                f"not a rules detector document (format {data.get('format')!r}, expected {FORMAT!r})"
            )
        unknown = {label: v for label, v in data["variants"].items() if v not in VARIANTS.get(label, {})}
        if unknown:
            raise ValueError(
                f"rules detector names unknown rule variants {unknown}; this code knows "
                f"{ {label: list(v) for label, v in VARIANTS.items()} }"
            )
        return cls(
            dict(data["variants"]),
            {k: float(v) for k, v in data["thresholds"].items()},
            dict(data.get("tuning", {})),
        )


def tune(
    train_validation: DataFrame,
    labels: Sequence[str],
    *,
    pr_auc: Callable[[Any, Any], float],
    choose_threshold: Callable[[Any, Any], float],
    split_column: str = "split",
    validation: str = "validation",
) -> RulesDetector:
    """Pick each label's variant by PR-AUC on the train and validation rows and its threshold by F1 on validation.

    ``pr_auc(y, score)`` and ``choose_threshold(y, score)`` are the metric functions the
    learned detectors are judged with (numpy arrays in, float out).
    """
    import numpy as np

    columns = [variant_column(label, name) for label in labels for name in VARIANTS[label]]
    # Never the test split, whatever the caller passed.
    rows = train_validation.where(F.col(split_column).isin("train", validation))
    local = all_variant_scores(rows, labels).select(split_column, *labels, *columns).toPandas()
    is_validation = (local[split_column] == validation).to_numpy()
    variants, thresholds, tuning = {}, {}, {}
    for label in labels:
        y = local[label].to_numpy(dtype=np.float64)
        ranked = {
            name: pr_auc(y, local[variant_column(label, name)].to_numpy(dtype=np.float64))
            for name in VARIANTS[label]
        }
        finite = {name: value for name, value in ranked.items() if math.isfinite(value)}
        best = max(finite, key=lambda n: finite[n]) if finite else next(iter(VARIANTS[label]))
        variants[label] = best
        score = local[variant_column(label, best)].to_numpy(dtype=np.float64)
        thresholds[label] = float(choose_threshold(y[is_validation], score[is_validation]))
        tuning[label] = {"train_validation_pr_auc": ranked, "rows": len(y), "positives": int(y.sum())}
    return RulesDetector(variants, thresholds, tuning)
