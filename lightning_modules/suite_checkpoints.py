"""The compression suite's checkpoint layout (``train.py``): ``checkpoint-step-N.ckpt``,
``checkpoint-epoch-E.ckpt`` and ``last-step.ckpt`` in the run folder, each a full Lightning
checkpoint (exact ``--resume``) that also carries the MelHuBERT keys (``model``,
``Upstream_Config``, ``Optimizer``, ``Step``, ``Runner``), so it is a valid ``-i`` for every mode."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import lightning as L

from wav2vec2.atomic_io import atomic_copy
from wav2vec2.checkpoint import WAV2VEC2_KEY
from wav2vec2.state_dicts import plain

LAST_CHECKPOINT = "last-step.ckpt"
LIGHTNING_KEYS = frozenset({"state_dict", "optimizer_states", "lr_schedulers", "loops", "callbacks", "epoch", "global_step"})


class SuiteCheckpoints(L.Callback):
    """Step / epoch / last checkpoints in ``exp_dir``, each carrying the MelHuBERT keys.

    The MelHuBERT keys reuse the Lightning checkpoint's own tensors and optimizer state, so
    ``torch.save`` writes them once.
    """

    def __init__(self, exp_dir: Path, export: Callable[[Any], dict[str, Any]], runner_record: Mapping[str, Any],
                 save_step: Optional[int], save_every_x_epochs: Optional[int]) -> None:
        self.exp_dir = exp_dir
        self.export = export
        self.runner_record = plain(dict(runner_record))
        self.save_step = save_step
        self.save_every_x_epochs = save_every_x_epochs
        self._last_saved_step: Optional[int] = None

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        exported = self.export(pl_module)
        clashes = sorted(LIGHTNING_KEYS & set(exported))
        if clashes:
            raise RuntimeError(f"export() returned {clashes}, which Lightning needs to resume; nest a waveform model's "
                               f"files as {{'{WAV2VEC2_KEY}': {{'state_dict', 'config'}}}}")
        checkpoint.update(exported)
        optimizer_states = checkpoint.get("optimizer_states") or [{}]
        checkpoint["Optimizer"] = optimizer_states[0]
        checkpoint["Step"] = int(trainer.global_step)
        checkpoint["Runner"] = self.runner_record

    def _save(self, trainer: L.Trainer, name: str) -> None:
        path = self.exp_dir / name
        trainer.save_checkpoint(path, weights_only=False)  # full state: this file also resumes the run
        if trainer.is_global_zero and name != LAST_CHECKPOINT:
            # A copy, not a link (later saves rewrite files), written atomically: never half a file.
            atomic_copy(path, self.exp_dir / LAST_CHECKPOINT)
        self._last_saved_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        # With gradient accumulation several micro-batches end at the same step: save once.
        if self.save_step and step > 0 and step % self.save_step == 0 and step != self._last_saved_step:
            self._save(trainer, f"checkpoint-step-{step}.ckpt")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if self.save_every_x_epochs and epoch % self.save_every_x_epochs == 0:
            self._save(trainer, f"checkpoint-epoch-{epoch}.ckpt")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._last_saved_step != trainer.global_step or not (self.exp_dir / LAST_CHECKPOINT).is_file():
            self._save(trainer, LAST_CHECKPOINT)
