"""Liger-Kernel's fused kernels on CUDA, when installed: the LM head's fused linear cross-entropy and RMSNorm.

Liger (https://github.com/linkedin/Liger-Kernel) is not a tunesmith dependency: `pip install liger-kernel` on a
CUDA machine and `load_model` uses it; TUNESMITH_LIGER=0 turns it off. Its kernels are Triton, so a CPU never
uses them. tunesmith runs the decoder body itself and takes losses from its hidden states, so only two
kernels apply, never Liger's patched model forwards:

- per-token log-probs: logp_t = −CE_t, Liger's fused linear cross-entropy with reduction="none" (its chunked
  logits are never all in memory, like `_LinearTargetLogps`); it applies the head's soft-cap itself, and a
  logit scale or sampling temperature reaches it already folded into h, b and the cap (models/forward.py).
- RMSNorm: Llama-form norms (w · x / rms(x), normalised in fp32, cast back before the weight) become Liger's
  RMSNorm with the same weight Parameter, so optimizers, adapters and saved weights see no change.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import os
import re
from typing import cast

import torch

ENV = "TUNESMITH_LIGER"  # "0": never use Liger, even where it is installed
# The first release read for this module. Before Liger-Kernel PR #1298, reduction="none" scaled every token's
# gradient by the first token's upstream gradient: per-token log-probs with unequal weights (DPO, GRPO) got
# wrong gradients, silently.
MIN_VERSION = (0, 8, 5)
ATTR = "tunesmith_liger"  # True on a loaded model whose head and norms run on Liger's kernels
SAID = "tunesmith_kernels"  # what `use_liger_kernels` decided, in words
# RMSNorm classes that compute exactly Llama's form, which is Liger's casting_mode="llama" with offset 0
# (Gemma's 1 + w and OLMo 2's cast after the weight are other forms: those stay as they are)
LLAMA_NORMS = frozenset(
    {
        "LlamaRMSNorm",
        "MistralRMSNorm",
        "Qwen2RMSNorm",
        "Qwen3RMSNorm",
        "SmolLM3RMSNorm",
        "GraniteRMSNorm",
        "Phi3RMSNorm",
    }
)


def version_tuple(text: str) -> tuple[int, ...]:
    """`0.8.5.dev1` -> (0, 8, 5): the leading dotted numbers."""
    found = re.match(r"\d+(?:\.\d+)*", text)
    return tuple(int(n) for n in found.group().split(".")) if found else ()


@functools.cache
def _liger_import_error() -> str | None:
    """Why liger_kernel.transformers does not import (Triton missing, say), or None: once per process."""
    try:
        importlib.import_module("liger_kernel.transformers")
    except Exception as e:  # ImportError, or Triton failing to find a driver
        return f"{type(e).__name__}: {e}"
    return None


def liger_status(device: torch.device) -> tuple[bool, str]:
    """Whether Liger's kernels serve a model on `device`, and why (or why not), for a run's first lines."""
    if os.environ.get(ENV, "").strip() == "0":
        return False, f"off ({ENV}=0)"
    if device.type != "cuda":
        return False, "off (CUDA only: its kernels are Triton)"
    try:
        version = importlib.metadata.version("liger-kernel")
    except importlib.metadata.PackageNotFoundError:
        return False, "off (liger-kernel is not installed)"
    if version_tuple(version) < MIN_VERSION:
        wanted = ".".join(map(str, MIN_VERSION))
        return False, f"off (liger-kernel {version} is older than {wanted}, whose per-token gradients are right)"
    error = _liger_import_error()
    if error is not None:
        return False, f"off (liger-kernel {version} does not import: {error[:200]})"
    return True, f"liger-kernel {version}"


def use_liger_kernels(model: torch.nn.Module, device: torch.device) -> str:
    """Swap the model's Llama-form RMSNorms for Liger's and mark it for Liger's fused linear cross-entropy, where
    `liger_status` allows; returns what its first lines should say."""
    use, why = liger_status(device)
    if not use:
        said = f"Liger {why}"
        setattr(model, ATTR, False)
        setattr(model, SAID, said)
        return said
    from liger_kernel.transformers import LigerRMSNorm  # optional, CUDA only: deferred until used

    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child).__name__ not in LLAMA_NORMS:
                continue
            weight = cast("torch.nn.Parameter", child.weight)
            eps = getattr(child, "variance_epsilon", None) or getattr(child, "eps", 1e-6)
            # in_place=False: Liger's in-place backward writes dX over dY, a gradient autograd may hand elsewhere
            norm = LigerRMSNorm(weight.shape[0], eps=eps, casting_mode="llama", in_place=False)
            norm.weight = weight  # the same Parameter: adapters, optimizer state and saved weights unchanged
            setattr(parent, name, norm)
            swapped += 1
    said = f"Liger kernels ({why}): fused linear cross-entropy, RMSNorm in {swapped} modules"
    setattr(model, ATTR, True)
    setattr(model, SAID, said)
    return said


def uses_liger(model: torch.nn.Module) -> bool:
    """Whether `use_liger_kernels` put this (unwrapped) model on Liger's kernels."""
    return bool(getattr(model, ATTR, False))


def kernels_description(model: torch.nn.Module) -> str:
    """What `use_liger_kernels` said for this (unwrapped) model; empty for a model `load_model` did not load."""
    return str(getattr(model, SAID, ""))


def liger_target_logps(
    h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, y: torch.Tensor, softcap: float | None
) -> torch.Tensor:
    """logp_t = log softmax(softcap(W h_t + b))[y_t] = −CE_t, Liger's fused linear cross-entropy per token (fp32).

    h [rows, H] and y [rows] hold trained positions only (`target_logps` drops the rest), so no
    ignore_index is ever met; reduction="none" keeps one loss per row, and each row's upstream gradient
    (a DPO pair's weight, a GRPO advantage) reaches its row alone."""
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss  # optional, CUDA only

    loss = LigerFusedLinearCrossEntropyLoss(reduction="none", softcap=softcap)
    return -loss(weight, h.contiguous(), y, bias).float()
