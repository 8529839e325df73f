"""PPO and GRPO math against hand arithmetic: masked reductions, KL estimators and controllers,
per-token rewards, GAE, group advantages, the clipped policy and value losses, entropy, GRPO."""

from __future__ import annotations

import math

import pytest
import torch

from tunesmith.config.schema import GRPO_LOSS_TYPES
from tunesmith.losses.grpo import grpo_loss, loss_denominator
from tunesmith.losses.kl import (
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    kl_k1,
    kl_k2,
    kl_k3,
    masked_mean,
    masked_whiten,
)
from tunesmith.losses.ppo import entropy_from_logits, ppo_policy_loss, ppo_value_loss
from tunesmith.rollout.advantages import gae, group_advantages, per_token_rewards


def t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def approx(x, abs=1e-9):
    return pytest.approx(x, abs=abs)


# --- masked reductions ----------------------------------------------------------------------------


def test_masked_mean_ignores_padding_even_when_it_is_nan():
    x = t([1.0, 2.0, float("nan")], [4.0, float("-inf"), 0.0])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert masked_mean(x, mask).item() == approx(7 / 3)  # (1 + 2 + 4) / 3
    assert masked_mean(x, mask, dim=1).tolist() == approx([1.5, 4.0])
    # an empty row gives 0, not nan
    assert masked_mean(x, torch.tensor([[1, 0, 0], [0, 0, 0]]), dim=1).tolist() == [1.0, 0.0]


def test_masked_whiten_gives_mean_0_and_unbiased_std_1_over_the_mask():
    # [1, 2, 3]: mean 2, unbiased var ((−1)² + 0 + 1²) / (3 − 1) = 1, so whitened [−1, 0, 1]
    x, mask = t([1.0, 2.0, 3.0, 100.0]), t([1, 1, 1, 0])
    assert masked_whiten(x, mask).tolist()[0] == approx([-1.0, 0.0, 1.0, 0.0], abs=1e-7)
    # population var is 2/3: (x − 2) / sqrt(2/3) = ±1.2247
    s = math.sqrt(1.5)
    assert masked_whiten(x, mask, unbiased=False).tolist()[0] == approx([-s, 0.0, s, 0.0], abs=1e-7)
    assert masked_whiten(x, mask, shift_mean=False).tolist()[0] == approx([1.0, 2.0, 3.0, 0.0], abs=1e-7)

    torch.manual_seed(0)
    x = torch.randn(4, 7, dtype=torch.float64) * 3 + 5
    mask = torch.ones(4, 7, dtype=torch.bool)
    mask[0, 5:] = mask[2, 2:] = False
    w = masked_whiten(x, mask)
    assert w[mask].mean().item() == approx(0.0, abs=1e-7)
    assert w[mask].std().item() == approx(1.0, abs=1e-7)  # torch.std is unbiased, like masked_whiten
    assert (w[~mask] == 0).all()


# --- KL estimators and controllers ----------------------------------------------------------------


