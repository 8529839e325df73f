"""Masked reductions, per-token KL estimators and the KL-coefficient controllers shared by PPO and GRPO.

Every tensor is a batch of right-padded per-token values [B, T] with a `mask` [B, T] (float or bool)
that is 1 on the response tokens and 0 on prompt and padding positions.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

KLEstimator = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _masked(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mask = mask.to(x.dtype)
    # where, not x * mask: padding may hold inf or nan (log-prob of a pad token), and nan * 0 = nan
    return torch.where(mask > 0, x, torch.zeros_like(x)) * mask, mask


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x over the positions where mask is 1:

        mean = Σ mask·x / Σ mask          (over everything, or along `dim`)

    An empty mask (or an empty row along `dim`) gives 0, not nan.
    """
    x, mask = _masked(x, mask)
    if dim is None:
        return x.sum() / mask.sum().clamp(min=torch.finfo(x.dtype).tiny)
    return x.sum(dim) / mask.sum(dim).clamp(min=torch.finfo(x.dtype).tiny)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of x over all masked positions; unbiased (Bessel, divides by n − 1) by default:

        var = Σ mask·(x − mean)² / (n − 1),   n = Σ mask

    A single masked value gives 0 (n − 1 is clamped to 1) rather than inf.
    """
    centered = x - masked_mean(x, mask)
    x2, m = _masked(centered**2, mask)
    n = m.sum()
    return x2.sum() / ((n - 1).clamp(min=1.0) if unbiased else n.clamp(min=torch.finfo(x.dtype).tiny))


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, unbiased: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """Normalise x over all masked positions of the whole batch (the PPO advantage whitening):

        x̂ = (x − mean) / sqrt(var + eps)          shift_mean=True
        x̂ = (x − mean) / sqrt(var + eps) + mean   shift_mean=False (rescale only, keep the mean)

    mean and var are taken over every masked token of the batch; var is unbiased by default (as
    `torch.std`), so `x̂[mask].std()` is 1. Masked-out positions come back as 0.
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask, unbiased=unbiased)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.to(x.dtype) > 0, whitened, torch.zeros_like(whitened))


# Per-token estimators of KL(π ‖ π_ref) from the log-probabilities of tokens sampled from π
# (Schulman, "Approximating KL Divergence", http://joschu.net/blog/kl-approx.html). With
# log r = ref_logp − logp, i.e. r = π_ref(y) / π(y):


def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k1 = −log r = logp − ref_logp. Unbiased for KL(π ‖ π_ref) but high-variance and can be negative
    per token. http://joschu.net/blog/kl-approx.html"""
    return logp - ref_logp


def kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k2 = ½ (log r)² = ½ (logp − ref_logp)². Biased, low-variance, ≥ 0 (the classic PPO `approxkl`).
    http://joschu.net/blog/kl-approx.html"""
    return 0.5 * (logp - ref_logp) ** 2


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 = (r − 1) − log r = exp(ref_logp − logp) − (ref_logp − logp) − 1. Unbiased and ≥ 0 per
    token (log x ≤ x − 1); the estimator of DeepSeekMath eq. 4. http://joschu.net/blog/kl-approx.html"""
    log_r = ref_logp - logp
    return torch.exp(log_r) - log_r - 1.0


KL_ESTIMATORS: dict[str, KLEstimator] = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


class FixedKLController:
    """A constant KL coefficient β; `update` does nothing."""

    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        pass


class AdaptiveKLController:
    """Proportional controller for β (Ziegler et al. 2019, "Fine-Tuning Language Models from Human
    Preferences", sec. 2.2):

        e_t = clip(KL_t / KL_target − 1, −0.2, 0.2)
        β  ← β · (1 + K_β · e_t · n_steps / horizon)

    KL_t is the measured KL(π ‖ π_ref) per sequence and n_steps the number of sequences (episodes)
    since the last update. The paper quotes K_β = 0.1; its code (lm-human-preferences, and TRL after
    it) has no K_β and folds the gain into `horizon` (10 000 episodes), so `k_beta` defaults to 1 to
    match that code.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float, k_beta: float = 1.0):
        if target <= 0 or horizon <= 0:
            raise ValueError(f"target ({target}) and horizon ({horizon}) must be positive")
        self.value, self.target, self.horizon, self.k_beta = float(init_kl_coef), target, horizon, k_beta

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + self.k_beta * error * n_steps / self.horizon
