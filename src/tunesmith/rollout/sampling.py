"""Sampling rollouts from the policy: chat-templated prompts in, completion token ids out."""

from __future__ import annotations

import torch

from tunesmith.data.templates import IGNORE, TokenizedExample
from tunesmith.models.forward import autocast


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
) -> list[list[int]]:
    """k sampled completions per prompt (prompt-major order), each cut after its first end-of-turn token.

    With `seed`, sampling draws from a generator seeded with it, and the global random state (dropout,
    the rest of training) is left as it was."""
    device = next(model.parameters()).device
    if seed is not None:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            return sample_completions(model, prompts, k, temperature, top_p, max_new_tokens, pad_id, eos_id, amp_dtype)
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for r, p in enumerate(prompts):  # left padding: generation continues from every row's right edge
        ids[r, width - len(p) :] = torch.tensor(p)
        mask[r, width - len(p) :] = 1
    with autocast(device, amp_dtype):
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
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
