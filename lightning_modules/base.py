"""The one training loop shared by every compression method, as a LightningModule base.

Subclasses define ``training_loss(batch) -> (loss, logs)`` and may override
``parameter_groups()`` and ``lr_multiplier(step)``. The base class provides:

- AdamW with named parameter groups (a group may set ``maximize=True`` for gradient ascent)
  and a per-step LR schedule applied to every group;
- logging of every loss term, learning rates and throughput (seconds of audio per second);
- checkpoints without frozen teacher weights (``frozen_prefixes``), put back on load so
  strict loading still holds;
- the RNG states in every checkpoint, restored before the first resumed step, so a resumed
  CPU run continues exactly (data order is handled by the data module's sampler state).
"""

from __future__ import annotations

import random
import time
from typing import Any, Iterable, Mapping, Optional

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn

from .schedules import linear_warmup_decay

SAMPLE_RATE = 16_000


def _numpy_state_to_plain(state: tuple) -> list:
    """numpy's RNG state with its array as a tensor, so checkpoints load with weights_only=True."""
    name, keys, position, has_gauss, cached = state
    return [name, torch.from_numpy(np.asarray(keys).astype(np.int64)), int(position), int(has_gauss), float(cached)]


def _numpy_state_from_plain(state: list) -> tuple:
    name, keys, position, has_gauss, cached = state
    return (name, keys.numpy().astype(np.uint32), position, has_gauss, cached)


class CompressionModule(L.LightningModule):
    frozen_prefixes: tuple[str, ...] = ("teacher.",)

    def __init__(self, learning_rate: float, weight_decay: float, warmup_updates: int, max_updates: int) -> None:
        super().__init__()
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.warmup_updates = warmup_updates
        self.max_updates = max_updates
        self._last_step_time: float | None = None
        self._rng_to_restore: dict[str, Any] | None = None

    # ----- to override -------------------------------------------------------------------
    def trainable_modules(self) -> Iterable[nn.Module]:
        raise NotImplementedError

    def parameter_groups(self) -> list[dict[str, Any]]:
        params = [p for module in self.trainable_modules() for p in module.parameters() if p.requires_grad]
        return [{"name": "main", "params": params, "lr": self.learning_rate, "weight_decay": self.weight_decay}]

    def lr_multiplier(self, step: int) -> float:
        return linear_warmup_decay(step, self.warmup_updates, self.max_updates)

    def training_loss(self, batch: Any) -> tuple[Tensor, dict[str, Tensor | float]]:
        raise NotImplementedError

    def audio_seconds(self, batch: Any) -> float:
        """Seconds of audio in a batch, for the throughput log; waveform batches ``(wav, lengths, ...)``."""
        return float(batch[1].sum()) / SAMPLE_RATE

    def validation_loss(self, batch: Any) -> tuple[Tensor, dict[str, Tensor | float]]:
        return self.training_loss(batch)

    # ----- Lightning hooks ---------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        groups = [g for g in self.parameter_groups() if g["params"]]
        optimizer = torch.optim.AdamW(groups, lr=self.learning_rate)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.lr_multiplier)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss, logs = self.training_loss(batch)
        self._log_terms("train", loss, logs, on_step=True, batch_size=_batch_size(batch))
        now = time.perf_counter()
        if self._last_step_time is not None:
            seconds = self.audio_seconds(batch)
            self.log("throughput/audio_seconds_per_second", seconds / max(now - self._last_step_time, 1e-9), on_step=True,
                     batch_size=_batch_size(batch))
        self._last_step_time = now  # learning rates: LearningRateMonitor logs them by group name
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss, logs = self.validation_loss(batch)
        self._log_terms("valid", loss, logs, on_step=False, batch_size=_batch_size(batch))
        return loss

    def _log_terms(self, stage: str, loss: Tensor, logs: dict[str, Tensor | float], on_step: bool,
                   batch_size: Optional[int] = None) -> None:
        # An explicit batch size: Lightning would otherwise guess it from the batch's first tensor
        # on every call and warn that the collection is ambiguous.
        self.log(f"{stage}/loss", loss.detach().float(), on_step=on_step, on_epoch=not on_step, prog_bar=True,
                 sync_dist=not on_step, batch_size=batch_size)
        for name, value in logs.items():
            value = value.detach().float() if isinstance(value, Tensor) else float(value)
            self.log(f"{stage}/{name}", value, on_step=on_step, on_epoch=not on_step, sync_dist=not on_step,
                     batch_size=batch_size)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith(self.frozen_prefixes)]:
            del state[key]
        checkpoint["rng_states"] = {
            "python": random.getstate(),
            "numpy": _numpy_state_to_plain(np.random.get_state()),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["state_dict"]
        for key, value in self.state_dict().items():
            if key.startswith(self.frozen_prefixes) and key not in state:
                state[key] = value
        self._rng_to_restore = checkpoint.get("rng_states")

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._rng_to_restore is not None:
            rng = self._rng_to_restore
            random.setstate(rng["python"])
            np.random.set_state(_numpy_state_from_plain(rng["numpy"]))
            torch.set_rng_state(rng["torch"])
            if rng["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
            self._rng_to_restore = None


def _batch_size(batch: Any) -> Optional[int]:
    """Utterances in a batch: the leading size of its first tensor (waveforms or features)."""
    if isinstance(batch, Tensor):
        return int(batch.shape[0])
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (list, tuple)) else ()
    for value in values:
        size = _batch_size(value)
        if size is not None:
            return size
    return None
