"""Forward passes that return summed token losses: used for training and for evaluation."""

from __future__ import annotations

import contextlib

import torch

from tunesmith.data.packing import Batch, collate
from tunesmith.data.templates import TokenizedExample
from tunesmith.losses.sft import IGNORE, sequence_logps, target_logps, token_nll_sum
from tunesmith.models.attention import packs_flat


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under a PEFT wrapper (LoRA layers stay injected in it)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


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


def final_hidden(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.nn.Module]:
    """The decoder body's last hidden states and the LM head, without the head's full-vocabulary pass."""
    inner = unwrap(model)
    packed = {}
    if batch.attention_mask is None and batch.position_ids is not None and packs_flat(inner):
        packed["packed_rows"] = True  # attention per packed example (models/attention.py), not over the row
    hidden = inner.get_decoder()(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                 position_ids=batch.position_ids, use_cache=False, **packed).last_hidden_state
    return hidden, inner.get_output_embeddings()


def batch_nll_sum(model: torch.nn.Module, batch: Batch, amp_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Σ token NLL over the batch's trained tokens.

    Runs the decoder body, then the LM head only at trained positions (`token_nll_sum`), instead of
    the model's own forward, which would build logits for every position.
    """
    with autocast(batch.input_ids.device, amp_dtype):
        hidden, head = final_hidden(model, batch)
        return token_nll_sum(hidden, batch.targets, head.weight, getattr(head, "bias", None))


def batch_sequence_logps(model: torch.nn.Module, batch: Batch, num_examples: int,
                         amp_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """log π(y | x) summed over each collated example's trained tokens, and their counts: [num_examples] each."""
    with autocast(batch.input_ids.device, amp_dtype):
        hidden, head = final_hidden(model, batch)
        return sequence_logps(hidden, batch.targets, head.weight, getattr(head, "bias", None),
                              batch.example_ids, num_examples)


def batch_token_logps(model: torch.nn.Module, batch: Batch, amp_dtype: torch.dtype | None = None,
                      temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """log π(y_t | y_<t) at every trained position, laid out like the batch: ([rows, T] fp32, bool mask),
    plus the final hidden states [rows, T, H] (a value head reads them).

    With a sampling temperature τ, π is softmax(logits / τ): the distribution the tokens were sampled
    from, so that policy ratios and KL estimates are taken under the policy that produced them."""
    mask = batch.targets != IGNORE
    with autocast(batch.input_ids.device, amp_dtype):
        hidden, head = final_hidden(model, batch)
        bias = getattr(head, "bias", None)
        scaled = hidden if temperature == 1.0 else hidden / temperature  # (W h + b) / τ = W (h / τ) + b / τ
        logps, _ = target_logps(scaled, batch.targets, head.weight,
                                bias if bias is None or temperature == 1.0 else bias / temperature)
    logps = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_scatter(mask, logps.float())
    return logps, mask, hidden


def batch_last_hidden(model: torch.nn.Module, batch: Batch, num_examples: int,
                      amp_dtype: torch.dtype | None = None) -> torch.Tensor:
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


def optimizer_step(params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer, max_grad_norm: float) -> float:
    """Clip (when max_grad_norm > 0), step, clear gradients; returns the gradient norm before clipping."""
    if max_grad_norm > 0:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
    else:
        grad_norm = float(torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


@torch.no_grad()
def evaluate_nll(model: torch.nn.Module, examples: list[TokenizedExample], micro_batch_size: int,
                 packing: bool, max_length: int, pad_id: int, device: torch.device,
                 amp_dtype: torch.dtype | None = None, shared_prefix: bool = True) -> float:
    """Mean NLL per trained token over `examples` (dropout off)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    flat = packs_flat(model)
    for start in range(0, len(examples), micro_batch_size):
        batch = collate(examples[start : start + micro_batch_size], packing, max_length, pad_id,
                        flat, flat and shared_prefix).to(device)
        total += float(batch_nll_sum(model, batch, amp_dtype))
        count += batch.num_targets
    model.train(was_training)
    return total / max(1, count)
