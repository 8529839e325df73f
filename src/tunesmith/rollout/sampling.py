"""Sampling rollouts from the policy: chat-templated prompts in, completion token ids out."""

from __future__ import annotations

import torch

from tunesmith.data.templates import IGNORE, TokenizedExample
from tunesmith.models.attention import has_sliding_window
from tunesmith.models.forward import decoding


def prompt_ids(tokenizer, messages: list[dict], max_prompt_length: int) -> list[int]:
    """The chat-templated prompt with the assistant's generation header; long prompts keep their end."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"][-max_prompt_length:]


def rollout_seed(seed: int, step: int, index: int) -> int:
    """The sampling seed of one micro-batch of prompts: a function of (seed, step, its index in the step)
    only, so a rollout is the same whichever process samples it and however many there are."""
    # torch.manual_seed takes at most 64 bits: a seed past ~9e7 (the service draws them below 2**31) would overflow
    return ((seed * 1_000_003 + step) * 100_003 + index) % 2**63


@torch.no_grad()
def sample_completions(
    model,
    prompts: list[list[int]],
    k: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    pad_id: int,
    eos_id: int,
    amp_dtype,
    seed: int | None = None,
    prefill_once: bool = True,
) -> list[list[int]]:
    """k sampled completions per prompt (prompt-major order), each cut after its first end-of-turn token.

    With `seed`, sampling draws from a generator seeded with it, and the global random state (dropout,
    the rest of training) is left as it was. `prefill_once`: each prompt's KV cache computed once and
    repeated for its k samples (`prefilled_cache`), and the rows decoded by `decode`, which drops each
    one as it ends, rather than `generate`'s k pre-fills and decoding every row to the longest (a windowed
    model, whose cache transformers keeps its own way, always takes `generate`)."""
    device = next(model.parameters()).device
    if seed is not None:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            return sample_completions(
                model, prompts, k, temperature, top_p, max_new_tokens, pad_id, eos_id, amp_dtype, None, prefill_once
            )
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for r, p in enumerate(prompts):  # left padding: generation continues from every row's right edge
        ids[r, width - len(p) :] = torch.tensor(p)
        mask[r, width - len(p) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    with decoding(model, device, amp_dtype):
        if prefill_once and not has_sliding_window(model.config):
            # each prompt pre-filled once, its KV cache repeated for its k samples: k-1 prompt forwards fewer
            cache = prefilled_cache(model, ids, mask, k, max_new_tokens)
            ids, mask = ids.repeat_interleave(k, 0), mask.repeat_interleave(k, 0)
            return decode(model, cache, ids, mask, temperature, top_p, max_new_tokens, eos_id)
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=True,
            temperature=temperature,
            top_p=top_p,
            top_k=None,
            max_new_tokens=max_new_tokens,
            num_return_sequences=k,
            pad_token_id=pad_id,
            eos_token_id=eos_id,
        )
    completions = []
    for row in out[:, width:].tolist():
        cut = row.index(eos_id) + 1 if eos_id in row else len(row)
        completions.append(row[:cut])
    return completions


def decode(model, cache, ids: torch.Tensor, mask: torch.Tensor, temperature: float, top_p: float, n: int, eos_id: int):
    """Up to n tokens sampled after each left-padded row of `ids`, whose tokens but the last are in `cache`
    (`prefilled_cache`), all rows decoded together; a row leaves the batch (and the cache) at its first
    `eos_id`, so no step computes a finished row. Each step's distribution is `generate(do_sample=True)`'s:
    temperature, then top-p, with transformers' own warpers; one token is drawn per row by `draw`."""
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper  # heavy

    warpers = [TemperatureLogitsWarper(temperature)] + ([TopPLogitsWarper(top_p)] if top_p < 1.0 else [])
    rows = torch.arange(ids.shape[0], device=ids.device)  # the rows still decoding, as indices into ids
    out: list[list[int]] = [[] for _ in range(ids.shape[0])]
    last, positions = ids[:, -1:], mask.sum(-1, keepdim=True) - 1
    for step in range(n):
        logits = (
            model(
                input_ids=last,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=cache,
                cache_position=torch.tensor([ids.shape[1] - 1 + step], device=ids.device),
                use_cache=True,
            )
            .logits[:, -1]
            .float()
        )
        for warp in warpers:
            logits = warp(last, logits)
        tokens = draw(torch.softmax(logits, dim=-1))  # [rows, 1]
        for r, t in zip(rows.tolist(), tokens[:, 0].tolist()):
            out[r].append(t)
        going = tokens[:, 0] != eos_id
        if not bool(going.any()) or step == n - 1:
            break
        if not bool(going.all()):  # finished rows leave the batch and the cache
            keep = going.nonzero().squeeze(1)
            rows, tokens, mask, positions = rows[keep], tokens[keep], mask[keep], positions[keep]
            for layer in cache.layers:
                layer.keys, layer.values = layer.keys[keep], layer.values[keep]
        last, positions = tokens, positions + 1
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
    return out


