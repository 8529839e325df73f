"""The reward-model loss on scalar scores of preference pairs."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Bradley–Terry (Ouyang et al. 2022, eq. 1, one comparison per pair): per-pair losses

        L = −log σ(r(x, y_w) − r(x, y_l))

    the negative log-likelihood that the preferred reply wins. Equal scores give ln 2.
    """
    return -F.logsigmoid(r_chosen - r_rejected)


def pair_accuracy(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Per pair: 1 when the preferred reply scores higher, 0 when lower, 1/2 for a tie."""
    margin = r_chosen - r_rejected
    return (margin > 0).float() + 0.5 * (margin == 0).float()
