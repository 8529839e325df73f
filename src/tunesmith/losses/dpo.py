"""Preference losses on sequence log-probabilities: DPO and IPO here, ORPO and SimPO (reference-free)
beside them, all registered by name in PREFERENCE_LOSSES.

Inputs are per-pair sums of token log-probabilities over the completion tokens only:
  logp_chosen = log πθ(y_w | x),  logp_rejected = log πθ(y_l | x)  (policy)
  ref_chosen  = log π_ref(y_w | x), ref_rejected = log π_ref(y_l | x)  (reference)
Each function returns (per-pair losses, chosen rewards, rejected rewards), where the implicit reward
of a completion is r(x, y) = β · (log πθ(y|x) − log π_ref(y|x)).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tunesmith.losses.orpo import orpo_loss
from tunesmith.losses.simpo import simpo_loss

PreferenceLoss = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def _log_ratios(logp_chosen, logp_rejected, ref_chosen, ref_rejected):
    return logp_chosen - ref_chosen, logp_rejected - ref_rejected


def dpo_loss(
    logp_chosen: torch.Tensor,
    logp_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Direct Preference Optimization (Rafailov et al. 2023, eq. 7):

        L = −log σ( β · [ (log πθ(y_w|x) − log π_ref(y_w|x)) − (log πθ(y_l|x) − log π_ref(y_l|x)) ] )

    With the policy equal to the reference the margin is 0 and L = ln 2 ≈ 0.6931.
    """
    chosen, rejected = _log_ratios(logp_chosen, logp_rejected, ref_chosen, ref_rejected)
    losses = -F.logsigmoid(beta * (chosen - rejected))
    return losses, beta * chosen.detach(), beta * rejected.detach()


def ipo_loss(
    logp_chosen: torch.Tensor,
    logp_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Identity Preference Optimization (Azar et al. 2023, eq. 17), with τ = β:

        h = (log πθ(y_w|x) − log π_ref(y_w|x)) − (log πθ(y_l|x) − log π_ref(y_l|x))
        L = (h − 1 / (2τ))²

    It regresses the log-ratio margin to a finite target instead of pushing it to infinity, so it
    does not over-fit deterministic preferences. Sequence log-probabilities are sums, as in the paper.
    """
    chosen, rejected = _log_ratios(logp_chosen, logp_rejected, ref_chosen, ref_rejected)
    losses = (chosen - rejected - 1.0 / (2.0 * beta)) ** 2
    return losses, beta * chosen.detach(), beta * rejected.detach()


@dataclass(frozen=True)
class PairLogps:
    """A micro-batch of pairs: summed completion log-probs and token counts ([pairs] each), and the
    reference's summed log-probs where the loss needs them."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor
    ref_chosen: torch.Tensor | None = None
    ref_rejected: torch.Tensor | None = None


@dataclass(frozen=True)
class RegisteredLoss:
    """fn(pairs, beta, gamma) -> (per-pair losses, chosen rewards, rejected rewards); `reference`: whether
    it needs π_ref (the recipe then computes it: adapter off, or precomputed)."""

    fn: Callable[[PairLogps, float, float], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    reference: bool


def _dpo(p: PairLogps, beta: float, gamma: float):
    assert p.ref_chosen is not None and p.ref_rejected is not None  # reference=True: the recipe computes them
    return dpo_loss(p.chosen, p.rejected, p.ref_chosen, p.ref_rejected, beta)


def _ipo(p: PairLogps, beta: float, gamma: float):
    assert p.ref_chosen is not None and p.ref_rejected is not None  # reference=True: the recipe computes them
    return ipo_loss(p.chosen, p.rejected, p.ref_chosen, p.ref_rejected, beta)


def _orpo(p: PairLogps, beta: float, gamma: float):
    return orpo_loss(p.chosen, p.rejected, p.chosen_tokens, p.rejected_tokens, beta)


def _simpo(p: PairLogps, beta: float, gamma: float):
    return simpo_loss(p.chosen, p.rejected, p.chosen_tokens, p.rejected_tokens, beta, gamma)


PREFERENCE_LOSSES: dict[str, RegisteredLoss] = {
    "dpo": RegisteredLoss(_dpo, reference=True),
    "ipo": RegisteredLoss(_ipo, reference=True),
    "orpo": RegisteredLoss(_orpo, reference=False),
    "simpo": RegisteredLoss(_simpo, reference=False),
}
