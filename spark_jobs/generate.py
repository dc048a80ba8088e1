"""Simulate the supply network and write the landing files (same code as `tracelake generate`).

    spark-submit spark_jobs/generate.py --start-date 2025-07-01 --days 7 --epcs 20000 \\
        --seed 42 --format csv [--profile realistic|easy] [--rate-epc-fake 0.01 ...] [--corrupt-rate 0.001]

Writes, under the lake root (paths from ``schemas/tables/landing_*.yaml``):

- ``landing/scans/date=D/part-00000.<csv|json|parquet>`` for every day D of the
  window, sorted by event time. A day's folder is replaced as a whole (the new
  folder is staged next to it and moved into place).
- ``landing/labels/date=C/part-w<START>-00000.<ext>``, C = the day the label was
  confirmed. A run owns the label files tagged with its window's start, so a
  rerun replaces them while the labels of other windows stay.
- ``landing/reference/locations.csv``, ``products.csv``, ``air_lanes.csv`` and
  ``serial_ranges.csv``: the network, its air lanes, the serials each product issued.
- ``landing/_truth/labels/part-w<START>.parquet`` and
  ``landing/_truth/confounders/part-w<START>.parquet``: the ground truth of the
  window (every event of every incident, every event showing a confounder);
  not ingested (docs/anomalies.md).

The profile (``realistic``, the default, or ``easy``) fills every generator
setting not given explicitly (``schemas/domain.yaml``, ``generator.profiles``).

The same options give byte-identical files. Options default from the
``generator`` section of the configuration.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pyspark.sql import functions as F

from spark_jobs.transforms import epcis_writer
from spark_jobs.transforms.generate import (
    LABELS,
    SCANS,
    STATS,
    TEXT_FORMATS,
    TRUTH_CONFOUNDERS,
    TRUTH_LABELS,
    SimulationPlan,
    column_files,
    merge_stats,
    simulate,
    simulate_truth,
    text_files,
    truth_files,
)
from spark_jobs.transforms.network import build_network
from tracelake import storage
from tracelake.arguments import parse, parser
from tracelake.config import (
    ConfigError,
    GeneratorSettings,
    Settings,
)
from tracelake.dates import parse_date
from tracelake.runs import (
    JobRun,
    job_run,
    run_entrypoint,
    settings_from_args,
)
from tracelake.tables import domain, table_spec

JOB = "generate"
FORMATS = ("csv", "json", "parquet", epcis_writer.FORMAT)
EXTENSIONS = {"csv": "csv", "json": "json", "parquet": "parquet"}
# Ground truth folder under landing/ (the leading underscore keeps readers of landing/ out).
TRUTH_FOLDER = "_truth"
TRUTH_NAMES = {TRUTH_LABELS: "labels", TRUTH_CONFOUNDERS: "confounders"}


def build_parser() -> argparse.ArgumentParser:
    return parser(JOB)


def apply_options(settings: Settings, args: argparse.Namespace) -> Settings:
    """The settings with the generator options given on the command line."""
    generator = settings.generator.model_dump()
    for name in ("start_date", "days", "epcs", "seed", "format", "corrupt_rate"):
        if getattr(args, name, None) is not None:
            generator[name] = getattr(args, name)
    for anomaly in domain().anomaly_types:
        value = getattr(args, f"rate_{anomaly}", None)
        if value is not None:
            generator["rates"][anomaly] = value
    try:
        settings = settings.model_copy(update={"generator": GeneratorSettings.model_validate(generator)})
    except ValidationError as exc:
        raise ConfigError(f"invalid generator option: {exc}") from exc
    if settings.generator.format == epcis_writer.FORMAT and settings.generator.corrupt_rate > 0:
        raise ConfigError(
            f"--corrupt-rate {settings.generator.corrupt_rate} cannot be used with --format epcis: "
            "EPCIS documents are written valid against GS1's schema; use csv, json or parquet"
        )
    return settings


def with_profile_option(args: argparse.Namespace) -> argparse.Namespace:
    """``--profile`` as the override ``generator.profile``, so that explicit settings still win over it."""
    if getattr(args, "profile", None):
        args.overrides = [*(getattr(args, "overrides", None) or []), f"generator.profile={args.profile}"]
    return args


def make_plan(generator: GeneratorSettings, start: dt.date, days: int) -> SimulationPlan:
    scans, labels = table_spec("landing_scans"), table_spec("landing_labels")
    dom = domain()
    return SimulationPlan(
        settings=generator,
        network=build_network(generator, dom),
        start=start,
        days=days,
        # An EPCIS delivery is rendered from the same simulated columns as Parquet.
        format=epcis_writer.SIMULATION_FORMAT
        if generator.format == epcis_writer.FORMAT
        else generator.format,
        anomaly_types=dom.anomaly_types,
        event_types=dom.event_types,
        scan_columns=tuple(scans.column_names),
        scan_required=tuple(scans.required_columns),
        label_columns=tuple(labels.column_names),
    )


# ---------------------------------------------------------------------------
# publishing the staged files


def _data_files(folder: Path, header: bytes | None) -> list[Path]:
    """Spark's part files of a staged folder, in name order, without header-only CSV files."""
    if not folder.is_dir():
        return []
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith((".", "_")))
    if header is not None:
        files = [p for p in files if p.stat().st_size != len(header) + 1]
    return files


