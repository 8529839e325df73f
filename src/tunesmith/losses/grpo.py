"""GRPO loss (Shao et al. 2024, DeepSeekMath): the PPO clipped surrogate with one advantage per
completion, a KL penalty to the reference inside the loss, and no value model.

Inputs are right-padded [B, T] with a `mask` [B, T] that is 1 on completion tokens; B = N prompts ×
K completions, and `advantages` [B] come from `tunesmith.rollout.advantages.group_advantages`.
"""

from __future__ import annotations

import torch

from tunesmith.losses.kl import KL_ESTIMATORS, masked_mean
from tunesmith.losses.ppo import clipped_surrogate


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
    kl_coef: float,
    kl_estimator: str = "k3",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DeepSeekMath eq. 3, as a loss to minimise (the negated objective):

        ρ_i,t = exp(logp_i,t − old_logp_i,t)
        ℓ_i,t = −min(ρ_i,t Â_i, clip(ρ_i,t, 1 − ε, 1 + ε) Â_i) + β · D_KL,i,t
        D_KL  = π_ref/πθ − log(π_ref/πθ) − 1                      (k3, eq. 4)
        L     = (1/G) Σ_i (1/|o_i|) Σ_t ℓ_i,t

    The sequence advantage Â_i is broadcast to every token of completion i. Reduction is the
    paper's sequence-mean: average over each completion's own tokens, then over completions (a
    completion with no token is left out). It weighs a token of a short completion more than one of
    a long completion; Dr. GRPO (Liu et al. 2025) and DAPO (Yu et al. 2025) instead take one
    token-mean over the whole batch, `masked_mean(ℓ, mask)`, to remove that length bias.

    kl_coef = 0 drops the reference term entirely: no reference forward pass is needed and ref_logp
    may be None. stats (detached 0-dim tensors, token-means over the masked tokens): clip_fraction,
    ratio_mean, and kl (mean per-token KL to the reference, with the chosen estimator; present only
    when ref_logp is given, and reported even when kl_coef = 0).
    """
    if kl_estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown kl_estimator {kl_estimator!r}; choose from {sorted(KL_ESTIMATORS)}")
    if kl_coef != 0 and ref_logp is None:
        raise ValueError(f"kl_coef = {kl_coef} needs ref_logp (pass kl_coef = 0 to train without a reference)")
    surrogate, ratio, is_clipped = clipped_surrogate(logp, old_logp, advantages[:, None], clip_range)
    per_token = -surrogate
    kl = None if ref_logp is None else KL_ESTIMATORS[kl_estimator](logp, ref_logp.detach())
    if kl_coef != 0:
        assert kl is not None  # kl_coef != 0 needs ref_logp (checked above)
        per_token = per_token + kl_coef * kl
    per_sequence = masked_mean(per_token, mask, dim=1)
    has_tokens = (mask.to(per_sequence.dtype) > 0).any(dim=1).to(per_sequence.dtype)
    loss = (per_sequence * has_tokens).sum() / has_tokens.sum().clamp(min=1.0)
    with torch.no_grad():
        stats = {
            "clip_fraction": masked_mean(is_clipped.to(ratio.dtype), mask),
            "ratio_mean": masked_mean(ratio.detach(), mask),
        }
        if kl is not None:
            stats["kl"] = masked_mean(kl.detach(), mask)
    return loss, stats
