"""Score conversations with a reward model (for `tunesmith score`, PPO and GRPO)."""

from __future__ import annotations

import torch

from tunesmith.data.packing import collate_padded
from tunesmith.data.templates import TokenizedExample
from tunesmith.models.forward import batch_last_hidden


@torch.no_grad()
def score_examples(
    model: torch.nn.Module,
    head: torch.nn.Linear,
    examples: list[TokenizedExample],
    pad_id: int,
    batch_size: int = 16,
    amp_dtype: torch.dtype | None = None,
) -> list[float]:
    """r = w · h_last + b for each tokenized conversation (its last token read by the head)."""
    device = next(head.parameters()).device
    scores: list[float] = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        last = batch_last_hidden(model, collate_padded(chunk, pad_id).to(device), len(chunk), amp_dtype)
        scores += head(last.float()).squeeze(-1).tolist()
    return scores
