"""The sequence model: an RNN over the event sequence plus an MLP over the tabular features.

Preprocessing (per-feature mean/std, fit on the training split only, and the
per-label ``pos_weight``) lives in buffers of the model, so a saved model and
its ONNX export take raw features. Missing values (NaN) become the training
mean; standardised values are clipped to +-``feature_clip`` (infinities too).

Categorical sequence features (event type and business step, stored as
``1 + position`` in a domain.yaml list, 0 unknown; see
:data:`CATEGORICAL_SEQUENCE_FEATURES`) enter the RNN through ``nn.Embedding``
instead of as scaled numbers; a value outside the vocabulary the model was
trained with (or NaN) reads as 0, "unknown". The input layout (``seq`` [B, T,
F] float) is unchanged, so the ONNX export and scoring take the same inputs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from training.checkpoint import atomic_torch_save, load_payload
from training.data import Batch, FeatureSpec

# /2: categorical sequence features through embeddings (ModelConfig.categorical_features).
# /1 payloads (every sequence feature standardised) still load: they have no categorical features.
MODEL_FORMAT = "tracelake-sequence-model/2"
READABLE_FORMATS = ("tracelake-sequence-model/1", MODEL_FORMAT)

# Sequence features that hold 1 + a position in a list of schemas/domain.yaml (0 = unknown).
CATEGORICAL_SEQUENCE_FEATURES = {"event_type_idx": "event_types", "business_step_idx": "business_steps"}


def domain_vocabulary_sizes() -> dict[str, int]:
    """Embedding rows of each categorical sequence feature: the domain list's length + 1 (unknown)."""
    import yaml

    domain = yaml.safe_load((Path(__file__).resolve().parents[1] / "schemas" / "domain.yaml").read_text())
    return {name: len(domain[key]) + 1 for name, key in CATEGORICAL_SEQUENCE_FEATURES.items()}


