"""ORPO: odds-ratio preference optimization, reference-free (Hong et al. 2024).

Inputs are per-pair sums of token log-probabilities over the completion tokens only, and the number of
those tokens: logp_chosen = log πθ(y_w|x), chosen_tokens = |y_w| (likewise for y_l). The same inputs as
`losses.simpo`: no reference model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def log_odds(avg_logp: torch.Tensor) -> torch.Tensor:
    """log odds(y) = log( P / (1 − P) ) = avg_logp − log(1 − exp(avg_logp)), with P = exp(avg_logp) < 1."""
    # expm1, not 1 − exp: near avg_logp = 0 (a confident model) exp rounds to 1 and log(1 − 1) = −inf.
    return avg_logp - torch.log(-torch.expm1(avg_logp))


def orpo_loss(
    logp_chosen: torch.Tensor,
    logp_rejected: torch.Tensor,
    chosen_tokens: torch.Tensor,
    rejected_tokens: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Odds Ratio Preference Optimization (Hong et al. 2024), with λ = β:

        P(y|x)  = exp( log πθ(y|x) / |y| )                    (the per-token geometric mean)
        odds(y) = P(y|x) / (1 − P(y|x))
        L       = −log πθ(y_w|x) / |y_w|  −  β · log σ( log odds(y_w) − log odds(y_l) )

    The first term is the chosen completion's NLL per token, each pair weighted alike as in the paper.
    Token counts must be ≥ 1. Rewards are β · log πθ(y|x) / |y|, as TRL reports them.
    With equal per-token log-probabilities L = NLL + β · ln 2.
    """
    avg_chosen, avg_rejected = logp_chosen / chosen_tokens, logp_rejected / rejected_tokens
    odds_ratio_term = -F.logsigmoid(log_odds(avg_chosen) - log_odds(avg_rejected))
    losses = -avg_chosen + beta * odds_ratio_term
    return losses, beta * avg_chosen.detach(), beta * avg_rejected.detach()
