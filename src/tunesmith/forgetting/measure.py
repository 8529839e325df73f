"""How far a tuned model has drifted from its base, measured on the base's own answers to a probe set.

    probe_perplexity      = exp( −(1/N) Σ_t log p_tuned(y_t | y_<t) )          over the N answer tokens
    base_probe_perplexity = exp( −(1/N) Σ_t log p_base(y_t | y_<t) )           the same, for the base
    kl_to_base            = (1/N) Σ_t KL( p_base(· | y_<t) ‖ p_tuned(· | y_<t) )  full vocabulary, per position

The answers are the base's greedy replies, so the base scores its lowest perplexity on them and the KL of
the base to itself is exactly 0. KL(base ‖ tuned) is large where the tuned model has lost mass on what
the base would say: the forgetting we care about, not the new behaviour the fine-tune was meant to add.

When the tuned model keeps the base's LM head (a LoRA adapter, which never wraps the head), the base's
side of the KL needs no second forward: with z = W h + b the tuned logits and p the base's distribution,

    Σ_v p_v log q_v = Σ_v p_v z_v − logsumexp(z) = m · h + p · b − logsumexp(z),    m = Wᵀ p  ([hidden])

so four numbers per answer token from one base pass (`BaseStats`: m, Σ p log p, p · b, log p(y); m and
p · b are stored relative to the answer token's row, for precision), cached
with the base's answers, give the exact KL and both perplexities from the tuned pass alone.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tunesmith.data.packing import collate_packed, collate_padded
from tunesmith.data.templates import IGNORE, TokenizedExample
from tunesmith.models.attention import packs_flat
from tunesmith.models.forward import Head, autocast, final_hidden, lm_head, unwrap
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


@dataclass
class BaseStats:
    """What the KL needs of the base at each answer token of one example (module docstring): m = Wᵀ p
    [n, hidden], Σ p log p [n], p · b [n] and log p(y) [n], in fp32."""

    expected_embedding: torch.Tensor
    neg_entropy: torch.Tensor
    expected_bias: torch.Tensor
    logp: torch.Tensor

    FIELDS = ("expected_embedding", "neg_entropy", "expected_bias", "logp")

    @staticmethod
    def cat(stats: list[BaseStats]) -> BaseStats:
        return BaseStats(*(torch.cat([getattr(s, f) for s in stats]) for f in BaseStats.FIELDS))

    def rows(self, start: int, stop: int) -> BaseStats:
        return BaseStats(*(getattr(self, f)[start:stop] for f in BaseStats.FIELDS))

    def clone(self) -> BaseStats:
        """A copy owning its memory (`rows` gives views of the batch's tensors)."""
        return BaseStats(*(getattr(self, f).clone() for f in BaseStats.FIELDS))


def kl_and_nll_sums_from_stats(
    tuned_hidden: torch.Tensor, head: Head, base: BaseStats, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same three sums as `kl_and_nll_sums`, from the tuned model's head inputs h [N, H] and the base's
    statistics at the same N positions, for a head z = W h + b (no soft-cap) the base shares:

    KL(p ‖ q) = Σ p log p − Σ p log q,   Σ p log q = m · h + p · b + log q(y)   (m, p · b taken relative to y)
    −log q(y) = logsumexp(z) − z_y,      −log p(y)
    """
    h = head.hidden(tuned_hidden).float()
    z = F.linear(h, head.weight.float(), None if head.bias is None else head.bias.float())
    log_q_y = z.gather(-1, targets[:, None])[:, 0] - torch.logsumexp(z, dim=-1)
    relative = (base.expected_embedding.double() * h.double()).sum(-1) + base.expected_bias.double()
    kl = (base.neg_entropy.double() - relative - log_q_y.double()).sum()
    return kl.float(), -log_q_y.sum(), -base.logp.sum()


def stats_from_logits(base_logits: torch.Tensor, head: Head, targets: torch.Tensor) -> BaseStats:
    """BaseStats at N positions from the base's logits there [N, V]: p = softmax(z),

    m = Σ_v p_v (w_v − w_y) = Wᵀ p − w_y,   p · b − b_y

    taken relative to the target's row (the base's own greedy token), so that m · h is the small
    Σ p z − z_y (a few nats), not two logit-sized numbers whose difference fp32 would blur."""
    log_p = torch.log_softmax(base_logits.float(), dim=-1)
    p = log_p.exp()
    p = p / p.sum(-1, keepdim=True)  # fp32's logsumexp scales every p alike by ~1e-6: Σ p z would carry it whole
    weight = head.weight.float()
    bias = head.bias.float() if head.bias is not None else None
    return BaseStats(
        p @ weight - weight[targets],
        (p * log_p).sum(-1),
        p @ bias - bias[targets] if bias is not None else p.new_zeros(p.shape[0]),
        log_p.gather(-1, targets[:, None])[:, 0],
    )


def shares_base_head(model: torch.nn.Module) -> bool:
    """Whether the base's statistics give this model's KL exactly: a PEFT model whose adapters leave the LM
    head a plain linear layer (LoRA's "all-linear" never targets it) with no soft-cap."""
    if getattr(model, "disable_adapter", None) is None:
        return False
    return type(unwrap(model).get_output_embeddings()) is torch.nn.Linear and lm_head(model).softcap is None


def _answer_hidden(model: torch.nn.Module, batch, keep: torch.Tensor) -> tuple[torch.Tensor, Head]:
    """The final hidden states at the trained (answer) positions only, [N, H], and the LM head."""
    hidden, head = final_hidden(model, batch)
    return hidden.reshape(-1, hidden.shape[-1])[keep], head


def _answer_logits(model: torch.nn.Module, batch, keep: torch.Tensor) -> torch.Tensor:
    """Logits at the trained (answer) positions only: [N, V]."""
    hidden, head = _answer_hidden(model, batch, keep)
    return head.logits(hidden)


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


def _answer_batches(model: torch.nn.Module, examples: list[TokenizedExample], pad_id: int, batch_size: int, bar):
    """(batch, keep, targets, examples) per micro-batch, in eval mode: one packed row (the shared prompt prefix
    once) where the model attends per packed example, padded rows otherwise; answer positions come out in
    example order either way."""
    device = next(model.parameters()).device
    flat = packs_flat(model)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(examples), batch_size):
            some = examples[start : start + batch_size]
            width = sum(len(e.input_ids) for e in some)  # one row
            batch = collate_packed(some, width, pad_id, True, True) if flat else collate_padded(some, pad_id)
            batch = batch.to(device)
            keep = batch.targets.reshape(-1) != IGNORE
            yield batch, keep, batch.targets.reshape(-1)[keep], some
            bar.update(len(some))
    finally:
        model.train(was_training)
        bar.close()


@torch.no_grad()
def base_statistics(
    model: torch.nn.Module, examples: list[TokenizedExample], pad_id: int, amp_dtype=None, progress=None
) -> list[BaseStats]:
    """The base's `BaseStats` for each example: `model` (a PEFT model) with its adapters switched off, in
    `measure_drift`'s micro-batches and chunks. `progress`: a progress bar's label."""
    batch_size, chunk = 8, 1024
    out: list[BaseStats] = []
    bar = progress_bar(len(examples), progress, "prompt")
    with base_context(model, None) as b:
        for batch, keep, targets, some in _answer_batches(b, examples, pad_id, batch_size, bar):
            device = batch.input_ids.device
            with autocast(device, amp_dtype):
                hidden, head = _answer_hidden(b, batch, keep)
            hidden = hidden.float()  # the head in fp32 (m = Wᵀ p would lose digits in bf16)
            stats = BaseStats.cat(
                [
                    stats_from_logits(head.logits(hidden[i : i + chunk]), head, targets[i : i + chunk])
                    for i in range(0, targets.numel(), chunk)
                ]
            )
            offsets = [0]
            for e in some:  # answer positions come in example order (`_answer_batches`)
                offsets.append(offsets[-1] + e.num_targets)
            assert offsets[-1] == targets.numel()
            out += [stats.rows(a, z).clone() for a, z in zip(offsets, offsets[1:])]
    return out


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
    base_stats: list[BaseStats] | None = None,
) -> dict[str, float]:
    """probe_perplexity, base_probe_perplexity and kl_to_base of `model` over `examples` (prompt + base
    answer, answer tokens trained). The base is `base`, or `model` with its adapters off; `base is model`
    means "this is the base" and gives kl_to_base = 0 exactly without a second pass; `base_stats` (one per
    example, from `base_statistics`, for a model that `shares_base_head`) stand in for the base's pass. A
    model that attends per packed example reads each micro-batch as one row, a prompt prefix the examples
    share (the chat template's system prompt) once. `progress`: a progress bar's label."""
    kl_sum, nll_sum, base_nll_sum, count = 0.0, 0.0, 0.0, 0
    bar = progress_bar(len(examples), progress, "prompt")
    done = 0
    for batch, keep, targets, some in _answer_batches(model, examples, pad_id, batch_size, bar):
        device = batch.input_ids.device
        if base_stats is not None:
            with autocast(device, amp_dtype):
                hidden, head = _answer_hidden(model, batch, keep)
            stats = BaseStats.cat(base_stats[done : done + len(some)])
            if stats.logp.numel() != targets.numel():
                raise ValueError("base statistics do not match these examples' answer tokens")
            sums = [  # the head in fp32, as `base_statistics` applies it
                kl_and_nll_sums_from_stats(
                    hidden[i : i + chunk], head, stats.rows(i, i + chunk), targets[i : i + chunk]
                )
                for i in range(0, targets.numel(), chunk)
            ]
        else:
            with autocast(device, amp_dtype):
                tuned = _answer_logits(model, batch, keep)
                if base is model:
                    reference = tuned
                else:
                    with base_context(model, base) as b:
                        reference = _answer_logits(b, batch, keep)
            sums = [  # [chunk, V] fp32 at a time
                kl_and_nll_sums(tuned[i : i + chunk], reference[i : i + chunk], targets[i : i + chunk])
                for i in range(0, targets.numel(), chunk)
            ]
        for kl, nll, base_nll in sums:
            kl_sum += float(kl)
            nll_sum += float(nll)
            base_nll_sum += float(base_nll)
        count += int(targets.numel())
        done += len(some)
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
