"""Interval maths of evaluation/stats.py against published values and first principles."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.stats import bootstrap_ratio_interval, normalised_score, significance, wilson_interval


@pytest.mark.parametrize(
    "successes, trials, low, high",
    [  # Newcombe (1998), Statistics in Medicine 17:857-872, Table I, method 3 (Wilson score, no continuity correction)
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0000, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_matches_newcombe_table(successes: int, trials: int, low: float, high: float) -> None:
    interval = wilson_interval(successes, trials)
    assert interval.low == pytest.approx(low, abs=5e-5) and interval.high == pytest.approx(high, abs=5e-5)
    assert interval.value == successes / trials and interval.method == "wilson"


def test_wilson_87_of_100_and_the_600_utterance_half_width() -> None:
    interval = wilson_interval(87, 100)
    assert (round(interval.low, 4), round(interval.high, 4)) == (0.7902, 0.9224)
    # The demo's power requirement: +-4 points at p = 0.5 needs about 600 test utterances.
    assert wilson_interval(300, 600).half_width() < 0.04 < wilson_interval(150, 300).half_width()
    # The interval is the set of p whose score test does not reject: its ends solve
    # (p_hat - p)^2 = z^2 p (1 - p) / n.
    z, n, p_hat = 1.959963984540054, 100, 0.87
    for p in (interval.low, interval.high):
        assert (p_hat - p) ** 2 == pytest.approx(z * z * p * (1 - p) / n, rel=1e-9)


def test_wilson_rejects_bad_counts() -> None:
    with pytest.raises(ValueError, match="trials must be positive"):
        wilson_interval(0, 0)
    with pytest.raises(ValueError, match="successes must be in"):
        wilson_interval(11, 10)


def test_bootstrap_is_reproducible_and_brackets_the_ratio() -> None:
    rng = np.random.default_rng(1)
    lengths = rng.integers(20, 60, size=400)
    errors = rng.binomial(lengths, 0.3)
    first = bootstrap_ratio_interval(errors, lengths, resamples=1000, seed=7)
    again = bootstrap_ratio_interval(errors, lengths, resamples=1000, seed=7)
    other = bootstrap_ratio_interval(errors, lengths, resamples=1000, seed=8)
    assert first == again and (first.low, first.high) != (other.low, other.high)
    assert first.value == pytest.approx(errors.sum() / lengths.sum())
    assert first.low < first.value < first.high
    # Independent binomial errors: the bootstrap width matches the binomial standard error of
    # the pooled rate (the utterance structure adds nothing here) within sampling noise.
    p, total = first.value, lengths.sum()
    assert first.half_width() == pytest.approx(1.96 * np.sqrt(p * (1 - p) / total), rel=0.15)


def test_bootstrap_of_identical_utterances_is_a_point() -> None:
    interval = bootstrap_ratio_interval([3, 3, 3], [10, 10, 10], resamples=50)
    assert interval.low == interval.high == pytest.approx(0.3)


def test_bootstrap_rejects_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="equal length"):
        bootstrap_ratio_interval([1, 2], [3])
    with pytest.raises(ValueError, match="positive denominator"):
        bootstrap_ratio_interval([0], [0])


def test_normalised_score_and_significance() -> None:
    # Accuracy (higher is better) and error rate (lower is better) both map fbank to 0, teacher to 1000.
    assert normalised_score(0.80, fbank=0.80, teacher=0.90) == 0
    assert normalised_score(0.90, fbank=0.80, teacher=0.90) == pytest.approx(1000)
    assert normalised_score(0.30, fbank=0.50, teacher=0.30) == pytest.approx(1000)
    assert normalised_score(0.45, fbank=0.50, teacher=0.30) == pytest.approx(250)
    assert normalised_score(0.60, fbank=0.50, teacher=0.30) == pytest.approx(-500)
    assert normalised_score(0.5, fbank=0.5, teacher=0.5) is None
    a, b, c = wilson_interval(500, 600), wilson_interval(560, 600), wilson_interval(510, 600)
    assert significance(a, b) == "significant" and significance(a, c) == "not significant"
