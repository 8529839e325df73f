from __future__ import annotations

import math

import pytest

from tunesmith.train.order import split_micro, step_indices, steps_per_epoch
from tunesmith.train.schedule import lr_multiplier


def test_warmup_then_cosine():
    assert lr_multiplier(0, 10, 2, "cosine") == pytest.approx(0.5)
    assert lr_multiplier(1, 10, 2, "cosine") == pytest.approx(1.0)
    assert lr_multiplier(2, 10, 2, "cosine") == pytest.approx(1.0)
    assert lr_multiplier(6, 10, 2, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_multiplier(6, 10, 2, "linear") == pytest.approx(0.5)
    assert lr_multiplier(9, 10, 0, "constant") == 1.0


def test_data_order_is_deterministic_and_covers_each_epoch():
    n, bs = 10, 4
    assert steps_per_epoch(n, bs) == 3
    epoch0 = [i for s in range(3) for i in step_indices(n, bs, seed=1, step=s)]
    assert sorted(epoch0) == list(range(n))
    assert step_indices(n, bs, seed=1, step=1) == step_indices(n, bs, seed=1, step=1)
    epoch1 = [i for s in range(3, 6) for i in step_indices(n, bs, seed=1, step=s)]
    assert sorted(epoch1) == list(range(n)) and epoch1 != epoch0
    assert split_micro([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]
