"""A model ready to answer: a base (alias, HF directory or .gguf) plus optional PEFT adapters, in eval mode.

Generation (`tunesmith.generation`), evaluation and reward models load through here; it lives in
models/ so that loading a model never needs the generation code.
"""

from __future__ import annotations

from pathlib import Path

from tunesmith.errors import ModelError
from tunesmith.models.adapter_files import adapter_load_error, check_adapter
from tunesmith.models.load import load_model, load_tokenizer, select_device
from tunesmith.models.registry import resolve_model_dir


def adapter_names(adapters: list[str]) -> list[str]:
    """A short, unique name per adapter directory: its folder's name, or its run's name for RUN/adapter."""
    names: list[str] = []
    for adapter in adapters:
        path = Path(adapter).resolve()
        base = path.parent.name if path.name == "adapter" else path.name
        name, n = base, 2
        while name in names or name == "base":
            name, n = f"{base}-{n}", n + 1
        names.append(name)
    return names


def load_for_inference(
    model: str,
    adapters: list[str] | None = None,
    device: str = "auto",
    merge: bool = False,
    trust_remote_code: bool = False,
):
    """(model, tokenizer) for a base (alias, HF dir or .gguf) plus optional PEFT adapter directories.

    Each adapter is loaded under `adapter_names` (e.g. "support" for runs/support/adapter); the last one is
    active (`model.set_adapter(name)` switches). `merge` folds a single adapter into a copy of the weights in
    memory (W + B·A·alpha/r; the files are untouched): same outputs, and no extra LoRA matmuls at every
    decoding step. `trust_remote_code`: a base whose architecture is its own code may load (and run it).
    """
    model_dir = resolve_model_dir(model, trust_remote_code)
    tokenizer = load_tokenizer(model_dir)
    dev = select_device(device)
    net = load_model(model_dir, dev)
    adapters = list(adapters or [])
    for adapter in adapters:  # every adapter's files and shapes, before PEFT reads any of them
        check_adapter(adapter, net, model_dir)
    for i, (adapter, name) in enumerate(zip(adapters, adapter_names(adapters))):
        path = Path(adapter)
        from peft import PeftModel  # heavy: peft (and transformers) only when an adapter is loaded

        try:
            if i == 0:
                net = PeftModel.from_pretrained(net, str(path), adapter_name=name)
            else:
                net.load_adapter(str(path), adapter_name=name)
                net.set_adapter(name)
        except (ValueError, RuntimeError, KeyError) as e:
            raise adapter_load_error(path, model_dir, e) from None
    if merge and adapters:
        if len(adapters) > 1:
            raise ModelError("merge: only one adapter can be folded into the weights")
        net = net.merge_and_unload()
    net.eval()
    return net, tokenizer
