"""Chat generation with the tokenizer's template: batched, left-padded, greedy or sampled."""

from __future__ import annotations

from pathlib import Path

import torch

from tunesmith.errors import ModelError
from tunesmith.models import load_model, load_tokenizer, resolve_model_dir, select_device


def load_for_inference(model: str, adapters: list[str] | None = None, device: str = "auto",
                       merge: bool = False):
    """(model, tokenizer) for a base (alias, HF dir or .gguf) plus optional PEFT adapter directories.

    Each adapter is loaded under its directory's name; the last one is active. `merge` folds a single
    adapter into a copy of the weights in memory (W + B·A·alpha/r; the files are untouched): same
    outputs, and no extra LoRA matmuls at every decoding step.
    """
    model_dir = resolve_model_dir(model)
    tokenizer = load_tokenizer(model_dir)
    dev = select_device(device)
    net = load_model(model_dir, dev)
    for i, adapter in enumerate(adapters or []):
        path = Path(adapter)
        if not (path / "adapter_config.json").is_file():
            raise ModelError(f"{path}: not an adapter directory (no adapter_config.json)")
        from peft import PeftModel

        name = path.resolve().name if i else "default"
        if i == 0:
            net = PeftModel.from_pretrained(net, str(path), adapter_name=name)
        else:
            net.load_adapter(str(path), adapter_name=name)
            net.set_adapter(name)
    if merge and adapters:
        if len(adapters) > 1:
            raise ModelError("merge: only one adapter can be folded into the weights")
        net = net.merge_and_unload()
    net.eval()
    return net, tokenizer


def as_messages(prompt: str | list[dict], system: str | None = None) -> list[dict]:
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    else:
        messages = [{"role": m["role"], "content": m["content"]} for m in prompt]
    if system is not None and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system}] + messages
    return messages


@torch.no_grad()
def generate_chat(model, tokenizer, prompts: list[str | list[dict]], max_new_tokens: int = 256,
                  temperature: float = 0.0, top_p: float = 1.0, batch_size: int = 16,
                  system: str | None = None, seed: int = 0, precision: str = "auto") -> list[str]:
    """Completions for each prompt (a user message, or a message list ending with a user turn).

    precision "auto" runs under bf16 autocast where the device has fast bf16 (as training does)."""
    from tunesmith.models.load import autocast_dtype
    from tunesmith.train.step import autocast

    device = next(model.parameters()).device
    amp = autocast_dtype(precision, device)
    texts = [tokenizer.apply_chat_template(as_messages(p, system), tokenize=False, add_generation_prompt=True)
             for p in prompts]
    # longest first: batches of similar length waste less work on padding
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    outputs: list[str] = [""] * len(texts)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues from the right edge of every row
    try:
        torch.manual_seed(seed)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(device)
            sample = temperature > 0
            with autocast(device, amp):
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=sample,
                                     temperature=temperature if sample else None,
                                     top_p=top_p if sample else None, top_k=None,
                                     pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            new = out[:, enc["input_ids"].shape[1]:]
            for i, row in zip(idx, new):
                outputs[i] = tokenizer.decode(row, skip_special_tokens=True).strip()
    finally:
        tokenizer.padding_side = side
    return outputs
