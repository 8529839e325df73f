"""DPO and IPO against hand arithmetic."""

from __future__ import annotations

import math

import pytest
import torch

from tunesmith.losses.dpo import PREFERENCE_LOSSES, dpo_loss, ipo_loss


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


def test_dpo_is_ln2_when_policy_equals_reference():
    logp = t(-12.5, -3.0)
    losses, rc, rr = dpo_loss(logp, logp - 1, logp, logp - 1, beta=0.1)
    assert losses.tolist() == pytest.approx([math.log(2)] * 2, abs=1e-12)
    assert rc.tolist() == [0.0, 0.0] and rr.tolist() == [0.0, 0.0]


def test_dpo_matches_hand_arithmetic():
    # chosen log-ratio = -10 - (-12) = 2; rejected log-ratio = -9 - (-8) = -1; margin 3; beta 0.5
    losses, rc, rr = dpo_loss(t(-10.0), t(-9.0), t(-12.0), t(-8.0), beta=0.5)
    expected = -math.log(1 / (1 + math.exp(-1.5)))
    assert losses.item() == pytest.approx(expected, abs=1e-12)
    assert rc.item() == pytest.approx(1.0) and rr.item() == pytest.approx(-0.5)


def test_dpo_gradient_raises_chosen_and_lowers_rejected():
    pc, pr = t(-5.0).requires_grad_(), t(-5.0).requires_grad_()
    losses, _, _ = dpo_loss(pc, pr, t(-5.0), t(-5.0), beta=0.1)
    losses.sum().backward()
    # dL/dpc = -β σ(-βh) = -0.05 at h = 0; dL/dpr = +0.05
    assert pc.grad.item() == pytest.approx(-0.05) and pr.grad.item() == pytest.approx(0.05)


def test_ipo_matches_hand_arithmetic():
    # h = 2 - (-1) = 3; target 1/(2·0.25) = 2; loss (3 - 2)^2 = 1
    losses, rc, rr = ipo_loss(t(-10.0), t(-9.0), t(-12.0), t(-8.0), beta=0.25)
    assert losses.item() == pytest.approx(1.0)
    assert rc.item() == pytest.approx(0.5) and rr.item() == pytest.approx(-0.25)
    # at h = 0 the loss is the squared target
    zero, _, _ = ipo_loss(t(-1.0), t(-1.0), t(-1.0), t(-1.0), beta=0.1)
    assert zero.item() == pytest.approx(25.0)


def test_losses_are_registered_by_name():
    """Each registered loss calls its function on the pair's log-probs; only DPO and IPO need the reference."""
    from tunesmith.losses.dpo import PairLogps
    from tunesmith.losses.orpo import orpo_loss
    from tunesmith.losses.simpo import simpo_loss

    assert {name: spec.reference for name, spec in PREFERENCE_LOSSES.items()} == {
        "dpo": True,
        "ipo": True,
        "orpo": False,
        "simpo": False,
    }
    pairs = PairLogps(t(-3.0, -5.0), t(-4.0, -2.0), t(3.0, 4.0), t(2.0, 5.0), t(-3.5, -4.0), t(-3.0, -2.5))
    expected = {
        "dpo": dpo_loss(pairs.chosen, pairs.rejected, pairs.ref_chosen, pairs.ref_rejected, 0.1),
        "ipo": ipo_loss(pairs.chosen, pairs.rejected, pairs.ref_chosen, pairs.ref_rejected, 0.1),
        "orpo": orpo_loss(pairs.chosen, pairs.rejected, pairs.chosen_tokens, pairs.rejected_tokens, 0.1),
        "simpo": simpo_loss(pairs.chosen, pairs.rejected, pairs.chosen_tokens, pairs.rejected_tokens, 0.1, 0.3),
    }
    for name, spec in PREFERENCE_LOSSES.items():
        for got, want in zip(spec.fn(pairs, 0.1, 0.3), expected[name], strict=True):
            torch.testing.assert_close(got, want)
