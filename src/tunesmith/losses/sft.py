"""The supervised fine-tuning loss: next-token cross-entropy on the trained tokens only."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100


def token_nll_sum(hidden: torch.Tensor, targets: torch.Tensor, lm_head_weight: torch.Tensor,
                  lm_head_bias: torch.Tensor | None = None, chunk_size: int = 2048) -> torch.Tensor:
    """Sum of -log p(target_t | tokens <= t) over positions with target_t != IGNORE.

        loss_sum = Σ_{t : y_t ≠ -100}  −log softmax(W h_t + b)[y_t]

    hidden: [..., H] final hidden states; targets: [...] already shifted (position t predicts y_t).
    Logits are computed only at trained positions (prompt and padding positions never get a
    [vocabulary]-wide row: 49K floats each for SmolLM2), `chunk_size` rows per matmul.
    The caller divides by the number of trained tokens in the whole optimizer step, so every token
    weighs the same whatever micro-batch or packed row it sits in.
    """
    keep = targets.reshape(-1) != IGNORE
    h = hidden.reshape(-1, hidden.shape[-1])[keep]
    y = targets.reshape(-1)[keep]
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, h.shape[0], chunk_size):
        logits = F.linear(h[start : start + chunk_size], lm_head_weight, lm_head_bias).float()
        total = total + F.cross_entropy(logits, y[start : start + chunk_size], reduction="sum")
    return total
