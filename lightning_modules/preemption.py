"""Save a checkpoint and stop when the job is asked to end (SIGTERM, SLURM's warning signal).

Outside SLURM's auto-requeue (a plain ``kill``, a container stop, a scheduler other than
SLURM, or SLURM without ``auto_requeue``), :class:`SaveOnSignal` makes the run resumable:

- SIGTERM: Lightning's own signal connector records it (``trainer.received_sigterm``); at the
  end of the current batch this callback writes ``last.ckpt`` (atomically, through the
  trainer's CheckpointIO); Lightning then raises ``SIGTERMException`` after the batch;
- SIGUSR1 (what ``sbatch --signal=USR1@90`` sends before the time limit): Lightning handles it
  only under SLURM auto-requeue; otherwise this callback installs a handler that only sets a
  flag, then saves at the next batch end and stops through the same Lightning path.

A signal during validation stops there (Lightning's ``SIGTERMException``) without a new
checkpoint: the resume starts from the last one written.

Under SLURM auto-requeue (``SLURMEnvironment(auto_requeue=True)``, ``lightning_modules.slurm``)
Lightning owns SIGUSR1 (save, ``scontrol requeue``); this callback then leaves SIGUSR1 alone
and only adds the SIGTERM save, so the two never fight over a handler. The handler is
installed after Lightning registers its own (``on_train_start``) and Lightning's teardown
restores the original handlers.

The command-line front turns the stop into exit status ``128 + signal`` with a message saying
how to resume (:func:`exit_status`).
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any, Optional

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities.exceptions import SIGTERMException

logger = logging.getLogger(__name__)

WARNING_SIGNAL = signal.SIGUSR1


def slurm_requeue_active(trainer: L.Trainer) -> bool:
    environment = trainer._accelerator_connector.cluster_environment
    return isinstance(environment, SLURMEnvironment) and bool(environment.auto_requeue)


class SaveOnSignal(L.Callback):
    """See the module docstring. ``checkpoint_path``: where the stop checkpoint goes (``last.ckpt``)."""

    def __init__(self, checkpoint_path: str | Path) -> None:
        self.checkpoint_path = Path(checkpoint_path)
        self.received: Optional[int] = None  # the signal that stopped the run
        self.saved_step: Optional[int] = None
        self._flag: Optional[int] = None

    def _handler(self, signum: int, frame: Optional[FrameType]) -> None:
        self._flag = signum  # only a flag: saving inside a signal handler could interrupt a write

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if slurm_requeue_active(trainer) or threading.current_thread() is not threading.main_thread():
            return
        signal.signal(WARNING_SIGNAL, self._handler)

    def _requested(self, trainer: L.Trainer) -> Optional[int]:
        if trainer.received_sigterm:
            return int(signal.SIGTERM)
        flag = self._flag
        if trainer.world_size > 1:  # every rank must stop (and save) at the same step
            flag_any = trainer.strategy.reduce_boolean_decision(flag is not None, all=False)
            flag = (flag or int(WARNING_SIGNAL)) if flag_any else None
        return flag

    def _save(self, trainer: L.Trainer, signum: int) -> None:
        self.received = signum
        if self.saved_step == trainer.global_step:
            return
        trainer.save_checkpoint(self.checkpoint_path)
        self.saved_step = trainer.global_step
        if trainer.is_global_zero:
            logger.warning("received %s at step %d: saved %s; continue with --resume last",
                           signal.Signals(signum).name, trainer.global_step, self.checkpoint_path)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        signum = self._requested(trainer)
        if signum is None:
            return
        self._save(trainer, signum)
        # Stop through Lightning's own SIGTERM path: it raises SIGTERMException at the end of this
        # batch, after its metrics reach the loggers and before any validation or ModelCheckpoint
        # save. (should_stop would end the epoch, validate, and let ModelCheckpoint rewrite
        # last.ckpt with an end-of-epoch state, from which a resume starts a new epoch.)
        trainer._signal_connector.received_sigterm = True

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException) and self.received is None:
            self.received = int(signal.SIGTERM)  # stopped during validation: no new checkpoint


def exit_status(callback: SaveOnSignal) -> Optional[int]:
    """``128 + signal`` when the run was stopped by a signal (the shell's convention), else None."""
    return None if callback.received is None else 128 + callback.received


def fit_until_signal(trainer: L.Trainer, module: L.LightningModule, datamodule: Any,
                     ckpt_path: Optional[str | Path] = None) -> Optional[int]:
    """``trainer.fit``; the exit status ``128 + signal`` when a signal stopped it (its checkpoint
    saved by the trainer's :class:`SaveOnSignal`), None when training ran to its end."""
    saver = next((c for c in trainer.callbacks if isinstance(c, SaveOnSignal)), None)
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=None if ckpt_path is None else str(ckpt_path))
    except SIGTERMException:
        if saver is None:
            raise
        saver.received = saver.received or int(signal.SIGTERM)
    return None if saver is None else exit_status(saver)
