"""PPO against a trained reward model (RLHF), LoRA or QLoRA, on ONE copy of the base weights.

    setup:  processes, device, tokenizer -> prompts -> run dir, base + policy adapter ("default")
            + value head -> the reward model's adapter ("reward") and head -> optimizer
    loop:   per step: its prompts -> one sampled completion each -> old log-probs and values (policy),
            reference log-probs (adapters off), score (reward adapter + head) -> per-token rewards
            (score at the last token − β·KL) -> GAE -> whitened advantages -> ppo_epochs × (clipped
            policy loss + vf_coef · clipped value loss) -> KL controller -> log, samples.jsonl, checkpoint
    save:   adapter/ (the policy, PEFT format), value_head.safetensors, run.json

Each micro-batch of prompts is sampled with a seed of its own (seed, step, micro-batch), so under
torchrun (train/distributed.py) the processes split the micro-batches and the rollouts are those of one
process; the advantage whitening, the KL controller and the logged means use the whole step's rollouts
(summed or gathered over the processes), and the gradients are summed.

Four roles, one set of base weights: the policy is the trainable adapter; the value function is a head
on the policy's final hidden states; the reference is the base with every adapter switched off; the
reward model is a second, frozen adapter with its own head, switched on only to score.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save

from tunesmith.atomic import atomic_write_bytes
from tunesmith.config.schema import PPOConfig
from tunesmith.data.packing import Batch, collate_groups
from tunesmith.data.prompts import PromptRow, load_prompt_file
from tunesmith.errors import ModelError
from tunesmith.losses.kl import AdaptiveKLController, FixedKLController, kl_k1, masked_mean
from tunesmith.losses.ppo import ppo_policy_loss, ppo_value_loss
from tunesmith.models.adapter_files import adapter_weight_shapes, read_adapter_config
from tunesmith.models.forward import adapter_off, batch_last_hidden, batch_token_logps, unwrap
from tunesmith.models.reward import find_reward_model, load_reward_head, new_reward_head
from tunesmith.recipes import RECIPES
from tunesmith.rollout.advantages import gae, per_token_rewards
from tunesmith.rollout.sampling import completion_example, rollout_seed, sample_prompts
from tunesmith.train.model_setup import save_trained, shares_prompts
from tunesmith.train.order import step_indices
from tunesmith.train.run import OnEvent, Run, RunResult, Say, finish_run, open_run, start_run
from tunesmith.train.step import optimizer_step

if TYPE_CHECKING:
    from peft import PeftModel

POLICY, REWARD = "default", "reward"


def policy_forward(
    model: torch.nn.Module, value_head: torch.nn.Linear, batch: Batch, amp_dtype, temperature: float, n: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token log π(y_t | y_<t) (π at the sampling temperature) and V(s_t) at the response positions of
    the batch's n rollouts, each from column 0 whatever the batch's layout: ([n, T], [n, T], mask)."""
    logps, mask, hidden = batch_token_logps(model, batch, amp_dtype, temperature, n)
    values = value_head(hidden[mask].float()).squeeze(-1)
    return logps, torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_scatter(mask, values), mask


def reward_model_dir(reward_dir: str, model_dir: Path) -> tuple[Path, dict]:
    """The reward model's directory and manifest, checked to be an adapter on the policy's own base."""
    directory, meta = find_reward_model(reward_dir)
    if not (directory / "adapter").is_dir():
        raise ModelError(
            f"{directory}: PPO shares one base between policy and reward, so the reward model must be "
            "a lora/qlora adapter (this one is a full fine-tune)"
        )
    if Path(meta["base"]).resolve() != Path(model_dir).resolve():
        raise ModelError(f"{directory}: trained on {meta['base']}, but the policy's base is {model_dir}")
    read_adapter_config(directory / "adapter")  # readable files, before the run directory is touched
    adapter_weight_shapes(directory / "adapter")
    return directory, meta


def attach_reward_adapter(model: PeftModel, directory: Path, meta: dict, device: torch.device) -> torch.nn.Linear:
    """Load the reward model's adapter next to the policy's (frozen) and return its head."""
    model.load_adapter(str(directory / "adapter"), adapter_name=REWARD, is_trainable=False)
    model.set_adapter(POLICY)  # the policy stays the active, trainable adapter
    return load_reward_head(directory, meta, device)


@torch.no_grad()
def reward_scores(model: PeftModel, head: torch.nn.Linear, batch: Batch, n: int, amp_dtype) -> torch.Tensor:
    """r(x, y) with the reward adapter switched in for this forward only."""
    model.set_adapter(REWARD)
    try:
        return head(batch_last_hidden(model, batch, n, amp_dtype).float()).squeeze(-1)
    finally:
        model.set_adapter(POLICY)


