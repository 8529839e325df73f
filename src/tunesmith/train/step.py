"""The optimizer step and the evaluation loss shared by the recipes."""

from __future__ import annotations

import math

import torch

from tunesmith.data.packing import collate
from tunesmith.data.templates import TokenizedExample
from tunesmith.models.attention import packs_flat
from tunesmith.models.forward import batch_nll_sum


def optimizer_step(params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer, max_grad_norm: float) -> float:
    """Clip (when max_grad_norm > 0), step, clear gradients; returns the gradient norm before clipping.
    A NaN or infinite norm (a NaN loss makes one) skips the step: the weights and AdamW's moments stay as
    they were, and the caller sees the norm (Run.end_step counts it)."""
    if max_grad_norm > 0:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
    else:
        grad_norm = float(torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]))
    if math.isfinite(grad_norm):
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


@torch.no_grad()
def evaluate_nll(
    model: torch.nn.Module,
    examples: list[TokenizedExample],
    micro_batch_size: int,
    packing: bool,
    max_length: int,
    pad_id: int,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    shared_prefix: bool = True,
) -> float:
    """Mean NLL per trained token over `examples` (dropout off)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    flat = packs_flat(model)
    for start in range(0, len(examples), micro_batch_size):
        batch = collate(
            examples[start : start + micro_batch_size], packing, max_length, pad_id, flat, flat and shared_prefix
        ).to(device)
        total += float(batch_nll_sum(model, batch, amp_dtype))
        count += batch.num_targets
    model.train(was_training)
    return total / max(1, count)
