"""ONNX export: dynamic batch and length, a ``lengths`` input, onnxruntime equal to PyTorch.

The graphs are traced on one padded batch and run on another (different batch size, lengths
and padding), so a shape or an input folded into a constant would show.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("onnx", reason="the [export] extra (onnx) is not installed")
pytest.importorskip("onnxruntime", reason="the [export] extra (onnxruntime) is not installed")
pytest.importorskip("onnxscript", reason="the [export] extra (onnxscript, for the dynamo exporter) is not installed")
import onnx  # noqa: E402

from export_models import padded_batch, student  # noqa: E402
from wav2vec2.export import HiddenStates  # noqa: E402
from wav2vec2.export.onnx import INPUT_NAMES, OPSET, run_onnx, save_onnx  # noqa: E402

TOL = 1e-4


def onnx_max_diff(model, path, waves, lengths) -> float:
    with torch.no_grad():
        ref, ref_frames = HiddenStates(model)(waves, lengths)
    got, frames = run_onnx(path, waves, lengths)
    assert torch.equal(frames, ref_frames)
    assert got.shape == ref.shape
    valid = (torch.arange(ref.shape[2])[None, :] < ref_frames[:, None])[None, :, :, None]
    return ((got - ref).abs() * valid).max().item()


@pytest.mark.parametrize("family", ["hubert", "wav2vec2", "wavlm"])
def test_dynamo_export_matches_pytorch_on_a_padded_batch(tmp_path, family):
    model = student(family, heterogeneous=True, layer_norm_first=family == "wav2vec2")
    path = save_onnx(model, tmp_path / "model.onnx", metadata={"family": family})
    graph = onnx.load(str(path))
    assert [i.name for i in graph.graph.input] == INPUT_NAMES
    assert any(o.domain in ("", "ai.onnx") and o.version == OPSET for o in graph.opset_import)
    waves, lengths = padded_batch((2300, 900, 1700, 500), seed=5)  # not the tracing batch
    diff = onnx_max_diff(model, path, waves, lengths)
    print(f"onnx dynamo {family}: max diff {diff:.2e}")
    assert diff <= TOL
    # padded == alone inside the graph too
    alone, _ = run_onnx(path, waves[1:2, : lengths[1]], lengths[1:2])
    batch, frames = run_onnx(path, waves, lengths)
    assert (alone[:, 0] - batch[:, 1, : frames[1]]).abs().max().item() <= TOL


def test_legacy_exporter_keeps_the_lengths_input(tmp_path):
    model = student("hubert", heterogeneous=True)
    path = save_onnx(model, tmp_path / "legacy.onnx", dynamo=False)
    assert [i.name for i in onnx.load(str(path)).graph.input] == INPUT_NAMES
    waves, lengths = padded_batch((1900, 800, 1300), seed=2)
    diff = onnx_max_diff(model, path, waves, lengths)
    print(f"onnx legacy hubert: max diff {diff:.2e}")
    assert diff <= TOL


@pytest.mark.parametrize("family", ["hubert", "wavlm"])
def test_torch_export_with_dynamic_batch_and_length(family):
    model = student(family, heterogeneous=True)
    shapes = {"inputs": {0: torch.export.Dim("batch"), 1: torch.export.Dim.DYNAMIC}, "lengths": {0: torch.export.Dim("batch")}}
    program = torch.export.export(HiddenStates(model), padded_batch(), dynamic_shapes=shapes)
    waves, lengths = padded_batch((2100, 700), seed=4)
    with torch.no_grad():
        ref, ref_frames = HiddenStates(model)(waves, lengths)
        got, frames = program.module()(waves, lengths)
    assert torch.equal(frames, ref_frames)
    assert (got - ref).abs().max().item() <= 1e-5
