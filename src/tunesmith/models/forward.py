"""Forward passes through a causal LM that return what the losses need: summed token NLLs, sequence
and token log-probs, last hidden states, without the LM head's full-vocabulary pass.

Every recipe, the forgetting measure and generation run the model through these, so a family's
peculiarities (logit soft-capping, a scaled head, packed-row attention) are handled here once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F

from tunesmith.data.packing import Batch, target_positions
from tunesmith.losses.sft import IGNORE, LinearLogps, sequence_logps, target_logps, token_nll_sum
from tunesmith.models.attention import packs_flat
from tunesmith.models.kernels import liger_target_logps, uses_liger

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel


@dataclass
class Head:
    """The LM head as the model applies it: logits = softcap(W (h / scale) + b), softcap(z) = c · tanh(z / c).

    Granite divides its logits by `logits_scaling`; Gemma 2 (and Gemma 3 where set) soft-caps them with
    `final_logit_softcapping`. The losses apply both, so training sees the logits inference does.
    `fused_logps`: the fused kernel computing log-probs at trained positions (models/kernels.py), or None
    for tunesmith's own (losses/sft.py)."""

    weight: torch.Tensor
    bias: torch.Tensor | None = None
    scale: float = 1.0
    softcap: float | None = None
    fused_logps: LinearLogps | None = None

    def hidden(self, h: torch.Tensor) -> torch.Tensor:
        return h if self.scale == 1.0 else h / self.scale

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary logits of hidden states h [..., H] (only where a caller needs every one)."""
        z = F.linear(self.hidden(h), self.weight, self.bias)
        return z if self.softcap is None else torch.tanh(z / self.softcap) * self.softcap


def lm_head(model: torch.nn.Module) -> Head:
    inner = unwrap(model)
    head = inner.get_output_embeddings()
    config = inner.config
    config = getattr(config, "get_text_config", lambda: config)()
    return Head(
        head.weight,
        getattr(head, "bias", None),
        float(getattr(config, "logits_scaling", None) or 1.0),
        getattr(config, "final_logit_softcapping", None),
        liger_target_logps if uses_liger(inner) else None,
    )


def unwrap(model: torch.nn.Module) -> PreTrainedModel:
    """The transformers model under a PEFT wrapper (LoRA layers stay injected in it)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else cast("PreTrainedModel", model)


