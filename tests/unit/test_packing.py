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


def test_flat_packing_is_one_row_without_padding():
    examples = [TokenizedExample([i] * n, [IGNORE] + [i] * (n - 1), str(i)) for i, n in enumerate([4, 3, 4], 1)]
    rows = collate_packed(examples, 5, pad_id=0)  # rows of 5: one example each, padded to the widest
    assert rows.input_ids.tolist() == [[1, 1, 1, 1], [3, 3, 3, 3], [2, 2, 2, 0]]  # first-fit decreasing
    flat = collate_packed(examples, 5, pad_id=0, flat=True)
    assert flat.input_ids.tolist() == [[1, 1, 1, 1, 2, 2, 2, 3, 3, 3, 3]]
    assert flat.position_ids.tolist() == [[0, 1, 2, 3, 0, 1, 2, 0, 1, 2, 3]]
    assert flat.example_ids.tolist() == [[0] * 4 + [1] * 3 + [2] * 4]
    assert (flat.num_tokens, flat.num_targets) == (rows.num_tokens, rows.num_targets) == (11, 8)
    full = [TokenizedExample([i] * 4, [IGNORE] + [i] * 3, str(i)) for i in (1, 2)]  # rows without padding stay
    assert collate_packed(full, 4, pad_id=0, flat=True).input_ids.tolist() == [[1, 1, 1, 1], [2, 2, 2, 2]]


def test_example_spans_follow_position_ids():
    import torch

    from tunesmith.models.attention import example_spans

    positions = torch.tensor(
        [
            [0, 1, 2, 0, 1, 0, 1, 2, 3],
            [0, 1, 2, 3, 4, 5, 0, 1, 2],
            [4, 5, 6, 7, 8, 9, 10, 11, 12],
            [0, 1, 2, 3, 2, 3, 4, 2, 3],
        ]
    )
    assert example_spans(positions) == [
        [(0, 3, 0), (3, 5, 0), (5, 9, 0)],
        [(0, 6, 0), (6, 9, 0)],
        [(0, 9, 4)],
        [(0, 4, 0), (4, 7, 2), (7, 9, 2)],
    ]


def test_per_example_attention_on_the_cpu_runs_in_fp32_under_bf16_autocast():
    """The CPU flash kernel's bf16 backward is ~3x slower than its fp32 one: under autocast, attention
    gives exactly the fp32 result, with and without a gradient (a policy and its reference agree)."""
    import torch

    from tunesmith.models.attention import attend, segment_mask

    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 6, 12, 16, generator=g, requires_grad=True)
    k, v = torch.randn(1, 2, 20, 16, generator=g), torch.randn(1, 2, 20, 16, generator=g)
    mask = segment_mask(12, 8, None, q.device)  # continues an 8-token shared prefix
    exact = attend(q, k, v, mask, None, 0.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        trained = attend(q, k, v, mask, None, 0.0)
        with torch.no_grad():
            reference = attend(q, k, v, mask, None, 0.0)
        rounded = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    assert torch.equal(trained, exact) and torch.equal(reference, exact)
    assert not torch.equal(rounded.float(), exact)  # what autocast alone would have computed
    trained.sum().backward()
    assert q.grad is not None and q.grad.dtype == torch.float32


def test_prefix_groups_share_untrained_prompts_only():
    from tunesmith.data.packing import prefix_groups

    system = list(range(100, 110))  # ten tokens every sequence but the third begins with
    ids = [system + [1, 2, 3], system + [4, 5], [7] * 12, system + [1, 2, 9], system[:5] + [8] * 8]
    trained = [11, 10, 3, 11, 6]
    # 0, 1 and 3 share the ten system tokens, less the one each restarts from: 2 x 9 saved. 4 shares
    # only 5 - 1 with them (all four: 3 x 4 = 12 saved, fewer), so it stays alone; 2 shares nothing
    assert prefix_groups(ids, trained, min_shared=4) == [(9, [0, 1, 3]), (0, [2]), (0, [4])]
    # the same sequences in another order: the same groups
    assert prefix_groups(ids[::-1], trained[::-1], min_shared=4) == [(0, [0]), (9, [1, 3, 4]), (0, [2])]
    # 0 and 3 alone share 10 (one short of their 11 common untrained tokens), but 1 with them saves 2 x 9
    assert prefix_groups([ids[0], ids[3]], [11, 11], min_shared=4) == [(10, [0, 1])]
    assert prefix_groups([ids[0], ids[3], ids[1]], [11, 11, 10], min_shared=4) == [(9, [0, 1, 2])]
    assert prefix_groups(ids, trained, min_shared=10) == [(10, [0, 3]), (0, [1]), (0, [2]), (0, [4])]
    assert prefix_groups(ids[:2], [0, 0], min_shared=1) == [(0, [0]), (0, [1])]  # trained from the start: no sharing
    assert prefix_groups([system + [1], system + [1]], [len(system) + 1] * 2, min_shared=4) == [(10, [0, 1])]


def test_shared_prefix_rows_lay_each_prefix_out_once():
    from tunesmith.data.packing import collate_shared_prefixes, prefix_groups

    system = [9, 9, 9, 9, 8]
    examples = [
        TokenizedExample(system + [1, 2], [IGNORE] * 5 + [1, 2], "a"),
        TokenizedExample([5, 6, 7], [IGNORE, 6, 7], "b"),
        TokenizedExample(system + [3], [IGNORE] * 5 + [3], "c"),
    ]
    groups = prefix_groups([e.input_ids for e in examples], [5, 1, 5], min_shared=3)
    assert groups == [(4, [0, 2]), (0, [1])]
    batch = collate_shared_prefixes(examples, groups)
    assert batch.input_ids.tolist() == [[9, 9, 9, 9, 8, 1, 2, 8, 3, 5, 6, 7]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 4, 5, 6, 4, 5, 0, 1, 2]]
    assert batch.targets.tolist() == [[IGNORE, IGNORE, IGNORE, IGNORE, 1, 2, IGNORE, 3, IGNORE, 6, 7, IGNORE]]
    assert batch.example_ids.tolist() == [[-1, -1, -1, -1, 0, 0, 0, 2, 2, 1, 1, 1]]
    assert (batch.num_tokens, batch.num_targets) == (16, 5)  # the examples' own tokens; every target kept once
    # through collate_packed, a prefix shorter than MIN_SHARED tokens is not worth sharing
    assert collate_packed(examples, 8, 0, flat=True, share_prefixes=True).input_ids.shape == (1, 16)
    longer = [TokenizedExample([9] * 12 + e.input_ids, [IGNORE] * 12 + e.labels, e.where) for e in examples]
    # all three now begin with twelve 9s (b's own tokens start after them): one group sharing 12 - 1
    assert collate_packed(longer, 8, 0, flat=True, share_prefixes=True).input_ids.shape == (1, 16 + 36 - 2 * 11)


