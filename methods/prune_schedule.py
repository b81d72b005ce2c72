"""Pruning schedules as small pure-Python state machines with exact resume.

Step convention: ``step`` = number of completed optimiser updates. A prune "at step s" happens
after update ``s`` and before update ``s + 1`` (the original MelHuBERT code's loop index ``s``).

Weight pruning (``WeightPruningSchedule``)
    Cumulative sparsity targets (``WEIGHT_PRUNING_SPARSITIES``, the original MelHuBERT code's 38 values, or
    a linear ramp ``s·(k+1)/n_iters`` from ``linear_sparsities``), scheduled prune events at
    ``warmup + k·period``, ``total_steps`` updates in all. Call ``update(loss)`` after every
    update; it returns the sparsity to prune to now, or None.

    Convergence gate (``condition="converge"``; ``"normal"`` prunes at every event):

    - EMA of the per-update loss, ``ema ← smooth·ema + (1 − smooth)·loss``; at the start and
      after every prune it restarts: undefined for ``ema_init_updates`` (3) updates, then
      initialised to their mean;
    - the target is the EMA value at step ``event − average_length`` for the next scheduled
      event (the specified rule; the original MelHuBERT code's "10,000 steps after each prune" only equals
      it when warmup = period). No target exists if that step is not later than the previous
      event, or the EMA was still undefined there;
    - at an event, if the EMA and the target exist and ``ema < target − tolerance`` (the loss
      is still improving), the prune is postponed: one more event is appended at
      ``last event + period`` and ``total_steps`` grows by ``period``; the same sparsity is
      tried at the next event. Otherwise the next sparsity is returned and the EMA restarts.
      The target is cleared after every event.

Head / row pruning (``FixedSchedule``): prune at ``warm_up + interval[k]`` (or
``warm_up + k·interval`` for an integer interval); presets ``HEAD_PRUNING_PRESET`` and
``ROW_PRUNING_PRESET`` hold the original code settings.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Sequence

Condition = Literal["normal", "converge"]

# The original code's cumulative targets (n_iters 38): 0.2 ... 0.7, 0.71 ... 0.90 by 0.01, 0.91 ... 0.95 by 0.005.
WEIGHT_PRUNING_SPARSITIES: tuple[float, ...] = (
    (0.2, 0.3, 0.4, 0.5, 0.55, 0.6, 0.65, 0.675, 0.7)
    + tuple(round(0.70 + 0.01 * i, 4) for i in range(1, 21))
    + tuple(round(0.90 + 0.005 * i, 4) for i in range(2, 11))
)

WEIGHT_PRUNING_PRESET: dict[str, Any] = dict(
    sparsities=WEIGHT_PRUNING_SPARSITIES,
    warmup=25_000,
    period=25_000,
    total_steps=1_000_000,
    condition="converge",
    smooth_factor=0.9998,
    average_length=15_000,
    tolerance=0.001,
)

HEAD_PRUNING_PRESET: dict[str, Any] = dict(
    warm_up=1_000,
    interval=[0, 25_000, 50_000, 75_000, 100_000, 125_000, 165_000, 205_000, 245_000, 285_000, 325_000],
    num_steps=11,
    total_steps=366_000,
    heads_per_step=12,
)

ROW_PRUNING_PRESET: dict[str, Any] = dict(
    warm_up=1_000,
    interval=25_000,
    num_steps=20,
    total_steps=510_000,
    rows_per_step=128,
)


def linear_sparsities(final: float, n_iters: int) -> list[float]:
    """Linear ramp of cumulative targets ``final·(k+1)/n_iters``, ``k = 0 … n_iters − 1``."""
    if n_iters < 1:
        raise ValueError(f"n_iters must be >= 1, got {n_iters}")
    return [final * (k + 1) / n_iters for k in range(n_iters)]


def sparsity_targets(sparsity: float | Sequence[float], n_iters: int) -> list[float]:
    """A float gives the linear ramp; a list must have ``n_iters`` increasing values in [0, 1)."""
    if isinstance(sparsity, (int, float)):
        return linear_sparsities(float(sparsity), n_iters)
    values = [float(s) for s in sparsity]
    if len(values) != n_iters:
        raise ValueError(f"{len(values)} sparsity targets for n_iters={n_iters}")
    if any(not 0.0 <= s < 1.0 for s in values) or any(b <= a for a, b in zip(values, values[1:])):
        raise ValueError("sparsity targets must increase strictly and lie in [0, 1)")
    return values


def prune_steps(warmup: int, period: int, n: int) -> list[int]:
    """``warmup + k·period`` for ``k = 0 … n − 1``."""
    return [warmup + k * period for k in range(n)]


class WeightPruningSchedule:
    """Scheduled cumulative-sparsity prunes with the convergence gate (module docstring)."""

    def __init__(
        self,
        sparsities: Sequence[float],
        warmup: int,
        period: int,
        total_steps: int,
        condition: Condition = "converge",
        smooth_factor: float = 0.9998,
        average_length: int = 15_000,
        tolerance: float = 0.001,
        ema_init_updates: int = 3,
    ) -> None:
        if condition not in ("normal", "converge"):
            raise ValueError(f"condition must be 'normal' or 'converge', got {condition!r}")
        if period < 1 or warmup < 1 or ema_init_updates < 1:
            raise ValueError("warmup, period and ema_init_updates must be >= 1")
        self.sparsities = sparsity_targets(list(sparsities), len(sparsities))
        self.period = period
        self.condition = condition
        self.smooth_factor = smooth_factor
        self.average_length = average_length
        self.tolerance = tolerance
        self.ema_init_updates = ema_init_updates
        self.events = prune_steps(warmup, period, len(self.sparsities))
        if self.events and self.events[-1] > total_steps:
            raise ValueError(f"last prune step {self.events[-1]} is after total_steps {total_steps}")
        self.total_steps = total_steps
        self.step = 0  # completed updates
        self.next_event = 0  # index into events
        self.num_pruned = 0  # index into sparsities
        self.ema: Optional[float] = None
        self.init_losses: list[float] = []
        self.target: Optional[float] = None
        self.history: list[tuple[int, str, float]] = []  # (step, "prune" | "postpone", sparsity)

    @property
    def done(self) -> bool:
        return self.num_pruned == len(self.sparsities)

    @property
    def current_sparsity(self) -> float:
        return self.sparsities[self.num_pruned - 1] if self.num_pruned else 0.0

    @property
    def next_prune_step(self) -> Optional[int]:
        return self.events[self.next_event] if self.next_event < len(self.events) else None

    def _update_ema(self, loss: float) -> None:
        if len(self.init_losses) < self.ema_init_updates:
            self.init_losses.append(loss)
            if len(self.init_losses) == self.ema_init_updates:
                self.ema = sum(self.init_losses) / len(self.init_losses)
        else:
            assert self.ema is not None
            self.ema = self.smooth_factor * self.ema + (1.0 - self.smooth_factor) * loss

    def update(self, loss: float, step: Optional[int] = None) -> Optional[float]:
        """Record the loss of update ``self.step + 1``; return the sparsity to prune to now, or None.

        ``step`` (optional) is checked against the internal counter to catch off-by-one wiring.
        """
        self.step += 1
        if step is not None and step != self.step:
            raise ValueError(f"schedule is at step {self.step}, caller says {step}")
        self._update_ema(float(loss))
        event = self.next_prune_step
        if event is None:
            return None
        previous_event = self.events[self.next_event - 1] if self.next_event else 0
        snapshot_step = event - self.average_length
        if self.step == snapshot_step and snapshot_step > previous_event:
            self.target = self.ema
        if self.step != event:
            return None
        self.next_event += 1
        target, self.target = self.target, None
        sparsity = self.sparsities[self.num_pruned]
        if (
            self.condition == "converge"
            and self.ema is not None
            and target is not None
            and self.ema < target - self.tolerance
        ):
            self.events.append(self.events[-1] + self.period)
            self.total_steps += self.period
            self.history.append((self.step, "postpone", sparsity))
            return None
        self.num_pruned += 1
        self.ema, self.init_losses = None, []
        self.history.append((self.step, "prune", sparsity))
        return sparsity

    def state_dict(self) -> dict[str, Any]:
        """Plain Python values only (safe for ``torch.load(weights_only=True)``)."""
        return {
            "sparsities": list(self.sparsities),
            "period": self.period,
            "condition": self.condition,
            "smooth_factor": self.smooth_factor,
            "average_length": self.average_length,
            "tolerance": self.tolerance,
            "ema_init_updates": self.ema_init_updates,
            "events": list(self.events),
            "total_steps": self.total_steps,
            "step": self.step,
            "next_event": self.next_event,
            "num_pruned": self.num_pruned,
            "ema": self.ema,
            "init_losses": list(self.init_losses),
            "target": self.target,
            "history": [list(h) for h in self.history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sparsities = [float(s) for s in state["sparsities"]]
        for key in ("period", "condition", "smooth_factor", "average_length", "tolerance", "ema_init_updates",
                    "total_steps", "step", "next_event", "num_pruned", "ema", "target"):
            setattr(self, key, state[key])
        self.events = [int(e) for e in state["events"]]
        self.init_losses = [float(x) for x in state["init_losses"]]
        self.history = [(int(s), str(kind), float(sp)) for s, kind, sp in state["history"]]


def structured_prune_steps(warm_up: int, interval: int | Sequence[int], num_steps: int) -> list[int]:
    """``warm_up + interval[k]`` (list) or ``warm_up + k·interval`` (int), ``k < num_steps``."""
    if isinstance(interval, int):
        return [warm_up + k * interval for k in range(num_steps)]
    offsets = [int(x) for x in interval]
    if len(offsets) != num_steps:
        raise ValueError(f"{len(offsets)} intervals for {num_steps} prune steps")
    if any(b <= a for a, b in zip(offsets, offsets[1:])):
        raise ValueError("prune intervals must increase strictly")
    return [warm_up + x for x in offsets]


class FixedSchedule:
    """Prune at fixed steps (head / row pruning). ``update()`` after every optimiser update."""

    def __init__(self, steps: Sequence[int], total_steps: int) -> None:
        self.steps = [int(s) for s in steps]
        if any(b <= a for a, b in zip(self.steps, self.steps[1:])):
            raise ValueError("prune steps must increase strictly")
        if self.steps and self.steps[-1] > total_steps:
            raise ValueError(f"last prune step {self.steps[-1]} is after total_steps {total_steps}")
        self.total_steps = total_steps
        self.step = 0
        self.num_pruned = 0

    @classmethod
    def from_interval(cls, warm_up: int, interval: int | Sequence[int], num_steps: int, total_steps: int) -> "FixedSchedule":
        return cls(structured_prune_steps(warm_up, interval, num_steps), total_steps)

    @property
    def done(self) -> bool:
        return self.num_pruned == len(self.steps)

    def update(self, step: Optional[int] = None) -> bool:
        """Count one update; True if a prune is due now."""
        self.step += 1
        if step is not None and step != self.step:
            raise ValueError(f"schedule is at step {self.step}, caller says {step}")
        if self.num_pruned < len(self.steps) and self.step == self.steps[self.num_pruned]:
            self.num_pruned += 1
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"steps": list(self.steps), "total_steps": self.total_steps, "step": self.step, "num_pruned": self.num_pruned}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = [int(s) for s in state["steps"]]
        self.total_steps = int(state["total_steps"])
        self.step = int(state["step"])
        self.num_pruned = int(state["num_pruned"])
