"""PPO losses on per-token tensors: the clipped policy surrogate, the clipped value loss, and entropy.

Inputs are right-padded [B, T] with a `mask` [B, T] that is 1 on response tokens:
  logp      = log πθ(y_t | x, y_<t)       (current policy, carries the gradient)
  old_logp  = log πθ_old(y_t | x, y_<t)   (the policy that sampled the rollout)
Losses are means over all masked tokens of the batch (token-mean). Each function returns
(loss, stats), stats holding detached 0-dim tensors, so logging them costs no device sync until read.
"""

from __future__ import annotations

import torch

from tunesmith.losses.kl import kl_k3, masked_mean


def clipped_surrogate(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: float,
    clip_range_high: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token clipped objective (to maximise), the ratio, and where the clip is active:

        ρ_t = exp(logp_t − old_logp_t)
        s_t = min(ρ_t · A_t, clip(ρ_t, 1 − ε, 1 + ε_high) · A_t)      ε_high = ε unless given (DAPO)

    "Clipped" means the clipped term is strictly the smaller one, so the token's gradient is 0
    (ρ > 1 + ε_high with A > 0, or ρ < 1 − ε with A < 0). Shared by PPO and GRPO.
    """
    # advantages and old_logp are targets from the rollout: no gradient may flow into them
    advantages, old_logp = advantages.detach(), old_logp.detach()
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * advantages
    high = clip_range if clip_range_high is None else clip_range_high
    clipped = torch.clamp(ratio, 1.0 - clip_range, 1.0 + high) * advantages
    return torch.minimum(unclipped, clipped), ratio, clipped < unclipped


def ppo_policy_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip_range: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate (Schulman et al. 2017, eq. 7), as a loss to minimise:

        L = −E_t[ min(ρ_t A_t, clip(ρ_t, 1 − ε, 1 + ε) A_t) ],   ρ_t = exp(logp_t − old_logp_t)

    E_t is the mean over the masked tokens of the batch. advantages: [B, T] (from `gae`, usually
    whitened). stats: clip_fraction (share of masked tokens whose clipped term is active, i.e. whose
    gradient is 0), approx_kl (mean k3 estimate of KL(πθ_old ‖ πθ) on the rollout tokens:
    ρ − 1 − log ρ, ≥ 0), ratio_mean.
    """
    surrogate, ratio, is_clipped = clipped_surrogate(logp, old_logp, advantages, clip_range)
    loss = -masked_mean(surrogate, mask)
    with torch.no_grad():
        # the tokens were sampled from π_old, so π_old plays the "sampling" side of k3 and πθ the other
        stats = {
            "clip_fraction": masked_mean(is_clipped.to(ratio.dtype), mask),
            "approx_kl": masked_mean(kl_k3(old_logp.detach(), logp.detach()), mask),
            "ratio_mean": masked_mean(ratio.detach(), mask),
        }
    return loss, stats


def ppo_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip_range_value: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss (PPO2 in OpenAI baselines; Ziegler et al. 2019):

        V_clip = V_old + clip(V − V_old, −ε_v, ε_v)
        L_V    = ½ · E_t[ max((V_t − R_t)², (V_clip,t − R_t)²) ]

    values [B, T] carry the gradient; old_values (from the rollout) and returns (from `gae`) are
    targets. stats: value_clip_fraction (share of masked tokens where the clipped error is the larger
    one, so the gradient is 0).
    """
    old_values, returns = old_values.detach(), returns.detach()
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    error = (values - returns) ** 2
    clipped_error = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(error, clipped_error), mask)
    with torch.no_grad():
        stats = {"value_clip_fraction": masked_mean((clipped_error > error).to(error.dtype), mask)}
    return loss, stats


def entropy_from_logits(logits: torch.Tensor, chunk_size: int = 1024) -> torch.Tensor:
    """Entropy of the next-token distribution at each position, from logits [..., V] → [...]:

        H = −Σ_v p_v log p_v = logsumexp(z) − Σ_v softmax(z)_v · z_v

    Computed in float32, `chunk_size` positions at a time, so only one [chunk_size, V] softmax is
    alive at once instead of a second full [B, T, V] tensor. Differentiable (for an entropy bonus);
    call it under `torch.no_grad()` when it is only a metric.
    """
    flat = logits.reshape(-1, logits.shape[-1])
    parts = []
    for start in range(0, flat.shape[0], chunk_size):
        z = flat[start : start + chunk_size].float()
        p = torch.softmax(z, dim=-1)
        # where: a token masked to −inf (top-k, banned tokens) has p = 0, and 0 · −inf would be nan
        parts.append(torch.logsumexp(z, dim=-1) - torch.where(p > 0, p * z, torch.zeros_like(z)).sum(dim=-1))
    entropy = torch.cat(parts) if parts else flat.new_zeros(0, dtype=torch.float32)
    return entropy.reshape(logits.shape[:-1])
