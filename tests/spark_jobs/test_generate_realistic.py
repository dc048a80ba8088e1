"""The realistic generator profile: confounders at their rates, never labelled; one label per incident; truth."""

from __future__ import annotations

import datetime as dt
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spark_jobs.generate import (
    apply_options,
    build_parser,
    execute,
    make_plan,
    with_profile_option,
)
from spark_jobs.transforms.generate import simulate_block
from spark_jobs.transforms.network import haversine_km
from tracelake.config import CONFOUNDERS, GeneratorSettings, Settings
from tracelake.runs import job_run, settings_from_args
from tracelake.tables import domain, table_spec

START = dt.date(2025, 7, 1)
DAYS, EPCS = 10, 4000
ISO = "%Y-%m-%dT%H:%M:%SZ"
# Higher than the defaults, so that a small world measures each rate closely.
CONFOUNDER_RATES = {
    "air_freight": 0.05,
    "return": 0.05,
    "recall": 0.05,
    "missed_read": 0.05,
    "rescan": 0.05,
    "clock_skew": 0.2,
}
ANOMALY_RATE = 0.02

pytestmark = pytest.mark.slow


def _generator(**options) -> GeneratorSettings:
    base = {
        "start_date": START.isoformat(),
        "days": DAYS,
        "epcs": EPCS,
        "seed": 5,
        "epcs_per_block": 2000,
        "confounder_rates": CONFOUNDER_RATES,
        "rates": dict.fromkeys(domain().anomaly_types, ANOMALY_RATE),
    }
    return GeneratorSettings.model_validate({**base, **options})


def _generate(spark, settings: Settings, lake: Path, generator: GeneratorSettings) -> dict:
    start = dt.date.fromisoformat(generator.start_date)
    end = start + dt.timedelta(days=generator.days - 1)
    run_settings = settings.model_copy(update={"lake_root": str(lake), "generator": generator})
    with job_run("generate", settings=run_settings, spark=spark, start=start, end=end) as run:
        return execute(run)


def _tree(lake: Path) -> dict[str, bytes]:
    root = lake / "landing"
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _tolerance(rate: float, n: int) -> float:
    """Four binomial standard deviations, plus a little for the window's edges."""
    return 4 * math.sqrt(rate * (1 - rate) / n) + 0.003


@pytest.fixture(scope="module")
def world(spark, test_settings, tmp_path_factory):
    lake = tmp_path_factory.mktemp("gen_realistic")
    generator = _generator()
    summary = _generate(spark, test_settings, lake, generator)
    landing = lake / "landing"
    scans = pd.concat(
        [
            pd.read_csv(f, dtype=str, keep_default_na=False).assign(file_date=f.parent.name[5:])
            for f in sorted((landing / "scans").glob("date=*/*.csv"))
        ],
        ignore_index=True,
    )
    labels = pd.concat(
        [pd.read_csv(f, dtype=str) for f in sorted((landing / "labels").glob("date=*/*.csv"))],
        ignore_index=True,
    )
    locations = pd.read_csv(landing / "reference" / "locations.csv", dtype=str).set_index("location_id")
    scans["t"] = pd.to_datetime(scans["event_time"], format=ISO, utc=True)
    scans["recorded"] = pd.to_datetime(scans["record_time"], format=ISO, utc=True)
    scans["tier"] = locations.loc[scans["location_id"], "tier"].astype(int).to_numpy()
    scans["lat"] = locations.loc[scans["location_id"], "latitude"].astype(float).to_numpy()
    scans["lon"] = locations.loc[scans["location_id"], "longitude"].astype(float).to_numpy()
    scans = scans.sort_values(["epc_code", "t", "event_id"], ignore_index=True)
    prev = scans.groupby("epc_code").shift(1)
    for column in ("event_id", "location_id", "event_type", "tier", "t"):
        scans[f"prev_{column}"] = prev[column]
    scans["d_km"] = haversine_km(prev["lat"], prev["lon"], scans["lat"], scans["lon"])
    scans["d_hours"] = (scans["t"] - prev["t"]).dt.total_seconds() / 3600
    return {
        "lake": lake,
        "summary": summary,
        "scans": scans,
        "labels": labels,
        "locations": locations,
        "truth": pd.read_parquet(landing / "_truth" / "labels"),
        "confounders": pd.read_parquet(landing / "_truth" / "confounders"),
        "air_lanes": pd.read_csv(landing / "reference" / "air_lanes.csv", dtype=str),
        "serial_ranges": pd.read_csv(landing / "reference" / "serial_ranges.csv", dtype=str),
        "products": pd.read_csv(landing / "reference" / "products.csv", dtype=str),
        "generator": generator,
        "plan": make_plan(generator, START, DAYS),
    }


