"""An adapter directory checked before PEFT reads it: a clear error naming the file and the field, instead of
a JSONDecodeError, a SafetensorError, a `size mismatch` RuntimeError or a download attempt from the Hub.

    adapter_config.json        a JSON object with `peft_type`; `r` a positive whole number
    adapter_model.safetensors  present, its header readable (not truncated), LoRA weights of rank `r`
    over a base                every adapted layer exists in the base with the shape the weights expect
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.errors import ModelError

if TYPE_CHECKING:
    import torch

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"


def _type(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def read_json_object(file: Path, what: str = "a JSON object") -> dict[str, Any]:
    """A JSON file that must hold an object, or a ModelError naming the file (and the line) and what is wrong."""
    try:
        value = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ModelError(f"{file}:{e.lineno}: not valid JSON: {e.msg} (column {e.colno})") from None
    except (OSError, UnicodeDecodeError, RecursionError) as e:
        raise ModelError(f"{file}: cannot read: {e}") from None
    if not isinstance(value, dict):
        raise ModelError(f"{file}:1: must be {what}, got {_type(value)}")
    return value


def read_adapter_config(adapter_dir: str | Path) -> dict[str, Any]:
    """The adapter's adapter_config.json as a dict, or a ModelError naming the file (and line) and the field."""
    path = Path(adapter_dir)
    file = path / CONFIG
    if not file.is_file():
        raise ModelError(f"{path}: not an adapter directory (no {CONFIG})")
    config = read_json_object(file, "a JSON object (a PEFT adapter config)")
    if not isinstance(config.get("peft_type"), str):
        raise ModelError(f"{file}: peft_type: missing or not a string: not a PEFT adapter config")
    r = config.get("r")
    if "r" in config and (not isinstance(r, int) or isinstance(r, bool) or r < 1):
        raise ModelError(f"{file}: r: must be a positive whole number (the LoRA rank), got {json.dumps(r)[:40]}")
    return config


def adapter_weight_shapes(adapter_dir: str | Path) -> dict[str, list[int]]:
    """Tensor name -> shape from the header of adapter_model.safetensors (the weights are not read)."""
    from safetensors import SafetensorError, safe_open  # heavy: deferred for CLI start-up

    path = Path(adapter_dir)
    file = path / WEIGHTS
    if not file.is_file():
        raise ModelError(f"{path}: no {WEIGHTS}: the adapter's weights are missing")
    try:
        with safe_open(str(file), framework="pt") as f:
            return {key: list(f.get_slice(key).get_shape()) for key in f.keys()}
    except (SafetensorError, OSError) as e:
        raise ModelError(f"{file}: not a readable safetensors file (truncated or damaged?): {e}") from None


def _lora_module(key: str) -> tuple[str, str] | None:
    """('model.layers.0.self_attn.q_proj', 'lora_A') for PEFT's 'base_model.model.model.layers.0...lora_A.weight'
    (None for any other tensor, or a layout other than PEFT's: PEFT checks those itself)."""
    prefix = "base_model.model."
    for part in ("lora_A", "lora_B"):
        head, sep, _ = key.partition(f".{part}.")
        if sep and head.startswith(prefix):
            return head[len(prefix) :], part
    return None


def check_adapter(adapter_dir: str | Path, base: torch.nn.Module, base_name: str | Path) -> dict[str, Any]:
    """The adapter's config, once its files read and its LoRA weights fit `base` (the model before PEFT wraps
    it): the rank its config names, and every adapted layer present with the shape the weights expect."""
    path = Path(adapter_dir)
    config = read_adapter_config(path)
    shapes = adapter_weight_shapes(path)
    r, ranks = config.get("r"), config.get("rank_pattern") or {}
    modules = dict(base.named_modules())
    trained_on = config.get("base_model_name_or_path")
    other = f": the adapter was trained on another base ({trained_on})" if trained_on else ": another base's adapter"
    targets = config.get("target_modules")
    if isinstance(targets, list):
        missing = [t for t in targets if not any(n == t or n.endswith(f".{t}") for n in modules)]
        if missing:
            raise ModelError(
                f"{path / CONFIG}: target_modules: {', '.join(map(str, missing))}: no such layer in {base_name}"
            )
    for key, shape in shapes.items():
        found = _lora_module(key)
        if found is None or len(shape) != 2:
            continue  # DoRA magnitudes, embedding adapters, saved modules: PEFT checks those itself
        name, part = found
        rank = shape[0] if part == "lora_A" else shape[1]
        if isinstance(r, int) and not ranks and rank != r:
            raise ModelError(
                f"{path / CONFIG}: r: {r}, but {WEIGHTS} holds rank-{rank} weights ({key}): "
                "the config does not belong to these weights"
            )
        layer = modules.get(name)
        if layer is None:
            raise ModelError(f"{path}: adapts layer '{name}', which {base_name} does not have{other}")
        width = getattr(layer, "in_features" if part == "lora_A" else "out_features", None)
        expected = shape[1] if part == "lora_A" else shape[0]
        if width is not None and width != expected:
            side = "input" if part == "lora_A" else "output"
            raise ModelError(
                f"{path}: {WEIGHTS}: {key} expects {name} with {expected} {side} features, {base_name} has "
                f"{width}{other}"
            )
    return config


def adapter_load_error(adapter_dir: str | Path, base_name: str | Path, e: Exception) -> ModelError:
    """What PEFT raised while loading the adapter, as a ModelError naming both (first line of its message)."""
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return ModelError(f"{adapter_dir}: cannot load the adapter over {base_name}: {first}")
