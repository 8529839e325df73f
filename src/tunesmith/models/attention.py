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

The decoder is told that a batch is packed with the `packed_rows=True` keyword, which transformers
passes through every decoder layer to the attention function; anything else (a padding mask, a
caller's own 4-D mask, generation with a KV cache) goes to transformers' SDPA unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NAME = "tunesmith_packed"
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


@torch.compiler.disable  # the example boundaries are data: a compiled layer runs this part eagerly
def _per_example_sdpa(query, key, value, position_ids, scaling, dropout):
    rows, width = query.shape[0], query.shape[2]
    spans = example_spans(position_ids.expand(rows, -1))
    gqa = query.shape[1] != key.shape[1]
    if all(s == [(0, width, 0)] for s in spans):  # one example per row: one batched call
        out = F.scaled_dot_product_attention(query, key, value, is_causal=True, dropout_p=dropout, scale=scaling,
                                             enable_gqa=gqa)
        return out.transpose(1, 2).contiguous()  # [rows, width, heads, head_dim], as transformers expects
    outs = []
    # unbind/split rather than slicing: their backward concatenates the pieces' gradients once, where a
    # slice's backward would write each piece into its own zero-filled copy of the whole tensor
    for q, k, v, row in zip(query.unbind(0), key.unbind(0), value.unbind(0), spans):
        sizes = [b - a for a, b, _ in row]
        pieces, root = [], None
        for (_, _, first), qi, ki, vi in zip(row, q.split(sizes, dim=1), k.split(sizes, dim=1), v.split(sizes, dim=1)):
            if first == 0 or root is None or root[0].shape[1] < first:
                root = (ki, vi)  # a sequence of its own (a row that merely starts past 0 counts as one)
                mask, causal = None, True
            else:  # continues the shared prefix: its first `first` tokens, then itself
                ki, vi = torch.cat([root[0][:, :first], ki], dim=1), torch.cat([root[1][:, :first], vi], dim=1)
                mask = torch.ones(qi.shape[1], ki.shape[1], dtype=torch.bool, device=qi.device).tril(first)
                causal = False
            pieces.append(F.scaled_dot_product_attention(qi[None], ki[None], vi[None], attn_mask=mask,
                                                         is_causal=causal, dropout_p=dropout, scale=scaling,
                                                         enable_gqa=gqa)[0])
        outs.append(torch.cat(pieces, dim=1).transpose(0, 1))
    return torch.stack(outs).contiguous()


def packed_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                             scaling: float | None = None, is_causal: bool | None = None, **kwargs):
    """transformers' attention-function signature: q [rows, heads, W, d], k/v [rows, kv_heads, W, d]."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    packed = kwargs.pop("packed_rows", False)
    position_ids = kwargs.get("position_ids")
    if packed and position_ids is not None and key.shape[2] == query.shape[2]:
        return _per_example_sdpa(query, key, value, position_ids, scaling, dropout), None
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  is_causal=is_causal, **kwargs)


def register() -> None:
    """Make NAME a transformers attention implementation (its masks are SDPA's)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, packed_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    _REGISTERED = True


def use_packed_attention(model: torch.nn.Module) -> bool:
    """Switch a model that runs SDPA to per-example attention; False (unchanged) for any other model."""
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    register()
    try:
        model.set_attn_implementation(NAME)
    except (ValueError, TypeError, AttributeError):  # an architecture that cannot switch keeps its SDPA
        return False
    return getattr(model.config, "_attn_implementation", None) == NAME


def packs_flat(model: torch.nn.Module) -> bool:
    """Whether `model` (or the model under its PEFT / FSDP wrappers) attends per packed example."""
    config = getattr(model, "config", None)
    if config is None and hasattr(model, "get_base_model"):
        config = model.get_base_model().config
    return getattr(config, "_attn_implementation", None) == NAME
