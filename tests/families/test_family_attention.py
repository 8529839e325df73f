"""Every family trains the function it runs: packed rows (per-example attention, shared prefixes) give the
loss and gradients of one example per padded row through the model's own attention, with sliding
windows shorter than the examples and soft-capped scores and logits; the loss's logits are the model's."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import chat_rows
from tests.families.tiny import FAMILIES, WINDOW, build_tiny
from tunesmith.data.formats import Conversation, parse_row
from tunesmith.data.packing import collate_packed, collate_padded, collate_pair_prompts
from tunesmith.data.templates import tokenize_conversations
from tunesmith.losses.sft import IGNORE
from tunesmith.models import load_model
from tunesmith.models.attention import packs_flat
from tunesmith.models.forward import batch_nll_sum, batch_sequence_logps

SYSTEM = {"role": "system", "content": "You turn support tickets into JSON with the keys name, order and intent."}


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("families")
    return {f: build_tiny(f, tokenizer, root / f) for f in FAMILIES}


def _examples(tokenizer, train_on_prompt=False):
    """Chats of ~25-70 tokens (longer than the window), most sharing a long system prompt, two their whole prompt."""
    rows = []
    for i, r in enumerate(chat_rows(10, seed=7)):
        if "messages" in r and i % 3:
            r = {"messages": [SYSTEM] + [m for m in r["messages"] if m["role"] != "system"]}
        rows.append(r)
    same = {"role": "user", "content": "where is my parcel"}
    rows += [
        {"messages": [SYSTEM, same, {"role": "assistant", "content": reply}]}
        for reply in ("on its way", "delivered yesterday at noon")
    ]
    convs = [Conversation(parse_row(r)[0], f"row{i}") for i, r in enumerate(rows)]
    examples = tokenize_conversations(tokenizer, convs, train_on_prompt)
    assert max(len(e.input_ids) for e in examples) > 2 * WINDOW
    return examples


def _loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    loss = batch_nll_sum(model, batch) / batch.num_targets
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_and_shared_prefix_equal_padded_rows(family, family_dirs, tokenizer):
    model = load_model(family_dirs[family], torch.device("cpu"))
    assert packs_flat(model), f"{family}: no per-example attention"
    model.requires_grad_(True)
    for train_on_prompt in (False, True):
        examples = _examples(tokenizer, train_on_prompt)
        padded = collate_padded(examples, tokenizer.pad_token_id)  # the model's own attention, with its masks
        loss_a, grads_a = _loss_and_grads(model, padded)
        for share in (False, True):
            packed = collate_packed(examples, 4096, tokenizer.pad_token_id, flat=True, share_prefixes=share)
            assert packed.input_ids.shape[0] == 1
            loss_b, grads_b = _loss_and_grads(model, packed)
            assert abs(loss_a - loss_b) < 1e-5, (family, train_on_prompt, share, loss_a, loss_b)
            assert grads_a.keys() == grads_b.keys() and grads_a
            for name in grads_a:
                torch.testing.assert_close(grads_a[name], grads_b[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("family", ["mistral", "gemma2", "gemma3", "qwen2"])
def test_dpo_rows_equal_separate_sequences(family, family_dirs, tokenizer):
    """The DPO layout (prompt once, the rejected reply restarting from a copy of its last token) under a window."""
    from tunesmith.data.preference import PreferencePair
    from tunesmith.data.prepare import tokenize_pairs

    model = load_model(family_dirs[family], torch.device("cpu"))
    replies = ["it is on its way and should arrive by friday", "no", "delivered yesterday at noon to your door"]
    pairs = [
        PreferencePair(
            [SYSTEM, {"role": "user", "content": f"where is my parcel number {i}"}],
            [{"role": "assistant", "content": replies[i]}],
            [{"role": "assistant", "content": replies[(i + 1) % 3]}],
            f"t:{i}",
        )
        for i in range(3)
    ]
    tokenized = tokenize_pairs(tokenizer, pairs)
    chosen, rejected = [t.chosen for t in tokenized], [t.rejected for t in tokenized]
    with torch.no_grad():
        alone, counts_a = batch_sequence_logps(model, collate_padded(chosen + rejected, tokenizer.pad_token_id), 6)
        shared, counts_b = batch_sequence_logps(model, collate_pair_prompts(chosen, rejected), 6)
    assert min(len(e.input_ids) for e in chosen) > 2 * WINDOW
    assert counts_a.tolist() == counts_b.tolist()
    torch.testing.assert_close(alone, shared, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("family", ["gemma2", "gemma3", "granite", "llama"])
def test_loss_uses_the_models_own_logits(family, family_dirs, tokenizer):
    """Soft-capped (Gemma) and scaled (Granite) logits: the loss equals cross-entropy on the model's logits."""
    model = load_model(family_dirs[family], torch.device("cpu"))
    batch = collate_padded(_examples(tokenizer)[:4], tokenizer.pad_token_id)
    with torch.no_grad():
        ours = batch_nll_sum(model, batch)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        theirs = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(),
            batch.targets.reshape(-1),
            ignore_index=IGNORE,
            reduction="sum",
        )
    assert abs(float(ours) - float(theirs)) < 1e-3 * batch.num_targets**0.5, (family, float(ours), float(theirs))


def test_preference_rows_carry_their_layout_in_positions_only_where_needed(family_dirs):
    from tunesmith.models.attention import pairs_in_positions

    needs = {f: pairs_in_positions(load_model(family_dirs[f], torch.device("cpu"))) for f in FAMILIES}
    assert needs == {f: f in ("mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3", "smollm3") for f in FAMILIES}
