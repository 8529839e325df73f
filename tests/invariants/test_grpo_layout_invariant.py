"""GRPO scores K completions that continue one copy of their prompt exactly as K padded rows: the same token
log-probs (policy and reference), loss and gradients. PPO's rollouts, packed into one row without padding
(groups of one), give what their padded rows give: log-probs, values, losses and gradients."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tunesmith.config.schema import GRPOConfig, LoraConfig, PPOConfig
from tunesmith.data.packing import collate_groups, target_positions
from tunesmith.models.attention import packs_flat
from tunesmith.models.forward import adapter_off, batch_token_logps
from tunesmith.recipes import ppo
from tunesmith.recipes.grpo import Rollout, Scored, update
from tunesmith.rollout.advantages import gae, group_advantages
from tunesmith.rollout.sampling import completion_example, prompt_ids
from tunesmith.train.distributed import Dist
from tunesmith.train.model_setup import build_trainable_model

K = 4


def _groups(tokenizer, vocab: int):
    """Two chat prompts, K completions each of different lengths (one a single token), prompt-major."""
    g = torch.Generator().manual_seed(0)
    prompts = [
        prompt_ids(tokenizer, [{"role": "user", "content": text}], 256)
        for text in ("Turn this ticket into JSON: my parcel never came", "Say hi")
    ]
    return [
        completion_example(p, torch.randint(3, vocab, (n,), generator=g).tolist(), f"p{i}")
        for i, p in enumerate(prompts)
        for n in (7, 1, 12, 4)
    ]


class _KeepGrads:
    """Plain gradient descent that keeps the gradients it steps with."""

    def __init__(self, params):
        self.params, self.grads = params, []

    @torch.no_grad()
    def step(self):
        self.grads.append([p.grad.clone() for p in self.params])
        for p in self.params:
            p -= 2.0 * p.grad

    def zero_grad(self, set_to_none=True):
        for p in self.params:
            p.grad = None


def _stepped(update_fn, cfg, policy, *args) -> tuple[dict, float, list]:
    """update_fn(run, *args) stepping with _KeepGrads: (its sums, grad norm, each epoch's gradients). The
    trainable parameters are put back afterwards, so the other layout starts from the same policy."""
    params = [p for p in policy.parameters() if p.requires_grad]
    first = [p.detach().clone() for p in params]
    optimizer = _KeepGrads(params)
    run = SimpleNamespace(cfg=cfg, model=policy, amp_dtype=None, dist=Dist(), params=params, optimizer=optimizer)
    try:
        sums, grad_norm = update_fn(run, *args)
    finally:
        with torch.no_grad():
            for p, q in zip(params, first):
                p.copy_(q)
    return sums, grad_norm, optimizer.grads


def _assert_same_update(padded, shared, sums_rel: float | None = None) -> None:
    """Two `_stepped` results: the same logged sums, gradient norm and gradients, and a second epoch whose
    ratios moved past the clip range."""
    (sums_a, norm_a, grads_a), (sums_b, norm_b, grads_b) = padded, shared
    assert sums_a["clip_fraction"] > 0  # the second epoch's ratios moved past the clip range
    for key in sums_a:
        assert sums_a[key] == pytest.approx(sums_b[key], rel=sums_rel, abs=1e-5), key
    assert norm_a > 0 and norm_a == pytest.approx(norm_b, rel=1e-5)
    for epoch_a, epoch_b in zip(grads_a, grads_b):
        for a, b in zip(epoch_a, epoch_b):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def policy(tiny_dir):
    cfg = GRPOConfig(model="tiny-random-llama", method="lora")
    cfg.lora = LoraConfig(r=4, alpha=8.0, target="all-linear")
    model, _, _ = build_trainable_model(cfg, tiny_dir, torch.device("cpu"), None, lambda s: None)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # a non-zero adapter: the policy differs from the reference
            torch.nn.init.normal_(p, std=0.1, generator=torch.Generator().manual_seed(len(name)))
    assert packs_flat(model)
    return model.eval()  # no dropout: both layouts see the same function


def test_shared_prompt_token_logps_equal_padded_rows(policy, tokenizer):
    examples = _groups(tokenizer, policy.config.vocab_size)
    padded = collate_groups(examples, K, tokenizer.pad_token_id, share_prompt=False)
    shared = collate_groups(examples, K, tokenizer.pad_token_id, share_prompt=True)
    saved = sum((K - 1) * (examples[i].labels.count(-100) - 1) for i in (0, K))
    assert shared.input_ids.shape == (1, padded.num_tokens - saved)
    assert shared.num_targets == padded.num_targets == sum(len(e.input_ids) - e.labels.count(-100) for e in examples)
    with torch.no_grad():
        rows, row_mask, _ = batch_token_logps(policy, padded, temperature=0.7)  # laid out like the batch
        for reference in (False, True):
            with adapter_off(policy) if reference else torch.no_grad():
                a, mask_a, _ = batch_token_logps(policy, padded, None, 0.7, len(examples))
                b, mask_b, _ = batch_token_logps(policy, shared, None, 0.7, len(examples))
            assert mask_a.shape == (len(examples), 12) and torch.equal(mask_a, mask_b)
            assert mask_a.sum(1).tolist() == [7, 1, 12, 4] * 2
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
            if not reference:  # the per-completion layout holds the padded rows' values, in order
                torch.testing.assert_close(a[mask_a], rows[row_mask], atol=0, rtol=0)
                policy_logps = a
        assert (policy_logps - a).abs().max() > 1e-3  # the adapter moved the policy away from the reference


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_grpo_update_is_the_same_in_both_layouts(policy, tokenizer, loss_type):
    """Two epochs (old log-probs, then a ratio ≠ 1) with a KL to the reference: the same loss, clip
    fraction, KL, entropy and gradients whether the prompts are shared or padded."""
    cfg = GRPOConfig(model="tiny-random-llama")
    cfg.grpo.group_size, cfg.grpo.kl_coef, cfg.grpo.epochs_per_step = K, 0.04, 2
    cfg.grpo.loss_type, cfg.train.max_grad_norm, cfg.sampling.temperature = loss_type, 0.0, 0.7
    examples = _groups(tokenizer, policy.config.vocab_size)
    advantages = group_advantages(torch.tensor([1.0, 0.0, 0.5, 2.0, 0.0, 1.0, 1.0, 3.0]), K)
    results = {}
    for share in (False, True):
        batch = collate_groups(examples, K, tokenizer.pad_token_id, share)  # one micro-batch, both groups
        mine = [Rollout(Scored([], [], [], [], {}), batch, advantages, target_positions(batch, len(examples))[1])]
        results[share] = _stepped(update, cfg, policy, mine, len(examples))  # epoch 2: the stepped policy, ratios ≠ 1
    assert results[False][0].keys() == results[True][0].keys() == {"loss", "clip_fraction", "kl", "entropy"}
    _assert_same_update(results[False], results[True])


def test_ppo_rollouts_in_one_row_equal_padded_rows(policy, tokenizer):
    """Eight rollouts (prompt + completion each): old log-probs and values, then two PPO epochs of clipped
    policy + value loss, the same from padded rows and from one unpadded row."""
    examples = _groups(tokenizer, policy.config.vocab_size)
    n = len(examples)
    cfg = PPOConfig(model="tiny-random-llama")
    cfg.ppo.ppo_epochs, cfg.train.max_grad_norm, cfg.sampling.temperature = 2, 0.0, 0.7
    head = torch.nn.Linear(policy.config.hidden_size, 1)
    torch.nn.init.normal_(head.weight, std=0.5, generator=torch.Generator().manual_seed(3))
    policy.value_head = head
    scores = torch.linspace(-1.0, 2.0, n)
    results = {}
    try:
        for flat in (False, True):
            batch = collate_groups(examples, 1, tokenizer.pad_token_id, flat)
            assert batch.input_ids.shape[0] == (1 if flat else n)
            with torch.no_grad():
                old_logp, old_values, mask = ppo.policy_forward(policy, head, batch, None, 0.7, n)
            advantages, returns = gae(scores[:, None] * mask, old_values, mask, 1.0, 0.95)
            roll = [
                {"batch": batch, "old_logp": old_logp, "old_values": old_values, "mask": mask, "scores": scores}
                | {"advantages": advantages, "returns": returns}
            ]
            results[flat] = (old_logp, old_values, mask, _stepped(ppo.update, cfg, policy, roll, n))
    finally:
        del policy.value_head
    (logp_a, values_a, mask_a, update_a), (logp_b, values_b, mask_b, update_b) = results[False], results[True]
    assert torch.equal(mask_a, mask_b) and mask_a.sum(1).tolist() == [7, 1, 12, 4] * 2
    torch.testing.assert_close(logp_a, logp_b, atol=1e-5, rtol=0)
    torch.testing.assert_close(values_a, values_b, atol=1e-5, rtol=0)
    _assert_same_update(update_a, update_b, sums_rel=1e-5)