def test_kl_estimators_match_hand_arithmetic():
    logp, ref = t(-1.0, -2.0, -0.5), t(-1.5, -2.0, 0.0)
    # log r = ref − logp = (−0.5, 0, 0.5)
    assert kl_k1(logp, ref).tolist() == approx([0.5, 0.0, -0.5])
    assert kl_k2(logp, ref).tolist() == approx([0.125, 0.0, 0.125])
    # k3 = e^{log r} − log r − 1: e^{−0.5} + 0.5 − 1 = 0.106531; 0; e^{0.5} − 0.5 − 1 = 0.148721
    assert kl_k3(logp, ref).tolist() == approx([math.exp(-0.5) - 0.5, 0.0, math.exp(0.5) - 1.5])
    assert KL_ESTIMATORS == {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def test_k3_is_non_negative_and_both_are_zero_when_equal():
    torch.manual_seed(0)
    logp, ref = -torch.rand(1000, dtype=torch.float64) * 5, -torch.rand(1000, dtype=torch.float64) * 5
    assert (kl_k3(logp, ref) >= 0).all()
    assert (kl_k1(logp, ref) < 0).any()  # k1 is unbiased but not non-negative per token
    assert kl_k1(logp, logp).abs().max().item() == 0.0 and kl_k3(logp, logp).abs().max().item() == 0.0


def test_k1_and_k3_are_unbiased_for_kl():
    # exact expectation over a categorical p (no sampling): E_p[k] = Σ_y p(y) k(y) = KL(p ‖ q)
    p, q = t(0.5, 0.3, 0.2), t(0.2, 0.2, 0.6)
    kl = (p * (p / q).log()).sum().item()
    for estimator in (kl_k1, kl_k3):
        assert (p * estimator(p.log(), q.log())).sum().item() == approx(kl, abs=1e-12)


def test_adaptive_kl_controller_moves_beta_toward_the_target():
    # e = clip(12 / 6 − 1, ±0.2) = 0.2: β = 0.1 · (1 + 0.2 · 256 / 10000) = 0.100512
    up = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    up.update(12.0, n_steps=256)
    assert up.value == approx(0.100512, abs=1e-12)
    # e = clip(3 / 6 − 1, ±0.2) = −0.2: β = 0.1 · (1 − 0.00512) = 0.099488
    down = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    down.update(3.0, n_steps=256)
    assert down.value == approx(0.099488, abs=1e-12)
    # inside the clip band: e = 6.6 / 6 − 1 = 0.1, and K_β = 0.5 scales it: 0.1 · (1 + 0.5 · 0.1 · 0.0256)
    gain = AdaptiveKLController(0.1, target=6.0, horizon=10000, k_beta=0.5)
    gain.update(6.6, n_steps=256)
    assert gain.value == approx(0.1 * (1 + 0.5 * 0.1 * 0.0256), abs=1e-12)
    on_target = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    on_target.update(6.0, n_steps=256)
    assert on_target.value == approx(0.1)
    fixed = FixedKLController(0.05)
    fixed.update(100.0, n_steps=256)
    assert fixed.value == 0.05


# --- per-token rewards and GAE ----------------------------------------------------------------------


def test_per_token_rewards_puts_the_score_at_the_last_response_token():
    scores = t(2.0, -1.0, 5.0)
    kl = t([0.1, 0.2, 0.3, 5.0], [0.4, -0.2, 7.0, 7.0], [1.0, 1.0, 1.0, 1.0])
    mask = t([1, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0])  # row 1 has a prompt token first; row 2 is empty
    rewards = per_token_rewards(scores, kl, mask, kl_coef=0.5)
    # row 0: −0.5·(0.1, 0.2, 0.3), score 2 added at position 2; padding 0
    # row 1: prompt 0, −0.5·(−0.2) = 0.1, −0.5·7 − 1 = −4.5
    # row 2: no response token, no score
    assert rewards.tolist() == [approx([-0.05, -0.1, 1.85, 0.0]), approx([0.0, 0.1, -4.5, 0.0]), [0.0] * 4]


def test_gae_with_gamma_1_lambda_1_is_reward_to_go():
    rewards = t([1.0, 0.0, 2.0, 50.0], [0.5, 3.0, 50.0, 50.0])
    values = t([0.5, 1.0, 1.5, 9.0], [2.0, 1.0, 9.0, 9.0])  # 50 and 9 on padding must be ignored
    mask = t([1, 1, 1, 0], [1, 1, 0, 0])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    # row 0 reward-to-go (3, 2, 2); A = R − V = (2.5, 1, 0.5). row 1: R = (3.5, 3), A = (1.5, 2)
    assert returns.tolist() == [approx([3.0, 2.0, 2.0, 0.0]), approx([3.5, 3.0, 0.0, 0.0])]
    assert advantages.tolist() == [approx([2.5, 1.0, 0.5, 0.0]), approx([1.5, 2.0, 0.0, 0.0])]


def test_gae_hand_example():
    # γ = 0.9, λ = 0.5, r = (0, 1), V = (0.5, 0.2), then padding
    # t=1: δ = 1 + 0.9·0 − 0.2 = 0.8 (no bootstrap after the last token); A = 0.8, R = 1.0
    # t=0: δ = 0 + 0.9·0.2 − 0.5 = −0.32; A = −0.32 + 0.45·0.8 = 0.04; R = 0.54
    advantages, returns = gae(t([0.0, 1.0, 9.0]), t([0.5, 0.2, 9.0]), t([1, 1, 0]), gamma=0.9, lam=0.5)
    assert advantages.tolist()[0] == approx([0.04, 0.8, 0.0])
    assert returns.tolist()[0] == approx([0.54, 1.0, 0.0])


def _gae_loop(rewards, values, positions, gamma, lam):
    """Textbook GAE over one episode given as a list of positions."""
    advantages, last, next_value = {}, 0.0, 0.0
    for i in reversed(positions):
        delta = rewards[i] + gamma * next_value - values[i]
        last = delta + gamma * lam * last
        advantages[i], next_value = last, values[i]
    return advantages


def test_gae_matches_a_plain_python_loop_with_prompt_and_padding():
    torch.manual_seed(0)
    rewards, values = torch.randn(3, 6, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64)
    mask = t([1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 0], [1, 0, 0, 0, 0, 0])
    gamma, lam = 0.95, 0.8
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    for b in range(3):
        positions = [i for i in range(6) if mask[b, i]]
        expected = _gae_loop(rewards[b].tolist(), values[b].tolist(), positions, gamma, lam)
        for i in range(6):
            a = expected.get(i, 0.0)
            assert advantages[b, i].item() == approx(a, abs=1e-12)
            assert returns[b, i].item() == approx(a + values[b, i].item() if i in expected else 0.0, abs=1e-12)
    # changing anything on masked-out positions changes nothing
    noise = torch.where(mask > 0, torch.zeros_like(rewards), torch.full_like(rewards, 1e3))
    again, again_returns = gae(rewards + noise, values - noise, mask, gamma, lam)
    assert torch.equal(again, advantages) and torch.equal(again_returns, returns)


# --- GRPO group advantages ----------------------------------------------------------------------------


def test_group_advantages_normalise_within_each_group():
    # group (1, 2, 3): mean 2, sample std 1 → (−1, 0, 1) / (1 + 1e-4); group (4, 4, 4): all equal → 0
    flat = group_advantages(t(1.0, 2.0, 3.0, 4.0, 4.0, 4.0), group_size=3)
    assert flat.tolist() == approx([-1 / 1.0001, 0.0, 1 / 1.0001, 0.0, 0.0, 0.0])
    grid = group_advantages(t([1.0, 2.0, 3.0], [4.0, 4.0, 4.0]), group_size=3)
    assert grid.shape == (2, 3) and grid.flatten().tolist() == flat.tolist()
    assert group_advantages(t(1.0, 2.0, 3.0), group_size=3, scale=False).tolist() == approx([-1.0, 0.0, 1.0])


def test_group_advantages_use_the_sample_std_and_all_equal_is_exactly_zero():
    # (0, 1): mean 0.5, sample std sqrt(0.5) → ±0.5 / 0.7071 = ±0.7071 (population std would give ±1)
    half = math.sqrt(0.5)
    assert group_advantages(t(0.0, 1.0), group_size=2, eps=0.0).tolist() == approx([-half, half])
    # in float32 the mean of seven 0.3s is off by 3e-8, which (r − mean) / (std + 1e-4) would blow up to
    # 3e-4 in every slot; an all-equal group must still give exactly 0
    assert group_advantages(torch.full((7,), 0.3), group_size=7).tolist() == [0.0] * 7
    with pytest.raises(ValueError):
        group_advantages(t(1.0, 2.0, 3.0), group_size=2)
    with pytest.raises(ValueError):
        group_advantages(t(1.0, 2.0), group_size=1)


# --- PPO losses -------------------------------------------------------------------------------------


def _policy_case():
    # ε = 0.2; ratios and advantages per token, row 1 ends with a padding token
    #   ρ=1.5, A=+1: min(1.5, 1.2)   = 1.2   clipped
    #   ρ=0.5, A=−1: min(−0.5, −0.8) = −0.8  clipped
    #   ρ=1.1, A=−2: inside the band = −2.2
    #   ρ=0.7, A=+2: min(1.4, 1.6)   = 1.4   (pessimistic side: not clipped)
    #   ρ=1.5, A=−1: min(−1.5, −1.2) = −1.5  (beyond 1+ε but the unclipped term is the min)
    ratios = t([1.5, 0.5, 1.1], [0.7, 1.5, 3.0])
    advantages = t([1.0, -1.0, -2.0], [2.0, -1.0, 10.0])
    mask = t([1, 1, 1], [1, 1, 0])
    old_logp = t([-1.0, -2.0, -0.5], [-3.0, -1.0, -1.0])
    return (old_logp + ratios.log()).requires_grad_(), old_logp, advantages, mask


def test_ppo_policy_loss_matches_hand_arithmetic():
    logp, old_logp, advantages, mask = _policy_case()
    loss, stats = ppo_policy_loss(logp, old_logp, advantages, mask, clip_range=0.2)
    # surrogate mean (1.2 − 0.8 − 2.2 + 1.4 − 1.5) / 5 = −0.38, loss = 0.38
    assert loss.item() == approx(0.38)
    assert stats["clip_fraction"].item() == approx(0.4)  # 2 of 5 tokens
    assert stats["ratio_mean"].item() == approx(5.3 / 5)
    # approx_kl is k3 of KL(π_old ‖ πθ): ρ − 1 − log ρ per token
    ratios = [1.5, 0.5, 1.1, 0.7, 1.5]
    assert stats["approx_kl"].item() == approx(sum(r - 1 - math.log(r) for r in ratios) / 5)
    assert all(v.dim() == 0 and not v.requires_grad for v in stats.values())


def test_ppo_policy_gradient_is_zero_on_clipped_tokens():
    logp, old_logp, advantages, mask = _policy_case()
    loss, _ = ppo_policy_loss(logp, old_logp, advantages, mask, clip_range=0.2)
    loss.backward()
    # unclipped tokens: dL/dlogp = −A·ρ / 5; clipped tokens and padding: 0
    #   (1.1, −2) → 0.44; (0.7, 2) → −0.28; (1.5, −1) → 0.3
    assert logp.grad.tolist() == [approx([0.0, 0.0, 0.44]), approx([-0.28, 0.3, 0.0])]


def test_ppo_value_loss_clips_against_the_old_values():
    # ε_v = 0.2
    #   V_old=1, V=1.5, R=2: V_clip=1.2; (1.5−2)²=0.25 < (1.2−2)²=0.64 → 0.64, clipped
    #   V_old=1, V=1.5, R=1: (0.5)²=0.25 > (0.2)²=0.04 → 0.25
    #   V_old=0, V=0.1, R=1: inside the band, 0.81 both ways
    values = t([1.5, 1.5, 0.1, 7.0]).requires_grad_()
    old_values, returns, mask = t([1.0, 1.0, 0.0, 0.0]), t([2.0, 1.0, 1.0, 0.0]), t([1, 1, 1, 0])
    loss, stats = ppo_value_loss(values, old_values, returns, mask, clip_range_value=0.2)
    assert loss.item() == approx(0.5 * (0.64 + 0.25 + 0.81) / 3)
    assert stats["value_clip_fraction"].item() == approx(1 / 3)
    loss.backward()
    # unclipped: dL/dV = 0.5 · 2 (V − R) / 3 → (1.5−1)/3 = 1/6 and (0.1−1)/3 = −0.3; clipped and padding 0
    assert values.grad.tolist()[0] == approx([0.0, 1 / 6, -0.3, 0.0])


def test_entropy_from_logits_matches_hand_values_and_chunking():
    logits = torch.tensor(
        [
            [
                [0.0, 0.0, 0.0, 0.0],
                [0.0, 0.0, float("-inf"), float("-inf")],
                [5.0, float("-inf"), float("-inf"), float("-inf")],
            ]
        ]
    )
    # uniform over 4 → ln 4; uniform over 2 → ln 2; one allowed token → 0
    assert entropy_from_logits(logits).tolist() == [approx([math.log(4), math.log(2), 0.0], abs=1e-6)]
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11)
    expected = torch.distributions.Categorical(logits=logits).entropy()
    assert torch.allclose(entropy_from_logits(logits, chunk_size=4), expected, atol=1e-6)
    assert entropy_from_logits(logits, chunk_size=4).shape == (3, 5)


