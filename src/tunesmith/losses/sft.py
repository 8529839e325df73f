"""Log-probabilities of target tokens, and the supervised fine-tuning loss built on them."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100


def target_logps(hidden: torch.Tensor, targets: torch.Tensor, lm_head_weight: torch.Tensor,
                 lm_head_bias: torch.Tensor | None = None,
                 chunk_size: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(y_t | tokens <= t) at every position with y_t != IGNORE, and the row each belongs to.

        logp_t = log softmax(W h_t + b)[y_t]

    hidden: [rows, T, H] final hidden states; targets: [rows, T] already shifted (position t predicts
    y_t). Logits are computed only at trained positions (prompt and padding positions never get a
    [vocabulary]-wide row: 49K floats each for SmolLM2), `chunk_size` rows per matmul.
    """
    keep = targets.reshape(-1) != IGNORE
    rows = torch.arange(targets.shape[0], device=targets.device).repeat_interleave(targets.shape[1])[keep]
    h = hidden.reshape(-1, hidden.shape[-1])[keep]
    y = targets.reshape(-1)[keep]
    parts = []
    for start in range(0, h.shape[0], chunk_size):
        logits = F.linear(h[start : start + chunk_size], lm_head_weight, lm_head_bias).float()
        parts.append(-F.cross_entropy(logits, y[start : start + chunk_size], reduction="none"))
    logps = torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)
    return logps, rows


def token_nll_sum(hidden: torch.Tensor, targets: torch.Tensor, lm_head_weight: torch.Tensor,
                  lm_head_bias: torch.Tensor | None = None, chunk_size: int = 2048) -> torch.Tensor:
    """Sum of next-token negative log-likelihoods over the trained positions:

        loss_sum = Σ_{t : y_t ≠ -100}  −log softmax(W h_t + b)[y_t]

    The caller divides by the number of trained tokens in the whole optimizer step, so every token
    weighs the same whatever micro-batch or packed row it sits in.
    """
    logps, _ = target_logps(hidden, targets, lm_head_weight, lm_head_bias, chunk_size)
    return -logps.sum()


def sequence_logps(hidden: torch.Tensor, targets: torch.Tensor, lm_head_weight: torch.Tensor,
                   lm_head_bias: torch.Tensor | None = None, example_ids: torch.Tensor | None = None,
                   num_examples: int | None = None, chunk_size: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence sum of target log-probabilities, log π(y | x) = Σ_t logp_t, and target counts.

    `example_ids` [rows, T] names the sequence each position belongs to (packed rows hold several);
    without it each row is one sequence. Returns ([num_examples] sums, [num_examples] target counts);
    a sequence with no target gets 0.
    """
    logps, owner = target_logps(hidden, targets, lm_head_weight, lm_head_bias, chunk_size)
    if example_ids is not None:
        owner = example_ids.reshape(-1)[targets.reshape(-1) != IGNORE]
    if num_examples is None:
        num_examples = targets.shape[0] if example_ids is None else int(example_ids.max()) + 1
    sums = torch.zeros(num_examples, dtype=logps.dtype, device=logps.device).index_add(0, owner, logps)
    counts = torch.bincount(owner, minlength=num_examples)
    return sums, counts
