"""A progress bar over optimizer steps with an ETA, readable in a terminal and through a pipe.

Lightning's own bar counts batches per epoch, so with ``max_epochs=-1`` it never shows how far
the whole run is, and a stage piped through ``tee`` looks silent. This one counts global steps
against ``trainer.max_steps``, shows the last training loss, and writes through tqdm (``\\r``
updates at most every ``min_interval`` seconds; a pipe still gets them, so ``tee`` shows a live
bar and the log keeps every update).
"""

from __future__ import annotations

import sys
from typing import Any, Optional

import lightning as L
from tqdm import tqdm


class StepProgressBar(L.Callback):
    def __init__(self, description: str = "training", min_interval: float = 2.0) -> None:
        self.description = description
        self.min_interval = min_interval
        self._bar: Optional[tqdm] = None

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        self._bar = tqdm(total=total, initial=trainer.global_step, desc=self.description, unit="step", file=sys.stderr,
                         mininterval=self.min_interval, dynamic_ncols=False, ncols=100)

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._bar is None:
            return
        advance = trainer.global_step - self._bar.n
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None:
            self._bar.set_postfix_str(f"loss {float(loss):.3f}", refresh=False)
        if advance > 0:
            self._bar.update(advance)

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
