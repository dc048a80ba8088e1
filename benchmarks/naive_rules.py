"""Naive one-line rules against the generator's ground truth: are the anomalies still trivial?

Generates a world with `spark_jobs.generate` (default: the realistic profile),
then scores one one-line rule per anomaly type on the landing scans and
compares the flagged events with `landing/_truth/labels` (every event in the
scope of every incident):

| type | rule (flags an event when ...) |
| --- | --- |
| jump | the implied speed from the EPC's previous scan is above 200 km/h |
| epc_dup | the EPC was scanned at a place more than 100 km away within the 60 minutes before |
| loc_err | the tier changes from the previous scan by something other than 0 or +1 |
| evt_order_err | an Outbound has no earlier Inbound of the EPC at that place (factories have no Inbound) |
| epc_fake | the EPC fails the regex or names an unknown company or product |

Per type: precision (share of flagged events in the truth of that type),
event recall (share of the type's truth events flagged) and incident recall
(share of incidents with at least one event flagged). The issue's requirement
holds for a type when precision <= 0.7 or both recalls are <= 0.7.

Run (serialized with other benchmarks):
    flock /tmp/tracelake-bench.lock .venv/bin/python benchmarks/naive_rules.py --days 30 --epcs 3000

Results and the command used: benchmarks/results/naive_rules.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from spark_jobs import generate
from spark_jobs.transforms.network import haversine_km
from tracelake.config import load_settings
from tracelake.runs import job_run
from tracelake.spark import build_spark
from tracelake.tables import domain

START = dt.date(2025, 7, 1)
SPEED_KMH = 200.0
DUP_KM, DUP_MINUTES = 100.0, 60.0
BOUND = 0.7


def generate_world(lake: Path, days: int, epcs: int, seed: int, profile: str, overrides: list[str]) -> dict:
    shutil.rmtree(lake, ignore_errors=True)
    # The profile is chosen while the settings are built, so that it fills what is not given.
    generator = {"profile": profile, "days": days, "epcs": epcs, "seed": seed, "format": "csv"}
    settings = load_settings(
        overrides=[
            "spark.master=local[2]",
            "spark.driver_memory=2g",
            "spark.shuffle_partitions=4",
            f"lake_root={lake}",
            *(f"generator.{k}={v}" for k, v in generator.items()),
            *overrides,
        ]
    )
    settings.spark.conf.update({"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false"})
    # (start_date is not a --set value: YAML would read it as a date.)
    settings = settings.model_copy(
        update={"generator": settings.generator.model_copy(update={"start_date": START.isoformat()})}
    )
    spark = build_spark(settings, "naive-rules")
    try:
        with job_run(
            "generate", settings=settings, spark=spark, start=START, end=START + dt.timedelta(days=days - 1)
        ) as run:
            return generate.execute(run)
    finally:
        spark.stop()


def load_scans(lake: Path) -> pd.DataFrame:
    landing = lake / "landing"
    scans = pd.concat(
        [
            pd.read_csv(f, dtype=str, keep_default_na=False)
            for f in sorted((landing / "scans").glob("date=*/*.csv"))
        ],
        ignore_index=True,
    )
    locations = pd.read_csv(landing / "reference" / "locations.csv", dtype=str).set_index("location_id")
    scans["t"] = pd.to_datetime(scans["event_time"], format="%Y-%m-%dT%H:%M:%SZ", utc=True)
    scans["tier"] = locations.loc[scans["location_id"], "tier"].astype(int).to_numpy()
    scans["lat"] = locations.loc[scans["location_id"], "latitude"].astype(float).to_numpy()
    scans["lon"] = locations.loc[scans["location_id"], "longitude"].astype(float).to_numpy()
    return scans.sort_values(["epc_code", "t", "event_id"], ignore_index=True)


def naive_flags(scans: pd.DataFrame, products: pd.DataFrame) -> dict[str, pd.Series]:
    """Per anomaly type, the events its one-line rule flags (a boolean per scan row)."""
    prev = scans.groupby("epc_code")[["t", "lat", "lon", "tier"]].shift(1)
    has_prev = prev["t"].notna()
    km = pd.Series(
        haversine_km(
            prev["lat"].to_numpy(), prev["lon"].to_numpy(), scans["lat"].to_numpy(), scans["lon"].to_numpy()
        ),
        index=scans.index,
    ).fillna(0.0)
    hours = (scans["t"] - prev["t"]).dt.total_seconds() / 3600
    speed = np.where(hours > 0, km / hours.where(hours > 0, 1), np.where(km > 0, np.inf, 0.0))
    jump = has_prev & (speed > SPEED_KMH)

    step = scans["tier"] - prev["tier"]
    loc_err = has_prev & ~step.isin([0, 1])

    # epc_dup: any earlier scan of the EPC within DUP_MINUTES at more than DUP_KM.
    pairs = (
        scans[["epc_code", "event_id", "t", "lat", "lon"]]
        .reset_index()
        .merge(scans[["epc_code", "t", "lat", "lon"]], on="epc_code", suffixes=("", "_o"))
    )
    gap = (pairs["t"] - pairs["t_o"]).dt.total_seconds() / 60
    near_in_time = (gap >= 0) & (gap <= DUP_MINUTES)
    far = haversine_km(pairs["lat"], pairs["lon"], pairs["lat_o"], pairs["lon_o"]) > DUP_KM
    dup_rows = pairs.loc[near_in_time & far, "index"].unique()
    epc_dup = pd.Series(scans.index.isin(dup_rows), index=scans.index)

    # evt_order_err: an Outbound (not at a factory) without an earlier Inbound of the EPC at that place.
    inbound = scans["event_type"].str.endswith("_Inbound")
    seen_inbound = inbound.astype(int).groupby(
        [scans["epc_code"], scans["location_id"]]
    ).cumsum() - inbound.astype(int)
    outbound = scans["event_type"].str.endswith("_Outbound") & (scans["tier"] > 0)
    order = outbound & (seen_inbound == 0)

    parts = scans["epc_code"].str.split(".", expand=True, n=5).reindex(columns=range(6))
    known = set(zip(products["company_code"], products["product_code"], strict=False))
    companies = set(products["company_code"])
    pair_known = pd.Series(
        [(c, p) in known for c, p in zip(parts[1], parts[2], strict=False)], index=scans.index
    )
    fake = (~scans["epc_code"].str.match(domain().epc_regex)) | ~parts[1].isin(companies) | ~pair_known

    return {"epc_fake": fake, "epc_dup": epc_dup, "loc_err": loc_err, "evt_order_err": order, "jump": jump}


def score(scans: pd.DataFrame, flags: dict[str, pd.Series], truth: pd.DataFrame) -> list[dict]:
    rows = []
    for anomaly, flagged in flags.items():
        mine = truth[truth["anomaly_type"] == anomaly]
        positive = scans["event_id"].isin(set(mine["event_id"]))
        hit = flagged & positive
        mine_flagged = mine["event_id"].isin(set(scans.loc[flagged, "event_id"]))
        incidents = mine_flagged.groupby(mine["incident_id"]).any()
        precision = hit.sum() / flagged.sum() if flagged.sum() else float("nan")
        event_recall = hit.sum() / positive.sum() if positive.sum() else float("nan")
        incident_recall = incidents.mean() if len(incidents) else float("nan")
        rows.append(
            {
                "type": anomaly,
                "flagged": int(flagged.sum()),
                "true_events": int(positive.sum()),
                "incidents": len(incidents),
                "precision": precision,
                "event_recall": event_recall,
                "incident_recall": incident_recall,
                "ok": bool(precision <= BOUND or max(event_recall, incident_recall) <= BOUND),
            }
        )
    return rows


def false_positive_sources(
    scans: pd.DataFrame, flags: dict[str, pd.Series], truth: pd.DataFrame, confounders: pd.DataFrame
) -> dict[str, dict[str, int]]:
    """What the false positives of each rule are: confounders (by name), other anomalies, or nothing known."""
    labelled = truth.drop_duplicates("event_id").set_index("event_id")["anomaly_type"]
    conf = confounders.groupby("event_id")["confounder"].agg(lambda c: "+".join(sorted(set(c))))
    out = {}
    for anomaly, flagged in flags.items():
        ids = scans.loc[flagged, "event_id"]
        ids = ids[~ids.isin(set(truth.loc[truth["anomaly_type"] == anomaly, "event_id"]))]
        source = ids.map(labelled).fillna(ids.map(conf)).fillna("none known")
        out[anomaly] = source.value_counts().to_dict()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--epcs", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--profile", default="realistic", choices=["realistic", "easy"])
    parser.add_argument("--work-dir", default="/tmp/tracelake-bench/naive-rules")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)

    lake = Path(args.work_dir) / "lake"
    started = time.perf_counter()
    summary = generate_world(lake, args.days, args.epcs, args.seed, args.profile, args.overrides)
    generated = time.perf_counter() - started
    scans = load_scans(lake)
    products = pd.read_csv(lake / "landing" / "reference" / "products.csv", dtype=str)
    truth = pd.read_parquet(lake / "landing" / "_truth" / "labels")
    confounders = pd.read_parquet(lake / "landing" / "_truth" / "confounders")
    flags = naive_flags(scans, products)
    rows = score(scans, flags, truth)
    sources = false_positive_sources(scans, flags, truth, confounders)

    print(
        f"# naive rules on the {args.profile} generator: {args.days} days, {args.epcs} EPCs, seed {args.seed}, "
        f"{summary['events']} events (generated in {generated:.1f} s)"
    )
    print(f"machine: {platform.node()} {os.cpu_count()} cores, load average {os.getloadavg()}")
    print(
        "| type | rule flags | true events | incidents | precision | event recall | incident recall | "
        "requirement (precision <= 0.7 or recall <= 0.7) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        print(
            f"| {r['type']} | {r['flagged']} | {r['true_events']} | {r['incidents']} | {r['precision']:.3f} | "
            f"{r['event_recall']:.3f} | {r['incident_recall']:.3f} | {'met' if r['ok'] else 'NOT met'} |"
        )
    print("\nfalse positives by source:")
    for anomaly, counts in sources.items():
        print(f"- {anomaly}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