def adapter_off(model: torch.nn.Module):
    """The reference policy: PEFT's disable_adapter() for LoRA/QLoRA; the model itself otherwise."""
    return cast("PeftModel", model).disable_adapter() if hasattr(model, "peft_config") else contextlib.nullcontext()


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """No dropout and no gradients inside; the model's training mode as it was afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder body's blocks: `layers` on llama-like models, else the body's (first) ModuleList."""
    decoder = unwrap(model).get_decoder()
    layers = getattr(decoder, "layers", None)
    if layers is None:
        layers = next(m for m in decoder.children() if isinstance(m, torch.nn.ModuleList))
    return layers


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def decoding(model: torch.nn.Module, device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """Autocast to `dtype` for decoding, with each frozen `nn.Linear`'s weight and bias a `dtype` copy while
    inside, and each LoRA layer's active update folded into its base layer's copy (W + B A · scale) and the
    LoRA layer bypassed.

    Autocast keeps no cast of a frozen weight from one call to the next, so decoding a token at a time under
    plain autocast converts the whole model at every token: on a 2-core CPU that made bf16 decoding slower
    than fp32 (bench/grpo_scoring.py, README: 15.4 s against 11.7 s for 16 completions of 64 tokens; 6.2 s
    with the copies and rollout.sampling.draw). The copies are made once per context; the model computes
    what plain autocast computes up to the rounding of W + B A to `dtype`. Every module and parameter is put
    back on exit. Plain autocast without `dtype`, or where a LoRA layer cannot be folded (a quantized or
    trained base, DoRA and the other variants)."""
    swaps = [] if dtype is None else (_low_precision_linears(model, dtype) or [])
    previous = [(owner, name, getattr(owner, name)) for owner, name, _ in swaps]
    try:
        for owner, name, replacement in swaps:
            setattr(owner, name, replacement)
        with autocast(device, dtype):
            yield
    finally:
        for owner, name, original in reversed(previous):
            setattr(owner, name, original)


Swap = tuple[torch.nn.Module, str, object]  # (owner, attribute, replacement)


def _low_precision_linears(model: torch.nn.Module, dtype: torch.dtype) -> list[Swap] | None:
    """The swaps `decoding` makes, as (owner, attribute, replacement): a LoRA layer replaced in its parent by
    its base layer, whose weight becomes W + its active adapters' B A · scale in `dtype`; any other frozen
    linear's weight and bias in `dtype`. None if some LoRA layer cannot be folded that way."""
    from peft.tuners.lora import Linear as LoraLinear  # heavy: deferred with peft
    from peft.tuners.lora import LoraLayer

    swaps: list[Swap] = []
    folded: set[int] = set()  # the LoRA layers' modules, their base layers included

    def plain(module: object) -> torch.nn.Linear | None:
        """`module` if it is exactly an nn.Linear (not a quantized subclass) with a frozen weight."""
        if not isinstance(module, torch.nn.Linear) or type(module) is not torch.nn.Linear:
            return None
        return None if module.weight.requires_grad else module

    def cast(linear: torch.nn.Linear, weight: torch.Tensor) -> None:
        swaps.append((linear, "weight", torch.nn.Parameter(weight.to(dtype), requires_grad=False)))
        if linear.bias is not None:
            swaps.append((linear, "bias", torch.nn.Parameter(linear.bias.to(dtype), requires_grad=False)))

    with torch.no_grad():
        for name, module in model.named_modules():
            if not isinstance(module, LoraLayer):
                continue
            base = plain(module.get_base_layer())
            if not isinstance(module, LoraLinear) or base is None or (module.merged and module.disable_adapters):
                return None
            active = [] if module.merged or module.disable_adapters else module.active_adapters
            active = [a for a in active if a in module.lora_A]
            if any(module.use_dora.get(a) or module.lora_bias.get(a) or a in module.lora_variant for a in active):
                return None
            folded.update(id(m) for m in module.modules())
            parent, _, attribute = name.rpartition(".")
            swaps.append((model.get_submodule(parent), attribute, base))
            cast(base, base.weight + sum((module.get_delta_weight(a) for a in active), torch.zeros(())))
        for other in model.modules():
            linear = plain(other)
            if linear is not None and id(linear) not in folded:
                cast(linear, linear.weight)
    return swaps


def final_hidden(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, Head]:
    """The decoder body's last hidden states and the LM head, without the head's full-vocabulary pass."""
    inner = unwrap(model)
    packed = {}
    if batch.attention_mask is None and batch.position_ids is not None and packs_flat(inner):
        packed["packed_rows"] = True  # attention per packed example (models/attention.py), not over the row
    hidden = inner.get_decoder()(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=False,
        **packed,
    ).last_hidden_state
    return hidden, lm_head(inner)


def batch_nll_sum(model: torch.nn.Module, batch: Batch, amp_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Σ token NLL over the batch's trained tokens.

    Runs the decoder body, then the LM head only at trained positions (`token_nll_sum`), instead of
    the model's own forward, which would build logits for every position.
    """
    with autocast(batch.input_ids.device, amp_dtype):
        hidden, head = final_hidden(model, batch)
        return token_nll_sum(
            head.hidden(hidden),
            batch.targets,
            head.weight,
            head.bias,
            softcap=head.softcap,
            linear_logps=head.fused_logps,
        )


def batch_sequence_logps(
    model: torch.nn.Module, batch: Batch, num_examples: int, amp_dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """log π(y | x) summed over each collated example's trained tokens, and their counts: [num_examples] each."""
    with autocast(batch.input_ids.device, amp_dtype):
        hidden, head = final_hidden(model, batch)
        return sequence_logps(
            head.hidden(hidden),
            batch.targets,
            head.weight,
            head.bias,
            batch.example_ids,
            num_examples,
            softcap=head.softcap,
            linear_logps=head.fused_logps,
        )


def batch_token_logps(
    model: torch.nn.Module,
    batch: Batch,
    amp_dtype: torch.dtype | None = None,
    temperature: float = 1.0,
    num_examples: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """log π(y_t | y_<t) at every trained position, laid out like the batch: ([rows, T] fp32, bool mask),
    plus the final hidden states [rows, T, H] (a value head reads them).

    With `num_examples`, laid out per example instead, whatever the batch's rows (padded, or completions
    sharing their prompt's copy): row i holds example i's trained tokens from column 0 on
    ([num_examples, L], mask, hidden [num_examples, L, H]; `data.packing.target_positions`).

    With a sampling temperature τ, π is softmax(logits / τ): the distribution the tokens were sampled
    from, so that policy ratios and KL estimates are taken under the policy that produced them."""
    mask = batch.targets != IGNORE
    with autocast(batch.input_ids.device, amp_dtype):
        hidden, head = final_hidden(model, batch)
        # (W h + b) / τ = W (h / τ) + b / τ, and c · tanh(z / c) / τ = (c / τ) · tanh((z / τ) / (c / τ))
        scaled, bias, softcap = head.hidden(hidden) / temperature, head.bias, head.softcap
        logps, _ = target_logps(
            scaled,
            batch.targets,
            head.weight,
            None if bias is None else bias / temperature,
            softcap=None if softcap is None else softcap / temperature,
            linear_logps=head.fused_logps,
        )
    logps = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_scatter(mask, logps.float())
    if num_examples is None:
        return logps, mask, hidden
    index, mask = target_positions(batch, num_examples)
    logps = torch.where(mask, logps.reshape(-1)[index], 0.0)
    return logps, mask, hidden.reshape(-1, hidden.shape[-1])[index]


def batch_last_hidden(
    model: torch.nn.Module, batch: Batch, num_examples: int, amp_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """The final hidden state at each collated example's last token: [num_examples, hidden].

    A sequence's last token (the end of the reply, with the template's end-of-turn) has attended to
    the whole conversation, so it is where a reward or value head reads it.
    """
    with autocast(batch.input_ids.device, amp_dtype):
        hidden, _ = final_hidden(model, batch)
    flat_owner = batch.example_ids.reshape(-1)
    positions = torch.arange(flat_owner.numel(), device=flat_owner.device)
    real = flat_owner >= 0
    last = torch.full((num_examples,), -1, dtype=torch.long, device=flat_owner.device)
    last = last.scatter_reduce(0, flat_owner[real], positions[real], reduce="amax")
    return hidden.reshape(-1, hidden.shape[-1])[last]