@torch.no_grad()
def rollout(
    run: Run[PPOConfig],
    reward_head: torch.nn.Linear,
    kl_coef: float,
    rows: list[PromptRow],
    at_step: int,
    index: int,
    flat: bool,
) -> dict[str, Any]:
    """One completion for each prompt of micro-batch `index` of the step, sampled with its own seed, and
    the rollout statistics: old log-probs and values (policy), reference log-probs (adapters off), the
    reward model's score, per-token rewards and GAE. `flat`: the rollouts share one row without padding
    (a model that attends per example), else a padded row each."""
    cfg, model, amp, tokenizer = run.cfg, run.model, run.amp_dtype, run.tokenizer
    o, s, value_head = cfg.ppo, cfg.sampling, run.model.value_head
    seed = rollout_seed(cfg.train.seed, at_step, index)
    p_ids, completions = sample_prompts(
        model, tokenizer, [r.messages for r in rows], 1, s, cfg.data.max_prompt_length, amp, seed
    )
    examples = [completion_example(p, c, r.where) for p, c, r in zip(p_ids, completions, rows)]
    batch = collate_groups(examples, 1, tokenizer.pad_token_id, flat).to(run.device)  # groups of one
    old_logp, old_values, mask = policy_forward(model, value_head, batch, amp, s.temperature, len(rows))
    with adapter_off(model):
        ref_logp = policy_forward(model, value_head, batch, amp, s.temperature, len(rows))[0]
    scores = reward_scores(model, reward_head, batch, len(rows), amp)
    kl = kl_k1(old_logp, ref_logp) * mask
    rewards = per_token_rewards(scores, kl, mask, kl_coef)
    advantages, returns = gae(rewards, old_values, mask, o.gamma, o.lam)
    return {
        "batch": batch,
        "old_logp": old_logp,
        "old_values": old_values,
        "mask": mask,
        "scores": scores,
        "kl": kl.sum(1),
        "advantages": advantages,
        "returns": returns,
        "completions": completions,
        "prompts": [r.messages[-1]["content"] for r in rows],
    }


def update(run: Run[PPOConfig], roll: list[dict[str, Any]], n_rollouts: int) -> tuple[dict[str, float], float]:
    """ppo_epochs passes of clipped policy + value loss over this process's rollouts, an optimizer step each."""
    o, model, amp = run.cfg.ppo, run.model, run.amp_dtype
    sums = dict.fromkeys(("policy_loss", "value_loss", "clip_fraction", "value_clip_fraction", "entropy"), 0.0)
    grad_norm = 0.0
    for epoch in range(o.ppo_epochs):
        for r in roll:
            temperature, n = run.cfg.sampling.temperature, len(r["scores"])
            logp, values, mask = policy_forward(model, model.value_head, r["batch"], amp, temperature, n)
            pl, pstats = ppo_policy_loss(logp, r["old_logp"], r["advantages"], mask, o.clip_range)
            vl, vstats = ppo_value_loss(values, r["old_values"], r["returns"], mask, o.clip_range_value)
            share = len(r["scores"]) / n_rollouts
            ((pl + o.vf_coef * vl) * share).backward()
            per_epoch = share / o.ppo_epochs
            sums["policy_loss"] += float(pl.detach()) * per_epoch
            sums["value_loss"] += float(vl.detach()) * per_epoch
            sums["clip_fraction"] += float(pstats["clip_fraction"]) * per_epoch
            sums["value_clip_fraction"] += float(vstats["value_clip_fraction"]) * per_epoch
            if epoch == 0:  # −log π of the sampled tokens: a Monte-Carlo estimate of the entropy
                sums["entropy"] += float(masked_mean(-logp.detach(), mask)) * share
        run.dist.sum_gradients(run.params)
        grad_norm = optimizer_step(run.params, run.optimizer, run.cfg.train.max_grad_norm)
    return {k: run.dist.sum(v) for k, v in sums.items()}, grad_norm


def save_policy(run: Run[PPOConfig]) -> Path:
    """adapter/: the policy alone (the reward adapter is dropped), and the value head beside it."""
    model = run.model
    model.delete_adapter(REWARD)
    if not run.dist.is_main:
        return run.run_dir / "adapter"
    value_head = model.value_head
    del model.value_head
    output = save_trained(model, run.tokenizer, run.run_dir, run.cfg.method, run.model_dir)
    model.value_head = value_head
    atomic_write_bytes(
        run.run_dir / "value_head.safetensors",
        save({"weight": value_head.weight.detach().cpu().contiguous(), "bias": value_head.bias.detach().cpu()}),
    )
    return output


