"""Lagrangian control of the expected size (parameters or MACs) of a gated student.

``penalty = lambda1 * (s - t) + lambda2 * (s - t)^2`` with ``s`` the expected sparsity and
``t`` the scheduled target. The model minimises it; ``lambda1`` and ``lambda2`` maximise it
(their optimizer group has ``maximize=True``), which drives ``s`` to ``t`` from both sides.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from wav2vec2 import counting

Budget = Literal["params", "macs"]

# MACs are measured per second of audio on a 10 s input (the SUPERB convention).
MACS_REFERENCE_SAMPLES = 160_000


class SparsityConstraint(nn.Module):
    """Holds the multipliers and measures the student's expected sparsity.

    ``budget="params"``: sparsity = 1 - E[params] / teacher params.
    ``budget="macs"``: sparsity = 1 - E[MACs] / teacher MACs (10 s input), so a target MACs
    ratio r is the sparsity target 1 - r.
    """

    def __init__(self, budget: Budget, teacher: nn.Module) -> None:
        super().__init__()
        if budget not in ("params", "macs"):
            raise ValueError(f"budget must be 'params' or 'macs', got {budget!r}")
        self.budget = budget
        self.lambda1 = nn.Parameter(torch.tensor(0.0))
        self.lambda2 = nn.Parameter(torch.tensor(0.0))
        self.register_buffer("teacher_size", self.measure(teacher, "exact").detach().clone())

    def measure(self, model: nn.Module, mode: counting.Mode = "expected") -> Tensor:
        if self.budget == "params":
            return counting.num_params(model, mode)
        return counting.num_macs(model, MACS_REFERENCE_SAMPLES, mode)

    def expected_sparsity(self, student: nn.Module) -> Tensor:
        return 1.0 - self.measure(student, "expected") / self.teacher_size

    def exact_sparsity(self, student: nn.Module) -> float:
        return float(1.0 - self.measure(student, "exact") / self.teacher_size)

    def penalty(self, expected: Tensor, target: float) -> Tensor:
        gap = expected - target
        return self.lambda1.double() * gap + self.lambda2.double() * gap * gap