def test_realistic_is_the_default_and_profiles_fill_only_what_is_not_given(tmp_path):
    realistic, easy = GeneratorSettings(), GeneratorSettings(profile="easy")
    profile = domain().generator["profiles"]["realistic"]
    assert realistic.profile == "realistic" and realistic.region_km == profile["region_km"] > easy.region_km
    assert realistic.confounder_rates == {
        c: float(profile["confounder_rates"].get(c, 0)) for c in CONFOUNDERS
    }
    assert set(easy.confounder_rates.values()) == {0.0}
    # The command line: --profile, and explicit settings still win over the profile.
    args = with_profile_option(
        build_parser().parse_args(
            ["--profile", "easy", "--set", "generator.region_km=900", "--lake-root", str(tmp_path)]
        )
    )
    settings = apply_options(settings_from_args(args), args)
    assert (settings.generator.profile, settings.generator.region_km) == ("easy", 900.0)
    assert set(settings.generator.confounder_rates.values()) == {0.0}
    args = build_parser().parse_args(
        ["--set", "generator.confounder_rates.rescan=0.2", "--lake-root", str(tmp_path)]
    )
    settings = apply_options(settings_from_args(with_profile_option(args)), args)
    assert settings.generator.confounder_rates["rescan"] == 0.2
    assert settings.generator.confounder_rates["air_freight"] == profile["confounder_rates"]["air_freight"]


def test_easy_profile_keeps_the_plain_journeys():
    plan = make_plan(_generator(profile="easy", confounder_rates={}), START, DAYS)
    events = simulate_block(plan, 0)
    assert set(events.confounded_epcs.values()) == {0} and not events.skewed.any()
    backward = [domain().event_types.index(t) for t in domain().return_event_types]
    assert not np.isin(events.event_type, backward).any()
    assert (events.record_s - events.time_s).min() >= 0  # no clock is off


def test_each_confounder_at_its_rate_and_never_labelled(world):
    confounders, truth, scans, plan = world["confounders"], world["truth"], world["scans"], world["plan"]
    summary = world["summary"]
    for confounder in CONFOUNDERS[:-1]:  # the per-EPC ones
        share = confounders.loc[confounders["confounder"] == confounder, "epc_code"].nunique() / EPCS
        assert abs(share - CONFOUNDER_RATES[confounder]) <= _tolerance(CONFOUNDER_RATES[confounder], EPCS), (
            confounder,
            share,
        )
        assert summary["confounded_epcs"][confounder] == round(share * EPCS)
    # clock_skew: a share of the devices.
    skew = plan.network.device_skew_s
    assert abs((skew != 0).mean() - CONFOUNDER_RATES["clock_skew"]) <= _tolerance(
        CONFOUNDER_RATES["clock_skew"], skew.size
    )
    assert (confounders["confounder"] == "clock_skew").sum() == summary["skewed_events"] > 0
    # Never labelled: no confounder event is in any label's scope, and no confounder EPC has an incident.
    assert not set(confounders["event_id"]) & set(truth["event_id"])
    per_epc = confounders[confounders["confounder"] != "clock_skew"]
    assert not set(per_epc["epc_code"]) & set(truth["epc_code"])
    assert set(confounders["event_id"]) <= set(scans["event_id"])


