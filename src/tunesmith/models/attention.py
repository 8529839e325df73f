"""Per-example attention for packed rows: each packed example runs causal SDPA on its own.

transformers runs a packed row (position ids restarting per example, no attention mask) through SDPA
with a block-diagonal causal mask as wide as the row: every query scores every key of the row and the
CPU kernel cannot skip the masked blocks, so a row of W tokens costs W² however short its examples
are. That is why packed rows were capped at `max_length` and padded to the widest one.

Here the row is cut where its position ids stop counting up by one (the example boundaries) and each
example runs causal SDPA over its own n_i tokens: Σ n_i² work, whatever the row's width. So a
micro-batch packs into one row with no padding at all (`collate_packed(..., flat=True)`), the
"varlen" layout that flash-attention kernels take on GPU, written with plain SDPA so it runs on
every device.

A segment whose positions start at s > 0 rather than 0 continues a shared prefix
(`data.packing.collate_shared_prefixes`): its queries see the first s tokens of the last segment
that started at 0, then themselves causally, so a prompt that several examples share is computed
once. transformers' own packed-sequence masks would isolate such a segment; rows laid out that way
are for this attention function only.

Each segment keeps the layer's own attention: a sliding window (Mistral, Qwen2, Gemma 2/3, Phi-3,
SmolLM3) bands its mask in absolute positions, and Gemma 2's soft-capped scores run the eager
arithmetic that SDPA cannot (`attend`), so a packed model trains the function it runs at inference
(tests/families/). Models whose attention is eager rather than SDPA switch to NAME_EAGER, whose
everything-else path is their own eager attention.

The decoder is told that a batch is packed with the `packed_rows=True` keyword, which transformers
passes through every decoder layer to the attention function; anything else (a padding mask, a
caller's own 4-D mask, generation with a KV cache) goes to transformers' SDPA unchanged.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F

from tunesmith.errors import ModelError

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel

NAME = "tunesmith_packed"  # for models that run SDPA
NAME_EAGER = "tunesmith_packed_eager"  # for models that run eager attention (SDPA cannot soft-cap: Gemma 2)
_REGISTERED = False


def example_spans(position_ids: torch.Tensor) -> list[list[tuple[int, int, int]]]:
    """Per row, each run of positions that count up by one, as (start, end, first position): one packed
    example (first position 0) or the rest of one that continues a shared prefix (first position > 0).

    positions [[0 1 2 0 1 0 1 2 3]] -> [[(0, 3, 0), (3, 5, 0), (5, 9, 0)]]
    positions [[0 1 2 3 2 3 4]]     -> [[(0, 4, 0), (4, 7, 2)]]
    """
    spans = []
    for positions in position_ids.tolist():  # one copy to the host (a sync on a GPU), then plain Python
        edges = [t for t in range(len(positions)) if t == 0 or positions[t] != positions[t - 1] + 1]
        edges.append(len(positions))
        spans.append([(a, b, positions[a]) for a, b in zip(edges[:-1], edges[1:])])
    return spans


def segment_mask(queries: int, first: int, window: int | None, device: torch.device) -> torch.Tensor | None:
    """Which keys each query of a segment sees, or None where plain causal attention is exact.

    The segment's queries sit at positions first .. first + queries - 1 and its keys at 0 .. first +
    queries - 1 (a shared prefix's first `first` tokens, then its own). Query p sees key j when j <= p
    and, under a sliding window w, j > p - w: the window of transformers' masks (`sliding_window_overlay`),
    w tokens counting the query itself.
    """
    keys = first + queries
    if first == 0 and (window is None or window >= queries):
        return None
    q = torch.arange(first, keys, device=device)[:, None]
    k = torch.arange(keys, device=device)[None, :]
    mask = k <= q
    if window is not None and window < keys:
        mask &= k > q - window
    return mask


@contextlib.contextmanager
def fp32_on_cpu(q: torch.Tensor) -> Iterator[Callable[[torch.Tensor], torch.Tensor]]:
    """Per-example attention on a CPU runs in fp32 even under bf16 autocast.

    The CPU flash-attention kernel's backward is ~3x slower in bf16 than in fp32 (per-example segments
    of ~100 tokens over an 80-token prefix, SmolLM2's 9 heads on AMX: 34 ms against 10.5 ms a layer),
    and fp32 is the more exact of the two. Passes without a gradient (DPO's reference, eval) run the
    same arithmetic, so a policy and its reference agree exactly where their weights do (first DPO
    loss ln 2). GPUs keep the autocast dtype. Yields the cast to apply to q, k and v; the caller casts
    the result back to q's dtype.
    """
    lower = q.dtype != torch.float32 or torch.is_autocast_enabled("cpu")  # autocast would cast fp32 q to bf16
    if q.device.type != "cpu" or not lower:
        yield lambda t: t
        return
    with torch.autocast("cpu", enabled=False):
        yield lambda t: t.float()


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    scaling: float | None,
    dropout: float,
    softcap: float | None = None,
) -> torch.Tensor:
    """Attention of q [b, heads, n, d] over k/v [b, kv_heads, m, d]: `mask` [n, m] (True = attend), or
    causal aligned to the last key when None. With logit soft-capping (Gemma 2) the scores are
    c · tanh(s / c) before the softmax, which SDPA cannot do, so that case runs the same arithmetic as
    transformers' eager attention."""
    gqa = q.shape[1] != k.shape[1]
    if softcap is None:
        causal = mask is None and q.shape[2] == k.shape[2]
        if mask is None and not causal:  # fewer queries than keys: causal aligned to the last key
            mask = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).tril(k.shape[2] - q.shape[2])
        with fp32_on_cpu(q) as up:
            return F.scaled_dot_product_attention(
                up(q), up(k), up(v), attn_mask=mask, is_causal=causal, dropout_p=dropout, scale=scaling, enable_gqa=gqa
            ).to(q.dtype)
    if gqa:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    scores = (q @ k.transpose(-1, -2)) * (scaling if scaling is not None else q.shape[-1] ** -0.5)
    scores = torch.tanh(scores / softcap) * softcap
    if mask is None:
        mask = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).tril(k.shape[2] - q.shape[2])
    probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1, dtype=torch.float32).to(q.dtype)
    return F.dropout(probs, p=dropout, training=dropout > 0) @ v


