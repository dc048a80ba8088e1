"""Export the sequence model to ONNX and prove ONNX Runtime computes what torch computes.

The exported graph is :class:`training.model.ProbabilityModel`: inputs
``seq`` float32 [batch, seq_len, n_seq_features], ``seq_len`` int64 [batch],
``tab`` float32 [batch, n_tab_features]; output ``probabilities`` float32
[batch, n_labels]; the batch axis is dynamic. Preprocessing is inside the
graph, so it takes raw features in the order of the feature spec.

Exporter: ``dynamo`` (torch.export + onnxscript, the default since torch 2.9)
or ``torchscript`` (the legacy tracer: deprecated, but seconds instead of tens
of seconds). Both turn the RNN into one ONNX ``LSTM``/``GRU`` node and were
seen to agree with torch to ~1e-7.

Metadata (``metadata_props`` of the ONNX model, JSON-encoded values): feature
spec (sequence/tabular feature order, seq_len, label names), thresholds,
input and output names, the parity check's result, and whatever the caller
adds (model name, run id, ...). Names, prefix and the reader
(:func:`tracelake.model_io.read_metadata`) are the model's contract.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tracelake.errors import TracelakeError
from tracelake.model_io import INPUT_NAMES, METADATA_PREFIX, OUTPUT_NAME, Arrays, arrays_feeds

# The metadata reader belongs to the contract; the promote job still reads it from here.
from tracelake.model_io import read_metadata as read_metadata
from training.model import ProbabilityModel, SequenceAnomalyModel

# ONNX Runtime and torch may differ by less than this at most; a caller may only ask for less.
MAX_PARITY_TOLERANCE = 1e-4


class OnnxParityError(TracelakeError, RuntimeError):
    """ONNX Runtime's probabilities differ from torch's by more than the tolerance."""


def _inputs(arrays: Arrays) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        torch.from_numpy(np.ascontiguousarray(arrays.seq, dtype=np.float32)),
        torch.from_numpy(np.ascontiguousarray(arrays.seq_len, dtype=np.int64)),
        torch.from_numpy(np.ascontiguousarray(arrays.tab, dtype=np.float32)),
    )


def onnx_feeds(arrays: Arrays) -> dict[str, np.ndarray]:
    """The ONNX Runtime input dict for rows in the data layout."""
    return arrays_feeds(arrays.seq, arrays.seq_len, arrays.tab)


def _export(
    wrapper: ProbabilityModel, sample: tuple[torch.Tensor, ...], path: Path, *, exporter: str, opset: int
) -> None:
    common = {"input_names": list(INPUT_NAMES), "output_names": [OUTPUT_NAME], "opset_version": opset}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and LSTM batch notes
        if exporter == "dynamo":
            batch = torch.export.Dim("batch", min=1)
            program = torch.onnx.export(
                wrapper,
                sample,
                dynamo=True,
                verbose=False,
                dynamic_shapes={"seq": {0: batch}, "seq_len": {0: batch}, "tab": {0: batch}},
                **common,
            )
            program.save(str(path))
        elif exporter == "torchscript":
            axes = {name: {0: "batch"} for name in (*INPUT_NAMES, OUTPUT_NAME)}
            torch.onnx.export(wrapper, sample, str(path), dynamo=False, dynamic_axes=axes, **common)
        else:
            raise ValueError(f"onnx exporter {exporter!r} is unknown; use 'dynamo' or 'torchscript'")


def run_onnx(path: str | os.PathLike[str], arrays: Arrays, batch_size: int = 4096) -> np.ndarray:
    """Probabilities of an exported model for rows in the data layout (ONNX Runtime, CPU)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    out = [
        session.run([OUTPUT_NAME], onnx_feeds(arrays.take(slice(start, start + batch_size))))[0]
        for start in range(0, arrays.n_rows, batch_size)
    ]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


@torch.no_grad()
def torch_probabilities(model: SequenceAnomalyModel, arrays: Arrays, batch_size: int = 4096) -> np.ndarray:
    wrapper = ProbabilityModel(model).eval()
    out = [
        wrapper(*_inputs(arrays.take(slice(start, start + batch_size)))).numpy()
        for start in range(0, arrays.n_rows, batch_size)
    ]
    return np.concatenate(out)


def parity(
    path: str | os.PathLike[str],
    model: SequenceAnomalyModel,
    arrays: Arrays,
    batch_sizes: tuple[int, ...] = (),
) -> float:
    """Max |ONNX - torch| over all rows, fed at each of ``batch_sizes`` (default: all rows at once)."""
    worst = 0.0
    for batch_size in batch_sizes or (max(1, arrays.n_rows),):
        diff = np.abs(run_onnx(path, arrays, batch_size) - torch_probabilities(model, arrays, batch_size))
        worst = max(worst, float(diff.max()) if diff.size else 0.0)
    return worst


def export_onnx(
    model: SequenceAnomalyModel,
    path: str | os.PathLike[str],
    rows: Arrays,
    *,
    thresholds: Mapping[str, float] | None = None,
    tolerance: float = 1e-4,
    opset: int = 18,
    exporter: str = "dynamo",
    parity_batch_sizes: tuple[int, ...] = (),
    extra_metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Export ``model``, check it on ``rows`` (real rows, e.g. of the test split), embed metadata.

    Raises :class:`OnnxParityError` (and leaves no file behind) when ONNX Runtime
    and torch differ by ``tolerance`` or more. Returns the metadata dict, which
    includes ``max_abs_diff`` and ``parity_rows``.
    """
    import onnx

    if rows.n_rows == 0:
        raise ValueError("the parity check needs at least one real row")
    if not 0 < tolerance <= MAX_PARITY_TOLERANCE:
        raise ValueError(
            f"parity tolerance {tolerance:g} must lie in (0, {MAX_PARITY_TOLERANCE:g}]; "
            "a looser check would register models that score differently from torch"
        )
    spec = model.feature_spec
    if thresholds is not None and set(thresholds) != set(spec.label_names):
        raise ValueError(
            f"thresholds {sorted(thresholds)} must name exactly the labels {list(spec.label_names)}"
        )
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    model = model.cpu().eval()
    wrapper = ProbabilityModel(model).eval()
    sample = _inputs(rows.take(slice(0, min(rows.n_rows, 8))))
    try:
        _export(wrapper, sample, tmp, exporter=exporter, opset=opset)
        max_abs_diff = parity(tmp, model, rows, parity_batch_sizes)
        if not max_abs_diff < tolerance:
            raise OnnxParityError(
                f"ONNX Runtime differs from torch by {max_abs_diff:.3g} on {rows.n_rows} rows "
                f"(tolerance {tolerance:g}); the model was not exported — try the other exporter "
                f"(now {exporter!r}) or another opset (now {opset})"
            )
        metadata: dict[str, Any] = {
            "feature_spec": spec.to_dict(),
            "seq_features": list(spec.seq_features),
            "tab_features": list(spec.tab_features),
            "seq_len": spec.seq_len,
            "label_names": list(spec.label_names),
            "thresholds": dict(thresholds) if thresholds is not None else None,
            "inputs": list(INPUT_NAMES),
            "output": OUTPUT_NAME,
            "model_config": model.config.to_dict(),
            "max_abs_diff": max_abs_diff,
            "parity_rows": rows.n_rows,
            "parity_tolerance": tolerance,
            "exporter": exporter,
            "opset": opset,
            **dict(extra_metadata or {}),
        }
        proto = onnx.load(str(tmp))
        for key, value in metadata.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = METADATA_PREFIX + key, json.dumps(value)
        onnx.save(proto, str(tmp))
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return metadata
