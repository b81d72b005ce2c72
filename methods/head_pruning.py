"""``train.py -m head-pruning``: remove attention heads step by step, with retraining.

At each scheduled step the current heads are scored, a fixed number is chosen and physically
removed (q/k/v rows, out_proj columns, ``methods.ops_heads``), the structure is written
into the model's config (MelHuBERT: per-layer ``encoder_attention_heads`` +
``encoder_attention_head_dim``; wav2vec2 family: ``encoder_num_heads`` or WavLM's
``encoder_remaining_heads``, ``encoder_use_attention``) and the optimizer is rebuilt (new
parameters, fresh Adam state as in the original code). Retraining loss: the family's objective
(``methods.suite``).

Runner yaml ``prune:`` section (the original code's names)::

    prune:
      metric: l1                 # l1 (Σ|W| of the head's q/k/v rows + biases) or data-driven
      target: by_layer           # by_layer: num/layers weakest heads of every layer;
                                 # by_whole: global ranking, the best head of every layer protected
      num_heads_each_step: 12
      total_steps: 11            # number of prune steps (the update budget is runner.total_steps)
      interval: [0, 25000, 50000, 75000, 100000, 125000, 165000, 205000, 245000, 285000, 325000]
      warm_up: 1000              # prune at warm_up + interval[k] (an int interval: equal spacing)
      data_ratio: 0.25           # data-driven: this fraction of an epoch's training batches is scored
      normalize_by_layer: 2      # data-driven: divide each layer's scores by their L2 norm (null: off)
      test_reverse: false        # true: remove the highest-scoring heads instead (a control run that
                                 # checks the score; the original config has the key, its code never read it)

Data-driven scores (Michel et al. 2019): ``Σ_t |⟨∂L/∂C_h(t), C_h(t)⟩|`` of every head's
attention context over ``ceil(data_ratio · batches)`` training batches (a shuffled plan of
their own, any batch size incl. the last smaller bucket), in train mode with the usual
masking, averaged over batches, then normalised per layer. ``L`` is the retraining loss.

Checkpoints: ``before-prune-step-{S}-heads-{H}.ckpt`` before each prune (``H`` heads in the
model), and the runner's step / last checkpoints. ``Head_pruning`` in every exported
checkpoint lists per step the removed heads (``{layer: [indices at that moment]}``) and the
scores; it is deliberately **not** named ``Pruned_heads``: the config already holds the
per-layer counts, and ``wav2vec2.melhubert_checkpoint`` would subtract a ``Pruned_heads`` list again.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from torch import nn

from methods.scheduled_pruning import FixedSchedulePruningModule, attention_heads, fixed_schedule_from_config, scoring_batches
from methods.suite import (
    ConfigError,
    Section,
    build_datamodule,
    retrain_copy,
    runner_path,
    total_updates,
)
from methods.ops_heads import prune_heads

__all__ = ["HeadPruningModule", "HeadPruningSettings", "build_module", "export", "build_datamodule"]

SCORING_EPOCH_BASE = 1_000_000  # sampler epochs of the scoring plans, far from the training epochs


class HeadPruningSettings:
    """The checked ``prune:`` section."""

    def __init__(self, runner_cfg: Mapping[str, Any], heads: list[int]) -> None:
        section = Section(runner_cfg, "prune", runner_path(runner_cfg))
        self.metric = section.choice("metric", ("l1", "data-driven"))
        self.target = section.choice("target", ("by_layer", "by_whole"), "by_layer" if self.metric == "l1" else "by_whole")
        self.num = int(section.integer("num_heads_each_step", required=True, minimum=1))  # type: ignore[arg-type]
        self.data_ratio = float(section.number("data_ratio", 0.25, minimum=0.0, maximum=1.0))  # type: ignore[arg-type]
        if self.metric == "data-driven" and self.data_ratio <= 0:
            raise section.fail("data_ratio", "must be > 0 for the data-driven metric")
        exponent = section.get("normalize_by_layer", 2)
        if exponent is not None and (isinstance(exponent, bool) or not isinstance(exponent, (int, float)) or exponent <= 0):
            raise section.fail("normalize_by_layer", f"must be a positive exponent or null, got {exponent!r}")
        self.normalize = None if exponent is None else float(exponent)
        self.reverse = section.boolean("test_reverse", False)
        self.section = section
        self._check_budget(heads)

    def _check_budget(self, heads: list[int]) -> None:
        """Every step must be feasible: heads left in every layer, even split for by_layer."""
        steps = int(self.section.integer("total_steps", required=True, minimum=1))  # type: ignore[arg-type]
        layers = [h for h in heads if h > 0]
        if self.target == "by_layer":
            if self.num % len(layers):
                raise self.section.fail("num_heads_each_step", f"({self.num}) must be a multiple of the {len(layers)} layers "
                                                              "with attention for target by_layer")
            per_layer = self.num // len(layers)
            if per_layer * steps >= min(layers):
                raise self.section.fail("num_heads_each_step", f"removes {per_layer * steps} heads per layer over {steps} steps, "
                                                              f"but the smallest layer has {min(layers)}: keep at least one")
        elif self.num * steps > sum(layers) - len(layers):
            raise self.section.fail("num_heads_each_step", f"x {steps} steps = {self.num * steps} heads, but only "
                                                          f"{sum(layers) - len(layers)} of {sum(layers)} are removable "
                                                          "(the best head of every layer is protected)")


class HeadPruningModule(FixedSchedulePruningModule):
    mode_name = "head-pruning"
    structural = True

    def __init__(self, model: nn.Module, *, settings: HeadPruningSettings, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.settings = settings

    def before_prune_name(self, step: int, decision: Any) -> str:
        return f"before-prune-step-{step}-heads-{sum(attention_heads(self.model))}.ckpt"

    def prune(self, decision: Any, step: int) -> dict[str, Any]:
        s = self.settings
        scored_sizes: list[int] = []
        if s.metric == "l1":
            removed, scores, _ = prune_heads(self.model, s.num, "l1", s.target, reverse=s.reverse)  # type: ignore[arg-type]
        else:
            def batches() -> Any:
                for batch in scoring_batches(self, s.data_ratio, SCORING_EPOCH_BASE + len(self.history)):
                    scored_sizes.append(int(batch[1].shape[0]))  # utterances (Mel: labels, audio: lengths)
                    yield batch

            removed, scores, _ = prune_heads(
                self.model, s.num, "data-driven", s.target,  # type: ignore[arg-type]
                loss_fn=lambda model, batch: self.objective(model, batch)[0],
                batches=batches(), normalize_exponent=s.normalize, reverse=s.reverse,
            )
        heads = attention_heads(self.model)
        self.log("prune/heads", float(sum(heads)), on_step=True, on_epoch=False)
        return {
            "removed": {str(layer): list(h) for layer, h in removed.items()},
            "heads": heads,
            "scored_batch_sizes": scored_sizes,
            "scores": {str(layer): [float(v) for v in score.tolist()] for layer, score in scores.items()},
        }

    def export_checkpoint(self) -> dict[str, Any]:
        exported = super().export_checkpoint()
        exported["Head_pruning"] = {"metric": self.settings.metric, "target": self.settings.target,
                                    "test_reverse": self.settings.reverse, "history": list(self.history)}
        return exported


def build_module(mode: str, model: Optional[nn.Module], model_cfg: Mapping[str, Any], runner_cfg: Mapping[str, Any],
                 init_checkpoint: Optional[Mapping[str, Any]]) -> HeadPruningModule:
    total = total_updates(runner_cfg, mode)
    student = retrain_copy(mode, model, model_cfg, runner_cfg)
    heads = attention_heads(student)
    if not any(heads):
        raise ConfigError(f"mode '{mode}': the -i model has no attention heads left to prune")
    settings = HeadPruningSettings(runner_cfg, heads)
    schedule = fixed_schedule_from_config(settings.section, total)
    return HeadPruningModule.from_mode_configs(mode, student, model_cfg, runner_cfg, init_checkpoint,  # type: ignore[return-value]
                                               schedule=schedule, settings=settings)


def export(module: HeadPruningModule) -> dict[str, Any]:
    return module.export_checkpoint()