@torch.compiler.disable  # the example boundaries are data: a compiled layer runs this part eagerly
def _per_example_sdpa(query, key, value, position_ids, scaling, dropout, window=None, softcap=None):
    rows, width = query.shape[0], query.shape[2]
    spans = example_spans(position_ids.expand(rows, -1))
    if all(s == [(0, width, 0)] for s in spans):  # one example per row: one batched call
        out = attend(query, key, value, segment_mask(width, 0, window, query.device), scaling, dropout, softcap)
        return out.transpose(1, 2).contiguous()  # [rows, width, heads, head_dim], as transformers expects
    outs = []
    # unbind/split rather than slicing: their backward concatenates the pieces' gradients once, where a
    # slice's backward would write each piece into its own zero-filled copy of the whole tensor
    for q, k, v, row in zip(query.unbind(0), key.unbind(0), value.unbind(0), spans):
        sizes = [b - a for a, b, _ in row]
        pieces, root = [], None
        for (_, _, first), qi, ki, vi in zip(row, q.split(sizes, dim=1), k.split(sizes, dim=1), v.split(sizes, dim=1)):
            if first == 0 or root is None or root[0].shape[1] < first:
                root, first = (ki, vi), 0  # a sequence of its own (a row that merely starts past 0 counts as one)
            else:  # continues the shared prefix: its first `first` tokens, then itself
                ki, vi = torch.cat([root[0][:, :first], ki], dim=1), torch.cat([root[1][:, :first], vi], dim=1)
            mask = segment_mask(qi.shape[1], first, window, qi.device)
            pieces.append(attend(qi[None], ki[None], vi[None], mask, scaling, dropout, softcap)[0])
        outs.append(torch.cat(pieces, dim=1).transpose(0, 1))
    return torch.stack(outs).contiguous()


