"""Deterministic data order: which examples each optimizer step uses.

The order depends only on (seed, epoch), so a resumed run needs nothing but the step number to pick
up exactly where it stopped, and any number of processes can agree on it.
"""

from __future__ import annotations

import math
from typing import TypeVar

import torch

T = TypeVar("T")


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    return math.ceil(num_examples / batch_size)


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_examples, generator=g).tolist()


def step_indices(num_examples: int, batch_size: int, seed: int, step: int) -> list[int]:
    """Example indices of optimizer step `step` (0-based); the last step of an epoch may be short."""
    per_epoch = steps_per_epoch(num_examples, batch_size)
    epoch, k = divmod(step, per_epoch)
    order = epoch_permutation(num_examples, seed, epoch)
    return order[k * batch_size : (k + 1) * batch_size]


def split_micro(indices: list[T], micro_batch_size: int) -> list[list[T]]:
    return [indices[i : i + micro_batch_size] for i in range(0, len(indices), micro_batch_size)]
