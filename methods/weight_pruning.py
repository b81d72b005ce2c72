"""``train.py -m weight-pruning``: iterative global magnitude pruning with retraining.

At the start every pooled tensor (weight and bias of q/k/v/out projections and both FFN
linears of every layer, ``methods.ops_weight``) gets an all-ones mask. The schedule
(``methods.prune_schedule.WeightPruningSchedule``) asks, after update ``S``, for a cumulative
sparsity; the model is then masked to exactly ``round(s · pool)`` zeros of the pool (global
ranking by |value|, already-masked entries first). Masked entries stay zero through the
forward hooks while the optimizer (not reset: the parameter objects survive) keeps training
the rest. Retraining loss: the family's objective (``methods.suite``).

Runner yaml ``prune:`` section (the original code's names)::

    prune:
      n_iters: 38                      # number of prune steps
      sparsity: [0.2, 0.3, ...]        # cumulative targets, or one float s: linear ramp s*(k+1)/n_iters
      warnup: 25000                    # first prune after this many updates ("warmup" accepted too)
      period: 25000                    # then every period updates
      pruning_condition: converge      # or normal (no gate)
      smooth_factor: 0.9998            # EMA of the update loss
      average_length: 15000            # the gate's target is the EMA this many updates before an event
      converge_loss_tolerance: 0.001   # postpone while EMA < target - tolerance (still improving)
      ema_init_updates: 3              # ours: the EMA restarts from the mean of this many updates
      strategy: L1Unstructured         # global |value| ranking; RandomUnstructured: random ranking (a baseline);
                                       # torch's structured methods are refused (use head- / row-pruning)

``runner.total_steps`` is the update budget (it grows by ``period`` per postponement; the
Trainer's ``max_steps`` follows). Every prune event must lie before it.

Checkpoints: ``before-prune-step-{S}-sparsity-{current}.ckpt`` before each prune (the
retrained model at the previous sparsity), plus the runner's step / last checkpoints. Their
``model`` key holds plain weights with the masks folded in (a valid ``-i`` for every mode,
loads with the original recipe); the Lightning part keeps ``*_orig`` / ``*_mask`` and the
schedule (``Pruning``: EMA, target, events, counters, pending update), so ``--resume``
continues exactly.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
from torch import nn

from methods.scheduled_pruning import ScheduledPruningModule
from methods.suite import (
    Section,
    build_datamodule,
    retrain_copy,
    runner_path,
    total_updates,
)
from methods.ops_weight import attach_masks, pool_size, prune_to
from methods.prune_schedule import WeightPruningSchedule, sparsity_targets

__all__ = ["WeightPruningModule", "build_module", "export", "build_datamodule", "schedule_from_config"]


# torch.nn.utils.prune methods usable for a global unstructured ranking -> prune_to's method
UNSTRUCTURED_METHODS = {"L1Unstructured": "l1", "RandomUnstructured": "random"}
STRUCTURED_METHODS = ("LnStructured", "RandomStructured")


def strategy_method(section: Section) -> str:
    """``prune.strategy`` (a torch.nn.utils.prune method name) -> ``prune_to``'s method; others refused by name."""
    strategy = section.get("strategy", "L1Unstructured")
    if strategy in UNSTRUCTURED_METHODS:
        return UNSTRUCTURED_METHODS[strategy]
    if strategy in STRUCTURED_METHODS:
        raise section.fail("strategy", f"{strategy} removes whole rows/channels, which a global unstructured pool cannot "
                                       "rank; for structured pruning run -m head-pruning or -m row-pruning")
    raise section.fail("strategy", f"must be one of {', '.join(UNSTRUCTURED_METHODS)} (global ranking of individual "
                                   f"weights), got {strategy!r}")


