"""Log-probabilities of target tokens, and the supervised fine-tuning loss built on them."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

IGNORE = -100
CHUNK_ROWS = 512  # rows of logits in flight: 512 x 49K x 4 B = 100 MB for SmolLM2
# logp_t for rows of (h [rows, H], W, b, y [rows], softcap): another library's fused kernel in place of
# `_LinearTargetLogps` (models/kernels.py: Liger's on CUDA); the same values, to rounding
LinearLogps = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor, float | None], torch.Tensor]


class _LinearTargetLogps(torch.autograd.Function):
    """logp_t = log softmax(z_t)[y_t], z_t = W h_t + b, for rows of h, `chunk` rows of logits at a time, never kept.

    Gradient: d logp_t / d h_t = -(p_t - onehot(y_t)) W = -G_t, with p_t = softmax(W h_t + b).
    With a frozen head (LoRA, QLoRA) the forward computes G_t chunk by chunk and keeps only it,
    [rows, H] instead of the [rows, V] log-softmax autograd would keep (V = 49K for SmolLM2); then
    backward is grad_h_t = -g_t G_t, with no extra matmul. (G, not W[y] - p W: when p_t nears onehot
    the two terms cancel, and under bf16 autocast their rounding would swamp the gradient; G's matmul
    rounds like the usual backward's.) With a trainable head (full
    fine-tuning) backward recomputes each chunk's softmax instead: grad_z = g (onehot(y) - p),
    grad_h = grad_z W, grad_W = grad_zᵀ h, grad_b = Σ grad_z: one more head forward, the same memory bound.
    With logit soft-capping (Gemma 2) z_t = c · tanh((W h_t + b) / c), whose derivative 1 − tanh² scales
    (p − onehot) elementwise before the matmul with W in both paths.
    """

    @staticmethod
    def forward(ctx, h, weight, bias, y, chunk, softcap=None):
        head_grad = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        keep_g = ctx.needs_input_grad[0] and not head_grad
        logps, g_rows = [], []  # G rows, (p - onehot(y)) W
        for start in range(0, h.shape[0], chunk):
            z = F.linear(h[start : start + chunk], weight, bias).float()
            if softcap is not None:
                tanh = torch.tanh(z / softcap)
                z = tanh * softcap
            lse = torch.logsumexp(z, dim=-1, keepdim=True)
            logps.append((z.gather(1, y[start : start + chunk, None]) - lse).squeeze(1))
            if keep_g:
                p = z.sub_(lse).exp_()  # in place: one [chunk, V] buffer in flight
                p[torch.arange(p.shape[0], device=p.device), y[start : start + chunk]] -= 1  # p - onehot(y)
                if softcap is not None:
                    p.mul_(1 - tanh * tanh)
                g_rows.append((p.to(weight.dtype) @ weight).float())
        ctx.chunk, ctx.head_grad, ctx.h_dtype, ctx.softcap = chunk, head_grad, h.dtype, softcap
        if keep_g:
            ctx.save_for_backward(torch.cat(g_rows))  # all that backward needs
        elif head_grad or ctx.needs_input_grad[0]:
            ctx.save_for_backward(weight, y, h, bias)
        return torch.cat(logps)

    @staticmethod
    def backward(ctx, grad):
        if not ctx.head_grad:
            (g_rows,) = ctx.saved_tensors
            return (-grad[:, None] * g_rows).to(ctx.h_dtype), None, None, None, None, None
        weight, y, h, bias = ctx.saved_tensors
        grad_h, grad_w = torch.empty_like(h), torch.zeros_like(weight, dtype=torch.float32)
        grad_b = None if bias is None else torch.zeros_like(bias, dtype=torch.float32)
        for start in range(0, h.shape[0], ctx.chunk):
            hc, yc = h[start : start + ctx.chunk], y[start : start + ctx.chunk]
            z = F.linear(hc, weight, bias).float()
            tanh = None if ctx.softcap is None else torch.tanh(z / ctx.softcap)
            gz = torch.softmax(z if tanh is None else tanh * ctx.softcap, dim=-1).neg_()
            gz[torch.arange(len(yc), device=yc.device), yc] += 1
            gz.mul_(grad[start : start + ctx.chunk, None])  # g (onehot(y) - p)
            if tanh is not None:
                gz.mul_(1 - tanh * tanh)
            grad_h[start : start + ctx.chunk] = (gz.to(weight.dtype) @ weight).to(h.dtype)
            grad_w += gz.t() @ hc.float()
            if grad_b is not None:
                grad_b += gz.sum(0)
        return (grad_h, grad_w.to(weight.dtype), None if grad_b is None else grad_b.to(bias.dtype), None, None, None)


def target_logps(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    lm_head_weight: torch.Tensor,
    lm_head_bias: torch.Tensor | None = None,
    chunk_size: int = CHUNK_ROWS,
    softcap: float | None = None,
    linear_logps: LinearLogps | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(y_t | tokens <= t) at every position with y_t != IGNORE, and the row each belongs to.

        logp_t = log softmax(W h_t + b)[y_t]

    hidden: [rows, T, H] final hidden states; targets: [rows, T] already shifted (position t predicts
    y_t). Logits are computed only at trained positions (prompt and padding positions never get a
    [vocabulary]-wide row: 49K floats each for SmolLM2), `chunk_size` rows per matmul, and no
    [vocabulary]-wide row is kept for backward (`_LinearTargetLogps`, or `linear_logps` where given).
    """
    keep = targets.reshape(-1) != IGNORE
    rows = torch.arange(targets.shape[0], device=targets.device).repeat_interleave(targets.shape[1])[keep]
    h = hidden.reshape(-1, hidden.shape[-1])[keep]
    y = targets.reshape(-1)[keep]
    if h.shape[0] == 0:
        return hidden.new_zeros(0, dtype=torch.float32), rows
    if linear_logps is not None:
        return linear_logps(h, lm_head_weight, lm_head_bias, y, softcap), rows
    return _LinearTargetLogps.apply(h, lm_head_weight, lm_head_bias, y, chunk_size, softcap), rows


