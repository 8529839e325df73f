"""Wrap a model with PEFT LoRA layers, and count what trains."""

from __future__ import annotations

import torch

from tunesmith.config.schema import LoraConfig
from tunesmith.errors import ConfigError


def parse_targets(target: str) -> str | list[str]:
    """'all-linear' (every linear layer of the blocks, not the LM head) or 'q_proj,v_proj'."""
    target = target.strip()
    if target == "all-linear":
        return target
    names = [t.strip() for t in target.split(",") if t.strip()]
    if not names:
        raise ConfigError("lora.target: empty; use all-linear or a list such as q_proj,v_proj")
    return names


def linear_layer_names(model: torch.nn.Module) -> list[str]:
    """Short names of the linear layers inside the blocks (what --target can name)."""
    names = set()
    for full, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) or type(module).__name__.startswith("Linear4bit"):
            if "lm_head" not in full:
                names.add(full.rsplit(".", 1)[-1])
    return sorted(names)


def apply_lora(model: torch.nn.Module, cfg: LoraConfig):
    """Freeze the base and inject LoRA layers (ΔW = B·A·alpha/r, B zero-initialised) with PEFT."""
    import peft  # heavy: peft loads transformers; deferred until LoRA is applied

    for p in model.parameters():
        p.requires_grad_(False)
    targets = parse_targets(cfg.target)
    if isinstance(targets, list):
        known = linear_layer_names(model)
        unknown = [t for t in targets if t not in known]
        if unknown:
            raise ConfigError(
                f"lora.target: no layer named {', '.join(unknown)} in this model; "
                f"its linear layers are {', '.join(known)}"
            )
    peft_cfg = peft.LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,  # type: ignore[arg-type]  # peft annotates it int; a float alpha works (scale = alpha / r)
        lora_dropout=cfg.dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
        bias="none",
    )
    return peft.get_peft_model(model, peft_cfg)


def _logical_numel(p: torch.Tensor) -> int:
    shape = getattr(getattr(p, "quant_state", None), "shape", None)  # a 4-bit weight is stored packed
    return torch.Size(shape).numel() if shape is not None else p.numel()


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters; tied weights counted once."""
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        n = _logical_numel(p)
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total
