"""Hard-concrete gates (Louizos et al., 2018) for structured L0 pruning.

One ``HardConcrete`` module holds ``n`` gates, one per prunable unit (a conv channel, an
attention head, an FFN unit, or a whole block when ``n == 1``).

- Training: one stochastic sample per forward, shared by the whole batch, in [0, 1] with
  exact zeros and ones reachable thanks to the stretch interval (-0.1, 1.1).
- Evaluation: a deterministic mask that zeroes the ``round(n - E[L0])`` weakest units and
  keeps the soft value ``sigmoid(0.8 * log_alpha / beta)`` for the rest (DPHuBERT / FLOP
  convention: the survivors keep their soft scale, which ``prune()`` later folds into the
  next layer's weights).
- ``l0_norm()`` is the differentiable expected number of non-zero gates, sum P(z > 0).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class HardConcrete(nn.Module):
    """``n`` hard-concrete gates.

    Args:
        n: number of gates.
        init_mean: initial keep-ish probability parameter; ``log_alpha`` starts at
            ``log(1 - init_mean) - log(init_mean)`` (0.01 gives +4.595, i.e. gates nearly open;
            0.5 gives 0).
        init_std: standard deviation of the ``log_alpha`` initialisation.
        temperature: beta, 2/3 by default.
        stretch: the gate is stretched to (-stretch, 1 + stretch) before clamping.
        eps: keeps the uniform noise away from 0 and 1.
    """

    # An empirical sharpening of the deterministic mask, kept for fidelity with DPHuBERT.
    EVAL_SHARPNESS = 0.8

    def __init__(
        self,
        n: int,
        init_mean: float = 0.01,
        init_std: float = 0.01,
        temperature: float = 2.0 / 3.0,
        stretch: float = 0.1,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if n < 1:
            raise ValueError(f"HardConcrete needs at least one gate, got n={n}")
        self.n = n
        self.log_alpha = nn.Parameter(torch.empty(n))
        self.beta = temperature
        self.limit_l = -stretch
        self.limit_r = 1.0 + stretch
        self.eps = eps
        # P(z > 0) = sigmoid(log_alpha - beta * log(-l / r)).
        self.bias = -self.beta * math.log(-self.limit_l / self.limit_r)
        self.init_mean = init_mean
        self.init_std = init_std
        self.reset_parameters()

    def reset_parameters(self) -> None:
        mean = math.log(1.0 - self.init_mean) - math.log(self.init_mean)
        with torch.no_grad():
            self.log_alpha.normal_(mean, self.init_std)

    def extra_repr(self) -> str:
        return f"n={self.n}, temperature={self.beta:.4f}, limits=({self.limit_l}, {self.limit_r})"

    def keep_probabilities(self) -> Tensor:
        """P(z_i > 0) for every gate, shape ``(n,)``; differentiable."""
        return torch.sigmoid(self.log_alpha + self.bias)

    def l0_norm(self) -> Tensor:
        """Expected number of non-zero gates (a differentiable scalar)."""
        return self.keep_probabilities().sum()

    def num_dropped_in_eval(self) -> int:
        """How many gates the deterministic mask sets to zero: ``round(n - E[L0])``."""
        return int(round(self.n - self.l0_norm().item()))

    def num_kept_in_eval(self) -> int:
        return self.n - self.num_dropped_in_eval()

    def deterministic_mask(self) -> Tensor:
        """The eval mask, shape ``(n,)``: zeros for the weakest units, soft values elsewhere."""
        soft = torch.sigmoid(self.log_alpha / self.beta * self.EVAL_SHARPNESS)
        num_zeros = self.num_dropped_in_eval()
        if num_zeros > 0:
            weakest = torch.topk(soft, k=num_zeros, largest=False).indices
            soft = soft.index_fill(0, weakest, 0.0)
        return soft

    def sample(self) -> Tensor:
        """One stochastic gate vector, shape ``(n,)``, values in [0, 1]."""
        u = torch.empty_like(self.log_alpha).uniform_(self.eps, 1.0 - self.eps)
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + self.log_alpha) / self.beta)
        return (s * (self.limit_r - self.limit_l) + self.limit_l).clamp(0.0, 1.0)

    def forward(self) -> Tensor:
        """A sample in training mode, the deterministic mask in eval mode; shape ``(n,)``."""
        return self.sample() if self.training else self.deterministic_mask()
