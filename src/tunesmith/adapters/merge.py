"""Fold an adapter into its base: a plain Hugging Face model directory that any tool loads.

    base weights (fp32; for a QLoRA adapter: the NF4 weights it was trained against, dequantized)
    -> + adapter (PEFT) -> W + B·A·alpha/r, adapter layers removed -> save_pretrained + tokenizer (with
    its chat template) into OUT, written atomically

Why the NF4 weights for QLoRA: the adapter learnt to correct the quantized base, not the original one.
Merging it into the original fp32 weights gives a model that neither training nor anyone else has seen;
merging into dequantize(NF4(W)) reproduces the QLoRA model's logits.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import cast

import torch

from tunesmith.atomic import atomic_directory
from tunesmith.errors import ConfigError
from tunesmith.models import load_model, load_tokenizer, resolve_model_dir
from tunesmith.models.adapter_files import adapter_load_error, check_adapter, read_adapter_config

BASE_WEIGHTS = ("auto", "nf4", "original")


def adapter_method(adapter_dir: Path) -> str | None:
    """lora/qlora/... as recorded by the tunesmith run that wrote the adapter (RUN/run.json), if any."""
    run = Path(adapter_dir).parent / "run.json"
    if run.is_file():
        try:
            return json.loads(run.read_text()).get("method")
        except ValueError:
            return None
    return None


def dequantized_nf4_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    """{module name: dequantize(NF4(W))} for every linear layer QLoRA quantizes, exactly as training loads
    them (double-quantized NF4 through bitsandbytes), in fp32."""
    import bitsandbytes as bnb  # heavy: deferred until a QLoRA adapter is merged

    quantized = load_model(model_dir, torch.device("cpu"), quantize_4bit=True)
    weights = {}
    for name, module in quantized.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            weight = cast(bnb.nn.Params4bit, module.weight)  # Linear4bit's weight is a Params4bit
            weights[name] = bnb.functional.dequantize_4bit(weight.data, weight.quant_state).float()
    del quantized
    return weights


def resolve_base_weights(choice: str, adapter_dir: Path) -> str:
    if choice not in BASE_WEIGHTS:
        raise ConfigError(f"--base-weights: one of {', '.join(BASE_WEIGHTS)}")
    if choice != "auto":
        return choice
    return "nf4" if adapter_method(adapter_dir) == "qlora" else "original"


def merged_model(
    model: str,
    adapter: str | Path,
    base_weights: str = "auto",
    say: Callable[[str], None] = print,
    trust_remote_code: bool = False,
    progress: bool = False,
):
    """(merged model, tokenizer, which base weights) in memory, on the CPU in fp32; `progress`: PEFT's bar
    over the merged layers, on a terminal."""
    from peft import PeftModel  # heavy: peft loads transformers; deferred until used

    adapter = Path(adapter)
    read_adapter_config(adapter)  # a broken adapter is refused before the base loads
    model_dir = resolve_model_dir(model, trust_remote_code)
    which = resolve_base_weights(base_weights, adapter)
    base = load_model(model_dir, torch.device("cpu"))
    check_adapter(adapter, base, model_dir)
    if which == "nf4":
        say(
            "merging into the dequantized NF4 base weights the QLoRA adapter was trained against "
            "(--base-weights original to merge into the fp32 weights instead)"
        )
        modules = dict(base.named_modules())
        with torch.no_grad():
            for name, weight in dequantized_nf4_weights(model_dir).items():
                modules[name].weight.copy_(weight)
    try:
        peft_model = PeftModel.from_pretrained(base, str(adapter))
        merged = peft_model.merge_and_unload(progressbar=progress and sys.stderr.isatty())
    except (ValueError, RuntimeError, KeyError) as e:
        raise adapter_load_error(adapter, model_dir, e) from None
    merged.eval()
    return merged, load_tokenizer(model_dir), which


def merge_to_directory(
    model: str,
    adapter: str | Path,
    out: str | Path,
    base_weights: str = "auto",
    say: Callable[[str], None] = print,
    trust_remote_code: bool = False,
    progress: bool = False,
) -> dict:
    """Write the merged model as a Hugging Face directory (safetensors, config, tokenizer, chat template)."""
    merged, tokenizer, which = merged_model(model, adapter, base_weights, say, trust_remote_code, progress)
    with atomic_directory(out) as tmp:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return {"out": str(out), "base_weights": which, "params": sum(p.numel() for p in merged.parameters())}