def token_nll_sum(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    lm_head_weight: torch.Tensor,
    lm_head_bias: torch.Tensor | None = None,
    chunk_size: int = CHUNK_ROWS,
    softcap: float | None = None,
    linear_logps: LinearLogps | None = None,
) -> torch.Tensor:
    """Sum of next-token negative log-likelihoods over the trained positions:

        loss_sum = Σ_{t : y_t ≠ -100}  −log softmax(W h_t + b)[y_t]

    The caller divides by the number of trained tokens in the whole optimizer step, so every token
    weighs the same whatever micro-batch or packed row it sits in.
    """
    logps, _ = target_logps(hidden, targets, lm_head_weight, lm_head_bias, chunk_size, softcap, linear_logps)
    return -logps.sum()


def sequence_logps(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    lm_head_weight: torch.Tensor,
    lm_head_bias: torch.Tensor | None = None,
    example_ids: torch.Tensor | None = None,
    num_examples: int | None = None,
    chunk_size: int = CHUNK_ROWS,
    softcap: float | None = None,
    linear_logps: LinearLogps | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence sum of target log-probabilities, log π(y | x) = Σ_t logp_t, and target counts.

    `example_ids` [rows, T] names the sequence each position belongs to (packed rows hold several);
    without it each row is one sequence. Returns ([num_examples] sums, [num_examples] target counts);
    a sequence with no target gets 0.
    """
    logps, owner = target_logps(hidden, targets, lm_head_weight, lm_head_bias, chunk_size, softcap, linear_logps)
    if example_ids is not None:
        owner = example_ids.reshape(-1)[targets.reshape(-1) != IGNORE]
    if num_examples is None:
        num_examples = targets.shape[0] if example_ids is None else int(example_ids.max()) + 1
    sums = torch.zeros(num_examples, dtype=logps.dtype, device=logps.device).index_add(0, owner, logps)
    counts = torch.bincount(owner, minlength=num_examples)
    return sums, counts
