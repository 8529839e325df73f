"""GRPO loss (Shao et al. 2024, DeepSeekMath): the PPO clipped surrogate with one advantage per
completion, a KL penalty to the reference inside the loss, and no value model.

Inputs are right-padded [B, T] with a `mask` [B, T] that is 1 on completion tokens; B = N prompts ×
K completions, and `advantages` [B] come from `tunesmith.rollout.advantages.group_advantages`.
"""

from __future__ import annotations

import torch

from tunesmith.config.schema import GRPO_LOSS_TYPES, IMPORTANCE_LEVELS
from tunesmith.losses.kl import KL_ESTIMATORS, masked_mean
from tunesmith.losses.ppo import clipped_surrogate


def loss_denominator(loss_type: str, masks: list[torch.Tensor], max_new_tokens: int) -> float:
    """What one step's loss divides by, over all its micro-batches' completion masks [B, T]:

    grpo     G                  completions with at least one token (a mean of per-sequence means)
    dapo     Σ_i |o_i|          completion tokens (one token-level mean, DAPO eq. 8)
    dr_grpo  G · T_max          completions × max new tokens (Dr. GRPO: no length normalisation)
    """
    if loss_type == "grpo":
        return float(sum(int((m > 0).any(dim=1).sum()) for m in masks))
    if loss_type == "dapo":
        return float(sum(int((m > 0).sum()) for m in masks))
    if loss_type == "dr_grpo":
        return float(sum(m.shape[0] for m in masks) * max_new_tokens)
    raise ValueError(f"unknown loss_type {loss_type!r}; choose from {', '.join(GRPO_LOSS_TYPES)}")


def sequence_log_ratio(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """GSPO's importance ratio in log space (Zheng et al. 2025, eq. 7), broadcast to the tokens:

        log s_i = (1/|o_i|) Σ_t (logp_i,t − old_logp_i,t)

    so that exp(log s_i) is the geometric mean of the token ratios; [B, T], one value per row."""
    return masked_mean(logp - old_logp.detach(), mask, dim=1)[:, None].expand_as(logp)


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
    kl_coef: float,
    kl_estimator: str = "k3",
    loss_type: str = "grpo",
    clip_range_high: float | None = None,
    importance_level: str = "token",
    denominator: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DeepSeekMath eq. 3 and its successors, as a loss to minimise (the negated objective):

        ρ_i,t = exp(logp_i,t − old_logp_i,t)                       importance_level "token"
        ρ_i,t = s_i = exp((1/|o_i|) Σ_t (logp_i,t − old_logp_i,t))  "sequence" (GSPO)
        ℓ_i,t = −min(ρ_i,t Â_i, clip(ρ_i,t, 1 − ε, 1 + ε_high) Â_i) + β · D_KL,i,t
        D_KL  = π_ref/πθ − log(π_ref/πθ) − 1                       (k3, eq. 4)

        grpo     L = (1/G) Σ_i (1/|o_i|) Σ_t ℓ_i,t     the paper's mean of per-completion means
        dapo     L = Σ_i Σ_t ℓ_i,t / Σ_i |o_i|          one token-level mean (Yu et al. 2025)
        dr_grpo  L = Σ_i Σ_t ℓ_i,t / (G · T_max)        no length normalisation (Liu et al. 2025)

    The sequence advantage Â_i is broadcast to every token of completion i; ε_high = ε unless given
    (DAPO's clip-higher). The grpo mean weighs a token of a short completion more than one of a long
    completion; dapo and dr_grpo do not. `denominator` is the step's G, Σ|o_i| or G · T_max over all
    its micro-batches (`loss_denominator`), so micro-batch losses add up to the step's loss; None takes
    this batch alone (dr_grpo then uses the padded width as T_max). A completion with no token adds 0.

    kl_coef = 0 drops the reference term entirely: no reference forward pass is needed and ref_logp
    may be None. stats (detached 0-dim tensors, token-means over the masked tokens): clip_fraction,
    ratio_mean, and kl (mean per-token KL to the reference, with the chosen estimator; present only
    when ref_logp is given, and reported even when kl_coef = 0).
    """
    if kl_estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown kl_estimator {kl_estimator!r}; choose from {sorted(KL_ESTIMATORS)}")
    if importance_level not in IMPORTANCE_LEVELS:
        raise ValueError(f"unknown importance_level {importance_level!r}; choose from {', '.join(IMPORTANCE_LEVELS)}")
    if kl_coef != 0 and ref_logp is None:
        raise ValueError(f"kl_coef = {kl_coef} needs ref_logp (pass kl_coef = 0 to train without a reference)")
    if denominator is None:
        denominator = loss_denominator(loss_type, [mask], mask.shape[1])
    if importance_level == "sequence":  # every token of completion i carries s_i, its gradient included
        logp_for_ratio = old_logp.detach() + sequence_log_ratio(logp, old_logp, mask)
    else:
        logp_for_ratio = logp
    surrogate, ratio, is_clipped = clipped_surrogate(
        logp_for_ratio, old_logp, advantages[:, None], clip_range, clip_range_high
    )
    per_token = -surrogate
    kl = None if ref_logp is None else KL_ESTIMATORS[kl_estimator](logp, ref_logp.detach())
    if kl_coef != 0:
        assert kl is not None  # kl_coef != 0 needs ref_logp (checked above)
        per_token = per_token + kl_coef * kl
    if loss_type == "grpo":  # each completion's token mean (0 for an empty one), summed
        total = masked_mean(per_token, mask, dim=1).sum()
    else:
        total = (per_token * mask.to(per_token.dtype)).sum()
    loss = total / max(denominator, 1.0)
    with torch.no_grad():
        stats = {
            "clip_fraction": masked_mean(is_clipped.to(ratio.dtype), mask),
            "ratio_mean": masked_mean(ratio.detach(), mask),
        }
        if kl is not None:
            stats["kl"] = masked_mean(kl.detach(), mask)
    return loss, stats
