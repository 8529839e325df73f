from __future__ import annotations

import math

import torch

from tunesmith.losses.sft import IGNORE, token_nll_sum


def test_token_nll_sum_matches_hand_arithmetic():
    # vocabulary of 2, hidden size 1, W = [[1], [-1]]: logits for h are (h, -h)
    w = torch.tensor([[1.0], [-1.0]])
    hidden = torch.tensor([[[0.0], [1.0], [2.0]]])
    targets = torch.tensor([[0, IGNORE, 1]])
    # position 0: logits (0, 0) -> -log 1/2; position 2: logits (2, -2), target 1 -> -log(e^-2 / (e^2 + e^-2))
    expected = math.log(2) + (2 + math.log(math.exp(2) + math.exp(-2)))
    got = token_nll_sum(hidden, targets, w)
    assert abs(got.item() - expected) < 1e-6


def test_chunking_does_not_change_the_sum():
    torch.manual_seed(0)
    w = torch.randn(50, 8)
    hidden = torch.randn(2, 9, 8)
    targets = torch.randint(0, 50, (2, 9))
    targets[0, :3] = IGNORE
    full = token_nll_sum(hidden, targets, w, chunk_size=4096)
    chunked = token_nll_sum(hidden, targets, w, chunk_size=3)
    reference = torch.nn.functional.cross_entropy(
        (hidden @ w.T).reshape(-1, 50), targets.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )
    assert torch.allclose(full, chunked, atol=1e-5)
    assert torch.allclose(full, reference, atol=1e-5)


def test_sequence_logps_sums_each_row():
    from tunesmith.losses.sft import sequence_logps

    torch.manual_seed(1)
    w = torch.randn(30, 8)
    hidden = torch.randn(3, 5, 8)
    targets = torch.randint(0, 30, (3, 5))
    targets[0, :2] = IGNORE
    targets[2, :] = IGNORE  # a row without targets
    logp = torch.log_softmax(hidden @ w.T, dim=-1)
    expected = []
    for r in range(3):
        expected.append(sum(logp[r, t, targets[r, t]].item() for t in range(5) if targets[r, t] != IGNORE))
    got, counts = sequence_logps(hidden, targets, w, chunk_size=4)
    assert torch.allclose(got, torch.tensor(expected), atol=1e-5)
    assert got[2].item() == 0.0
    assert counts.tolist() == [3, 5, 0]
    assert torch.allclose(-got.sum(), token_nll_sum(hidden, targets, w), atol=1e-5)


def test_sequence_logps_splits_packed_rows_by_example_id():
    from tunesmith.losses.sft import sequence_logps

    torch.manual_seed(2)
    w = torch.randn(30, 8)
    hidden = torch.randn(2, 6, 8)
    targets = torch.randint(0, 30, (2, 6))
    # row 0 holds examples 2 (positions 0-2) and 0 (3-5); row 1 holds example 1 (0-3) and padding
    example_ids = torch.tensor([[2, 2, 2, 0, 0, 0], [1, 1, 1, 1, -1, -1]])
    targets[0, 2] = IGNORE  # each example's last position predicts nothing
    targets[0, 5] = IGNORE
    targets[1, 3:] = IGNORE
    logp = torch.log_softmax(hidden @ w.T, dim=-1)
    expected = torch.zeros(3)
    for r in range(2):
        for t in range(6):
            if targets[r, t] != IGNORE:
                expected[example_ids[r, t]] += logp[r, t, targets[r, t]]
    got, counts = sequence_logps(hidden, targets, w, example_ids=example_ids, num_examples=3)
    assert torch.allclose(got, expected, atol=1e-5)
    assert counts.tolist() == [2, 3, 2]


def test_target_logps_gradients_match_log_softmax():
    """The chunked head gives log_softmax's values and gradients, for a frozen head (hidden only) and a
    trainable one (hidden, weight, bias), whatever the upstream gradient and the chunk size."""
    from tunesmith.losses.sft import target_logps

    torch.manual_seed(0)
    hidden, weight, bias = torch.randn(2, 7, 16), torch.randn(50, 16), torch.randn(50)
    targets = torch.randint(0, 50, (2, 7))
    targets[0, :3] = IGNORE
    upstream = torch.randn(int((targets != IGNORE).sum()))
    for trainable_head in (False, True):
        for chunk in (3, 512):
            leaves = [t.clone().requires_grad_(trainable_head or i == 0) for i, t in enumerate((hidden, weight, bias))]
            ref = [t.clone().requires_grad_(trainable_head or i == 0) for i, t in enumerate((hidden, weight, bias))]
            logps, _ = target_logps(leaves[0], targets, leaves[1], leaves[2], chunk_size=chunk)
            keep = targets != IGNORE
            expected = torch.log_softmax(ref[0][keep] @ ref[1].t() + ref[2], -1).gather(1, targets[keep][:, None])
            torch.testing.assert_close(logps, expected.squeeze(1))
            (logps * upstream).sum().backward()
            (expected.squeeze(1) * upstream).sum().backward()
            for a, b in zip(leaves, ref):
                if b.grad is not None:
                    torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4)


def test_target_logps_gradient_survives_bf16_autocast_near_one_hot():
    """A confident model (p_y near 1) under bf16 autocast: the kept rows must not cancel into rounding noise."""
    from tunesmith.losses.sft import target_logps

    torch.manual_seed(0)
    weight = torch.randn(64, 16)
    targets = torch.randint(0, 64, (1, 12))
    hidden = (weight[targets[0]] * 8.0)[None].clone()  # logits peak at the target: p_y close to 1
    grads = []
    for ours in (True, False):
        h = hidden.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if ours:
                logps, _ = target_logps(h, targets, weight)
            else:
                logps = torch.log_softmax((h[0] @ weight.t()).float(), -1).gather(1, targets[0][:, None])
        logps.sum().backward()
        grads.append(h.grad)
    assert (grads[0] - grads[1]).norm() < 0.05 * grads[1].norm(), ((grads[0] - grads[1]).norm(), grads[1].norm())


def test_soft_capped_logits_give_the_gradients_of_capped_cross_entropy():
    """z = c · tanh((W h + b) / c) (Gemma 2's final soft-cap): loss and gradients for h, W and b equal
    autograd's through the explicit formula, with a frozen head and with a trainable one."""
    from tunesmith.losses.sft import target_logps

    torch.manual_seed(2)
    cap = 1.5
    for train_head in (False, True):
        w = (torch.randn(40, 6) * 2).requires_grad_(train_head)
        b = torch.randn(40).requires_grad_(train_head)
        h = torch.randn(2, 7, 6, requires_grad=True)
        y = torch.randint(0, 40, (2, 7))
        y[1, :2] = IGNORE
        got, _ = target_logps(h, y, w, b, chunk_size=3, softcap=cap)
        weights = torch.randn_like(got)
        grads = torch.autograd.grad((got * weights).sum(), [t for t in (h, w, b) if t.requires_grad])
        z = torch.tanh((h @ w.T + b) / cap) * cap
        keep = y != IGNORE
        expected = torch.log_softmax(z, -1).gather(-1, y.clamp(min=0)[..., None])[..., 0][keep]
        want = torch.autograd.grad((expected * weights).sum(), [t for t in (h, w, b) if t.requires_grad])
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        for g, e in zip(grads, want, strict=True):
            torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-4)
        uncapped, _ = target_logps(h, y, w, b)
        assert (uncapped - got).abs().max() > 0.1  # the cap matters at these logits