def test_confounders_show_the_context_that_tells_them_apart(world):
    scans, confounders, generator = world["scans"], world["confounders"], world["generator"]
    shown = scans.merge(confounders, on=["event_id", "epc_code"])
    lanes = set(
        zip(
            world["air_lanes"]["origin_location_id"],
            world["air_lanes"]["destination_location_id"],
            strict=False,
        )
    )

    air = shown[shown["confounder"] == "air_freight"]
    assert (
        len(air)
        and (air["event_type"] == "HUB_Inbound").all()
        and (air["prev_event_type"] == "HUB_Outbound").all()
    )
    assert all(hop in lanes for hop in zip(air["prev_location_id"], air["location_id"], strict=False))
    speed = air["d_km"] / air["d_hours"]
    skew_ids = set(confounders.loc[confounders["confounder"] == "clock_skew", "event_id"])
    skewed = air["event_id"].isin(skew_ids) | air["prev_event_id"].isin(skew_ids)
    # Transit at 600-900 km/h (timestamps to the second; a skewed device's clock moves it a little).
    assert (~skewed).sum() > 10 and speed[~skewed].between(
        generator.air_speed_kmh_min * 0.99, generator.air_speed_kmh_max * 1.01
    ).all()

    for kind, received in (("return", "W_Stock_Return"), ("recall", "WMS_Return")):
        back = shown[shown["confounder"] == kind]
        assert set(back["event_type"]) == {"R_Stock_Return", received}
        arrival = back[back["event_type"] == received]
        assert (arrival["prev_event_type"] == "R_Stock_Return").all() and (
            arrival["tier"] < arrival["prev_tier"]
        ).all()
        # Back to a place the EPC passed through.
        visited = scans.groupby("epc_code")["location_id"].apply(lambda s: s.iloc[:-2].tolist())
        assert all(
            loc in visited[epc] for epc, loc in zip(arrival["epc_code"], arrival["location_id"], strict=False)
        )

    rescans = shown[shown["confounder"] == "rescan"]
    assert len(rescans) and (rescans["location_id"] == rescans["prev_location_id"]).all()
    assert (rescans["event_type"] == rescans["prev_event_type"]).all()
    assert (rescans["d_hours"] * 60 <= generator.rescan_minutes_max + 10).all()  # device skew aside

    missed = shown[shown["confounder"] == "missed_read"]
    inbound_lost = missed["event_type"].str.endswith("_Outbound") & (
        missed["prev_location_id"] != missed["location_id"]
    )
    stage_lost = missed["tier"] - missed["prev_tier"] >= 2
    assert len(missed) and (inbound_lost | stage_lost).all() and inbound_lost.any() and stage_lost.any()

    # Clock skew is observable: event_time - record_time is the device's offset less a small latency.
    offset = (scans["t"] - scans["recorded"]).dt.total_seconds()
    network = world["plan"].network
    device_offset = dict(zip(network.devices.ravel(), network.device_skew_s.ravel(), strict=False))
    by_skewed = scans["event_id"].isin(confounders.loc[confounders["confounder"] == "clock_skew", "event_id"])
    expected = scans["device_id"].map(device_offset).where(by_skewed, 0.0)
    error = offset - expected
    assert error.between(-generator.record_latency_seconds_max - 1, 1).all()
    assert (expected[by_skewed] != 0).all()


def test_label_feed_has_one_row_per_incident_and_the_truth_its_scope(world):
    scans, labels, truth = world["scans"], world["labels"], world["truth"]
    scope = domain().label_scope
    assert labels["epc_code"].is_unique  # an EPC carries at most one incident
    assert len(labels) == truth["incident_id"].nunique() == sum(world["summary"]["labels"].values())
    assert truth.groupby("incident_id")["epc_code"].nunique().eq(1).all()
    anchored = labels.merge(truth, on=["event_id", "epc_code", "anomaly_type"])
    assert len(anchored) == len(labels)  # every anchor lies in its incident's scope
    for anomaly, rule in scope.items():
        mine = truth[truth["anomaly_type"] == anomaly]
        assert len(mine), anomaly
        sizes = mine.groupby("incident_id").size()
        if rule in ("epc", "epc_until_confirmed"):  # the truth holds every event of the fake EPC
            events = scans[scans["epc_code"].isin(mine["epc_code"])]
            assert set(events["event_id"]) == set(mine["event_id"])
        elif rule == "swapped_pair":  # the anchor and the EPC's previous event
            assert sizes.eq(2).all()
            pair = anchored[anchored["anomaly_type"] == anomaly].merge(scans, on="event_id")
            partner = mine.merge(pair[["incident_id", "prev_event_id"]], on="incident_id")
            assert (
                partner["event_id"].isin(pair["event_id"]) | (partner["event_id"] == partner["prev_event_id"])
            ).all()
            assert pair["event_type"].str.endswith("_Inbound").all()
            assert pair["prev_event_type"].str.endswith("_Outbound").all()
        else:
            assert sizes.eq(1).all(), anomaly


