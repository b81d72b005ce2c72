"""The scheduled-pruning loop that the suite's weight / head / row pruning modes share.

Scheduled pruning (``ScheduledPruningModule``)
    After every optimizer update the schedule sees the update's loss (mean over accumulated
    micro-batches); when it asks for a prune, the module first writes
    ``EXP_DIR/before-prune-step-{S}-{what}.ckpt`` (a full ``train.py`` checkpoint: valid ``-i``
    and ``--resume`` source), then prunes, and for structural edits rebuilds the optimizer
    (fresh Adam state, as the original code) with the LR schedule continued at the current step.
    The prune of update ``S`` runs in the module's ``on_train_batch_end``, i.e. *after* the
    runner's step checkpoint of update ``S``; such a checkpoint therefore records the update
    as ``pending_update`` (step + loss) and a resumed run applies it before its first batch,
    so a resumed run equals the uninterrupted one.
"""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from lightning.fabric.utilities.apply_func import move_data_to_device
from torch import Tensor, nn

from lightning_modules.config import Section
from methods.prune_schedule import FixedSchedule, WeightPruningSchedule, structured_prune_steps
from methods.suite import ModeModule, rebuild_optimizer
from wav2vec2.state_dicts import plain

logger = logging.getLogger(__name__)


class ScheduledPruningModule(ModeModule):
    """``ModeModule`` + prune steps driven by a schedule (see the module docstring).

    ``schedule`` is a ``FixedSchedule`` or ``WeightPruningSchedule`` (both expose ``step``,
    ``total_steps``, ``state_dict()``, ``load_state_dict()``). Subclasses set ``mode_name`` and
    ``structural`` and implement ``schedule_update``, ``prune(decision, step) -> record`` and
    ``before_prune_name(step, decision)``.
    """

    mode_name = "pruning"
    structural = True  # new Parameters after a prune: rebuild the optimizer

    def __init__(self, model: nn.Module, *, schedule: FixedSchedule | WeightPruningSchedule, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.schedule = schedule
        self.history: list[dict[str, Any]] = []  # one plain record per prune
        self._micro_losses: list[float] = []
        self._update_loss: float = float("nan")
        self._last_finite_loss: float = float("nan")
        self._resume_pending: Optional[dict[str, Any]] = None
        self.exp_dir: Optional[Path] = None

    @property
    def schedule_step(self) -> int:
        return self.schedule.step

    @property
    def schedule_total_steps(self) -> int:
        return self.schedule.total_steps

    def schedule_state(self) -> dict[str, Any]:
        return self.schedule.state_dict()

    def load_schedule_state(self, state: Mapping[str, Any]) -> None:
        self.schedule.load_state_dict(dict(state))

    # ----- to implement ----------------------------------------------------------------------
    def schedule_update(self, step: int, loss: float) -> Any:
        raise NotImplementedError

    def prune(self, decision: Any, step: int) -> dict[str, Any]:
        raise NotImplementedError

    def before_prune_name(self, step: int, decision: Any) -> str:
        raise NotImplementedError

    # ----- the loop --------------------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss = super().training_step(batch, batch_idx)
        self._micro_losses.append(float(loss.detach()))
        return loss

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)  # runs the last micro-batch (closure) and the update
        losses, self._micro_losses = self._micro_losses, []
        loss = sum(losses) / len(losses) if losses else float("nan")
        # A NaN / inf loss (its update was skipped) must not poison the convergence EMA.
        if math.isfinite(loss):
            self._last_finite_loss = loss
        self._update_loss = loss if math.isfinite(loss) else self._last_finite_loss

    def on_train_start(self) -> None:
        trainer = self.trainer
        if self.structural and trainer.world_size > 1:
            raise RuntimeError(f"mode '{self.mode_name}' edits the architecture mid-run and needs one device "
                               "(runner.devices: 1): DDP would keep the old parameters")
        pending = 1 if self._resume_pending is not None else 0
        if self.schedule_step + pending != trainer.global_step:
            raise RuntimeError(f"the prune schedule is at update {self.schedule_step} but the trainer at {trainer.global_step}: "
                               "the checkpoint does not belong to this run")
        self._raise_max_steps()
        self.exp_dir = Path(str(trainer.default_root_dir))

    def _raise_max_steps(self) -> None:
        # The convergence gate can postpone prunes, each time adding updates to the run.
        loop = self.trainer.fit_loop.epoch_loop
        if loop.max_steps != -1 and loop.max_steps < self.schedule_total_steps:
            loop.max_steps = self.schedule_total_steps

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)  # restores the RNG of a resumed run first
        if self._resume_pending is not None:
            pending, self._resume_pending = self._resume_pending, None
            self._process_update(int(pending["step"]), float(pending["loss"]))

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = int(self.trainer.global_step)
        if step > self.schedule_step:  # an update completed (once per accumulation window)
            self._process_update(step, self._update_loss)

    def _process_update(self, step: int, loss: float) -> None:
        self._update_loss = loss
        before = copy.deepcopy(self.schedule_state())
        decision = self.schedule_update(step, loss)
        if decision is not None:
            # Save with the schedule as it was before this update: the file is then exactly the
            # runner's checkpoint of step S (resumable; the prune is its pending update).
            self.load_schedule_state(before)
            self._save_before_prune(step, decision)
            replay = self.schedule_update(step, loss)
            assert replay == decision, "prune schedules must be deterministic"
            record = self.prune(decision, step)
            self.history.append(plain({"step": step, **record}))
            if self.structural:
                rebuild_optimizer(self)
            logger.info("step %d: %s", step, record)
        self._raise_max_steps()

    def _save_before_prune(self, step: int, decision: Any) -> None:
        trainer = self.trainer
        directory = self.exp_dir or Path(str(trainer.default_root_dir))
        trainer.save_checkpoint(directory / self.before_prune_name(step, decision), weights_only=False)

    # ----- checkpoints -----------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        pending = None
        trainer = self._trainer
        if trainer is not None and int(trainer.global_step) > self.schedule_step:
            pending = {"step": int(trainer.global_step), "loss": float(self._update_loss)}
        checkpoint["Pruning"] = {
            "mode": self.mode_name,
            "schedule": plain(self.schedule_state()),
            "history": plain(self.history),
            "pending_update": pending,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("Pruning")
        if not isinstance(state, Mapping) or state.get("mode") != self.mode_name:
            found = state.get("mode") if isinstance(state, Mapping) else None
            raise ValueError(f"--resume: the checkpoint has no '{self.mode_name}' schedule state (found {found!r}); "
                             f"resume a run of the same mode")
        self.load_schedule_state(state["schedule"])
        self.history = [dict(h) for h in state.get("history", [])]
        self._resume_pending = state.get("pending_update")
        if self._resume_pending is not None:
            self._update_loss = float(self._resume_pending["loss"])


# --------------------------------------------------------------------------------------------
# Batches for data-driven scores
# --------------------------------------------------------------------------------------------


def scoring_batches(module: ModeModule, ratio: float, epoch: int) -> Iterator[Any]:
    """``ceil(ratio · batches per epoch)`` training batches (at least 1), on the module's device.

    Drawn from a copy of the training batch sampler set to ``epoch`` (a shuffled order and
    crops of their own), so the training loader's position and resume state are untouched.
    Includes the last, possibly smaller bucket when the order puts it among the first.
    """
    loader = module.trainer.train_dataloader
    if loader is None:
        raise RuntimeError("no training dataloader to score heads on")
    sampler = copy.deepcopy(loader.batch_sampler)
    if hasattr(sampler, "epoch_source"):
        sampler.epoch_source = None
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    count = max(1, math.ceil(ratio * len(sampler)))
    for index, items in enumerate(sampler):
        if index == count:
            break
        batch = loader.collate_fn([loader.dataset[item] for item in items])
        yield move_data_to_device(batch, module.device)


# --------------------------------------------------------------------------------------------
# Fixed prune steps (head and row pruning)
# --------------------------------------------------------------------------------------------


def fixed_schedule_from_config(section: Section, total_steps: int) -> FixedSchedule:
    """``warm_up`` + ``interval`` (list of offsets or equal spacing) for ``total_steps`` prune steps.

    Reference key names: ``prune.total_steps`` is the number of prune **steps**; the update
    budget is ``runner.total_steps``. Every prune must come before the end of the run.
    """
    count = int(section.integer("total_steps", required=True, minimum=1))  # type: ignore[arg-type]
    warm_up = int(section.integer("warm_up", 0, minimum=0))  # type: ignore[arg-type]
    interval = section.int_or_list("interval")
    try:
        steps = structured_prune_steps(warm_up, interval, count)
    except ValueError as error:
        raise section.fail("interval", f"is invalid: {error}") from None
    if steps[0] < 1:
        raise section.fail("warm_up", "+ interval[0] must be at least 1 (prunes happen after an update)")
    if steps[-1] >= total_steps:
        raise section.fail("interval", f"puts the last prune at update {steps[-1]}, not before runner.total_steps={total_steps}")
    return FixedSchedule(steps, total_steps)


class FixedSchedulePruningModule(ScheduledPruningModule):
    """Prune at the fixed steps of a ``FixedSchedule`` (decision ``True``)."""

    schedule: FixedSchedule

    def schedule_update(self, step: int, loss: float) -> Optional[bool]:
        return True if self.schedule.update(step=step) else None


def attention_heads(model: nn.Module) -> list[int]:
    """Heads per layer of the model's transformer (0 where the block is gone)."""
    from wav2vec2.measure import find_transformer

    return [layer.attention.num_heads if layer.attention is not None else 0 for layer in find_transformer(model).layers]


def ffn_units(model: nn.Module) -> list[int]:
    """FFN units per layer of the model's transformer (0 where the block is gone)."""
    from wav2vec2.measure import find_transformer

    return [layer.feed_forward.interm_features if layer.feed_forward is not None else 0 for layer in find_transformer(model).layers]
