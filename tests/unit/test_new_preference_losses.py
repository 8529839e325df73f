"""ORPO, SimPO and KTO against hand arithmetic, their first-step values, and the direction of their gradients."""

from __future__ import annotations

import math

import pytest
import torch

from tunesmith.losses.kto import kto_loss, kto_reference_point
from tunesmith.losses.orpo import log_odds, orpo_loss
from tunesmith.losses.simpo import simpo_loss


def t(*values, dtype=torch.float64):
    return torch.tensor(values, dtype=dtype)


def softplus(x):  # −log σ(x)
    return math.log1p(math.exp(-x))


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


# --- ORPO --------------------------------------------------------------------------------------------------------


def test_orpo_matches_hand_arithmetic():
    # chosen: −2 over 4 tokens → avg −0.5; rejected: −6 over 3 tokens → avg −2; λ = 0.1
    losses, rc, rr = orpo_loss(t(-2.0), t(-6.0), t(4.0), t(3.0), beta=0.1)
    odds_w = -0.5 - math.log(1 - math.exp(-0.5))
    odds_l = -2.0 - math.log(1 - math.exp(-2.0))
    assert losses.item() == pytest.approx(0.5 + 0.1 * softplus(odds_w - odds_l), abs=1e-12)
    assert rc.item() == pytest.approx(-0.05) and rr.item() == pytest.approx(-0.2)


def test_orpo_is_nll_plus_lambda_ln2_when_per_token_logps_are_equal():
    # −3 over 2 tokens and −6 over 4 tokens: both −1.5 per token, so the odds ratio is 1
    losses, _, _ = orpo_loss(t(-3.0, -0.4), t(-6.0, -0.2), t(2.0, 4.0), t(4.0, 2.0), beta=0.25)
    assert losses.tolist() == pytest.approx([1.5 + 0.25 * math.log(2), 0.1 + 0.25 * math.log(2)], abs=1e-12)


def test_orpo_log_odds_stays_finite_for_a_confident_model():
    # avg logp −1e-8 in float32: exp rounds to 1 and log(1 − exp) would be −inf; the odds are about 1e8
    x = t(-1e-8, -50.0, dtype=torch.float32)
    expected = [v - math.log(-math.expm1(v)) for v in (-1e-8, -50.0)]
    assert torch.isfinite(log_odds(x)).all()
    assert log_odds(x).tolist() == pytest.approx(expected, rel=1e-6)


def test_orpo_gradient_raises_chosen_and_lowers_rejected():
    pc, pr = t(-3.0).requires_grad_(), t(-6.0).requires_grad_()
    losses, _, _ = orpo_loss(pc, pr, t(2.0), t(4.0), beta=0.1)
    losses.sum().backward()
    # at equal averages x = −1.5: d log odds / dx = 1 / (1 − e^x); σ(0) = 0.5; each divided by its length
    odds_slope = 0.1 * 0.5 / (1 - math.exp(-1.5))
    assert pc.grad.item() == pytest.approx((-1 - odds_slope) / 2)
    assert pr.grad.item() == pytest.approx(odds_slope / 4)


# --- SimPO -------------------------------------------------------------------------------------------------------


def test_simpo_matches_hand_arithmetic():
    # chosen −6 over 3 tokens, rejected −12 over 4: rewards 2·(−2) = −4 and 2·(−3) = −6; margin 2 − γ = 1.5
    losses, rc, rr = simpo_loss(t(-6.0), t(-12.0), t(3.0), t(4.0), beta=2.0, gamma=0.5)
    assert losses.item() == pytest.approx(softplus(1.5), abs=1e-12)
    assert rc.item() == pytest.approx(-4.0) and rr.item() == pytest.approx(-6.0)


def test_simpo_is_ln2_at_equal_per_token_logps_and_no_margin():
    losses, _, _ = simpo_loss(t(-3.0, -8.0), t(-6.0, -2.0), t(2.0, 4.0), t(4.0, 1.0), beta=2.5, gamma=0.0)
    assert losses.tolist() == pytest.approx([math.log(2)] * 2, abs=1e-12)
    # the target margin alone: −log σ(−γ)
    losses, _, _ = simpo_loss(t(-3.0), t(-6.0), t(2.0), t(4.0), beta=2.5, gamma=1.0)
    assert losses.item() == pytest.approx(softplus(-1.0), abs=1e-12)


def test_simpo_gradient_raises_chosen_and_lowers_rejected():
    pc, pr = t(-4.0).requires_grad_(), t(-2.0).requires_grad_()
    losses, _, _ = simpo_loss(pc, pr, t(4.0), t(2.0), beta=2.0, gamma=0.0)
    losses.sum().backward()
    # margin 0: dL/dpc = −β/|y_w| · σ(0) = −0.25; dL/dpr = +β/|y_l| · σ(0) = +0.5
    assert pc.grad.item() == pytest.approx(-0.25) and pr.grad.item() == pytest.approx(0.5)


# --- KTO ---------------------------------------------------------------------------------------------------------


def test_kto_matches_hand_arithmetic():
    # r = [−10 − (−12), −10 − (−8)] = [2, −2]; z0 = 0.5; β = 0.5; λ_D = 1, λ_U = 1.5
    losses, rewards = kto_loss(
        t(-10.0, -10.0),
        t(-12.0, -8.0),
        torch.tensor([True, False]),
        t(0.5),
        beta=0.5,
        desirable_weight=1.0,
        undesirable_weight=1.5,
    )
    expected = [1 - sigmoid(0.5 * (2 - 0.5)), 1.5 * (1 - sigmoid(0.5 * (0.5 + 2)))]
    assert losses.tolist() == pytest.approx(expected, abs=1e-12)
    assert rewards.tolist() == pytest.approx([1.0, -1.0])


def test_kto_is_half_lambda_when_policy_equals_reference():
    logp = t(-7.0, -3.0, -5.0)
    losses, rewards = kto_loss(
        logp, logp, torch.tensor([True, False, False]), t(0.0), beta=0.1, desirable_weight=1.0, undesirable_weight=2.0
    )
    assert losses.tolist() == pytest.approx([0.5, 1.0, 1.0], abs=1e-12)
    assert rewards.tolist() == [0.0, 0.0, 0.0]


def test_kto_gradient_raises_desirable_lowers_undesirable_and_skips_z0():
    logp = t(-5.0, -5.0).requires_grad_()
    kl = t(0.0).requires_grad_()
    losses, _ = kto_loss(
        logp, t(-5.0, -5.0), torch.tensor([True, False]), kl, beta=0.2, desirable_weight=1.0, undesirable_weight=3.0
    )
    losses.sum().backward()
    # at r = z0: d/dr (1 − σ(βr)) = −β σ(0)(1 − σ(0)) = −β/4
    assert logp.grad.tolist() == pytest.approx([-0.2 / 4, 3.0 * 0.2 / 4])
    assert kl.grad is None  # z0 is a baseline: no gradient reaches the mismatched pairs


def test_kto_reference_point_is_the_clamped_mean_and_detached():
    logp_kl = t(-5.0, -7.0).requires_grad_()
    # log ratios [1, −2]: mean −0.5, clamped to 0
    z0 = kto_reference_point(logp_kl, t(-6.0, -5.0))
    assert z0.item() == 0.0 and not z0.requires_grad
    # log ratios [3, −1, 1]: mean 1
    assert kto_reference_point(t(-2.0, -6.0, -4.0), t(-5.0, -5.0, -5.0)).item() == pytest.approx(1.0)
