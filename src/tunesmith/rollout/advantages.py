"""Advantages from rewards: per-token rewards and GAE for PPO, group-normalised rewards for GRPO.

Per-token tensors are right-padded [B, T] with a `mask` [B, T] that is 1 on the response tokens.
The response must be one contiguous run of 1s in each row (prompt tokens before it and padding after
it are 0). Everything here builds training targets, so inputs are detached and nothing returns a
gradient.
"""

from __future__ import annotations

import torch


def _last_response_index(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the last 1 in each row of mask, and whether the row has any 1 at all."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = torch.where(mask > 0, positions, torch.full_like(positions, -1)).max(dim=1).values
    return last.clamp(min=0), last >= 0


def per_token_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """The PPO reward of each response token (Ziegler et al. 2019, eq. 2; Ouyang et al. 2022):

        r_t = −β · KL_t                     for every response token t
        r_T = −β · KL_T + score             at the last response token T

    scores [B] (one reward-model score per sequence), kl [B, T] (a per-token KL estimate, usually
    k1 = logp − ref_logp at sampling time), mask [B, T]. Returns [B, T], 0 on masked-out positions;
    a row with no response token gets no score.
    """
    mask = mask.to(kl.dtype)
    rewards = torch.where(mask > 0, -kl_coef * kl.detach(), torch.zeros_like(kl))
    last, has_tokens = _last_response_index(mask)
    score = torch.where(has_tokens, scores.detach().to(kl.dtype), torch.zeros_like(scores, dtype=kl.dtype))
    return rewards.scatter_add(1, last[:, None], score[:, None])


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised Advantage Estimation (Schulman et al. 2016, eq. 16), per token:

        δ_t = r_t + γ · V_{t+1} − V_t
        A_t = δ_t + γλ · A_{t+1}
        R_t = A_t + V_t                      (the value target, the λ-return)

    rewards, values, mask: [B, T]. The episode ends at the last response token, so the value after it
    is 0 (V_{T+1} = 0, A_{T+1} = 0). Returns (advantages, returns), both [B, T] and 0 on masked-out
    positions. With γ = λ = 1, R_t = Σ_{s≥t} r_s (reward-to-go) and A_t = R_t − V_t.
    """
    rewards, values = rewards.detach(), values.detach()
    mask = mask.to(rewards.dtype) > 0
    zero = torch.zeros_like(rewards[:, 0])
    next_value, next_advantage, per_step = zero, zero, []
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        # a masked-out position ends the chain: the last response token sees V = A = 0 after it
        advantage = torch.where(mask[:, t], delta + gamma * lam * next_advantage, zero)
        next_value = torch.where(mask[:, t], values[:, t], zero)
        next_advantage = advantage
        per_step.append(advantage)
    advantages = torch.stack(per_step[::-1], dim=1)
    returns = torch.where(mask, advantages + values, torch.zeros_like(values))
    return advantages, returns


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4, scale: bool = True) -> torch.Tensor:
    """GRPO outcome advantages (Shao et al. 2024, DeepSeekMath, sec. 4.1.2 and eq. 3):

        Â_i = (r_i − mean(r_group)) / (std(r_group) + eps)      scale=True
        Â_i =  r_i − mean(r_group)                              scale=False (Dr. GRPO, Liu et al. 2025)

    rewards: [N · K] laid out group by group (the K completions of prompt 0, then of prompt 1, ...)
    or [N, K]; K = group_size ≥ 2. Returns one advantage per completion, in the shape given. std is
    the sample std (Bessel, divides by K − 1, as `torch.std` and TRL's GRPOTrainer). A group whose
    rewards are all equal carries no signal and gets exactly 0 advantages.
    """
    if group_size < 2:
        raise ValueError(f"group_size must be at least 2 to compare completions, got {group_size}")
    if rewards.numel() % group_size or (rewards.dim() == 2 and rewards.shape[1] != group_size):
        raise ValueError(f"rewards of shape {tuple(rewards.shape)} do not split into groups of {group_size}")
    grouped = rewards.detach().reshape(-1, group_size)
    advantages = grouped - grouped.mean(dim=1, keepdim=True)
    if scale:
        advantages = advantages / (grouped.std(dim=1, keepdim=True) + eps)
    # mean() of K equal floats can differ from them in the last bit; make the "no signal" case exact
    equal = (grouped == grouped[:, :1]).all(dim=1, keepdim=True)
    advantages = torch.where(equal, torch.zeros_like(advantages), advantages)
    return advantages.reshape(rewards.shape)
