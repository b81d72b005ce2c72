"""ONNX export: ``inputs`` + ``lengths`` -> ``hidden_states`` + ``frame_lengths``, dynamic batch and length.

Graph signature (what ``onnxruntime`` sees):

- ``inputs``: float32 ``(batch, samples)`` waveforms at 16 kHz (MelHuBERT: ``(batch, frames, F)``
  normalised log-Mel);
- ``lengths``: int64 ``(batch,)`` valid samples (frames) per row; always an input, so padded
  rows behave as if they were alone;
- ``hidden_states``: float32 ``(layers + 1, batch, frames, D)``; ``frame_lengths``: int64 ``(batch,)``.

The dynamo exporter (``torch.export`` underneath, needs ``onnxscript``) is the default; the
legacy TorchScript-tracing exporter is available with ``dynamo=False``. Both are traced with
a padded batch of unequal lengths, so no input can be folded away as a constant.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor, nn

from ..optional import require
from .graph import HiddenStates

#: ONNX opset of the exported graphs (LayerNormalization needs >= 17).
OPSET = 18
INPUT_NAMES = ["inputs", "lengths"]
OUTPUT_NAMES = ["hidden_states", "frame_lengths"]


def example_inputs(model: nn.Module, feature_dim: Optional[int] = None, batch: int = 2, length: int = 8000) -> tuple[Tensor, Tensor]:
    """A padded batch of unequal lengths: ``(B, length)`` waveforms or ``(B, length // 160, F)`` features."""
    generator = torch.Generator().manual_seed(0)
    if feature_dim is None:
        inputs = torch.randn(batch, length, generator=generator)
        full = length
    else:
        full = max(8, length // 160)
        inputs = torch.randn(batch, full, feature_dim, generator=generator)
    lengths = torch.tensor([full - (i * full) // (2 * batch) for i in range(batch)], dtype=torch.long)
    return inputs, lengths


def save_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    feature_dim: Optional[int] = None,
    dynamo: bool = True,
    opset: int = OPSET,
    metadata: Optional[dict[str, Any]] = None,
) -> Path:
    """Export ``model`` (eval mode) to ``path``; ``feature_dim`` is given for feature-input models.

    Returns the path. ``metadata`` (JSON-able) is stored in the graph's ``metadata_props``
    under ``speech_ssl_compress`` (family, frame period, opset ...).
    """
    require("onnx", "ONNX export")
    if dynamo:
        require("onnxscript", "the dynamo ONNX exporter")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = HiddenStates(model).eval()
    inputs, lengths = example_inputs(model, feature_dim)
    tmp = path.with_name(path.name + ".partial")
    with torch.no_grad():
        if dynamo:
            # Named dynamic axes (strings): the exporter derives the constraints and keeps the names.
            time = "samples" if feature_dim is None else "frames"
            shapes = {"inputs": {0: "batch", 1: time}, "lengths": {0: "batch"}}
            program = torch.onnx.export(
                wrapper, (inputs, lengths), input_names=INPUT_NAMES, output_names=OUTPUT_NAMES,
                dynamic_shapes=shapes, opset_version=opset, dynamo=True, external_data=False,
            )
            program.save(str(tmp))
        else:
            axes = {"inputs": {0: "batch", 1: "time"}, "lengths": {0: "batch"},
                    "hidden_states": {1: "batch", 2: "frames"}, "frame_lengths": {0: "batch"}}
            torch.onnx.export(
                wrapper, (inputs, lengths), str(tmp), input_names=INPUT_NAMES, output_names=OUTPUT_NAMES,
                dynamic_axes=axes, opset_version=opset, dynamo=False,
            )
    _check_graph(tmp, opset, metadata)
    os.replace(tmp, path)
    return path


def _check_graph(path: Path, opset: int, metadata: Optional[dict[str, Any]]) -> None:
    """Refuse a graph that lost an input (a constant-folded ``lengths``); store the metadata."""
    onnx = require("onnx")
    graph_model = onnx.load(str(path))
    names = [i.name for i in graph_model.graph.input]
    if names != INPUT_NAMES:
        path.unlink()
        raise RuntimeError(f"ONNX export: graph inputs are {names}, expected {INPUT_NAMES} (an input was folded away)")
    info = {"opset": opset, "inputs": INPUT_NAMES, "outputs": OUTPUT_NAMES, **(metadata or {})}
    entry = graph_model.metadata_props.add()
    entry.key, entry.value = "speech_ssl_compress", json.dumps(info)
    onnx.save(graph_model, str(path))


def run_onnx(path: str | os.PathLike[str], inputs: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
    """Run an exported graph with ``onnxruntime`` (CPU) -> ``(hidden_states, frame_lengths)`` tensors."""
    ort = require("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    states, frames = session.run(OUTPUT_NAMES, {"inputs": inputs.numpy(), "lengths": lengths.numpy().astype("int64")})
    return torch.from_numpy(states), torch.from_numpy(frames)
