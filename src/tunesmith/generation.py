"""Chat generation with the tokenizer's template: batched, left-padded, greedy or sampled.

The model comes from `tunesmith.models.inference.load_for_inference` (a base plus adapters).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tunesmith.models.forward import autocast
from tunesmith.models.load import autocast_dtype


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
) -> list[str]:
    """Completions for each prompt (a user message, or a message list ending with a user turn).

    precision "auto" runs under bf16 autocast where the device has fast bf16 (as training does)."""
    device = next(model.parameters()).device
    amp = autocast_dtype(precision, device)
    texts = [
        tokenizer.apply_chat_template(as_messages(p, system), tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]
    # longest first: batches of similar length waste less work on padding
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    outputs: list[str] = [""] * len(texts)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues from the right edge of every row
    try:
        torch.manual_seed(seed)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False).to(
                device
            )
            sample = temperature > 0
            with autocast(device, amp):
                out = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=sample,
                    temperature=temperature if sample else None,
                    top_p=top_p if sample else None,
                    top_k=None,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
            new = out[:, enc["input_ids"].shape[1] :]
            for i, row in zip(idx, new):
                outputs[i] = tokenizer.decode(row, skip_special_tokens=True).strip()
    finally:
        tokenizer.padding_side = side
    return outputs


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
    with autocast(device, autocast_dtype(precision, device)):
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
