"""Packed rows give the same loss (and gradients) as one example per padded row."""

from __future__ import annotations

import torch

from tests.conftest import chat_rows
from tunesmith.data.formats import Conversation, parse_row
from tunesmith.data.packing import collate_packed, collate_padded
from tunesmith.data.templates import tokenize_conversations
from tunesmith.models import load_model
from tunesmith.models.attention import NAME, packs_flat
from tunesmith.models.forward import batch_nll_sum


def _examples(tokenizer, n=12, train_on_prompt=False):
    convs = [Conversation(parse_row(r)[0], f"row{i}") for i, r in enumerate(chat_rows(n, seed=3))]
    return tokenize_conversations(tokenizer, convs, train_on_prompt)


def _loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    loss = batch_nll_sum(model, batch) / batch.num_targets
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_packed_loss_equals_unpacked(tiny_dir, tokenizer):
    """Rows of max_length and one flat row, with per-example attention and with transformers' masked SDPA."""
    for attention in (NAME, "sdpa"):
        model = load_model(tiny_dir, torch.device("cpu"))
        model.set_attn_implementation(attention)
        assert packs_flat(model) == (attention == NAME)
        model.requires_grad_(True)
        for train_on_prompt in (False, True):
            examples = _examples(tokenizer, train_on_prompt=train_on_prompt)
            padded = collate_padded(examples, tokenizer.pad_token_id)
            loss_a, grads_a = _loss_and_grads(model, padded)
            for flat in (False, True):
                packed = collate_packed(examples, 256, tokenizer.pad_token_id, flat=flat)
                assert packed.input_ids.shape[0] == 1 if flat else 1 < packed.input_ids.shape[0] < len(examples)
                assert packed.num_targets == padded.num_targets
                assert packed.num_tokens == padded.num_tokens
                loss_b, grads_b = _loss_and_grads(model, packed)
                assert abs(loss_a - loss_b) < 1e-5, (attention, flat, loss_a, loss_b)
                for name in grads_a:
                    torch.testing.assert_close(grads_a[name], grads_b[name], atol=1e-5, rtol=1e-4)


def test_packed_examples_do_not_attend_to_each_other(tiny_dir, tokenizer):
    """Changing one example's tokens leaves the other examples' losses in the same row unchanged."""
    model = load_model(tiny_dir, torch.device("cpu"))
    examples = _examples(tokenizer, n=4, train_on_prompt=True)
    batch = collate_packed(examples, 1024, tokenizer.pad_token_id)
    assert batch.input_ids.shape[0] == 1
    first_len = len(examples[0].input_ids)
    changed = batch.input_ids.clone()
    changed[0, : first_len - 1] = (changed[0, : first_len - 1] + 7) % 1000
    from tunesmith.models.forward import unwrap

    def hidden(ids, **packed):
        inner = unwrap(model)
        return inner.get_decoder()(
            input_ids=ids, position_ids=batch.position_ids, use_cache=False, **packed
        ).last_hidden_state

    for packed in ({}, {"packed_rows": True}):  # transformers' block-diagonal mask; per-example attention
        with torch.no_grad():
            a, b = hidden(batch.input_ids, **packed), hidden(changed, **packed)
        torch.testing.assert_close(a[0, first_len:], b[0, first_len:], atol=1e-6, rtol=0)
        assert not torch.allclose(a[0, : first_len - 1], b[0, : first_len - 1])
    # position ids restart at 0 for every example
    starts = (batch.position_ids[0] == 0).nonzero().flatten().tolist()
    assert starts[:4] == [
        0,
        first_len,
        first_len + len(examples[1].input_ids),
        first_len + len(examples[1].input_ids) + len(examples[2].input_ids),
    ]


def test_shared_prefix_loss_equals_unpacked(tiny_dir, tokenizer):
    """Examples that share a system prompt (two of them their whole prompt) in one row that holds each
    shared prefix once: the same loss and gradients as one example per padded row, with fewer tokens."""
    from tunesmith.data.packing import prefix_groups, trained_from

    system = {"role": "system", "content": "You turn support tickets into JSON with the keys name, order and intent."}
    rows = []
    for i, r in enumerate(chat_rows(12, seed=5)):
        if "messages" in r and i % 3:  # most chats get the long system prompt, the others keep theirs
            r = {"messages": [system] + [m for m in r["messages"] if m["role"] != "system"]}
        rows.append(r)
    same = {"role": "user", "content": "where is my parcel"}
    rows += [
        {"messages": [system, same, {"role": "assistant", "content": reply}]}
        for reply in ("on its way", "delivered yesterday at noon")
    ]
    convs = [Conversation(parse_row(r)[0], f"row{i}") for i, r in enumerate(rows)]
    model = load_model(tiny_dir, torch.device("cpu"))
    assert packs_flat(model)
    model.requires_grad_(True)
    for train_on_prompt in (False, True):
        examples = tokenize_conversations(tokenizer, convs, train_on_prompt)
        groups = prefix_groups([e.input_ids for e in examples], [trained_from(e) for e in examples])
        saved = sum((len(members) - 1) * s for s, members in groups)
        assert (saved > 0) == (not train_on_prompt)  # training on the prompt leaves nothing to share
        padded = collate_padded(examples, tokenizer.pad_token_id)
        shared = collate_packed(examples, 256, tokenizer.pad_token_id, flat=True, share_prefixes=True)
        assert shared.input_ids.shape == (1, padded.num_tokens - saved)
        assert (shared.num_tokens, shared.num_targets) == (padded.num_tokens, padded.num_targets)
        loss_a, grads_a = _loss_and_grads(model, padded)
        loss_b, grads_b = _loss_and_grads(model, shared)
        assert abs(loss_a - loss_b) < 1e-5, (train_on_prompt, loss_a, loss_b)
        for name in grads_a:
            torch.testing.assert_close(grads_a[name], grads_b[name], atol=1e-5, rtol=1e-4)