def test_shared_prompt_rows_give_each_sequence_its_own_logps(tiny_dir):
    """Prompt once, chosen, then rejected restarting from the last prompt token: the same log-probs as
    two separate padded sequences (including a completion pair that shares its first tokens)."""
    import torch

    from tunesmith.data.packing import collate_padded, collate_pair_prompts, collate_shared_prompt, shared_prefix_length
    from tunesmith.data.templates import IGNORE, TokenizedExample
    from tunesmith.models import load_model
    from tunesmith.models.forward import batch_sequence_logps

    def ex(prompt, completion):
        return TokenizedExample(prompt + completion, [IGNORE] * len(prompt) + completion, "t")

    chosen = [ex([1, 5, 9, 12], [40, 41, 42]), ex([1, 7], [50, 51, 52, 53, 54]), ex([3, 3, 3, 8, 8], [60])]
    rejected = [ex([1, 5, 9, 12], [40, 77]), ex([1, 7], [90]), ex([3, 3, 3, 8, 8], [61, 62, 63, 64])]
    assert [shared_prefix_length(c, r) for c, r in zip(chosen, rejected)] == [4, 2, 5]  # prompts only
    shared = collate_shared_prompt(chosen, rejected, pad_id=0)
    # row = chosen + rejected from the last prompt token: (7 + 3), (7 + 2), (6 + 5) tokens
    assert shared.input_ids.shape == (3, 11)
    assert shared.num_tokens == 10 + 9 + 11
    assert shared.position_ids[2].tolist() == [0, 1, 2, 3, 4, 5, 4, 5, 6, 7, 8]
    model = load_model(tiny_dir, torch.device("cpu"))
    with torch.no_grad():
        expected, n_exp = batch_sequence_logps(model, collate_padded(chosen + rejected, 0), 6)
        got, n_got = batch_sequence_logps(model, shared, 6)
        one_row = collate_pair_prompts(chosen, rejected)
        flat, n_flat = batch_sequence_logps(model, one_row, 6)
    # one row, no padding: each prompt but its last token once, both replies restarting from that token
    assert one_row.input_ids.shape == (1, (3 + 4 + 3) + (1 + 6 + 2) + (4 + 2 + 5))
    assert one_row.num_tokens == shared.num_tokens == 30
    assert torch.equal(n_exp, n_got)
    assert torch.allclose(got, expected, atol=1e-5), (got, expected)
    assert torch.equal(n_exp, n_flat) and torch.allclose(flat, expected, atol=1e-5), (flat, expected)