# --- GRPO -------------------------------------------------------------------------------------------


def _grpo_case():
    logp = t([-1.0, -2.0, -9.0], [-0.5, -1.5, -1.0]).requires_grad_()
    mask = t([1, 1, 0], [1, 1, 1])
    advantages = t(1.0, -0.5)
    # log r = ref − logp = (0, 0.5) in row 0 and (0, 0, −0.5) in row 1
    ref_logp = t([-1.0, -1.5, 0.0], [-0.5, -1.5, -1.5])
    return logp, logp.detach().clone(), ref_logp, advantages, mask


def test_grpo_without_kl_is_the_sequence_mean_surrogate():
    logp, old_logp, ref_logp, advantages, mask = _grpo_case()
    # ρ = 1 everywhere: ℓ = −Â per token; row means −1 and 0.5; mean over sequences −0.25
    # (a token-mean would give (2·−1 + 3·0.5) / 5 = −0.1)
    loss, stats = grpo_loss(logp, old_logp, None, advantages, mask, clip_range=0.2, kl_coef=0.0)
    assert loss.item() == approx(-0.25)
    assert stats["clip_fraction"].item() == 0.0 and stats["ratio_mean"].item() == approx(1.0)
    assert "kl" not in stats
    # kl_coef = 0 with a reference given: same loss, kl only reported
    with_ref, stats = grpo_loss(logp, old_logp, ref_logp, advantages, mask, clip_range=0.2, kl_coef=0.0)
    assert with_ref.item() == loss.item() and stats["kl"].item() > 0
    loss.backward()
    # dL/dlogp = −Â / |o_i| / G: row 0 −1/2/2 = −0.25; row 1 0.5/3/2 = 1/12
    assert logp.grad.tolist() == [approx([-0.25, -0.25, 0.0]), approx([1 / 12] * 3)]


