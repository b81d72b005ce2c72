"""A graph-friendly view of a model: ``(waveforms, lengths) -> (hidden states, frame lengths)``.

The exporters (``torch.export``, ``torch.onnx``) need a module whose forward takes and
returns tensors only; :class:`HiddenStates` stacks every layer's output into one tensor so
the graph has a fixed number of outputs whatever the depth.
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import Tensor, nn


class HiddenStates(nn.Module):
    """Wraps a model with ``extract_features(inputs, lengths) -> ([h0..hN], frame_lengths)``.

    forward: inputs ``(B, L)`` waveforms (or ``(B, T, F)`` features for MelHuBERT), lengths
    ``(B,)`` int64 -> hidden states ``(N + 1, B, T, D)`` (h0 = input projection, h_i = output
    of layer i, no final LayerNorm) and frame lengths ``(B,)`` int64. Padded frames of a row
    hold whatever the model computes there; only the first ``frame_lengths[b]`` are meaningful.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        states, frame_lengths = self.model.extract_features(inputs, lengths)
        return torch.stack(states, dim=0), frame_lengths


def dense_copy(model: nn.Module) -> nn.Module:
    """A copy with every low-rank factorised linear map multiplied back into one ``nn.Linear``.

    The product ``U @ V`` is the map the factors compute, so outputs agree to rounding; the
    copy has more parameters than the factorised model (formats without factor layers, such
    as the stock ``transformers`` classes, need it). Models without factors are copied as is.
    """
    model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        dense = _as_linear(module)
        if dense is None:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, dense)
    return model


def _as_linear(module: nn.Module) -> Optional[nn.Linear]:
    # Duck-typed (by the factor API) so the models layer needs no import from above it.
    if not callable(getattr(module, "dense_weight", None)):
        return None
    weight = module.dense_weight()
    bias = getattr(module, "bias", None)
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias)
    return linear
