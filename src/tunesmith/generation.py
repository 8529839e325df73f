"""Chat generation with the tokenizer's template: batched, greedy or sampled, a shared prompt prefix once.

The prompts of a batch usually begin with the same tokens (the chat template's header and system prompt:
80 of the demo's ~125). That prefix runs once, its KV cache is copied to every row, and each row continues
after it with its own tokens, padded in the middle:

    row:   [ shared prefix p_0..p_P-1 | pad .. pad | own tokens ]   attention mask 0 on the pads
    cache: the prefix's keys and values, computed once, repeated per row

Positions follow the attention mask (P + j for a row's j-th own token), so every row computes what it
would alone; without a long enough shared prefix, or for a model with a sliding window, the rows are
left-padded as usual.

The model comes from `tunesmith.models.inference.load_for_inference` (a base plus adapters).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, cast

import torch

from tunesmith.models.attention import has_sliding_window
from tunesmith.models.forward import decoding
from tunesmith.models.load import autocast_dtype
from tunesmith.progress import progress_bar


def as_messages(prompt: str | list[dict], system: str | None = None) -> list[dict]:
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    else:
        messages = [{"role": m["role"], "content": m["content"]} for m in prompt]
    if system is not None and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system}] + messages
    return messages


@torch.no_grad()
def generate_chat(
    model,
    tokenizer,
    prompts: Sequence[str | list[dict]],
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    batch_size: int = 16,
    system: str | None = None,
    seed: int = 0,
    precision: str = "auto",
    progress: str | None = None,
) -> list[str]:
    """Completions for each prompt (a user message, or a message list ending with a user turn).

    precision "auto" runs under bf16 autocast where the device has fast bf16 (as training does);
    `progress`: the label of a progress bar over the prompts (shown on a terminal)."""
    device = next(model.parameters()).device
    amp = autocast_dtype(precision, device)
    texts = [
        tokenizer.apply_chat_template(as_messages(p, system), tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]
    # longest first: batches of similar length waste less work on padding
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    outputs: list[str] = [""] * len(texts)
    bar = progress_bar(len(texts), progress, "prompt")
    try:
        torch.manual_seed(seed)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            rows = [tokenizer(texts[i], add_special_tokens=False)["input_ids"] for i in idx]
            sample = temperature > 0
            with decoding(model, device, amp):
                enc = prefix_cached_batch(model, rows, tokenizer.pad_token_id, device, max_new_tokens)
                out = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=sample,
                    temperature=temperature if sample else None,
                    top_p=top_p if sample else None,
                    top_k=None,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                    disable_compile=True,  # a static cache would compile every new shape on a GPU
                )
            new = out[:, enc["input_ids"].shape[1] :]
            for i, row in zip(idx, new):
                outputs[i] = tokenizer.decode(row, skip_special_tokens=True).strip()
            bar.update(len(idx))
    finally:
        bar.close()
    return outputs


MIN_SHARED_PREFIX = 16  # tokens: a shorter prefix is not worth a forward of its own


def prefix_cached_batch(
    model, rows: list[list[int]], pad_id: int, device: torch.device, max_new_tokens: int = 0
) -> dict:
    """`generate`'s inputs for token rows: the prefix they all share run once into a KV cache repeated per
    row, each row's own tokens after it (middle-padded); left-padded rows when no prefix is worth it, and
    for a model with a sliding window (transformers' windowed cache keeps a window of the prefix and does
    not follow a middle-padded row: tests/families/ caught other tokens).

    The cache is static, allocated for the rows plus `max_new_tokens`: transformers' default cache grows
    by concatenation, which copies every layer's whole cache at every new token (28% of the demo's
    decoding time on the CPU)."""
    windowed = has_sliding_window(model.config)
    shared = min(len(os.path.commonprefix(rows)), min(len(r) for r in rows) - 1)  # every row runs >= 1 token
    if len(rows) < 2 or shared < MIN_SHARED_PREFIX or windowed:
        shared = 0
    width = max(len(r) for r in rows) - shared
    ids = torch.full((len(rows), shared + width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        own = len(r) - shared  # its tokens end at the right edge, where generation continues
        ids[i, :shared], ids[i, ids.shape[1] - own :] = torch.tensor(r[:shared]), torch.tensor(r[shared:])
        mask[i, :shared], mask[i, ids.shape[1] - own :] = 1, 1
    enc: dict[str, Any] = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
    if windowed:
        return enc
    from transformers import DynamicCache, StaticCache  # heavy: deferred with transformers

    cache = StaticCache(config=model.config, max_cache_len=ids.shape[1] + max_new_tokens)
    if shared:
        prefix = DynamicCache(config=model.config)
        model(input_ids=enc["input_ids"][:1, :shared], past_key_values=prefix, use_cache=True, logits_to_keep=1)
        for i, layer in enumerate(prefix.layers):
            computed = cast(torch.Tensor, layer.keys), cast(torch.Tensor, layer.values)  # type: ignore[union-attr]
            keys, values = (t.expand(len(rows), *t.shape[1:]).contiguous() for t in computed)
            cache.update(keys, values, i)
    enc["past_key_values"] = cache
    return enc


def end_of_turn_ids(tokenizer) -> list[int]:
    """The token that ends an assistant turn in this tokenizer's chat template (read off the template
    itself), plus the tokenizer's eos if different. Stopping only at `eos_token` is the classic failure:
    many templates end a turn with their own token (e.g. <|im_end|>, <|eot_id|>) and the model talks on."""
    marker = "\u2063MARKER\u2063"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}], tokenize=False
    )
    after = text[text.rindex(marker) + len(marker) :]
    special = set(tokenizer.all_special_ids)
    ids = [i for i in tokenizer(after, add_special_tokens=False)["input_ids"] if i in special][:1]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


@torch.no_grad()
def stream_reply(
    model,
    tokenizer,
    messages: list[dict],
    on_text,
    max_new_tokens: int = 512,
    temperature: float = 0.0,
    top_p: float = 1.0,
    precision: str = "auto",
) -> tuple[str, int]:
    """Generate the assistant's reply to `messages`, calling on_text(piece) as text is decoded; stops at
    the template's end-of-turn token. Returns (reply, tokens generated)."""
    from transformers import TextStreamer  # heavy: transformers, deferred to the first call

    class _Callback(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                on_text(text)

    device = next(model.parameters()).device
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    enc = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(device)
    sample = temperature > 0
    with decoding(model, device, autocast_dtype(precision, device)):
        out = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=sample,
            temperature=temperature if sample else None,
            top_p=top_p if sample else None,
            top_k=None,
            eos_token_id=end_of_turn_ids(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            streamer=_Callback(tokenizer, skip_prompt=True, skip_special_tokens=True),
        )
    new = out[0, enc["input_ids"].shape[1] :]
    return tokenizer.decode(new, skip_special_tokens=True).strip(), int(new.numel())


def chat_loop(
    model, tokenizer, read, write, system: str | None = None, reply_prefix: str = "", **generation
) -> list[dict]:
    """An interactive chat: read() returns the user's line (EOFError ends), write(text) shows output.
    Keeps the history; /reset clears it, /exit ends. Returns the final history."""
    start = [{"role": "system", "content": system}] if system else []
    history = list(start)
    while True:
        try:
            line = read()
        except EOFError:
            break
        command = line.strip()
        if command in ("/exit", "/quit"):
            break
        if command == "/reset":
            history = list(start)
            write("(history cleared)\n")
            continue
        if not command:
            continue
        history.append({"role": "user", "content": line})
        write(reply_prefix)
        reply, _ = stream_reply(model, tokenizer, history, write, **generation)
        write("\n")
        history.append({"role": "assistant", "content": reply})
    return history