def draw(probs: torch.Tensor) -> torch.Tensor:
    """One index per row of `probs` [rows, n] (each row sums to ~1), drawn with probability probs[r, i]: the
    first i whose cumulative sum exceeds u · total, u ~ U[0, 1). A zero-probability index is never drawn.
    `torch.multinomial` draws an exponential for every vocabulary entry instead, a sizeable share of a few
    rows' decoding step on the CPU (bench/grpo_scoring.py in fp32: 11.7 s -> 9.9 s for 16 completions of
    64 tokens with this draw). Returns [rows, 1]."""
    cdf = probs.cumsum(-1)
    u = torch.rand(probs.shape[0], 1, device=probs.device, dtype=cdf.dtype) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).clamp_(max=probs.shape[-1] - 1)


def prefilled_cache(model, ids: torch.Tensor, mask: torch.Tensor, k: int, max_new_tokens: int):
    """A static KV cache for k samples of each left-padded prompt row: every row but its last token run once,
    at the positions `generate` gives them (the count of real tokens before each), and repeated k times
    (prompt-major), with room for `max_new_tokens`. `decode` then runs only the last prompt token of each
    of the k·rows rows, and decodes them together."""
    from transformers import DynamicCache, StaticCache  # heavy: deferred with transformers

    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    prefix = DynamicCache(config=model.config)
    model(
        input_ids=ids[:, :-1],
        attention_mask=mask[:, :-1],
        position_ids=positions[:, :-1],
        past_key_values=prefix,
        use_cache=True,
        logits_to_keep=1,
    )
    cache = StaticCache(config=model.config, max_cache_len=ids.shape[1] + max_new_tokens)
    for i, layer in enumerate(prefix.layers):
        keys, values = layer.keys, layer.values  # type: ignore[union-attr]
        cache.update(keys.repeat_interleave(k, 0), values.repeat_interleave(k, 0), i)  # type: ignore[union-attr]
    return cache


def completion_example(prompt: list[int], completion: list[int], where: str) -> TokenizedExample:
    """Prompt + sampled completion as one sequence whose trained (scored) tokens are the completion's."""
    return TokenizedExample(prompt + completion, [IGNORE] * len(prompt) + completion, where)


def sample_prompts(
    model, tokenizer, messages: list[list[dict]], k: int, sampling, max_prompt_length: int, amp_dtype, seed: int
) -> tuple[list[list[int]], list[list[int]]]:
    """The prompts' token ids (chat template, cut to `max_prompt_length`) and `k` completions sampled for
    each (prompt-major) with `sampling`'s temperature, top_p and max_new_tokens (grpo and ppo)."""
    p_ids = [prompt_ids(tokenizer, m, max_prompt_length) for m in messages]
    completions = sample_completions(
        model,
        p_ids,
        k,
        sampling.temperature,
        sampling.top_p,
        sampling.max_new_tokens,
        tokenizer.pad_token_id,
        tokenizer.eos_token_id,
        amp_dtype,
        seed=seed,
    )
    return p_ids, completions