def schedule_from_config(runner_cfg: Mapping[str, Any], total_steps: int) -> WeightPruningSchedule:
    """The ``prune:`` section as a ``WeightPruningSchedule`` (errors name file and key)."""
    section = Section(runner_cfg, "prune", runner_path(runner_cfg))
    n_iters = section.integer("n_iters", required=True, minimum=1)
    raw = section.get("sparsity", required=True)
    try:
        sparsities = sparsity_targets(raw if isinstance(raw, list) else float(raw), n_iters)  # type: ignore[arg-type]
    except (TypeError, ValueError) as error:
        raise section.fail("sparsity", f"is invalid for n_iters={n_iters}: {error}") from None
    warmup_key = "warnup" if section.has("warnup") else "warmup"
    warmup = section.integer(warmup_key, required=True, minimum=1)
    period = section.integer("period", required=True, minimum=1)
    strategy_method(section)
    last = warmup + (n_iters - 1) * period  # type: ignore[operator]
    if last >= total_steps:
        raise section.fail(warmup_key, f"+ (n_iters - 1) * period puts the last prune at update {last}, not before "
                                       f"runner.total_steps={total_steps}; the model would never be retrained after it")
    return WeightPruningSchedule(
        sparsities, warmup, period, total_steps,  # type: ignore[arg-type]
        condition=section.choice("pruning_condition", ("converge", "normal"), "converge"),  # type: ignore[arg-type]
        smooth_factor=float(section.number("smooth_factor", 0.9998, minimum=0.0, maximum=1.0)),  # type: ignore[arg-type]
        average_length=int(section.integer("average_length", 15_000, minimum=1)),  # type: ignore[arg-type]
        tolerance=float(section.number("converge_loss_tolerance", 0.001)),  # type: ignore[arg-type]
        ema_init_updates=int(section.integer("ema_init_updates", 3, minimum=1)),  # type: ignore[arg-type]
    )


class WeightPruningModule(ScheduledPruningModule):
    """Masks attached at construction; ``prune_to`` the schedule's cumulative sparsity."""

    mode_name = "weight-pruning"
    structural = False  # masks change in place; the parameter objects (and Adam's state) survive

    def __init__(self, model: nn.Module, *, schedule: WeightPruningSchedule, method: str = "l1", seed: int = 0,
                 **kwargs: Any) -> None:
        attach_masks(model)  # before the optimizer exists and before a resumed state dict loads
        super().__init__(model, schedule=schedule, **kwargs)
        self.pool = pool_size(model)
        self.method = method
        self.seed = seed

    def schedule_update(self, step: int, loss: float) -> Optional[float]:
        return self.schedule.update(loss, step=step)

    def before_prune_name(self, step: int, decision: float) -> str:
        return f"before-prune-step-{step}-sparsity-{self.schedule.current_sparsity:g}.ckpt"

    def prune(self, decision: float, step: int) -> dict[str, Any]:
        # RandomUnstructured: noise seeded by run seed and step, so a resumed run draws the same masks.
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step) if self.method == "random" else None
        result = prune_to(self.model, decision, self.method, generator)
        self.log("prune/sparsity", result["sparsity"], on_step=True, on_epoch=False)
        return {"sparsity": float(decision), "masked": int(result["masked"]), "pool": int(result["pool"])}

    def export_checkpoint(self) -> dict[str, Any]:
        exported = super().export_checkpoint()
        exported["Weight_pruning"] = {"sparsity": float(self.schedule.current_sparsity), "pool": int(self.pool),
                                      "history": list(self.history)}
        return exported


def build_module(mode: str, model: Optional[nn.Module], model_cfg: Mapping[str, Any], runner_cfg: Mapping[str, Any],
                 init_checkpoint: Optional[Mapping[str, Any]]) -> WeightPruningModule:
    """The ``-i`` model (either family) with identity masks and the yaml's schedule.

    On ``--resume`` the schedule state, masks and counters come from the checkpoint
    (``WeightPruningModule.on_load_checkpoint``); the yaml's schedule is only the template.
    """
    total = total_updates(runner_cfg, mode)
    schedule = schedule_from_config(runner_cfg, total)
    method = strategy_method(Section(runner_cfg, "prune", runner_path(runner_cfg)))
    student = retrain_copy(mode, model, model_cfg, runner_cfg)
    return WeightPruningModule.from_mode_configs(mode, student, model_cfg, runner_cfg, init_checkpoint,  # type: ignore[return-value]
                                                 schedule=schedule, method=method,
                                                 seed=int(runner_cfg["runner"].get("seed", 0)))


def export(module: WeightPruningModule) -> dict[str, Any]:
    """``model`` (masks folded) + ``Upstream_Config``, or the waveform files; plus the pruning record."""
    return module.export_checkpoint()