def test_grpo_with_kl_adds_the_k3_penalty():
    logp, old_logp, ref_logp, advantages, mask = _grpo_case()
    loss, stats = grpo_loss(logp, old_logp, ref_logp, advantages, mask, clip_range=0.2, kl_coef=0.1)
    k_plus = math.exp(0.5) - 0.5 - 1  # 0.148721
    k_minus = math.exp(-0.5) + 0.5 - 1  # 0.106531
    # row 0: −1 + 0.1 · (0 + k_plus) / 2; row 1: 0.5 + 0.1 · (0 + 0 + k_minus) / 3
    row0, row1 = -1 + 0.1 * k_plus / 2, 0.5 + 0.1 * k_minus / 3
    assert loss.item() == approx((row0 + row1) / 2)
    assert stats["kl"].item() == approx((k_plus + k_minus) / 5)
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss(logp, old_logp, None, advantages, mask, clip_range=0.2, kl_coef=0.1)
    with pytest.raises(ValueError, match="kl_estimator"):
        grpo_loss(logp, old_logp, ref_logp, advantages, mask, clip_range=0.2, kl_coef=0.1, kl_estimator="k9")


def test_grpo_clips_like_ppo():
    # one sequence, Â = 1, ratios (1.5, 1.0): min(1.5, 1.2) = 1.2 clipped, then 1.0; loss −(1.2 + 1) / 2
    old_logp = t([-1.0, -1.0])
    logp = (old_logp + t([math.log(1.5), 0.0])).requires_grad_()
    loss, stats = grpo_loss(logp, old_logp, None, t(1.0), t([1, 1]), clip_range=0.2, kl_coef=0.0)
    assert loss.item() == approx(-1.1)
    assert stats["clip_fraction"].item() == approx(0.5)
    loss.backward()
    assert logp.grad.tolist() == [approx([0.0, -0.5])]