def _swap_in(ready: Path, target: Path, trash: Path) -> None:
    """Replace folder ``target`` by ``ready`` (two renames on one file system)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        trash.parent.mkdir(parents=True, exist_ok=True)
        os.rename(target, trash)
    os.rename(ready, target)


def _write_reference(frame: Any, path: Path, staging: Path) -> None:
    staging.mkdir(parents=True, exist_ok=True)
    staged = staging / path.name
    frame.to_csv(staged, index=False, lineterminator="\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staged, path)


def _publish(plan: SimulationPlan, staged: Path, tmp: Path, lake: str) -> dict[str, list[Path]]:
    """Move the staged Spark output to its landing places under deterministic names."""
    ext = EXTENSIONS[plan.format]
    scans_spec, labels_spec = table_spec("landing_scans"), table_spec("landing_labels")
    header = {
        kind: (plan.header(kind).encode() if plan.format == "csv" else None) for kind in (SCANS, LABELS)
    }
    published: dict[str, list[Path]] = {SCANS: [], LABELS: []}

    scans_root = Path(scans_spec.location(lake))
    for day in plan.window_days:
        name = f"{scans_spec.partition_by}={day.isoformat()}"
        files = _data_files(staged / f"kind={SCANS}" / f"date={day.isoformat()}", header[SCANS])
        target = scans_root / name
        if not files:  # no event that day: no delivery
            if target.exists():
                (tmp / "old" / SCANS).mkdir(parents=True, exist_ok=True)
                os.rename(target, tmp / "old" / SCANS / name)
            continue
        ready = tmp / "ready" / SCANS / name
        ready.mkdir(parents=True)
        for i, file in enumerate(files):
            dest = ready / f"part-{i:05d}.{ext}"
            os.rename(file, dest)
            published[SCANS].append(target / dest.name)
        _swap_in(ready, target, tmp / "old" / SCANS / name)

    labels_root = Path(labels_spec.location(lake))
    tag = f"w{plan.start:%Y%m%d}"
    for day in plan.label_days:
        files = _data_files(staged / f"kind={LABELS}" / f"date={day.isoformat()}", header[LABELS])
        target = labels_root / f"{labels_spec.partition_by}={day.isoformat()}"
        for i, file in enumerate(files):
            target.mkdir(parents=True, exist_ok=True)
            dest = target / f"part-{tag}-{i:05d}.{ext}"
            os.replace(file, dest)
            published[LABELS].append(dest)
    keep = set(published[LABELS])
    for stale in sorted(labels_root.glob(f"{labels_spec.partition_by}=*/part-{tag}-*")):
        if stale not in keep:
            stale.unlink()
            if not any(stale.parent.iterdir()):
                stale.parent.rmdir()
    return published


def _publish_truth(plan: SimulationPlan, staged: Path, root: Path) -> None:
    """One Parquet file per truth table and window: ``<root>/<table>/part-w<START>.parquet``."""
    for kind, name in TRUTH_NAMES.items():
        target = root / name / f"part-w{plan.start:%Y%m%d}.parquet"
        files = _data_files(staged / kind, None)
        target.parent.mkdir(parents=True, exist_ok=True)
        if files:
            os.replace(files[0], target)
        elif target.exists():
            target.unlink()


# ---------------------------------------------------------------------------


def execute(run: JobRun) -> dict[str, Any]:
    """Generate the window ``run.start .. run.end`` with ``run.settings.generator``; returns a summary."""
    if run.start is None or run.end is None:
        raise ConfigError("generate needs a window: pass start and end dates to job_run")
    days = (run.end - run.start).days + 1
    generator = run.settings.generator
    plan = make_plan(generator, run.start, days)
    # A lake on object storage gets its landing files from a local staging lake, uploaded at the end
    # (a producer's delivery); same-named files are replaced, files of other windows stay.
    remote = not storage.is_local(run.lake_root)
    lake = tempfile.mkdtemp(prefix="tracelake-generate-") if remote else run.lake_root
    landing = Path(table_spec("landing_scans").location(lake)).parent
    tmp = landing / f".{JOB}-{run.run_id}"
    started = time.perf_counter()
    run.log.event(
        "simulating",
        epcs=generator.epcs,
        blocks=plan.n_blocks,
        days=days,
        seed=generator.seed,
        format=generator.format,
        profile=generator.profile,
        rates=generator.rates.model_dump(),
        confounder_rates=generator.confounder_rates,
        corrupt_rate=generator.corrupt_rate,
    )
    try:
        network = plan.network
        locations = epcis_writer.with_location_keys(
            network.locations_frame(), run.settings.epcis.location_company_prefix
        )
        _write_reference(locations, Path(table_spec("landing_locations").location(lake)), tmp / "ref")
        _write_reference(
            network.products_frame(), Path(table_spec("landing_products").location(lake)), tmp / "ref"
        )
        _write_reference(
            network.air_lanes_frame(), Path(table_spec("landing_air_lanes").location(lake)), tmp / "ref"
        )
        _write_reference(
            network.serial_ranges_frame(generator.epcs),
            Path(table_spec("landing_serial_ranges").location(lake)),
            tmp / "ref",
        )

        staged = tmp / "spark"
        blocks = run.spark.range(plan.n_blocks, numPartitions=plan.n_blocks)
        simulated = simulate(blocks, plan)
        if plan.format in TEXT_FORMATS:
            with run.log.step("write text files", path=str(staged)):
                text_files(simulated, plan.file_keys).write.partitionBy("kind", "date").text(str(staged))
            stats_files = _data_files(staged / f"kind={STATS}" / "date=-", None)
            stats_lines = [line for f in stats_files for line in f.read_text().splitlines() if line]
        else:
            simulated = simulated.persist()
            try:
                with run.log.step("write parquet files", path=str(staged)):
                    for kind, columns in ((SCANS, plan.scan_columns), (LABELS, plan.label_columns)):
                        if kind == SCANS and generator.format == epcis_writer.FORMAT:
                            continue
                        column_files(simulated, kind, columns, plan.file_keys).write.partitionBy(
                            "date"
                        ).parquet(str(staged / f"kind={kind}"))
                if generator.format == epcis_writer.FORMAT:
                    with run.log.step("write EPCIS documents", path=str(tmp / "epcis")):
                        scans = simulated.where(F.col("kind") == SCANS).select(
                            "date", "k1", "k2", *plan.scan_columns
                        )
                        sgln = dict(zip(locations["location_id"], locations["sgln"], strict=False))
                        lines = epcis_writer.document_lines(
                            scans,
                            sgln,
                            epcis_writer.zone_offset(generator.region_center_lon),
                            run.settings.epcis.events_per_document,
                        )
                        epcis_writer.write_documents(lines, tmp / "epcis", plan.file_keys)
                stats_lines = [
                    bytes(r.value).decode()
                    for r in simulated.where(f"kind = '{STATS}'").select("value").collect()
                ]
            finally:
                simulated.unpersist()
        stats = merge_stats(stats_lines)
        if stats["epcs"] != generator.epcs:
            raise RuntimeError(
                f"simulated {stats['epcs']} EPCs instead of {generator.epcs}: some blocks are missing"
            )
        with run.log.step("write ground truth", path=str(landing / TRUTH_FOLDER)):
            truth = simulate_truth(run.spark.range(plan.n_blocks, numPartitions=plan.n_blocks), plan)
            for kind in TRUTH_NAMES:
                truth_files(truth, kind).write.parquet(str(tmp / "truth" / kind))
        published = _publish(plan, staged, tmp, lake)
        _publish_truth(plan, tmp / "truth", landing / TRUTH_FOLDER)
        epcis_root = Path(table_spec("landing_epcis").location(lake))
        if generator.format == epcis_writer.FORMAT:
            published[SCANS] = epcis_writer.publish(tmp / "epcis", epcis_root, plan.window_days, tmp)
        else:  # this format now delivers the window's scans
            epcis_writer.remove(epcis_root, plan.window_days, tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        if remote:
            with run.log.step("upload landing files", lake=run.lake_root):
                storage.upload(landing, storage.join(run.lake_root, landing.name))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if remote:
            shutil.rmtree(lake, ignore_errors=True)

    duration = time.perf_counter() - started
    events = sum(stats["events"].values())
    summary = {
        "landing": storage.join(run.lake_root, landing.name) if remote else str(landing),
        "format": generator.format,
        "start_date": run.start.isoformat(),
        "end_date": run.end.isoformat(),
        "days": days,
        "epcs": generator.epcs,
        "seed": generator.seed,
        "files": len(published[SCANS]) + len(published[LABELS]) + 4,
        "events": events,
        "events_per_day": stats["events"],
        "labels": stats["labels"],
        "anomalous_epcs": stats["anomalous_epcs"],
        "profile": generator.profile,
        "confounded_epcs": stats["confounded_epcs"],
        "skewed_events": stats["skewed_events"].get("clock_skew", 0),
        "corrupted_rows": stats["corrupted"],
        "locations": network.n_locations,
        "products": len(network.product_code),
        "duration_s": round(duration, 3),
        "events_per_s": round(events / duration, 1) if duration > 0 else None,
    }
    run.record_output(
        "landing_scans",
        rows=events,
        files=len(published[SCANS]),
        days=days,
        corrupted_rows=sum(stats["corrupted"].values()),
    )
    run.record_output(
        "landing_labels",
        rows=sum(stats["labels"].values()),
        files=len(published[LABELS]),
        per_type=stats["labels"],
    )
    run.record_output(
        "landing_reference",
        locations=network.n_locations,
        products=len(network.product_code),
        air_lanes=int(network.air_lanes.sum()),
    )
    return summary


def main(argv: list[str] | None = None) -> int:
    args = with_profile_option(parse(JOB, argv))
    settings = apply_options(settings_from_args(args), args)
    generator = settings.generator
    start = parse_date(generator.start_date, "--start-date")
    end = start + dt.timedelta(days=generator.days - 1)
    with job_run(JOB, settings=settings, start=start, end=end) as run:
        summary = execute(run)
        run.log.event("summary", **summary)
    labels = ", ".join(f"{k} {v}" for k, v in summary["labels"].items()) or "none"
    print(
        f"generate ({summary['profile']}): {summary['events']} scan events of {summary['epcs']} EPCs, "
        f"{summary['start_date']}.."
        f"{summary['end_date']} ({summary['format']}), labels: {labels}; "
        f"corrupted rows: {sum(summary['corrupted_rows'].values())}; {summary['files']} files under {summary['landing']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_entrypoint(main))
