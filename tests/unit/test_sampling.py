"""Rollout sampling pre-fills each prompt once and repeats its KV cache for the group's K samples
(rollout/sampling.py) and decodes the rows together, each leaving the batch at its end of turn: the same
distribution as `generate` with `num_return_sequences`, which pre-fills every prompt K times."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from tunesmith.models import load_model
from tunesmith.rollout import sampling
from tunesmith.rollout.sampling import draw, prompt_ids, sample_completions

# The tiny random model's logits are nearly flat (std 0.16): at this temperature a few tokens share most
# of the mass, so a few hundred samples show the distribution.
TEMPERATURE = 0.08


@pytest.fixture(scope="module")
def model_and_prompts(tiny_dir, tokenizer):
    model = load_model(tiny_dir, torch.device("cpu"))
    messages = [[{"role": "user", "content": "Say something."}], [{"role": "user", "content": "Hi " * 9}]]
    prompts = [prompt_ids(tokenizer, m, 64) for m in messages]
    assert len(prompts[0]) != len(prompts[1])  # rows of different lengths: left padding in the batch
    return model, prompts


def _sample(model, prompts, tokenizer, k, seed, temperature=TEMPERATURE, max_new_tokens=2):
    return sample_completions(
        model, prompts, k, temperature, 1.0, max_new_tokens, tokenizer.pad_token_id, -1, None, seed=seed
    )


def _plain(model, prompts, tokenizer, k, seed, temperature=TEMPERATURE, max_new_tokens=2):
    """Plain `generate` sampling: left-padded prompts, num_return_sequences=k, no cache given."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=True,
            temperature=temperature,
            top_p=1.0,
            top_k=None,
            max_new_tokens=max_new_tokens,
            num_return_sequences=k,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=-1,
        )
    return out[:, width:].tolist()


def _total_variation(a: list[int], b: list[int], bins: int = 5) -> float:
    """Total variation between two samples' frequencies of the `bins` tokens most common in both together,
    the rest pooled as one outcome (a long tail of tokens seen once would make two samples of one
    distribution look apart)."""
    top = [t for t, _ in Counter(a + b).most_common(bins)]
    ca, cb = (Counter(t if t in top else -1 for t in x) for x in (a, b))
    return 0.5 * sum(abs(ca[t] / len(a) - cb[t] / len(b)) for t in [*top, -1])


def test_prefilled_sampling_draws_what_plain_generate_draws(model_and_prompts, tokenizer):
    model, prompts = model_and_prompts
    k = 300
    ours = _sample(model, prompts, tokenizer, k, seed=1)
    theirs = _plain(model, prompts, tokenizer, k, seed=2)  # another seed: independent samples
    hotter = _plain(model, prompts, tokenizer, k, seed=3, temperature=2 * TEMPERATURE)
    for prompt in range(len(prompts)):
        for position in range(2):  # the first token (the cache's last prompt position) and the next one
            rows = range(prompt * k, (prompt + 1) * k)
            a = [ours[r][position] for r in rows]
            b = [theirs[r][position] for r in rows]
            c = [hotter[r][position] for r in rows]
            assert len(set(a)) > 1  # a distribution, not one token
            # two samples of 300 from one distribution over 6 outcomes: TV ~0.05; the test tells another one apart
            assert _total_variation(a, b) < 0.12, (prompt, position)
            assert _total_variation(b, c) > 0.2, (prompt, position)


def test_prefilled_cache_decodes_what_generate_decodes(model_and_prompts, tokenizer, monkeypatch):
    """In fp32 the pre-filled cache holds what generate's own pre-fill computes: drawing as `generate` draws
    (one `torch.multinomial` per step, in place of `draw`), the same seed gives the same tokens as generate's
    k pre-fills (`prefill_once=False`), over 8 steps."""
    model, prompts = model_and_prompts
    monkeypatch.setattr(sampling, "draw", lambda probs: torch.multinomial(probs, num_samples=1))
    ours = _sample(model, prompts, tokenizer, 4, seed=5, temperature=0.7, max_new_tokens=8)
    pad = tokenizer.pad_token_id
    plain = sample_completions(model, prompts, 4, 0.7, 1.0, 8, pad, -1, None, seed=5, prefill_once=False)
    assert ours == plain
    assert len({tuple(c) for c in ours}) > 1


def test_draw_takes_each_index_with_its_probability():
    probs = torch.tensor([[0.5, 0.0, 0.3, 0.2, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0]]).repeat(10_000, 1)
    torch.manual_seed(0)
    drawn = draw(probs)[:, 0].view(10_000, 2)
    first = torch.bincount(drawn[:, 0], minlength=5).float() / 10_000
    assert (first - probs[0]).abs().max() < 0.015  # 10,000 draws: standard error <= 0.005
    assert first[1] == 0 and first[4] == 0  # zero probability: never drawn
    assert bool((drawn[:, 1] == 4).all())


def test_a_row_leaves_the_batch_at_its_end_of_turn(model_and_prompts, tokenizer):
    """`decode` drops each row at its first end-of-turn token: the steps after it run the other rows only,
    and its completion ends there."""
    model, prompts = model_and_prompts
    # at temperature 1 the tiny model's draws are all but uniform over its vocabulary: the first row's
    # second token, made the end of turn, is drawn by no other row in the first two steps
    plain = _sample(model, prompts, tokenizer, 3, seed=0, temperature=1.0, max_new_tokens=4)
    end = plain[0][1]
    assert all(end not in row[:2] for row in plain[1:]) and plain[0][0] != end
    widths: list[int] = []
    hook = model.register_forward_pre_hook(
        lambda m, args, kw: widths.append(kw["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        out = sample_completions(model, prompts, 3, 1.0, 1.0, 4, tokenizer.pad_token_id, end, None, seed=0)
    finally:
        hook.remove()
    assert out[0] == plain[0][:2]  # the same draws until the row ended, and nothing after its end
    assert [row[:2] for row in out[1:]] == [row[:2] for row in plain[1:]]
    assert widths[:3] == [2, 6, 6] and widths[3] == 5  # pre-fill, two steps of 6 rows, then 5
