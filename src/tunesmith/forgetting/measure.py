"""How far a tuned model has drifted from its base, measured on the base's own answers to a probe set.

    probe_perplexity      = exp( −(1/N) Σ_t log p_tuned(y_t | y_<t) )          over the N answer tokens
    base_probe_perplexity = exp( −(1/N) Σ_t log p_base(y_t | y_<t) )           the same, for the base
    kl_to_base            = (1/N) Σ_t KL( p_base(· | y_<t) ‖ p_tuned(· | y_<t) )  full vocabulary, per position

The answers are the base's greedy replies, so the base scores its lowest perplexity on them and the KL of
the base to itself is exactly 0. KL(base ‖ tuned) is large where the tuned model has lost mass on what
the base would say: the forgetting we care about, not the new behaviour the fine-tune was meant to add.
"""

from __future__ import annotations

import contextlib
import math

import torch

from tunesmith.data.packing import collate_packed, collate_padded
from tunesmith.data.templates import IGNORE, TokenizedExample
from tunesmith.models.attention import packs_flat
from tunesmith.models.forward import autocast, final_hidden
from tunesmith.progress import progress_bar


def kl_and_nll_sums(
    tuned_logits: torch.Tensor,
    base_logits: torch.Tensor,
    targets: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Σ_t KL(p_base,t ‖ p_tuned,t), Σ_t −log p_tuned,t(y_t), Σ_t −log p_base,t(y_t)) over the rows of
    [N, V] logits, in fp32.

    KL(p ‖ q) = Σ_v p(v) (log p(v) − log q(v)),  p = softmax(base_logits), q = softmax(tuned_logits)
    """
    log_q = torch.log_softmax(tuned_logits.float(), dim=-1)
    log_p = torch.log_softmax(base_logits.float(), dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum()
    nll = -log_q.gather(-1, targets[:, None]).sum()
    base_nll = -log_p.gather(-1, targets[:, None]).sum()
    return kl, nll, base_nll


def _answer_logits(model: torch.nn.Module, batch, keep: torch.Tensor) -> torch.Tensor:
    """Logits at the trained (answer) positions only: [N, V]."""
    hidden, head = final_hidden(model, batch)
    return head.logits(hidden.reshape(-1, hidden.shape[-1])[keep])


def base_context(model: torch.nn.Module, base: torch.nn.Module | None):
    """How to run the base: a separate model, or the same PEFT model with its adapters switched off."""
    if base is not None:
        return contextlib.nullcontext(base)
    disable = getattr(model, "disable_adapter", None)
    if disable is None:
        raise ValueError(
            "measuring drift needs the base: pass `base`, or a PEFT model whose adapters can be switched off"
        )
    return _switched_off(model)


@contextlib.contextmanager
def _switched_off(model):
    with model.disable_adapter():
        yield model


@torch.no_grad()
def measure_drift(
    model: torch.nn.Module,
    examples: list[TokenizedExample],
    pad_id: int,
    base: torch.nn.Module | None = None,
    batch_size: int = 8,
    amp_dtype: torch.dtype | None = None,
    chunk: int = 1024,
    progress: str | None = None,
) -> dict[str, float]:
    """probe_perplexity, base_probe_perplexity and kl_to_base of `model` over `examples` (prompt + base
    answer, answer tokens trained). The base is `base`, or `model` with its adapters off; `base is model`
    means "this is the base" and gives kl_to_base = 0 exactly without a second pass. A model that attends
    per packed example reads each micro-batch as one row, a prompt prefix the examples share (the chat
    template's system prompt) once. `progress`: a progress bar's label."""
    device = next(model.parameters()).device
    flat = packs_flat(model)
    was_training = model.training
    model.eval()
    kl_sum, nll_sum, base_nll_sum, count = 0.0, 0.0, 0.0, 0
    bar = progress_bar(len(examples), progress, "prompt")
    try:
        for start in range(0, len(examples), batch_size):
            some = examples[start : start + batch_size]
            width = sum(len(e.input_ids) for e in some)  # one row
            batch = collate_packed(some, width, pad_id, True, True) if flat else collate_padded(some, pad_id)
            batch = batch.to(device)
            keep = batch.targets.reshape(-1) != IGNORE
            targets = batch.targets.reshape(-1)[keep]
            with autocast(device, amp_dtype):
                tuned = _answer_logits(model, batch, keep)
                if base is model:
                    reference = tuned
                else:
                    with base_context(model, base) as b:
                        reference = _answer_logits(b, batch, keep)
            for i in range(0, targets.numel(), chunk):  # [chunk, V] fp32 at a time
                kl, nll, base_nll = kl_and_nll_sums(
                    tuned[i : i + chunk], reference[i : i + chunk], targets[i : i + chunk]
                )
                kl_sum += float(kl)
                nll_sum += float(nll)
                base_nll_sum += float(base_nll)
            count += int(targets.numel())
            bar.update(len(some))
    finally:
        model.train(was_training)
        bar.close()
    if count == 0:
        raise ValueError("the probe has no answer tokens")
    return {
        "probe_perplexity": math.exp(nll_sum / count),
        "base_probe_perplexity": math.exp(base_nll_sum / count),
        "kl_to_base": max(0.0, kl_sum / count),
        "probe_tokens": count,
    }


def base_perplexity(
    model: torch.nn.Module,
    examples: list[TokenizedExample],
    pad_id: int,
    base: torch.nn.Module | None = None,
    amp_dtype: torch.dtype | None = None,
) -> float:
    """The base's own probe perplexity (the yardstick of probe_ppl_increase): `base`, or `model` with its
    adapters switched off."""
    with base_context(model, base) as b:
        return measure_drift(b, examples, pad_id, base=b, amp_dtype=amp_dtype)["probe_perplexity"]