def test_dapo_takes_one_token_mean_and_clips_higher():
    logp, old_logp, _, advantages, mask = _grpo_case()
    # ρ = 1: ℓ = −Â per token; tokens −1, −1, 0.5, 0.5, 0.5 -> (−2 + 1.5) / 5 = −0.1
    loss, _ = grpo_loss(logp, old_logp, None, advantages, mask, clip_range=0.2, kl_coef=0.0, loss_type="dapo")
    assert loss.item() == approx(-0.1)
    loss.backward()
    # dL/dlogp = −Â / Σ|o_i|: row 0 −1/5, row 1 0.5/5
    assert logp.grad.tolist() == [approx([-0.2, -0.2, 0.0]), approx([0.1] * 3)]
    # clip-higher: Â = 1, ratios (1.5, 1.25): ε_high = 0.28 keeps 1.25 and clips 1.5 at 1.28
    old = t([-1.0, -1.0])
    new = (old + t([math.log(1.5), math.log(1.25)])).requires_grad_()
    loss, stats = grpo_loss(
        new, old, None, t(1.0), t([1, 1]), clip_range=0.2, kl_coef=0.0, loss_type="dapo", clip_range_high=0.28
    )
    assert loss.item() == approx(-(1.28 + 1.25) / 2)
    assert stats["clip_fraction"].item() == approx(0.5)
    symmetric, _ = grpo_loss(new, old, None, t(1.0), t([1, 1]), clip_range=0.2, kl_coef=0.0, loss_type="dapo")
    assert symmetric.item() == approx(-(1.2 + 1.2) / 2)