@dataclass(frozen=True)
class ModelConfig:
    feature_spec: FeatureSpec
    cell: str = "lstm"
    hidden_size: int = 64
    num_layers: int = 1
    tab_hidden_size: int = 64
    head_hidden_size: int = 64
    dropout: float = 0.1
    feature_clip: float = 10.0
    # Sequence feature name -> vocabulary size (index 0 = unknown); these go through embeddings.
    categorical_features: dict[str, int] = field(default_factory=dict)
    embedding_dim: int = 8

    def __post_init__(self) -> None:
        if self.cell not in ("lstm", "gru"):
            raise ValueError(f"cell must be 'lstm' or 'gru', got {self.cell!r}")
        unknown = sorted(set(self.categorical_features) - set(self.feature_spec.seq_features))
        if unknown:
            raise ValueError(
                f"categorical features {unknown} are not sequence features of {self.feature_spec}"
            )

    @classmethod
    def from_settings(cls, spec: FeatureSpec, settings: Any) -> ModelConfig:
        """From ``tracelake.config.TrainingSettings`` (or anything with the same attributes).

        The sequence features named in :data:`CATEGORICAL_SEQUENCE_FEATURES` get embeddings sized
        from schemas/domain.yaml.
        """
        fields = (
            "cell",
            "hidden_size",
            "num_layers",
            "tab_hidden_size",
            "head_hidden_size",
            "dropout",
            "feature_clip",
        )
        categorical = {}
        if any(name in CATEGORICAL_SEQUENCE_FEATURES for name in spec.seq_features):
            sizes = domain_vocabulary_sizes()
            categorical = {name: sizes[name] for name in spec.seq_features if name in sizes}
        return cls(
            spec,
            **{name: getattr(settings, name) for name in fields},
            categorical_features=categorical,
            embedding_dim=getattr(settings, "categorical_embedding_dim", 8),
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["feature_spec"] = self.feature_spec.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return cls(**{**data, "feature_spec": FeatureSpec.from_dict(data["feature_spec"])})


class PreprocessingStats:
    """Running sums for feature means/stds and label frequencies (float64, mergeable across ranks).

    Only finite values count; sequence statistics use real time steps only.
    """

    def __init__(self, spec: FeatureSpec):
        self.spec = spec
        f, k, n_labels = spec.n_seq, spec.n_tab, spec.n_labels
        # Layout of the one vector that is all-reduced: counts, sums, sums of squares
        # (sequence, then tabular), label positives, rows.
        self._sizes = [f, f, f, k, k, k, n_labels, 1]
        self.vector = torch.zeros(sum(self._sizes), dtype=torch.float64)  # moves to the batches' device

    def _parts(self) -> list[torch.Tensor]:
        return list(torch.split(self.vector, self._sizes))

    def update(self, batch: Batch) -> None:
        seq, tab, labels = batch.seq.double(), batch.tab.double(), batch.labels.double()
        if self.vector.device != seq.device:
            self.vector = self.vector.to(seq.device)
        steps = (
            torch.arange(seq.shape[1], device=seq.device)[None, :, None]
            < batch.seq_len.clamp(1, seq.shape[1])[:, None, None]
        )
        seq_ok = torch.isfinite(seq) & steps
        tab_ok = torch.isfinite(tab)
        seq0, tab0 = torch.where(seq_ok, seq, 0.0), torch.where(tab_ok, tab, 0.0)
        delta = torch.cat(
            [
                seq_ok.sum((0, 1)),
                seq0.sum((0, 1)),
                (seq0 * seq0).sum((0, 1)),
                tab_ok.sum(0),
                tab0.sum(0),
                (tab0 * tab0).sum(0),
                labels.sum(0),
                torch.tensor([float(batch.n_rows)], dtype=torch.float64, device=seq.device),
            ]
        )
        self.vector += delta

    def mean_std(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        self.vector = self.vector.cpu()
        s_n, s_sum, s_sq, t_n, t_sum, t_sq, _, _ = self._parts()

        def finish(
            n: torch.Tensor, total: torch.Tensor, sq: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor]:
            n = n.clamp(min=1)
            mean = total / n
            std = (sq / n - mean * mean).clamp(min=0).sqrt()
            std = torch.where(std > 1e-6, std, torch.ones_like(std))  # constant feature: leave its scale
            return mean.float(), std.float()

        return (*finish(s_n, s_sum, s_sq), *finish(t_n, t_sum, t_sq))

    def pos_weight(self, cap: float) -> torch.Tensor:
        self.vector = self.vector.cpu()
        positives, rows = self._parts()[6], self._parts()[7]
        negatives = rows - positives
        weight = torch.where(
            positives > 0, negatives / positives.clamp(min=1), torch.full_like(positives, cap)
        )
        return weight.clamp(max=cap).float()

    @property
    def n_rows(self) -> int:
        return int(self._parts()[7].item())


class SequenceAnomalyModel(nn.Module):
    """``forward(seq [B,T,F], seq_len [B], tab [B,K]) -> logits [B, labels]``."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        spec = config.feature_spec
        rnn_cls = nn.LSTM if config.cell == "lstm" else nn.GRU
        positions = {name: i for i, name in enumerate(spec.seq_features)}
        categorical = [positions[name] for name in spec.seq_features if name in config.categorical_features]
        continuous = [i for i in range(spec.n_seq) if i not in categorical]
        # Buffers, not constants: they travel with the state dict and the ONNX graph.
        self.register_buffer("continuous_index", torch.tensor(continuous, dtype=torch.long), persistent=False)
        self.categorical_positions = categorical
        self.embeddings = nn.ModuleList(
            nn.Embedding(config.categorical_features[spec.seq_features[i]], config.embedding_dim)
            for i in categorical
        )
        rnn_inputs = len(continuous) + len(categorical) * config.embedding_dim
        self.rnn = rnn_cls(
            rnn_inputs,
            config.hidden_size,
            num_layers=config.num_layers,
            batch_first=True,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
        )
        self.tab_mlp = nn.Sequential(
            nn.Linear(spec.n_tab, config.tab_hidden_size),
            nn.ReLU(),
            nn.Dropout(config.dropout),
        )
        self.head = nn.Sequential(
            nn.Linear(config.hidden_size + config.tab_hidden_size, config.head_hidden_size),
            nn.ReLU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.head_hidden_size, spec.n_labels),
        )
        self.register_buffer("seq_mean", torch.zeros(spec.n_seq))
        self.register_buffer("seq_std", torch.ones(spec.n_seq))
        self.register_buffer("tab_mean", torch.zeros(spec.n_tab))
        self.register_buffer("tab_std", torch.ones(spec.n_tab))
        self.register_buffer("pos_weight", torch.ones(spec.n_labels))

    @property
    def feature_spec(self) -> FeatureSpec:
        return self.config.feature_spec

    def set_preprocessing(self, stats: PreprocessingStats, pos_weight_cap: float) -> None:
        seq_mean, seq_std, tab_mean, tab_std = stats.mean_std()
        with torch.no_grad():
            for buffer, value in (
                (self.seq_mean, seq_mean),
                (self.seq_std, seq_std),
                (self.tab_mean, tab_mean),
                (self.tab_std, tab_std),
                (self.pos_weight, stats.pos_weight(pos_weight_cap)),
            ):
                buffer.copy_(value)

    def _standardise(self, x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        x = (x.float() - mean) / std
        x = torch.where(torch.isnan(x), torch.zeros_like(x), x)
        clip = self.config.feature_clip
        return x.clamp(-clip, clip)

    def _sequence_inputs(self, seq: torch.Tensor) -> torch.Tensor:
        """[B, T, F] raw -> [B, T, inputs]: continuous features standardised, categorical ones embedded."""
        if not len(self.embeddings):
            return self._standardise(seq, self.seq_mean, self.seq_std)
        continuous = self._standardise(
            seq.index_select(2, self.continuous_index),
            self.seq_mean.index_select(0, self.continuous_index),
            self.seq_std.index_select(0, self.continuous_index),
        )
        parts = [continuous]
        for j, embedding in enumerate(self.embeddings):
            raw = torch.nan_to_num(seq[:, :, self.categorical_positions[j]].float(), nan=0.0).round()
            index = raw.long()
            index = torch.where(
                (index >= 0) & (index < embedding.num_embeddings), index, torch.zeros_like(index)
            )
            parts.append(embedding(index))
        return torch.cat(parts, dim=2)

    def forward(self, seq: torch.Tensor, seq_len: torch.Tensor, tab: torch.Tensor) -> torch.Tensor:
        steps = seq.shape[1]
        x = self._sequence_inputs(seq)
        out, _ = self.rnn(x)
        # Right padding: the output at step seq_len-1 has seen only real events.
        last_index = (seq_len.long().clamp(1, steps) - 1).view(-1, 1, 1).expand(-1, 1, out.shape[2])
        last = torch.gather(out, 1, last_index).squeeze(1)
        tab_hidden = self.tab_mlp(self._standardise(tab, self.tab_mean, self.tab_std))
        return self.head(torch.cat([last, tab_hidden.to(last.dtype)], dim=1))

    def loss_fn(self, reduction: str = "mean") -> nn.BCEWithLogitsLoss:
        return nn.BCEWithLogitsLoss(pos_weight=self.pos_weight, reduction=reduction)

    # --- save / load ---------------------------------------------------------------------------

    def payload(self) -> dict[str, Any]:
        return {
            "format": MODEL_FORMAT,
            "config": self.config.to_dict(),
            "state_dict": {k: v.detach().cpu().clone() for k, v in self.state_dict().items()},
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> SequenceAnomalyModel:
        if payload.get("format") not in READABLE_FORMATS:
            raise ValueError(f"not a {MODEL_FORMAT} payload (format {payload.get('format')!r})")
        model = cls(ModelConfig.from_dict(payload["config"]))
        model.load_state_dict(payload["state_dict"])
        return model

    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write config + weights (+ ``extra``, e.g. thresholds) atomically."""
        return atomic_torch_save({**self.payload(), "extra": extra or {}}, path)

    @classmethod
    def load(cls, path: str | Path) -> SequenceAnomalyModel:
        """Load a model file written by :meth:`save`, or the model inside a training checkpoint."""
        payload = load_payload(path)
        return cls.from_payload(payload.get("model", payload))


class ProbabilityModel(nn.Module):
    """Inference wrapper (what is exported to ONNX): inputs seq, seq_len, tab; output probabilities."""

    def __init__(self, model: SequenceAnomalyModel):
        super().__init__()
        self.model = model

    def forward(self, seq: torch.Tensor, seq_len: torch.Tensor, tab: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(seq, seq_len, tab).float())


@torch.no_grad()
def predict(
    model: nn.Module,
    batches: Iterable[Batch],
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and labels (numpy [N, L]) of ``model`` over ``batches``."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    probs, labels = [], []
    try:
        for batch in batches:
            batch = batch.to(device)
            with torch.autocast(
                device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None
            ):
                logits = model(batch.seq, batch.seq_len, batch.tab)
            probs.append(torch.sigmoid(logits.float()).cpu().numpy())
            labels.append(batch.labels.cpu().numpy())
    finally:
        model.train(was_training)
    if not probs:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
    return np.concatenate(probs), np.concatenate(labels)
