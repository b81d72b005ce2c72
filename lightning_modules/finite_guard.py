"""Skip training steps whose loss or gradients are not finite; stop after too many in a row.

One bad batch (a NaN in the features, an overflow) must not poison the weights, and a run
whose every step diverges must not keep going (and keep checkpointing) for hours.
:class:`NonFiniteGuard` is a Lightning callback:

- ``on_before_backward`` records whether the loss of the micro-batch is finite;
- ``on_before_optimizer_step`` (after all micro-batches of the step, before clipping and the
  optimizer) checks the loss record and every gradient. If anything is NaN / inf the gradients
  are dropped (``grad = None``: AdamW then leaves those parameters and their moments alone,
  so the step changes no weight), the skip is counted, logged as ``train/nonfinite_skipped``
  and reported at WARNING with the first offending tensor;
- after ``max_consecutive`` skipped steps in a row it raises :class:`NonFiniteTrainingError`
  naming the step, so the run stops with the last good checkpoint intact. 0 disables the stop.

The step counter and the LR schedule still advance on a skipped step, as with fp16 overflow
skipping.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import lightning as L
import torch

logger = logging.getLogger(__name__)


class NonFiniteTrainingError(RuntimeError):
    """Too many consecutive steps with a non-finite loss or gradient."""


class NonFiniteGuard(L.Callback):
    def __init__(self, max_consecutive: int = 20) -> None:
        if max_consecutive < 0:
            raise ValueError(f"max_consecutive must be >= 0, got {max_consecutive}")
        self.max_consecutive = max_consecutive
        self.skipped_total = 0
        self.consecutive = 0
        self._bad_loss: Optional[str] = None

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        if self._bad_loss is None and not bool(torch.isfinite(loss.detach()).all()):
            self._bad_loss = f"loss {float(loss.detach().float().flatten()[0])}"

    def _first_bad_gradient(self, optimizer: torch.optim.Optimizer, pl_module: L.LightningModule) -> Optional[str]:
        names = {id(p): n for n, p in pl_module.named_parameters()}
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
                    return f"gradient of {names.get(id(p), 'a parameter')}"
        return None

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer) -> None:
        problem = self._bad_loss or self._first_bad_gradient(optimizer, pl_module)
        self._bad_loss = None
        if problem is None:
            self.consecutive = 0
        else:
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None
            self.skipped_total += 1
            self.consecutive += 1
            logger.warning("step %d: non-finite %s; update skipped (%d in a row, %d in total)",
                           trainer.global_step, problem, self.consecutive, self.skipped_total)
        pl_module.log("train/nonfinite_skipped", float(self.skipped_total), on_step=True, on_epoch=False)
        if self.max_consecutive and self.consecutive >= self.max_consecutive:
            raise NonFiniteTrainingError(
                f"step {trainer.global_step}: {self.consecutive} consecutive steps with a non-finite loss or gradient "
                f"(last: {problem}); stopping. The last checkpoint holds the weights before the divergence; check the "
                "data (prepare_data.py --verify) or lower the learning rate")

    def state_dict(self) -> dict[str, Any]:
        return {"skipped_total": self.skipped_total, "consecutive": self.consecutive}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped_total = int(state_dict.get("skipped_total", 0))
        self.consecutive = int(state_dict.get("consecutive", 0))
