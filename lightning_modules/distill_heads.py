"""Prediction heads that map student layers to teacher layers.

``layer2layer``: the layer spec ``"0.4,8,12"`` has groups separated by ``.`` and layers by
``,``; the layers of one group share one linear map (identity-initialised when square),
applied to the student's own layer i to predict the teacher's layer i.

``predlayer``: DistilHuBERT-style, one Linear + GELU per target layer, all reading the
student's last layer.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

Mode = Literal["layer2layer", "predlayer"]


def parse_layer_groups(spec: str) -> list[list[int]]:
    """``"0.4,8,12"`` -> ``[[0], [4, 8, 12]]``; raises ValueError on a malformed spec."""
    groups: list[list[int]] = []
    for group in spec.split("."):
        try:
            layers = [int(token) for token in group.split(",")]
        except ValueError as error:
            raise ValueError(f"distill layer spec {spec!r}: {group!r} is not a comma-separated list of layer indices") from error
        groups.append(layers)
    flat = [layer for group in groups for layer in group]
    if len(set(flat)) != len(flat) or any(layer < 0 for layer in flat):
        raise ValueError(f"distill layer spec {spec!r}: layers must be distinct and non-negative")
    return groups


class DistillHeads(nn.Module):
    """Maps student hidden states to teacher targets for the distilled teacher layers."""

    def __init__(self, spec: str, mode: Mode, student_dim: int, teacher_dim: int, student_num_layers: int) -> None:
        super().__init__()
        self.spec = spec
        self.mode = mode
        groups = parse_layer_groups(spec)
        self.teacher_layers = [layer for group in groups for layer in group]
        if mode == "layer2layer":
            too_deep = [layer for layer in self.teacher_layers if layer > student_num_layers]
            if too_deep:
                raise ValueError(f"distill layers {too_deep} are deeper than the student's {student_num_layers} layers")
            self.projs = nn.ModuleList(self._linear(student_dim, teacher_dim, identity=True) for _ in groups)
            self.group_of = [g for g, group in enumerate(groups) for _ in group]
        elif mode == "predlayer":
            self.projs = nn.ModuleList(
                nn.Sequential(self._linear(student_dim, teacher_dim, identity=False), nn.GELU()) for _ in self.teacher_layers
            )
            self.group_of = list(range(len(self.teacher_layers)))
        else:
            raise ValueError(f"distill mode must be 'layer2layer' or 'predlayer', got {mode!r}")

    @staticmethod
    def _linear(in_dim: int, out_dim: int, identity: bool) -> nn.Linear:
        linear = nn.Linear(in_dim, out_dim)
        if identity and in_dim == out_dim:
            with torch.no_grad():
                linear.weight.copy_(torch.eye(in_dim))
                linear.bias.zero_()
        return linear

    @property
    def student_depth(self) -> int | None:
        """How many student layers the heads read (None = all, for predlayer)."""
        return max(self.teacher_layers) if self.mode == "layer2layer" else None

    def forward(self, student_states: list[Tensor]) -> list[Tensor]:
        """student_states: ``[h0, ..., hN]`` each ``(B, T, D_s)`` -> one ``(B, T, D_t)`` per teacher layer."""
        if self.mode == "layer2layer":
            return [self.projs[g](student_states[layer]) for layer, g in zip(self.teacher_layers, self.group_of)]
        last = student_states[-1]
        return [proj(last) for proj in self.projs]
