"""Confidence intervals and normalised scores for the probes' numbers.

* **Accuracy** (speaker ID): Wilson score interval of a binomial proportion. Unlike the
  normal ("Wald") interval it stays inside [0, 1] and keeps its coverage near 0 and 1, where a
  good probe lives.
* **Error rate** (PER / CER): a corpus-level ratio ``sum(errors) / sum(reference lengths)``, so
  its utterances are not independent Bernoulli draws; its interval comes from a seeded
  percentile bootstrap over utterances (each resample draws utterances with replacement and
  recomputes the ratio), which keeps the correlation of errors within an utterance.
* **Significance** is decided conservatively: two models differ significantly only when their
  95 % intervals do not overlap (non-overlap of two 95 % intervals implies p < 0.05 and more).
* **Normalised score** (SUPERB style): ``1000 * (x - fbank) / (teacher - fbank)`` per probe, so
  log-Mel features score 0 and the teacher 1000 whatever the metric's direction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Optional, Sequence

import numpy as np

DEFAULT_CONFIDENCE = 0.95
DEFAULT_RESAMPLES = 1000


@dataclass(frozen=True)
class Interval:
    """A point estimate with its two-sided confidence interval (all in the metric's units)."""

    value: float
    low: float
    high: float
    confidence: float
    method: str  # "wilson" or "bootstrap"

    def overlaps(self, other: "Interval") -> bool:
        return self.low <= other.high and other.low <= self.high

    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def as_dict(self) -> dict[str, float | str]:
        return {"low": self.low, "high": self.high, "confidence": self.confidence, "method": self.method}


def _z(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(successes: int, trials: int, confidence: float = DEFAULT_CONFIDENCE) -> Interval:
    """Wilson score interval of ``successes / trials``."""
    if trials <= 0:
        raise ValueError(f"trials must be positive, got {trials}")
    if not 0 <= successes <= trials:
        raise ValueError(f"successes must be in [0, trials={trials}], got {successes}")
    z = _z(confidence)
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    # Clamp rounding noise only: the exact interval already lies in [0, 1].
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half), confidence, "wilson")


def bootstrap_ratio_interval(numerators: Sequence[float], denominators: Sequence[float],
                             resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                             confidence: float = DEFAULT_CONFIDENCE) -> Interval:
    """Percentile bootstrap interval of ``sum(numerators) / sum(denominators)`` over items.

    numerators, denominators: one value per utterance (e.g. edit distance, reference length).
    The same seed gives the same interval.
    """
    num = np.asarray(numerators, dtype=np.float64)
    den = np.asarray(denominators, dtype=np.float64)
    if num.shape != den.shape or num.ndim != 1:
        raise ValueError(f"numerators and denominators must be 1-D of equal length, got {num.shape} and {den.shape}")
    if len(num) == 0 or den.sum() <= 0:
        raise ValueError("the bootstrap needs at least one item with a positive denominator")
    if resamples < 1:
        raise ValueError(f"resamples must be positive, got {resamples}")
    _z(confidence)  # validates
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(num), size=(resamples, len(num)))
    totals = den[draws].sum(1)
    ratios = num[draws].sum(1) / np.where(totals > 0, totals, np.nan)
    ratios = ratios[~np.isnan(ratios)]
    tail = (1 - confidence) / 2
    low, high = np.quantile(ratios, [tail, 1 - tail])
    return Interval(float(num.sum() / den.sum()), float(low), float(high), confidence, "bootstrap")


def normalised_score(value: float, fbank: float, teacher: float) -> Optional[float]:
    """SUPERB-style score: fbank 0, teacher 1000, linear in the metric (either direction).

    None when fbank and teacher tie (the scale is undefined).
    """
    if teacher == fbank:
        return None
    return 1000 * (value - fbank) / (teacher - fbank)


def significance(a: Interval, b: Interval) -> str:
    """"significant" when the intervals are disjoint, else "not significant"."""
    return "not significant" if a.overlaps(b) else "significant"


__all__ = ["Interval", "bootstrap_ratio_interval", "normalised_score", "significance", "wilson_interval"]
