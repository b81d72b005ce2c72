"""HardConcrete gates: sampling range, init, expected L0, eval mask."""

from __future__ import annotations

import math

import pytest
import torch

from wav2vec2.hardconcrete import HardConcrete

pytestmark = pytest.mark.usefixtures("single_thread")

BETA = 2.0 / 3.0
BIAS = BETA * math.log(11.0)  # -beta * ln(-l / r) with l = -0.1, r = 1.1


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_constants():
    gate = HardConcrete(3)
    assert gate.beta == pytest.approx(2.0 / 3.0)
    assert (gate.limit_l, gate.limit_r) == (pytest.approx(-0.1), pytest.approx(1.1))
    assert gate.bias == pytest.approx(1.5985968, abs=1e-6)
    assert gate.bias == pytest.approx(BIAS, rel=1e-12)


def test_training_samples_in_unit_interval_and_hit_both_ends():
    torch.manual_seed(0)
    n = 20000
    gate = HardConcrete(n).train()
    with torch.no_grad():
        gate.log_alpha.zero_()  # a "mid" log_alpha
    z = gate().detach()
    assert z.shape == (n,)
    assert float(z.min()) == 0.0 and float(z.max()) == 1.0
    assert bool(((z >= 0) & (z <= 1)).all())
    # Closed form at log_alpha = 0: P(z = 0) = P(s <= 1/12) = sigmoid(beta * ln(1/11)) = 0.16818,
    # and P(z = 1) = P(s >= 11/12) is the same by symmetry. A stretch or temperature bug moves these.
    p_end = sigmoid(-BIAS)
    assert p_end == pytest.approx(0.168178, abs=1e-6)
    frac_zero = float((z == 0).float().mean())
    frac_one = float((z == 1).float().mean())
    tol = 4 * math.sqrt(p_end * (1 - p_end) / n)  # 4 sigma ~ 0.011
    assert abs(frac_zero - p_end) < tol, frac_zero
    assert abs(frac_one - p_end) < tol, frac_one
    # Strictly inside (0, 1) otherwise.
    assert 0.6 < float(((z > 0) & (z < 1)).float().mean()) < 0.7


@pytest.mark.parametrize("log_alpha", [-1.0, 1.0, 2.5])
def test_sample_keep_rate_matches_keep_probability(log_alpha):
    """Monte Carlo P(z > 0) equals sigmoid(log_alpha + (2/3) ln 11), the quantity l0_norm sums."""
    torch.manual_seed(1)
    n = 40000
    gate = HardConcrete(n).train()
    with torch.no_grad():
        gate.log_alpha.fill_(log_alpha)
    p = sigmoid(log_alpha + BIAS)
    assert float(gate.keep_probabilities()[0].detach()) == pytest.approx(p, rel=1e-6)
    observed = float((gate().detach() > 0).float().mean())
    assert abs(observed - p) < 4 * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("init_mean, expected_mean", [(0.01, math.log(99.0)), (0.5, 0.0)])
def test_log_alpha_init(init_mean, expected_mean):
    torch.manual_seed(0)
    gate = HardConcrete(10000, init_mean=init_mean)
    la = gate.log_alpha.detach()
    if init_mean == 0.01:
        assert expected_mean == pytest.approx(4.59512, abs=1e-5)
    assert float(la.mean()) == pytest.approx(expected_mean, abs=1e-3)  # std error 1e-4
    assert float(la.std()) == pytest.approx(0.01, rel=0.05)
    # Keep probabilities at init (spec: ~0.998 for 0.01 and ~0.832 for 0.5).
    expected_keep = {0.01: 0.997968, 0.5: 0.831813}[init_mean]
    assert float(gate.keep_probabilities().mean().detach()) == pytest.approx(expected_keep, abs=2e-4)


def test_l0_norm_value_and_gradient():
    gate = HardConcrete(5)
    values = [-3.0, -0.5, 0.0, 1.25, 4.0]
    with torch.no_grad():
        gate.log_alpha.copy_(torch.tensor(values))
    expected = sum(sigmoid(v + BIAS) for v in values)
    assert expected == pytest.approx(3.7210, abs=1e-4)  # written out: .1976 + .7500 + .8318 + .9452 + .9963
    l0 = gate.l0_norm()
    assert l0.requires_grad
    assert float(l0.detach()) == pytest.approx(expected, rel=1e-6)
    l0.backward()
    grad = gate.log_alpha.grad
    assert grad is not None
    expected_grad = torch.tensor([sigmoid(v + BIAS) * (1 - sigmoid(v + BIAS)) for v in values])
    torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-7)


def test_eval_mask_zeroes_the_weakest_round_n_minus_l0_units():
    n = 21
    gate = HardConcrete(n).eval()
    # A shuffled ramp, so "weakest" cannot be confused with "first".
    ramp = torch.linspace(-5.0, 5.0, n)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(3))
    la = ramp[order]
    with torch.no_grad():
        gate.log_alpha.copy_(la)
    expected_l0 = sum(sigmoid(float(v) + BIAS) for v in ramp)
    num_zeros = round(n - expected_l0)
    # E[L0] = 13.649 for this ramp, so round(7.35) = 7 zeros (written out so a formula bug cannot hide).
    assert expected_l0 == pytest.approx(13.6486, abs=1e-3)
    assert num_zeros == 7
    assert gate.num_dropped_in_eval() == 7 and gate.num_kept_in_eval() == 14

    mask = gate().detach()
    assert mask.shape == (n,)
    zero_positions = set(torch.nonzero(mask == 0).flatten().tolist())
    weakest = set(torch.argsort(la)[:num_zeros].tolist())
    assert zero_positions == weakest
    kept = mask != 0
    soft = torch.sigmoid(0.8 * la / BETA)
    torch.testing.assert_close(mask[kept], soft[kept], rtol=0, atol=1e-7)
    # Survivors keep their soft value; they are not rounded to 1.
    assert float(mask[kept].min()) < 0.6 and float(mask[kept].max()) < 1.0


def test_eval_mask_single_gate_threshold():
    """n = 1: the block goes iff P(z > 0) < 0.5, i.e. log_alpha < -(2/3) ln 11."""
    gate = HardConcrete(1).eval()
    for la, kept in [(-BIAS + 0.05, True), (-BIAS - 0.05, False), (4.6, True), (-8.0, False)]:
        with torch.no_grad():
            gate.log_alpha.fill_(la)
        value = float(gate().detach())
        assert (value > 0) is kept, (la, value)
        if kept:
            assert value == pytest.approx(sigmoid(0.8 * la / BETA), abs=1e-7)


def test_stochastic_in_train_deterministic_in_eval():
    torch.manual_seed(0)
    gate = HardConcrete(64, init_mean=0.5)
    gate.train()
    a, b = gate(), gate()
    assert not torch.equal(a, b)
    gate.eval()
    c, d = gate(), gate()
    assert torch.equal(c, d)
    # Re-entering training mode samples again; eval after a parameter change follows it.
    gate.train()
    assert not torch.equal(gate(), gate())
    gate.eval()
    with torch.no_grad():
        gate.log_alpha.add_(1.0)
    assert not torch.equal(gate(), c)


def test_rejects_empty():
    with pytest.raises(ValueError):
        HardConcrete(0)
