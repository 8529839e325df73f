"""KTO: Kahneman-Tversky optimization on unpaired examples (Ethayarajh et al. 2024).

Each example is one completion labelled desirable or undesirable, not a pair. Inputs are per-example sums of
token log-probabilities over the completion tokens only:
  logp = log πθ(y|x) (policy),  ref_logp = log π_ref(y|x) (reference)
and the implied reward is r(x, y) = log πθ(y|x) − log π_ref(y|x).
"""

from __future__ import annotations

import torch


def kto_reference_point(logp_kl: torch.Tensor, ref_logp_kl: torch.Tensor) -> torch.Tensor:
    """z0 = max(0, mean( log πθ(y'|x) − log π_ref(y'|x) )), detached.

    (x, y') are mismatched pairs: each prompt with another example's completion, so the mean estimates
    KL(πθ ‖ π_ref). Under several ranks, average the per-example terms across ranks before the clamp.
    """
    return (logp_kl - ref_logp_kl).mean().clamp(min=0).detach()


def kto_loss(
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    desirable: torch.Tensor,
    kl: torch.Tensor,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Kahneman-Tversky Optimization (Ethayarajh et al. 2024), z0 = `kl` from `kto_reference_point`:

        r = log πθ(y|x) − log π_ref(y|x)
        L = λ_D · (1 − σ(β · (r − z0)))    for a desirable y      (λ_D = desirable_weight)
        L = λ_U · (1 − σ(β · (z0 − r)))    for an undesirable y   (λ_U = undesirable_weight)

    `desirable` is a bool tensor, one label per example. Returns (per-example losses, rewards β · r).
    The paper advises λ_D · n_D / (λ_U · n_U) in [1, 4/3] for class counts n_D, n_U.
    With the policy equal to the reference and z0 = 0, L = λ · 0.5.
    """
    reward = logp - ref_logp
    # z0 is a baseline, not a target: no gradient may pull the mismatched pairs' KL.
    z0 = kl.detach()
    losses = torch.where(
        desirable,
        desirable_weight * (1 - torch.sigmoid(beta * (reward - z0))),
        undesirable_weight * (1 - torch.sigmoid(beta * (z0 - reward))),
    )
    return losses, beta * reward.detach()
