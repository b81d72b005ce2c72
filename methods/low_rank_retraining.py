"""``train.py -m low-rank``: truncated-SVD factorisation of linear maps, then retraining.

The original MelHuBERT compression code advertises low-rank approximation but ships none;
this is our definition. At the start, every plain ``nn.Linear`` of the transformer matching the chosen
patterns is replaced by ``LowRankLinear`` factors ``up(down(x))`` from its truncated SVD
(``wav2vec2.low_rank.factorize``; layers where the rank would not save parameters stay
dense), then the model is retrained for the run with the family's objective
(``methods.suite``).

Runner yaml ``factorize:`` section::

    factorize:
      layers: ffn           # ffn (fc1, fc2), attention (q, k, v, out), all, or a list of fnmatch patterns
      rank: 256             # exactly one of: a fixed rank,
      # energy: 0.9         #   the smallest rank keeping this fraction of each weight's squared singular values,
      # param_budget: 60e6  #   the largest uniform energy whose model has at most this many parameters,
      # param_ratio: 0.7    #   the same with budget = ratio x the -i model's parameters

The structure is recorded so the output reloads strictly: MelHuBERT in
``Upstream_Config.melhubert.low_rank`` (``{module path: rank}``, re-applied by
``MelHuBERTModel.__init__``); wav2vec2 family in ``{"wav2vec2": {"state_dict", "config",
"low_rank"}}``, re-applied by ``wav2vec2.checkpoint.wav2vec2_from_files`` (the one loader) before
the strict load, so either output is a valid ``-i`` / ``--resume`` source.

A ``--resume`` run rebuilds the factorised model from its checkpoint and does not factorise
again. A factorised model can still be head-, row- or weight-pruned (the operations handle
``LowRankLinear``) and distilled.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping, Optional, Sequence

from torch import nn

from wav2vec2.low_rank import ATTENTION_PATTERNS, FFN_PATTERNS, factorize, low_rank_structure
from wav2vec2.measure import count_params, sync_structure
from methods.suite import (
    WAVEFORM,
    ModeModule,
    Section,
    build_datamodule,
    family_of,
    is_resuming,
    retrain_copy,
    runner_path,
)

__all__ = ["LowRankModule", "factorize_from_config", "build_module", "export", "build_datamodule"]

LAYER_PATTERNS: dict[str, tuple[str, ...]] = {
    "ffn": FFN_PATTERNS,
    "attention": ATTENTION_PATTERNS,
    "all": FFN_PATTERNS + ATTENTION_PATTERNS,
}
RULES = ("rank", "energy", "param_budget", "param_ratio")


def patterns_from_config(section: Section) -> Sequence[str]:
    layers = section.get("layers", "ffn")
    if isinstance(layers, str):
        if layers not in LAYER_PATTERNS:
            raise section.fail("layers", f"must be one of {', '.join(LAYER_PATTERNS)} or a list of patterns, got {layers!r}")
        return LAYER_PATTERNS[layers]
    if isinstance(layers, list) and layers and all(isinstance(p, str) for p in layers):
        return list(layers)
    raise section.fail("layers", f"must be one of {', '.join(LAYER_PATTERNS)} or a list of patterns, got {layers!r}")


def factorize_from_config(model: nn.Module, runner_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Factorise ``model`` in place as the ``factorize:`` section says; returns the record."""
    section = Section(runner_cfg, "factorize", runner_path(runner_cfg))
    patterns = patterns_from_config(section)
    given = [rule for rule in RULES if section.has(rule)]
    if len(given) != 1:
        raise section.fail(given[1] if len(given) > 1 else "rank", f"set exactly one of {', '.join(RULES)} (found {given or 'none'})")
    rule = given[0]
    before = count_params(model)
    kwargs: dict[str, Any] = {}
    if rule == "rank":
        kwargs["rank"] = section.integer("rank", minimum=1)
    elif rule == "energy":
        kwargs["energy"] = section.number("energy", minimum=1e-9, maximum=1.0)
    elif rule == "param_budget":
        kwargs["param_budget"] = int(section.number("param_budget", minimum=1.0))  # type: ignore[arg-type]
    else:
        ratio = section.number("param_ratio", minimum=1e-9, maximum=1.0)
        kwargs["param_budget"] = int(before * ratio)  # type: ignore[operator]
    try:
        ranks = factorize(model, patterns, **kwargs)
    except ValueError as error:
        raise section.fail(rule, f"cannot be met: {error}") from None
    if not ranks:
        raise section.fail(rule, f"factorises nothing: at this setting no layer matching {list(patterns)} would have "
                                 "fewer parameters as two factors (rank r must satisfy r * (in + out) < in * out)")
    sync_structure(model)  # MelHuBERT re-reads its config (low_rank key) from the modules
    return {"rule": rule, "value": next(iter(kwargs.values())), "patterns": list(patterns), "ranks": dict(ranks),
            "params_before": before, "params_after": count_params(model)}


class LowRankModule(ModeModule):
    """Retraining of the factorised model; the record goes into every exported checkpoint."""

    def __init__(self, model: nn.Module, *, record: Optional[Mapping[str, Any]] = None, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.record = dict(record or {})

    def export_checkpoint(self) -> dict[str, Any]:
        exported = super().export_checkpoint()
        exported["Low_rank"] = {**self.record, "ranks": low_rank_structure(self.model)}
        return exported

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["low_rank_record"] = dict(self.record)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.record = dict(checkpoint.get("low_rank_record") or {})


def build_module(mode: str, model: Optional[nn.Module], model_cfg: Mapping[str, Any], runner_cfg: Mapping[str, Any],
                 init_checkpoint: Optional[Mapping[str, Any]]) -> LowRankModule:
    """Factorise the ``-i`` model (not on ``--resume``: the checkpoint already is) and retrain it."""
    student = retrain_copy(mode, model, model_cfg, runner_cfg)
    teacher = None
    record: dict[str, Any] = {}
    if not is_resuming(runner_cfg):
        if family_of(student) == WAVEFORM:
            teacher = copy.deepcopy(student)  # the waveform objective's reference: the model before factorising
        record = factorize_from_config(student, runner_cfg)
    else:
        Section(runner_cfg, "factorize", runner_path(runner_cfg))  # still checked, for a clear error
    return LowRankModule.from_mode_configs(mode, student, model_cfg, runner_cfg, init_checkpoint,  # type: ignore[return-value]
                                           teacher=teacher, record=record)


def export(module: LowRankModule) -> dict[str, Any]:
    return module.export_checkpoint()
