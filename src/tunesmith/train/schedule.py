"""AdamW and the learning-rate schedule (linear warm-up, then cosine, linear or constant)."""

from __future__ import annotations

import math

import torch


def lr_multiplier(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Factor applied to the peak learning rate before optimizer step `step` (0-based).

    warm-up:  (step + 1) / warmup_steps          for step < warmup_steps
    cosine:   0.5 · (1 + cos(π · progress))      progress = (step − warmup) / (total − warmup)
    linear:   1 − progress
    constant: 1
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(1.0, progress)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "linear":
        return 1.0 - progress
    raise ValueError(f"unknown schedule {schedule!r}")


def build_optimizer(params: list[torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.AdamW:
    # foreach kernels: one fused launch per group instead of one per tensor (many small LoRA tensors)
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay, foreach=True)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def plan_steps(train, num_examples: int) -> tuple[int, int, str | None]:
    """(total optimizer steps, warm-up steps, a warning or None) for a TrainConfig over `num_examples`."""
    from tunesmith.data.prepare import epochs_warning
    from tunesmith.train.order import steps_per_epoch

    total = train.max_steps or train.epochs * steps_per_epoch(num_examples, train.batch_size)
    return total, round(train.warmup_ratio * total), epochs_warning(total, train.batch_size, num_examples)