def run_ppo(cfg: PPOConfig, say: Say = print, progress: bool = True, on_event: OnEvent = None) -> RunResult:
    o = cfg.ppo
    # ---- setup -------------------------------------------------------------------------------
    assert cfg.train.batch_size is not None and cfg.train.micro_batch_size is not None  # validate() filled them
    run = start_run(cfg, RECIPES["ppo"], say, progress, on_event)
    assert cfg.data.train is not None and o.reward_model is not None  # the config's check() requires both
    prompts = load_prompt_file(cfg.data.train)
    reward_dir, reward_meta = reward_model_dir(o.reward_model, run.model_dir)

    reward_head: list[torch.nn.Linear] = []  # frozen, kept out of the model: not checkpointed, not optimised

    def attach(run: Run[PPOConfig]) -> None:
        reward_head.append(attach_reward_adapter(run.model, reward_dir, reward_meta, run.device))
        run.model.value_head = new_reward_head(unwrap(run.model).config.hidden_size, run.device)  # V starts at 0

    kl_ctl = AdaptiveKLController(o.kl_coef, o.kl_target, o.kl_horizon) if o.kl_target else FixedKLController(o.kl_coef)
    run.counters["kl_coef"] = kl_ctl.value
    open_run(run, len(prompts), attach=attach)
    kl_ctl.value = run.counters["kl_coef"]  # a resumed run's adapted coefficient
    samples_log = run.open_log("samples.jsonl")
    flat = shares_prompts(run.model, run.model_dir)  # the rollouts in one row, no padding
    mbs, n_prompts = cfg.train.micro_batch_size, len(prompts)
    run.say(
        f"ppo on {n_prompts} prompts, {run.total_steps} steps of {o.rollouts_per_step} rollouts x {o.ppo_epochs} "
        f"epochs, kl_coef {o.kl_coef:g}"
        + (f" (adaptive, target {o.kl_target:g})" if o.kl_target else "")
        + f", lr {cfg.train.lr:g}, {run.where()}"
    )

    # ---- loop --------------------------------------------------------------------------------
    run.begin()
    while run.step < run.total_steps:
        lr = run.begin_step()
        rows = [prompts[i] for i in step_indices(n_prompts, cfg.train.batch_size, cfg.train.seed, run.step)]
        run.model.eval()  # each process samples every N-th micro-batch, with that micro-batch's own seed
        roll = [
            rollout(run, reward_head[0], kl_ctl.value, rows[start : start + mbs], run.step, index, flat)
            for index, start in run.dist.share(list(enumerate(range(0, len(rows), mbs))))
        ]
        if o.whiten_advantages:  # across the whole batch of rollouts (every process's), not per micro-batch
            mean, std = run.dist.mean_std([r["advantages"][r["mask"]] for r in roll])
            for r in roll:
                r["advantages"] = torch.where(r["mask"], (r["advantages"] - mean) / max(std, 1e-8), 0.0)
        run.model.train()
        sums, grad_norm = update(run, roll, len(rows))
        # the whole step's rollouts, in order: (prompt, completion, score, sequence KL) each
        done = [
            x
            for part in run.dist.unshare(
                [list(zip(r["prompts"], r["completions"], r["scores"].tolist(), r["kl"].tolist())) for r in roll]
            )
            for x in part
        ]
        scores, seq_kl = torch.tensor([d[2] for d in done]), torch.tensor([d[3] for d in done])
        record = {
            "reward_mean": float(scores.mean()),
            "reward_std": float(scores.std()),
            "kl": float(seq_kl.mean()),
            "kl_coef": kl_ctl.value,
            **sums,
            "response_length": sum(len(d[1]) for d in done) / len(done),
            "lr": lr,
            "grad_norm": grad_norm,
        }
        kl_ctl.update(float(seq_kl.mean()), len(done))
        run.counters["kl_coef"] = kl_ctl.value
        stop = run.end_step(record, show=("reward_mean", "kl"))
        if cfg.sampling.samples_every and (run.step % cfg.sampling.samples_every == 0 or run.step == 1):
            for prompt, c, score, _ in done[:4]:
                samples_log.write(
                    {
                        "step": run.step,
                        "prompt": prompt,
                        "reward": score,
                        "completion": run.tokenizer.decode(c, skip_special_tokens=True),
                    }
                )
        if stop:
            break

    # ---- save --------------------------------------------------------------------------------
    return finish_run(
        run,
        manifest={"reward_model": o.reward_model, "prompts": n_prompts},
        final_keys=("reward_mean", "kl", "kl_coef", "response_length"),
        save=save_policy,
    )