def test_dr_grpo_divides_by_completions_times_max_tokens():
    logp, old_logp, _, advantages, mask = _grpo_case()
    # Σ ℓ = −2 + 1.5 = −0.5 over G · T_max = 2 · 4 (the step's max new tokens), not the token count
    loss, _ = grpo_loss(
        logp, old_logp, None, advantages, mask, clip_range=0.2, kl_coef=0.0, loss_type="dr_grpo", denominator=8.0
    )
    assert loss.item() == approx(-0.5 / 8)
    loss.backward()
    assert logp.grad.tolist() == [approx([-1 / 8, -1 / 8, 0.0]), approx([0.5 / 8] * 3)]
    with pytest.raises(ValueError, match="loss_type"):
        grpo_loss(logp, old_logp, None, advantages, mask, clip_range=0.2, kl_coef=0.0, loss_type="ppo")


def test_loss_denominators_over_micro_batches():
    a, b = t([1, 1, 0], [0, 0, 0]), t([1, 1, 1, 1])  # two micro-batches; one completion is empty
    assert loss_denominator("grpo", [a, b], max_new_tokens=4) == 2.0  # completions with a token
    assert loss_denominator("dapo", [a, b], max_new_tokens=4) == 6.0  # tokens
    assert loss_denominator("dr_grpo", [a, b], max_new_tokens=4) == 12.0  # 3 completions x 4


def test_micro_batches_add_up_to_the_whole_batch_in_every_loss_type():
    logp, old_logp, ref_logp, advantages, mask = _grpo_case()
    for loss_type in GRPO_LOSS_TYPES:
        whole, _ = grpo_loss(logp, old_logp, ref_logp, advantages, mask, 0.2, 0.1, loss_type=loss_type)
        d = loss_denominator(loss_type, [mask[:1], mask[1:]], mask.shape[1])
        parts = [
            grpo_loss(
                logp[i : i + 1],
                old_logp[i : i + 1],
                ref_logp[i : i + 1],
                advantages[i : i + 1],
                mask[i : i + 1],
                0.2,
                0.1,
                loss_type=loss_type,
                denominator=d,
            )[0]
            for i in range(2)
        ]
        assert (parts[0] + parts[1]).item() == approx(whole.item()), loss_type


def test_gspo_uses_one_ratio_per_sequence():
    # one completion, Â = 1, token ratios (1.5, 1.0): s = sqrt(1.5) = 1.2247, clipped at 1.2 on every
    # token: loss −1.2 (token-level would be −(1.2 + 1.0) / 2 = −1.1), and no gradient (the clip is active)
    old = t([-1.0, -1.0])
    new = (old + t([math.log(1.5), 0.0])).requires_grad_()
    loss, stats = grpo_loss(new, old, None, t(1.0), t([1, 1]), clip_range=0.2, kl_coef=0.0, importance_level="sequence")
    assert loss.item() == approx(-1.2)
    assert stats["ratio_mean"].item() == approx(math.sqrt(1.5)) and stats["clip_fraction"].item() == 1.0
    # within the clip: token ratios (1.1, 1.0), s = sqrt(1.1); ℓ = −s on both tokens, mean −s;
    # d(−s)/d logp_t = −s / |o| = −s / 2 for each token
    new = (old + t([math.log(1.1), 0.0])).requires_grad_()
    loss, _ = grpo_loss(new, old, None, t(1.0), t([1, 1]), clip_range=0.2, kl_coef=0.0, importance_level="sequence")
    s = math.sqrt(1.1)
    assert loss.item() == approx(-s)
    loss.backward()
    assert new.grad.tolist() == [approx([-s / 2, -s / 2])]
    with pytest.raises(ValueError, match="importance_level"):
        grpo_loss(new, old, None, t(1.0), t([1, 1]), clip_range=0.2, kl_coef=0.0, importance_level="token-ish")
