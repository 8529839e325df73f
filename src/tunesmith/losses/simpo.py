"""SimPO: simple preference optimization with a length-normalized, reference-free reward (Meng et al. 2024).

Inputs are per-pair sums of token log-probabilities over the completion tokens only, and the number of
those tokens: logp_chosen = log πθ(y_w|x), chosen_tokens = |y_w| (likewise for y_l). The same inputs as
`losses.orpo`: no reference model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def simpo_loss(
    logp_chosen: torch.Tensor,
    logp_rejected: torch.Tensor,
    chosen_tokens: torch.Tensor,
    rejected_tokens: torch.Tensor,
    beta: float,
    gamma: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Simple Preference Optimization (Meng et al. 2024):

        L = −log σ( β/|y_w| · log πθ(y_w|x)  −  β/|y_l| · log πθ(y_l|x)  −  γ )

    The reward r(x, y) = β/|y| · log πθ(y|x) is averaged per token so a longer completion is not
    favoured for its length; γ > 0 is the target margin between the rewards. Token counts must be ≥ 1.
    With equal per-token log-probabilities and γ = 0, L = ln 2.
    """
    chosen = beta * logp_chosen / chosen_tokens
    rejected = beta * logp_rejected / rejected_tokens
    losses = -F.logsigmoid(chosen - rejected - gamma)
    return losses, chosen.detach(), rejected.detach()
