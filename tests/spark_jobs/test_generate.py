"""The generator: determinism, anomalies that are really in the data, landing contract, corruption."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from spark_jobs.generate import build_parser, execute, main, make_plan
from spark_jobs.transforms.generate import simulate_block
from spark_jobs.transforms.network import haversine_km
from tracelake.config import ConfigError, GeneratorSettings, Settings
from tracelake.runs import job_run
from tracelake.tables import domain, table_spec

START = dt.date(2025, 7, 1)
RATE = 0.03
SCAN_COLUMNS = table_spec("landing_scans").column_names
LABEL_COLUMNS = table_spec("landing_labels").column_names
ISO = "%Y-%m-%dT%H:%M:%SZ"


def _generator(**options) -> GeneratorSettings:
    base = {
        "profile": "easy",
        "start_date": START.isoformat(),
        "days": 4,
        "epcs": 3000,
        "seed": 7,
        "epcs_per_block": 1000,
        "rates": dict.fromkeys(domain().anomaly_types, RATE),
    }
    return GeneratorSettings.model_validate({**base, **options})


def _generate(spark, settings: Settings, lake: Path, **options) -> dict:
    generator = _generator(**options)
    start = dt.date.fromisoformat(generator.start_date)
    end = start + dt.timedelta(days=generator.days - 1)
    run_settings = settings.model_copy(update={"lake_root": str(lake), "generator": generator})
    with job_run("generate", settings=run_settings, spark=spark, start=start, end=end) as run:
        return execute(run)


def _tree(lake: Path) -> dict[str, bytes]:
    root = lake / "landing"
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _read_csv(folder: Path) -> pd.DataFrame:
    frames = []
    for file in sorted(folder.glob("date=*/*.csv")):
        frame = pd.read_csv(file, dtype=str, keep_default_na=False)
        frames.append(frame.assign(file_date=file.parent.name.split("=")[1], file=file.name))
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def clean(spark, test_settings, tmp_path_factory):
    """A clean CSV window, its files, and the run summary."""
    lake = tmp_path_factory.mktemp("gen_clean")
    summary = _generate(spark, test_settings, lake)
    scans = _read_csv(lake / "landing" / "scans")
    labels = _read_csv(lake / "landing" / "labels")
    locations = pd.read_csv(lake / "landing" / "reference" / "locations.csv", dtype=str)
    products = pd.read_csv(lake / "landing" / "reference" / "products.csv", dtype=str)
    scans["t"] = pd.to_datetime(scans["event_time"], format=ISO, utc=True)
    loc = locations.set_index("location_id")
    scans["tier"] = loc.loc[scans["location_id"], "tier"].astype(int).to_numpy()
    scans["lat"] = loc.loc[scans["location_id"], "latitude"].astype(float).to_numpy()
    scans["lon"] = loc.loc[scans["location_id"], "longitude"].astype(float).to_numpy()
    # The label feed names one anchor event per incident; the ground truth lists the incident's whole scope.
    truth = pd.read_parquet(lake / "landing" / "_truth" / "labels")
    label_of = truth.set_index("event_id")["anomaly_type"]
    scans["label"] = scans["event_id"].map(label_of).fillna("")
    # Consecutive scans of one EPC (in time order): the step from the previous scan to this one.
    scans = scans.sort_values(["epc_code", "t", "event_id"], ignore_index=True)
    prev = scans.groupby("epc_code").shift(1)
    scans["has_prev"] = prev["event_id"].notna()
    scans["prev_label"] = prev["label"]
    scans["prev_location"] = prev["location_id"]
    scans["prev_type"] = prev["event_type"]
    scans["d_tier"] = scans["tier"] - prev["tier"]
    scans["d_hours"] = (scans["t"] - prev["t"]).dt.total_seconds() / 3600
    scans["d_km"] = haversine_km(prev["lat"], prev["lon"], scans["lat"], scans["lon"])
    scans["kmh"] = scans["d_km"] / scans["d_hours"].clip(lower=1 / 3600)
    return {
        "lake": lake,
        "summary": summary,
        "scans": scans,
        "labels": labels,
        "truth": truth,
        "locations": locations,
        "products": products,
        "settings": _generator(),
    }


def test_same_options_same_bytes_and_rerun_replaces(spark, test_settings, clean, tmp_path):
    first = _tree(clean["lake"])
    timing = ("duration_s", "events_per_s")
    again = _generate(spark, test_settings, clean["lake"])
    assert {k: v for k, v in again.items() if k not in timing} == {
        k: v for k, v in clean["summary"].items() if k not in timing
    }
    assert _tree(clean["lake"]) == first  # same bytes, nothing left over from the first run
    _generate(spark, test_settings, tmp_path / "other", seed=8)
    other = _tree(tmp_path / "other")
    assert other["reference/locations.csv"] != first["reference/locations.csv"]
    day = "scans/date=2025-07-02/part-00000.csv"
    assert other[day] != first[day]


def test_block_simulation_does_not_depend_on_partitioning():
    plan = make_plan(_generator(), START, 4)
    a, b = simulate_block(plan, 1), simulate_block(plan, 1)
    assert (a.event_id == b.event_id).all() and (a.time_s == b.time_s).all()
    assert not set(a.event_id) & set(simulate_block(plan, 2).event_id)


def test_files_names_and_summary(clean):
    lake, summary, scans, labels = clean["lake"], clean["summary"], clean["scans"], clean["labels"]
    days = [(START + dt.timedelta(days=i)).isoformat() for i in range(4)]
    assert sorted(p.name for p in (lake / "landing" / "scans").iterdir()) == [f"date={d}" for d in days]
    assert set(scans["file"]) == {"part-00000.csv"}
    assert set(labels["file"]) == {"part-w20250701-00000.csv"}
    assert not list((lake / "landing").glob(".*")), "temporary folders left behind"
    assert (
        summary["events"] == len(scans)
        and summary["events_per_day"] == scans["file_date"].value_counts().to_dict()
    )
    assert summary["labels"] == labels["anomaly_type"].value_counts().to_dict()
    assert summary["corrupted_rows"] == {}
    assert scans["event_id"].is_unique
    # Every event lies in its date partition; each file is sorted by event time.
    assert (scans["t"].dt.strftime("%Y-%m-%d") == scans["file_date"]).all()
    assert scans["event_time"].str.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ").all()
    for file in (lake / "landing" / "scans").glob("date=*/part-00000.csv"):
        lines = file.read_text().splitlines()
        assert lines[0] == ",".join(SCAN_COLUMNS)
        times = [line.split(",")[SCAN_COLUMNS.index("event_time")] for line in lines[1:]]
        assert times == sorted(times)


def test_reference_files(clean):
    locations, products, dom = clean["locations"], clean["products"], domain()
    assert list(locations.columns) == table_spec("landing_locations").column_names
    assert list(products.columns) == table_spec("landing_products").column_names
    assert locations["location_id"].str.fullmatch(r"LOC-\d{5}").all()
    assert (locations["business_step"].map(dom.business_steps) == locations["tier"].astype(int)).all()
    s = clean["settings"]
    assert locations["tier"].value_counts().sort_index().tolist() == [
        s.factories,
        s.warehouses,
        s.hubs,
        s.wholesalers,
        s.retailers,
        s.retailers,
    ]
    assert (
        products["company_code"].str.fullmatch(r"\d{7}").all()
        and len(products) == s.companies * s.products_per_company
    )


def test_genuine_journeys_are_plausible(clean):
    scans, s = clean["scans"], clean["settings"]
    genuine = scans[~scans["epc_code"].isin(scans.loc[scans["label"] != "", "epc_code"])]
    journey = list(domain().event_types)
    for _, events in genuine.groupby("epc_code"):
        assert events["event_type"].tolist() == journey[: len(events)]
    steps = genuine[genuine["has_prev"]]
    assert steps["d_tier"].isin([0, 1]).all()
    assert (steps["kmh"] <= s.truck_speed_kmh_max).all()
    moves = steps[steps["d_tier"] == 1]
    assert moves["d_hours"].min() >= s.handling_hours_min and moves["d_hours"].median() < 24
    # Nearby is more likely: the median hop is well below a random pair's distance.
    assert moves["d_km"].median() < 0.6 * s.region_km / 2
    assert (
        scans.groupby("epc_code")["t"]
        .min()
        .between(pd.Timestamp(START, tz="UTC"), pd.Timestamp("2025-07-05", tz="UTC"))
        .all()
    )


def test_every_anomaly_present_at_its_rate_and_labelled_once(clean):
    scans, labels = clean["scans"], clean["labels"]
    epcs = scans["epc_code"].nunique()
    assert list(labels.columns[: len(LABEL_COLUMNS)]) == LABEL_COLUMNS
    assert not labels.duplicated(["event_id", "anomaly_type"]).any()
    assert labels["event_id"].isin(scans["event_id"]).all()
    for anomaly in domain().anomaly_types:
        share = labels.loc[labels["anomaly_type"] == anomaly, "epc_code"].nunique() / epcs
        assert 0.5 * RATE <= share <= 1.3 * RATE, (anomaly, share)


def test_labels_arrive_late_in_their_confirmation_day(clean):
    scans, truth = clean["scans"], clean["truth"]
    events = truth.merge(scans[["event_id", "t"]], on="event_id")
    # An incident happens at its anomalous event (the later one of a swapped pair); a fake EPC at its first scan.
    happened = (
        events.groupby(["incident_id", "epc_code", "anomaly_type"])["t"].agg(["min", "max"]).reset_index()
    )
    happened["at"] = happened["min"].where(happened["anomaly_type"] == "epc_fake", happened["max"])
    labels = (
        clean["labels"]
        .merge(scans[["event_id", "t"]], on="event_id")
        .merge(happened[["epc_code", "anomaly_type", "at"]], on=["epc_code", "anomaly_type"])
    )
    assert len(labels) == len(clean["labels"]) == len(happened)  # one label row per incident
    confirmed = pd.to_datetime(labels["confirmed_at"], format=ISO, utc=True)
    delay_days = (confirmed - labels["at"]).dt.total_seconds() / 86400
    assert delay_days.between(1, 14).all() and delay_days.max() > 7
    assert (confirmed.dt.strftime("%Y-%m-%d") == labels["file_date"]).all()
    # The anchor: the anomalous event itself, or a fake EPC's latest scan known at confirmation.
    assert (labels["t"] <= confirmed).all()
    fake = labels["anomaly_type"] == "epc_fake"
    assert (labels.loc[~fake, "t"] == labels.loc[~fake, "at"]).all()
    for _, row in labels[fake].iterrows():
        mine = scans.loc[scans["epc_code"] == row["epc_code"], "t"]
        assert row["t"] == mine[mine <= pd.Timestamp(row["confirmed_at"])].max()


def test_jump_is_impossibly_fast(clean):
    jumps = clean["scans"][clean["scans"]["label"] == "jump"]
    assert len(jumps) and jumps["has_prev"].all()
    assert (jumps["kmh"] > 1000).all() and (jumps["d_tier"] == 1).all()


def test_dup_is_close_in_time_and_far_in_space(clean):
    scans, s = clean["scans"], clean["settings"]
    clones = scans[scans["label"] == "epc_dup"]
    assert len(clones) and (clones["prev_label"] == "").all()
    assert (clones["d_hours"] * 60 <= s.dup_delay_minutes_max).all()
    assert (clones["d_km"] >= s.dup_min_km).all() and (clones["d_tier"] == 0).all()
    assert (clones["event_type"] == clones["prev_type"]).all()


def test_loc_err_is_an_invalid_tier_move(clean):
    scans = clean["scans"]
    bad = scans[scans["label"] == "loc_err"]
    assert len(bad) and (~bad["d_tier"].isin([0, 1])).all()
    assert (bad["d_tier"] < 0).any() and (bad["d_tier"] > 1).any()  # backwards and skips
    # Every other step (but the one after a clone) is a valid tier move.
    rest = scans[scans["has_prev"] & (scans["label"] != "loc_err") & (scans["prev_label"] != "epc_dup")]
    assert rest["d_tier"].isin([0, 1]).all()


def test_evt_order_err_is_outbound_before_inbound(clean):
    scans = clean["scans"]
    swapped = scans[scans["label"] == "evt_order_err"]
    assert len(swapped) % 2 == 0
    second = swapped[swapped["prev_label"] == "evt_order_err"]
    assert len(second) == len(swapped) // 2
    assert (second["location_id"] == second["prev_location"]).all()
    assert (
        second["event_type"].str.endswith("_Inbound").all()
        and second["prev_type"].str.endswith("_Outbound").all()
    )
    # Elsewhere an Outbound never comes right before an Inbound at the same place.
    rest = scans[(scans["label"] == "") & (scans["prev_label"] == "")]
    same_place = rest[rest["location_id"] == rest["prev_location"]]
    assert not (
        same_place["prev_type"].str.endswith("_Outbound") & same_place["event_type"].str.endswith("_Inbound")
    ).any()


def _epc_faults(scans: pd.DataFrame, products: pd.DataFrame) -> pd.Series:
    """Why an EPC is fake as seen from the data alone ('' when it looks genuine)."""
    regex = re.compile(domain().epc_regex)
    companies = set(products["company_code"])
    pairs = set(zip(products["company_code"], products["product_code"], strict=False))

    def fault(epc: str, day: str) -> str:
        if not regex.match(epc):
            return "malformed"
        _, company, product, _, made, _ = epc.split(".")
        if company not in companies:
            return "unknown_company"
        if (company, product) not in pairs:
            return "unknown_product"
        try:
            if dt.datetime.strptime(made, "%Y%m%d").date().isoformat() > day:
                return "future_date"
        except ValueError:
            return "invalid_date"
        return ""

    return pd.Series(
        [fault(e, d) for e, d in zip(scans["epc_code"], scans["file_date"], strict=False)], index=scans.index
    )


def test_fake_epcs_fail_a_check_and_genuine_ones_pass(clean):
    scans = clean["scans"]
    faults = _epc_faults(scans, clean["products"])
    fake = scans["label"] == "epc_fake"
    assert (faults[fake] != "").all() and (faults[~fake] == "").all()
    assert set(faults[fake]) == {
        "malformed",
        "unknown_company",
        "unknown_product",
        "future_date",
        "invalid_date",
    }
    # All events of a fake EPC are labelled.
    assert scans[scans["epc_code"].isin(scans.loc[fake, "epc_code"])]["label"].eq("epc_fake").all()


def _classify_text(raw: bytes, fmt: str, day: str, known_locations: set[str]) -> str:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "non_utf8"
    if fmt == "csv":
        fields = next(csv.reader(io.StringIO(line)))
        if len(fields) != len(SCAN_COLUMNS):
            return "unparseable"
        row = dict(zip(SCAN_COLUMNS, fields, strict=False))
    else:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            return "unparseable"
    return _classify_row(row, day, known_locations)


def _classify_row(row: dict, day: str, known_locations: set[str]) -> str:
    if any(not row.get(c) for c in table_spec("landing_scans").required_columns):
        return "missing_field"
    try:
        t = dt.datetime.strptime(row["event_time"], ISO)
    except ValueError:
        return "bad_timestamp"
    if row["location_id"] not in known_locations:
        return "unknown_location"
    if t.date().isoformat() != day:
        return "outside_partition"
    return ""


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_corruption_makes_every_bad_input_class_and_formats_read(spark, test_settings, tmp_path, fmt):
    summary = _generate(spark, test_settings, tmp_path, format=fmt, epcs=1500, days=2, corrupt_rate=0.05)
    landing = tmp_path / "landing"
    known = set(pd.read_csv(landing / "reference" / "locations.csv", dtype=str)["location_id"])
    found: dict[str, int] = {}
    events = 0
    for file in sorted((landing / "scans").glob(f"date=*/part-00000.{fmt}")):
        day = file.parent.name.split("=")[1]
        if fmt == "parquet":
            table = pq.read_table(file)
            assert table.column_names == SCAN_COLUMNS and all(str(t) == "string" for t in table.schema.types)
            classes = [_classify_row(r, day, known) for r in table.to_pylist()]
        else:
            lines = file.read_bytes().splitlines()
            if fmt == "csv":
                assert lines.pop(0) == ",".join(SCAN_COLUMNS).encode()
            classes = [_classify_text(raw, fmt, day, known) for raw in lines]
        events += len(classes)
        for c in classes:
            found[c] = found.get(c, 0) + 1
    corrupted = {k: v for k, v in found.items() if k}
    assert corrupted == summary["corrupted_rows"] and events == summary["events"]
    expected = {"missing_field", "bad_timestamp", "unknown_location", "outside_partition"}
    if fmt != "parquet":
        expected |= {"unparseable", "non_utf8"}
    assert set(corrupted) == expected
    assert 0.03 < sum(corrupted.values()) / events < 0.07

    # Spark reads every format with exactly the landing columns.
    scans_path, labels_path = str(landing / "scans"), str(landing / "labels")
    if fmt == "csv":
        frame, label_frame = (spark.read.option("header", True).csv(p) for p in (scans_path, labels_path))
    else:
        frame, label_frame = (getattr(spark.read, fmt)(p) for p in (scans_path, labels_path))
    # (Spark's JSON inference adds _corrupt_record for the broken lines.)
    assert set(frame.columns) - {"_corrupt_record"} == {*SCAN_COLUMNS, "date"}
    assert set(label_frame.columns) == {*LABEL_COLUMNS, "date"}
    assert label_frame.count() == sum(summary["labels"].values())


def test_corrupted_rows_are_never_labelled(spark, test_settings, tmp_path):
    summary = _generate(spark, test_settings, tmp_path, epcs=1000, days=2, corrupt_rate=0.2)
    landing = tmp_path / "landing"
    labelled = set(_read_csv(landing / "labels")["epc_code"])
    known = set(pd.read_csv(landing / "reference" / "locations.csv", dtype=str)["location_id"])
    hit = 0
    for file in sorted((landing / "scans").glob("date=*/*.csv")):
        day = file.parent.name.split("=")[1]
        for raw in file.read_bytes().splitlines()[1:]:
            if _classify_text(raw, "csv", day, known):
                hit += 1
                fields = raw.decode("latin-1").split(",")
                assert not (len(fields) > 1 and fields[1] in labelled)
    assert hit == sum(summary["corrupted_rows"].values()) > 0


def test_cli_options_and_errors(monkeypatch):
    args = build_parser().parse_args(["--days", "3", "--rate-epc-fake", "0.2", "--format", "json"])
    assert (args.days, args.rate_epc_fake, args.format) == (3, 0.2, "json")
    with pytest.raises(ConfigError, match="add up to"):
        main(["--rate-jump", "0.9", "--rate-loc-err", "0.5", "--lake-root", "/nonexistent"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--format", "xml"])
