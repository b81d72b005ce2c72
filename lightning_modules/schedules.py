"""Learning-rate and sparsity-target schedules (functions of the optimizer step)."""

from __future__ import annotations


def linear_warmup_decay(step: int, warmup_updates: int, max_updates: int) -> float:
    """LR multiplier: ``t / warmup`` up to ``warmup``, then linear decay to 0 at ``max_updates``.

    ``t = step + 1`` counts updates from 1, as in DPHuBERT's scheduler.
    """
    t = step + 1
    if t >= max_updates:
        return 0.0
    if warmup_updates > 0 and t <= warmup_updates:
        return t / warmup_updates
    return (max_updates - t) / max(1, max_updates - warmup_updates)


def constant_with_warmup(step: int, warmup_updates: int) -> float:
    """LR multiplier: linear warm-up then constant 1 (MelHuBERT-style runs)."""
    if warmup_updates <= 0:
        return 1.0
    return min(1.0, (step + 1) / warmup_updates)


def ramped_target(step: int, target: float, warmup_updates: int) -> float:
    """Sparsity target ``target * min(1, step / warmup)``: 0 at the first step."""
    if warmup_updates <= 0:
        return target
    return target * min(1.0, step / warmup_updates)