def packed_attention_forward(
    module,
    query,
    key,
    value,
    attention_mask,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
):
    """transformers' attention-function signature: q [rows, heads, W, d], k/v [rows, kv_heads, W, d].

    The layer's `sliding_window` (Mistral, Qwen2, Gemma 2/3, Phi-3, SmolLM3) bands each example's mask and
    its `softcap` (Gemma 2) caps the scores, as the model's own attention does at inference."""
    packed = kwargs.pop("packed_rows", False)
    position_ids = kwargs.get("position_ids")
    if packed and position_ids is not None and key.shape[2] == query.shape[2]:
        out = _per_example_sdpa(
            query, key, value, position_ids, scaling, dropout, kwargs.get("sliding_window"), kwargs.get("softcap")
        )
        return out, None
    return _fallback(module)(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
    )


def _fallback(module):
    """What runs everything but packed rows: transformers' SDPA, or for a model without SDPA support
    (soft-capped Gemma 2) its own eager attention, as it would have run without us."""
    if getattr(module.config, "_attn_implementation", None) == NAME_EAGER:
        return sys.modules[type(module).__module__].eager_attention_forward
    from transformers.integrations.sdpa_attention import sdpa_attention_forward  # heavy: deferred until used

    return sdpa_attention_forward


def register() -> None:
    """Make NAME a transformers attention implementation (its masks are SDPA's)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from transformers import AttentionInterface  # heavy: deferred until a model is loaded
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask, sdpa_mask

    AttentionInterface.register(NAME, packed_attention_forward)
    AttentionInterface.register(NAME_EAGER, packed_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME_EAGER, eager_mask)
    _REGISTERED = True


def use_packed_attention(model: torch.nn.Module) -> bool:
    """Switch a model that runs SDPA (or eager attention) to per-example attention; False (unchanged) for
    any other model."""
    config = getattr(model, "config", None)
    name = {"sdpa": NAME, "eager": NAME_EAGER}.get(getattr(config, "_attn_implementation", ""))
    if name is None:
        return False
    register()
    try:
        cast("PreTrainedModel", model).set_attn_implementation(name)
    except (ValueError, TypeError, AttributeError):  # an architecture that cannot switch keeps its own
        return False
    return getattr(model.config, "_attn_implementation", None) == name


def _config(model: torch.nn.Module):
    config = getattr(model, "config", None)
    if config is None and hasattr(model, "get_base_model"):
        config = cast("PeftModel", model).get_base_model().config
    return config


def has_sliding_window(config) -> bool:
    """Whether some layer attends through a sliding window (Mistral, Qwen2 with use_sliding_window,
    Gemma 2/3, Phi-3)."""
    if getattr(config, "sliding_window", None) is None or getattr(config, "use_sliding_window", True) is False:
        return False
    types = getattr(config, "layer_types", None)
    return types is None or "sliding_attention" in types


def pairs_in_positions(model: torch.nn.Module) -> bool:
    """Whether a preference row (prompt once, both replies) must carry its layout in position ids rather
    than a custom 4-D mask: models with a sliding window (transformers applies a caller's 4-D mask as it
    is, window or not) or eager soft-capped attention (which adds masks, and a bool one would be wrong).
    A model that needs it but cannot attend per example is refused. (Every model that attends per example
    takes its pairs in one flat row anyway, `data.packing.collate_pair_prompts`: no padding to the longest
    pair, and attention over each segment rather than the padded width.)"""
    config = _config(model)
    needs = has_sliding_window(config) or getattr(config, "_attn_implementation", None) == NAME_EAGER
    if needs and not packs_flat(model):
        raise ModelError(
            f"{getattr(config, 'model_type', 'this model')}: its sliding-window attention cannot be "
            f"reproduced for preference rows with attention implementation "
            f"{getattr(config, '_attn_implementation', None)!r}; load it with sdpa or eager attention"
        )
    return needs


def packs_flat(model: torch.nn.Module) -> bool:
    """Whether `model` (or the model under its PEFT / FSDP wrappers) attends per packed example."""
    return getattr(_config(model), "_attn_implementation", None) in (NAME, NAME_EAGER)
