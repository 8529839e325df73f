from __future__ import annotations

import pytest

from tunesmith.data.packing import collate_packed, collate_padded, pack_examples, shifted_targets
from tunesmith.data.templates import IGNORE, TokenizedExample


def test_pack_examples_fits_and_covers_everything():
    lengths = [5, 9, 3, 7, 2, 10, 1]
    rows = pack_examples(lengths, 10)
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in r) <= 10 for r in rows)
    assert len(rows) == 4  # 37 tokens need at least 4 rows of 10; first-fit decreasing finds 4
    assert all(r == sorted(r) for r in rows)


def test_pack_refuses_too_long():
    with pytest.raises(ValueError):
        pack_examples([11], 10)


def test_shifted_targets():
    assert shifted_targets([IGNORE, 5, 6]) == [5, 6, IGNORE]


def test_collate_shapes_and_counts():
    a = TokenizedExample([1, 2, 3], [IGNORE, 2, 3], "a")
    b = TokenizedExample([4, 5], [IGNORE, 5], "b")
    padded = collate_padded([a, b], pad_id=0)
    assert padded.input_ids.tolist() == [[1, 2, 3], [4, 5, 0]]
    assert padded.targets.tolist() == [[2, 3, IGNORE], [5, IGNORE, IGNORE]]
    assert padded.attention_mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    assert (padded.num_tokens, padded.num_targets) == (5, 3)
    packed = collate_packed([a, b], 8, pad_id=0)
    assert packed.input_ids.tolist() == [[1, 2, 3, 4, 5]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 0, 1]]
    # the last token of `a` does not learn to predict the first token of `b`
    assert packed.targets.tolist() == [[2, 3, IGNORE, 5, IGNORE]]
    assert packed.attention_mask is None
    assert (packed.num_tokens, packed.num_targets) == (5, 3)
