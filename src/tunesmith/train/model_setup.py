"""What every recipe does around its loop: the trainable model, the saved config, the saved result."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch

from tunesmith.adapters.lora import apply_lora, parameter_counts
from tunesmith.atomic import atomic_directory, atomic_write_text
from tunesmith.config.load import config_to_yaml
from tunesmith.models import load_model
from tunesmith.models.forward import decoder_layers, unwrap
from tunesmith.models.load import fp32_weight_bytes, keep_4bit_differentiable, weight_bytes

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel


def human_bytes(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def build_trainable_model(
    cfg, model_dir: Path, device: torch.device, amp_dtype: torch.dtype | None, say: Callable[[str], None]
) -> tuple[torch.nn.Module, int, int]:
    """The base (NF4 for qlora) with a fresh PEFT LoRA adapter, or every weight trainable for full.

    `cfg` is any recipe config with `method`, `lora` and `train`; seeds torch first, so the adapter's
    initialisation depends only on `train.seed`. Returns (model, trainable params, total params).
    """
    for warning in cfg.guard_rail_warnings():
        say(f"warning: {warning}")
    torch.manual_seed(cfg.train.seed)  # LoRA initialisation and dropout draw from this generator
    quantized = cfg.method == "qlora"
    model = load_model(model_dir, device, quantize_4bit=quantized, compute_dtype=amp_dtype or torch.float32)
    if quantized:
        keep_4bit_differentiable(model)
        say(
            f"qlora: base weights {human_bytes(weight_bytes(model))} in NF4 (double-quantized) "
            f"vs {human_bytes(fp32_weight_bytes(model))} in fp32"
        )
    if cfg.method in ("lora", "qlora"):
        model = apply_lora(model, cfg.lora)
    else:
        model.requires_grad_(True)
    if cfg.train.gradient_checkpointing:
        # non-reentrant checkpointing works with a frozen embedding (no input grads needed)
        unwrap(model).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.train.compile:
        compile_layers(model)
        say("compile: decoder layers compiled on first use (the first steps are slow)")
    trainable, total = parameter_counts(model)
    say(f"{cfg.method}: trainable params {trainable:,} of {total:,} ({100 * trainable / total:.4f}%)")
    return model, trainable, total


def compile_layers(model: torch.nn.Module) -> int:
    """torch.compile each decoder layer in place ("regional" compilation): the layers share one code, so it
    is compiled once rather than the whole model at once, and the LM head, loss and optimizer stay eager.
    Shapes are dynamic from the start: packed rows change width every step, and the recompile for
    dynamic shapes would otherwise land in the second step. Attention over packed examples runs eagerly
    inside (models/attention.py). Fuses what eager runs as separate passes over memory: RMSNorm, rotary
    embedding, SiLU x up, and PEFT's `base + lora_B(lora_A(x)) * scale`. Returns the layers compiled."""
    layers = decoder_layers(model)
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)


def write_run_config(run_dir: Path, cfg, recipe: str) -> None:
    """RUN/config.yaml: the resolved config, rerunnable (`--resume` reads it back); RUN/base_checksum.json:
    the base's weight files before training (save_trained adds their checksum after); RUN/data_checksum.json."""
    from tunesmith.models import resolve_model_dir
    from tunesmith.models.integrity import record_data, record_start

    record_start(run_dir, resolve_model_dir(cfg.model))
    record_data(run_dir, cfg.data)
    saved = dataclasses.replace(cfg, overwrite=False, resume=False)
    atomic_write_text(
        run_dir / "config.yaml",
        config_to_yaml(
            saved, f"# resolved config; rerun with: tunesmith {recipe} --config {run_dir / 'config.yaml'} --out NEW_DIR"
        ),
    )


def save_trained(
    model: torch.nn.Module,
    tokenizer,
    run_dir: Path,
    method: str,
    model_dir: Path,
    record_dir: Path | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """adapter/ (PEFT: adapter_config.json + adapter_model.safetensors) or model/ (full weights) in `run_dir`;
    first the base's checksum again (in `record_dir`, the run directory: `run_dir` unless given), which
    must equal the one taken at the start. `state_dict`: the whole weights gathered from FSDP's shards."""
    from tunesmith.errors import ModelError
    from tunesmith.models.integrity import record_end

    integrity = record_end(record_dir or run_dir, model_dir)
    if not integrity["untouched"]:
        raise ModelError(
            f"{model_dir}: the base's weight files changed during the run (checksum {integrity['start']} "
            f"-> {integrity['end']}); something else wrote to them"
        )
    if method in ("lora", "qlora"):
        target = run_dir / "adapter"
        # point the adapter at the local base so PEFT's own loaders find it without a hub
        for peft_cfg in cast("PeftModel", model).peft_config.values():
            peft_cfg.base_model_name_or_path = str(model_dir)
        with atomic_directory(target) as tmp:
            cast("PeftModel", model).save_pretrained(str(tmp))
        return target
    target = run_dir / "model"
    with atomic_directory(target) as tmp:
        cast("PreTrainedModel", model).save_pretrained(tmp, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
    return target
