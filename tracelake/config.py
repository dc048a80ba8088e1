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

from tracelake.errors import TracelakeError

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

ENV_PREFIX = "TRACELAKE_"
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(TracelakeError, ValueError):
    """A configuration value is missing, malformed or contradictory."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SparkSettings(_Section):
    master: str = "local[*]"
    app_name_prefix: str = "tracelake"
    # Folder with the Delta Lake JARs (filled from Maven Central by `make setup`).
    jars_dir: str = str(PROJECT_ROOT / ".jars")
    driver_memory: str = "4g"
    shuffle_partitions: int = 8
    # Extra `spark.*` settings passed through unchanged.
    conf: dict[str, str] = Field(default_factory=dict)


class MlflowSettings(_Section):
    # Empty means the embedded default: SQLite + artifacts under <lake>/_mlflow.
    tracking_uri: str = ""
    registry_uri: str = ""
    experiment: str = "tracelake"


class AnomalyRates(_Section):
    """Share of EPCs (or events, for per-event anomalies) that carry each anomaly."""

    epc_fake: float = Field(0.01, ge=0, le=1)
    epc_dup: float = Field(0.01, ge=0, le=1)
    loc_err: float = Field(0.01, ge=0, le=1)
    evt_order_err: float = Field(0.01, ge=0, le=1)
    jump: float = Field(0.01, ge=0, le=1)


class GeneratorSettings(_Section):
    start_date: str = "2025-07-01"
    days: int = Field(7, ge=1)
    epcs: int = Field(20_000, ge=1)
    seed: int = 42
    format: Literal["csv", "json", "parquet"] = "csv"
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


class IngestSettings(_Section):
    # Landing rows whose reconciliation may differ (always 0 in production).
    reconciliation_tolerance: int = Field(0, ge=0)


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
    # How far back (days) a day's sequences and history may reach.
    lookback_days: int = Field(30, ge=0)


class TrainingSetSettings(_Section):
    # Temporal split: share of the range's days in train and validation; the rest is test.
    train_fraction: float = Field(0.6, gt=0, lt=1)
    validation_fraction: float = Field(0.2, gt=0, lt=1)


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
    weight_decay: float = Field(1e-4, ge=0)
    lr_schedule: Literal["cosine", "onecycle", "constant"] = "cosine"
    # Share of all steps spent warming the learning rate up linearly (cosine, onecycle).
    warmup_fraction: float = Field(0.05, ge=0, lt=1)
    # Gradient clipping by global norm; 0 measures the norm without clipping.
    grad_clip_norm: float = Field(1.0, ge=0)
    # A step whose loss or gradient is not finite is skipped; this many in a row abort the run.
    max_nonfinite_steps: int = Field(20, ge=1)
    # Early stopping: epochs without improvement of the metric by more than min_delta.
    early_stopping_metric: Literal["val_loss", "val_macro_pr_auc"] = "val_loss"
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
    # Petastorm reader threads per process (1 keeps the in-epoch row-group order
    # reproducible, which mid-epoch resume relies on).
    loader_workers: int = Field(1, ge=1)
    # Rows shuffled together on the petastorm path (the in-memory path shuffles fully).
    shuffle_buffer_rows: int = Field(50_000, ge=0)
    # Evaluation.
    threshold_rule: Literal["max_f1"] = "max_f1"
    bootstrap_samples: int = Field(1000, ge=0)
    ci_level: float = Field(0.95, gt=0, lt=1)
    # Export: ONNX Runtime must match torch within this (max absolute difference).
    onnx_parity_tolerance: float = Field(1e-4, gt=0)
    onnx_opset: int = Field(18, ge=14)
    onnx_exporter: Literal["dynamo", "torchscript"] = "dynamo"


class Settings(_Section):
    lake_root: str = "./lake"
    spark: SparkSettings = Field(default_factory=SparkSettings)
    mlflow: MlflowSettings = Field(default_factory=MlflowSettings)
    generator: GeneratorSettings = Field(default_factory=GeneratorSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    validation: ValidationSettings = Field(default_factory=ValidationSettings)
    features: FeatureSettings = Field(default_factory=FeatureSettings)
    training_set: TrainingSetSettings = Field(default_factory=TrainingSetSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)

    @property
    def lake_path(self) -> Path:
        return Path(self.lake_root).expanduser().resolve()


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
        key = name[len(ENV_PREFIX):].lower().replace("__", ".")
        if key.split(".")[0] not in Settings.model_fields:
            continue  # e.g. TRACELAKE_RUN_ID is not a setting
        _set_path(tree, key, yaml.safe_load(raw) if raw else raw)
    return tree


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


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
        return Settings.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration: {exc}") from exc