def test_harder_anomalies(world):
    scans, truth, generator = world["scans"], world["truth"], world["generator"]
    clones = truth[truth["anomaly_type"] == "epc_dup"].merge(scans, on=["event_id", "epc_code"])
    # The clone's distance from the genuine scan it copies: the scan of the same type just before it.
    source = scans[["epc_code", "event_type", "t", "lat", "lon"]].rename(columns={"t": "t_src"})
    pairs = clones.merge(source, on=["epc_code", "event_type"], suffixes=("", "_src"))
    pairs = pairs[pairs["t_src"] < pairs["t"]].sort_values("t_src").groupby("event_id").tail(1)
    km = haversine_km(pairs["lat_src"], pairs["lon_src"], pairs["lat"], pairs["lon"])
    minutes = (pairs["t"] - pairs["t_src"]).dt.total_seconds() / 60
    near = pairs["variant"] == "near"
    assert near.any() and (~near).any()
    assert (km[near.to_numpy()] >= generator.dup_near_km_min).all()
    assert (km[~near.to_numpy()] >= generator.dup_min_km).all()
    assert (minutes > 60).any() and (minutes <= generator.dup_delay_minutes_max + 1).all()

    # Fakes with a serial never issued: well formed, known company and product.
    ranges = world["serial_ranges"]
    regex = re.compile(domain().epc_regex)
    issued = {(c, p): (lo, hi) for c, p, lo, hi in ranges.itertuples(index=False)}

    def in_range(epc: str) -> bool:
        _, company, product, _, _, serial = epc.split(".")
        lo, hi = issued[(company, product)]
        return lo <= serial <= hi and len(serial) == len(lo)

    fakes = truth[(truth["anomaly_type"] == "epc_fake")].drop_duplicates("epc_code")
    by_serial = fakes[fakes["variant"] == "serial_out_of_range"]
    assert len(by_serial) and by_serial["epc_code"].map(lambda e: bool(regex.match(e))).all()
    assert not by_serial["epc_code"].map(in_range).any()
    genuine = scans.loc[~scans["epc_code"].isin(truth["epc_code"]), "epc_code"].drop_duplicates()
    assert genuine.map(in_range).all()


def test_reference_files(world):
    lanes, ranges, locations = world["air_lanes"], world["serial_ranges"], world["locations"]
    assert list(lanes.columns) == table_spec("landing_air_lanes").column_names
    assert list(ranges.columns) == table_spec("landing_serial_ranges").column_names
    pairs = set(zip(lanes["origin_location_id"], lanes["destination_location_id"], strict=False))
    assert pairs and pairs == {(b, a) for a, b in pairs}  # both directions listed
    assert set(locations.loc[list(lanes["origin_location_id"]), "business_step"]) == {"LGS_HUB"}
    o, d = locations.loc[lanes["origin_location_id"]], locations.loc[lanes["destination_location_id"]]
    km = haversine_km(
        o["latitude"].astype(float).to_numpy(),
        o["longitude"].astype(float).to_numpy(),
        d["latitude"].astype(float).to_numpy(),
        d["longitude"].astype(float).to_numpy(),
    )
    assert (km >= world["generator"].air_lane_min_km).all()
    assert len(ranges) == len(world["products"])
    assert (ranges["serial_from"] <= ranges["serial_to"]).all()


@pytest.mark.spark35
def test_same_seed_same_files_truth_included(spark, test_settings, tmp_path):
    small = _generator(epcs=600, days=3, epcs_per_block=300)
    _generate(spark, test_settings, tmp_path / "a", small)
    _generate(spark, test_settings, tmp_path / "b", small)
    first, second = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    assert first == second
    assert {
        "_truth/labels/part-w20250701.parquet",
        "_truth/confounders/part-w20250701.parquet",
        "reference/air_lanes.csv",
        "reference/serial_ranges.csv",
    } <= set(first)
    _generate(spark, test_settings, tmp_path / "c", _generator(epcs=600, days=3, epcs_per_block=300, seed=6))
    assert (
        _tree(tmp_path / "c")["_truth/labels/part-w20250701.parquet"]
        != first["_truth/labels/part-w20250701.parquet"]
    )
