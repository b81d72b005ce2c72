"""``train.py -m row-pruning``: remove FFN units ("rows") step by step, with retraining.

At each scheduled step every layer loses the same number of its lowest-scoring FFN units
(score ``Σ|fc1[i,:]| + |b1[i]| + Σ|fc2[:,i]|``, ``methods.ops_rows``): fc1 rows and bias
entries and fc2 columns are sliced out, the per-layer FFN width is written into the config
(MelHuBERT ``encoder_ffn_embed_dim``, wav2vec2 family ``encoder_ff_interm_features``) and the
optimizer is rebuilt. Retraining loss: the family's objective (``methods.suite``).

Runner yaml ``prune:`` section (the original code's names)::

    prune:
      num_rows_each_step: 128   # units removed from every layer at each step
      total_steps: 20           # number of prune steps (the update budget is runner.total_steps)
      interval: 25000           # equal spacing (or a list of offsets)
      warm_up: 1000             # prune at warm_up + k * interval

Checkpoints: ``before-prune-step-{S}-ffn-{units}.ckpt`` before each prune and the runner's
step / last checkpoints; ``Row_pruning`` lists the removed unit indices per step.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from torch import nn

from methods.scheduled_pruning import FixedSchedulePruningModule, ffn_units, fixed_schedule_from_config
from methods.suite import (
    ConfigError,
    Section,
    build_datamodule,
    retrain_copy,
    runner_path,
    total_updates,
)
from methods.ops_rows import prune_rows

__all__ = ["RowPruningModule", "build_module", "export", "build_datamodule"]


class RowPruningModule(FixedSchedulePruningModule):
    mode_name = "row-pruning"
    structural = True

    def __init__(self, model: nn.Module, *, rows_per_step: int, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.rows_per_step = rows_per_step

    def before_prune_name(self, step: int, decision: Any) -> str:
        units = sorted({u for u in ffn_units(self.model) if u > 0})
        return f"before-prune-step-{step}-ffn-{'-'.join(str(u) for u in units)}.ckpt"

    def prune(self, decision: Any, step: int) -> dict[str, Any]:
        removed, _, _ = prune_rows(self.model, self.rows_per_step)
        units = ffn_units(self.model)
        self.log("prune/ffn_units", float(sum(units)), on_step=True, on_epoch=False)
        return {"removed": {str(layer): list(rows) for layer, rows in removed.items()}, "ffn_units": units}

    def export_checkpoint(self) -> dict[str, Any]:
        exported = super().export_checkpoint()
        exported["Row_pruning"] = {"history": list(self.history)}
        return exported


def build_module(mode: str, model: Optional[nn.Module], model_cfg: Mapping[str, Any], runner_cfg: Mapping[str, Any],
                 init_checkpoint: Optional[Mapping[str, Any]]) -> RowPruningModule:
    total = total_updates(runner_cfg, mode)
    student = retrain_copy(mode, model, model_cfg, runner_cfg)
    section = Section(runner_cfg, "prune", runner_path(runner_cfg))
    rows = int(section.integer("num_rows_each_step", required=True, minimum=1))  # type: ignore[arg-type]
    schedule = fixed_schedule_from_config(section, total)
    units = [u for u in ffn_units(student) if u > 0]
    if not units:
        raise ConfigError(f"mode '{mode}': the -i model has no FFN units left to prune")
    if rows * len(schedule.steps) >= min(units):
        raise section.fail("num_rows_each_step", f"x {len(schedule.steps)} steps = {rows * len(schedule.steps)} units per layer, "
                                                 f"but the narrowest FFN has {min(units)}: keep at least one")
    return RowPruningModule.from_mode_configs(mode, student, model_cfg, runner_cfg, init_checkpoint,  # type: ignore[return-value]
                                              schedule=schedule, rows_per_step=rows)


def export(module: RowPruningModule) -> dict[str, Any]:
    return module.export_checkpoint()
