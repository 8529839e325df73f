"""A reward model on disk and in memory: the base (+ its adapter) and a scalar head.

Layout of a trained reward model directory (RUN/reward_model/):
  reward_model.json        {"base": local base directory, "method": lora|qlora|full, "hidden_size": H}
  reward_head.safetensors  "weight" [1, H] and "bias" [1]: r = w · h_last + b
  adapter/                 the PEFT adapter (lora, qlora), or model/ (full fine-tuning)
The score of a conversation is read from the final hidden state of its last token.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from tunesmith.atomic import atomic_write_bytes, atomic_write_text
from tunesmith.errors import ModelError
from tunesmith.models.adapter_files import read_json_object
from tunesmith.models.inference import load_for_inference

CONFIG = "reward_model.json"
HEAD = "reward_head.safetensors"


def new_reward_head(hidden_size: int, device: torch.device) -> torch.nn.Linear:
    """A zero head: every score starts at 0, so the first Bradley–Terry loss is exactly ln 2."""
    head = torch.nn.Linear(hidden_size, 1, device=device, dtype=torch.float32)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    return head


def save_reward_head(directory: Path, head: torch.nn.Linear, base_dir: Path, method: str) -> None:
    tensors = {"weight": head.weight.detach().float().cpu().contiguous(), "bias": head.bias.detach().float().cpu()}
    atomic_write_bytes(directory / HEAD, save(tensors))
    atomic_write_text(
        directory / CONFIG,
        json.dumps({"base": str(base_dir), "method": method, "hidden_size": head.in_features}, indent=2) + "\n",
    )


def find_reward_model(path: str | Path) -> tuple[Path, dict]:
    """The reward model directory (a `tunesmith reward` run or its reward_model/) and its manifest."""
    directory = Path(path)
    if (directory / "reward_model").is_dir() and not (directory / CONFIG).is_file():
        directory = directory / "reward_model"  # a run directory was given
    if not (directory / CONFIG).is_file():
        raise ModelError(f"{path}: not a reward model (no {CONFIG}; train one with `tunesmith reward`)")
    file = directory / CONFIG
    meta = read_json_object(file, "a JSON object with base, method and hidden_size")
    for key, kind in (("base", str), ("hidden_size", int)):
        if not isinstance(meta.get(key), kind):
            raise ModelError(f"{file}: {key}: missing or not a {kind.__name__} (written by `tunesmith reward`)")
    if not (directory / "adapter").is_dir() and not (directory / "model").is_dir():
        raise ModelError(f"{directory}: neither adapter/ nor model/ inside: the reward model's weights are missing")
    return directory, meta


def load_reward_head(directory: Path, meta: dict, device: torch.device) -> torch.nn.Linear:
    """The saved head, frozen, on `device`."""
    tensors = load_file(str(directory / HEAD))
    head = new_reward_head(meta["hidden_size"], device)
    with torch.no_grad():
        head.weight.copy_(tensors["weight"])
        head.bias.copy_(tensors["bias"])
    return head.requires_grad_(False)


def load_reward_model(path: str | Path, device: str = "auto") -> tuple[torch.nn.Module, torch.nn.Linear, Any]:
    """(model, head, tokenizer) of a reward model directory written by `tunesmith reward`."""
    directory, meta = find_reward_model(path)
    if (directory / "adapter").is_dir():
        model, tokenizer = load_for_inference(meta["base"], [str(directory / "adapter")], device)
    else:
        model, tokenizer = load_for_inference(str(directory / "model"), None, device)
    return model, load_reward_head(directory, meta, next(model.parameters()).device), tokenizer
