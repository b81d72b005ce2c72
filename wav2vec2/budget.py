"""Exact size budgets for pruning: turn trained hard-concrete gates into keep/drop decisions
whose exact parameter (or MAC) count meets a target, whatever the state of training.

Why: during stage 1 the Lagrangian only steers the *expected* size ``E[size]`` (each unit counts
with its probability of being kept). The deterministic eval mask that ``prune()`` applies can
differ from it: a gate drops ``round(n - E[L0])`` units, and a whole-block gate with
``0.5 < P(keep) < 1`` counts fractionally in the expectation but fully after pruning. A run
stopped before the multipliers settle therefore misses the budget (0.772 for a 0.75 target).

The rule (``select_units``):

1. Every prunable unit is a candidate: each conv channel, attention head, FFN intermediate
   unit, and each whole attention / FFN block. Its score is its gate's ``log_alpha``
   (all gates share one temperature, so scores compare across gates; a higher score means
   the training wanted the unit more).
2. Start from the decisions of the deterministic eval masks (what ``prune()`` would do).
3. Too large: walk the kept units from the lowest score up and drop each one whose removal
   does not take the size below the lower edge of the tolerance band; stop once the size is
   within the band or at most the target.
4. Too small: walk the dropped units from the highest score down and restore each one whose
   addition keeps the size at most the upper edge of the band; stop once inside the band.
5. Sizes are always the exact counts of ``wav2vec2.counting`` (the same formula ``prune()``
   is checked against), so the cost of a unit includes its knock-on effects: a conv channel
   also removes a column of the next conv, a block with no heads left counts zero, and so on.
   A conv layer always keeps at least one channel.

Kept units keep their soft deterministic value (``sigmoid(0.8 * log_alpha / beta)``), which
``prune()`` folds into the next layer, so only the keep/drop decisions change.

``apply_decisions`` installs the decisions as ``FixedGate`` modules (a ``HardConcrete`` whose
eval mask is fixed); ``prune()`` and ``counting`` then use them unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Literal, Optional

import torch
from torch import Tensor, nn

from . import counting
from .hardconcrete import HardConcrete

BudgetKind = Literal["params", "macs"]
# MACs per 10 s of audio, the convention of the stage-1 constraint.
MACS_REFERENCE_SAMPLES = 160_000


class FixedGate(HardConcrete):
    """A hard-concrete gate whose eval decisions are fixed: ``keep`` ``(n,)`` bool.

    The eval mask is the soft value of the original gate on kept units and 0 elsewhere.
    """

    def __init__(self, source: HardConcrete, keep: Tensor) -> None:
        with torch.random.fork_rng(devices=[]):  # the parent's random init must not move the global RNG
            super().__init__(source.n, source.init_mean, source.init_std, source.beta, -source.limit_l, source.eps)
        if keep.shape != (source.n,):
            raise ValueError(f"keep must have shape ({source.n},), got {tuple(keep.shape)}")
        with torch.no_grad():
            self.log_alpha.copy_(source.log_alpha.detach())
        self.log_alpha.requires_grad_(False)
        self.register_buffer("keep", keep.to(torch.bool).clone())

    def num_dropped_in_eval(self) -> int:
        return int((~self.keep).sum())

    def deterministic_mask(self) -> Tensor:
        soft = torch.sigmoid(self.log_alpha / self.beta * self.EVAL_SHARPNESS)
        return soft * self.keep.to(soft.dtype)


@dataclass(frozen=True)
class GateSlot:
    """Where a gate lives: ``getattr(owner, attribute)``; ``kind`` for messages and the conv floor."""

    name: str
    owner: nn.Module
    attribute: str
    kind: str  # "conv", "heads", "interm", "attention_layer", "ffn_layer"

    @property
    def gate(self) -> HardConcrete:
        return getattr(self.owner, self.attribute)


def gate_slots(model: nn.Module) -> list[GateSlot]:
    """Every hard-concrete gate of a ``Wav2Vec2Model``, in a fixed order."""
    slots = []
    for i, block in enumerate(model.feature_extractor.conv_layers):
        if block.hard_concrete is not None:
            slots.append(GateSlot(f"conv{i}", block, "hard_concrete", "conv"))
    for i, layer in enumerate(model.encoder.transformer.layers):
        attention, ffn = layer.attention, layer.feed_forward
        if attention is not None:
            if attention.hard_concrete_for_layer is not None:
                slots.append(GateSlot(f"layer{i}.attention", attention, "hard_concrete_for_layer", "attention_layer"))
            if attention.hard_concrete_for_heads is not None:
                slots.append(GateSlot(f"layer{i}.heads", attention, "hard_concrete_for_heads", "heads"))
        if ffn is not None:
            if ffn.hard_concrete_for_layer is not None:
                slots.append(GateSlot(f"layer{i}.ffn", ffn, "hard_concrete_for_layer", "ffn_layer"))
            if ffn.hard_concrete_for_intermediate is not None:
                slots.append(GateSlot(f"layer{i}.interm", ffn, "hard_concrete_for_intermediate", "interm"))
    return slots


def size_of(model: nn.Module, kind: BudgetKind) -> float:
    """Exact size of ``model`` under its current eval decisions."""
    if kind == "params":
        return float(counting.num_params(model, "exact"))
    if kind == "macs":
        return float(counting.num_macs(model, MACS_REFERENCE_SAMPLES, "exact"))
    raise ValueError(f"budget kind must be 'params' or 'macs', got {kind!r}")


@dataclass
class Selection:
    """The outcome: keep vectors per gate name and the sizes before / after."""

    keep: dict[str, Tensor]
    kind: BudgetKind
    target_size: float
    reference_size: float  # the teacher's size: sparsity = 1 - size / reference_size
    deterministic_size: float  # what the plain eval masks would have given
    expected_size: float  # E[size] under the gates (what the Lagrangian saw)
    size: float  # exact size of the selection
    changed_units: int

    def sparsity(self, size: Optional[float] = None) -> float:
        return 1.0 - (self.size if size is None else size) / self.reference_size

    def describe(self) -> str:
        what = "sparsity" if self.kind == "params" else "MACs sparsity (1 - MACs ratio)"
        target = self.sparsity(self.target_size)
        return (f"budget ({self.kind}): target {what} {target:.4f}; expected under the gates {self.sparsity(self.expected_size):.4f} "
                f"(gap {self.sparsity(self.expected_size) - target:+.4f}); deterministic masks {self.sparsity(self.deterministic_size):.4f} "
                f"(gap {self.sparsity(self.deterministic_size) - target:+.4f}); selected {self.sparsity():.4f} "
                f"(gap {self.sparsity() - target:+.4f}, {self.changed_units} units changed)")


def _initial_keep(slot: GateSlot) -> Tensor:
    return slot.gate.deterministic_mask().detach() != 0


def select_units(model: nn.Module, kind: BudgetKind, target_size: float, reference_size: float,
                 tolerance: float) -> Selection:
    """Keep/drop decisions for every gate of ``model`` so that the exact size is within
    ``target_size +- tolerance`` (see the module docstring for the rule).

    The model is not changed. Raises ValueError when no selection reaches the band (e.g. a
    target below the size of the ungated parts).
    """
    slots = gate_slots(model)
    if not slots:
        raise ValueError("the model has no hard-concrete gates: nothing to select")
    originals = {slot.name: slot.gate for slot in slots}
    keep = {slot.name: _initial_keep(slot) for slot in slots}
    with torch.no_grad():
        expected = float(counting.num_params(model, "expected")) if kind == "params" else \
            float(counting.num_macs(model, MACS_REFERENCE_SAMPLES, "expected"))
    initial = {name: k.clone() for name, k in keep.items()}
    try:
        _install(slots, originals, keep)
        deterministic = size_of(model, kind)
        size = deterministic
        low, high = target_size - tolerance, target_size + tolerance
        candidates = sorted(_units(slots, originals), key=lambda unit: unit[2])  # (slot, index, score)
        if size > high:
            for slot, index, _ in candidates:
                if size <= high:
                    break
                if not keep[slot.name][index] or (slot.kind == "conv" and int(keep[slot.name].sum()) == 1):
                    continue
                new = _try(model, kind, slots, originals, keep, slot, index, False)
                if new >= low:
                    size = new
                else:
                    _set(slots, originals, keep, slot, index, True)
        if size < low:
            for slot, index, _ in reversed(candidates):
                if size >= low:
                    break
                if keep[slot.name][index]:
                    continue
                new = _try(model, kind, slots, originals, keep, slot, index, True)
                if new <= high:
                    size = new
                else:
                    _set(slots, originals, keep, slot, index, False)
    finally:
        for slot in slots:
            setattr(slot.owner, slot.attribute, originals[slot.name])
    if not low <= size <= high:
        raise ValueError(f"no selection of units reaches size {target_size:.0f} +- {tolerance:.0f} ({kind}); "
                         f"closest found {size:.0f} (deterministic masks give {deterministic:.0f})")
    changed = sum(int((keep[name] != initial[name]).sum()) for name in keep)
    return Selection(keep, kind, target_size, reference_size, deterministic, expected, size, changed)


def _units(slots: list[GateSlot], originals: dict[str, HardConcrete]) -> Iterator[tuple[GateSlot, int, float]]:
    for slot in slots:
        for index, score in enumerate(originals[slot.name].log_alpha.detach().tolist()):
            yield slot, index, score


def _install(slots: list[GateSlot], originals: dict[str, HardConcrete], keep: dict[str, Tensor]) -> None:
    for slot in slots:
        setattr(slot.owner, slot.attribute, FixedGate(originals[slot.name], keep[slot.name]))


def _set(slots: list[GateSlot], originals: dict[str, HardConcrete], keep: dict[str, Tensor], slot: GateSlot,
         index: int, value: bool) -> None:
    keep[slot.name][index] = value
    slot.gate.keep[index] = value


def _try(model: nn.Module, kind: BudgetKind, slots: list[GateSlot], originals: dict[str, HardConcrete],
         keep: dict[str, Tensor], slot: GateSlot, index: int, value: bool) -> float:
    _set(slots, originals, keep, slot, index, value)
    return size_of(model, kind)


def apply_decisions(model: nn.Module, selection: Selection) -> None:
    """Install ``selection`` in ``model``: every gate becomes a ``FixedGate`` (eval mode only)."""
    slots = gate_slots(model)
    missing = sorted({slot.name for slot in slots} ^ set(selection.keep))
    if missing:
        raise ValueError(f"the selection does not match the model's gates: {', '.join(missing)}")
    for slot in slots:
        setattr(slot.owner, slot.attribute, FixedGate(slot.gate, selection.keep[slot.name]))
    model.eval()


def meet_budget(model: nn.Module, kind: BudgetKind, target_sparsity: float, reference_size: float,
                tolerance: float = 0.0005) -> Selection:
    """Select and install decisions so that ``1 - size / reference_size`` is within
    ``target_sparsity +- tolerance``; returns the selection (``describe()`` prints the gaps)."""
    if not 0 <= target_sparsity < 1:
        raise ValueError(f"target sparsity must be in [0, 1), got {target_sparsity}")
    selection = select_units(model, kind, (1 - target_sparsity) * reference_size, reference_size,
                             tolerance * reference_size)
    apply_decisions(model, selection)
    return selection


__all__ = ["FixedGate", "GateSlot", "Selection", "apply_decisions", "gate_slots", "meet_budget", "select_units", "size_of"]
