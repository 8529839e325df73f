"""PPO against a trained reward model (RLHF), LoRA or QLoRA, on ONE copy of the base weights.

    setup:  device -> model dir -> tokenizer -> prompts -> run dir -> base + policy adapter ("default")
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

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import save
from tqdm import tqdm

from tunesmith.atomic import atomic_write_bytes
from tunesmith.config.schema import PPOConfig
from tunesmith.data.packing import Batch, collate_padded
from tunesmith.data.prompts import PromptRow, load_prompt_file
from tunesmith.errors import ModelError
from tunesmith.forgetting.guard import guard_start, guard_step, start_guard, stop_over_budget
from tunesmith.losses.kl import AdaptiveKLController, FixedKLController, kl_k1, masked_mean
from tunesmith.losses.ppo import ppo_policy_loss, ppo_value_loss
from tunesmith.models import load_tokenizer, resolve_model_dir, select_device
from tunesmith.models.load import autocast_dtype
from tunesmith.models.reward import find_reward_model, load_reward_head, new_reward_head
from tunesmith.rollout.advantages import gae, per_token_rewards
from tunesmith.rollout.sampling import completion_example, prompt_ids, rollout_seed, sample_completions
from tunesmith.train.distributed import load_checkpoint_everywhere, save_checkpoint_on_main, shut_down, start_processes
from tunesmith.train.metrics import MetricsLog, NullLog
from tunesmith.train.model_setup import build_trainable_model, save_trained
from tunesmith.train.order import step_indices
from tunesmith.train.rundir import open_run_dir, write_run_result
from tunesmith.train.schedule import build_optimizer, lr_multiplier, plan_steps, set_lr
from tunesmith.models.forward import batch_last_hidden, batch_token_logps, unwrap
from tunesmith.train.step import optimizer_step

POLICY, REWARD = "default", "reward"


@dataclass
class PPOResult:
    run_dir: Path
    output: Path
    steps: int
    final: dict[str, float]
    seconds: float
    model: torch.nn.Module


def policy_forward(model: torch.nn.Module, value_head: torch.nn.Linear, batch: Batch, amp_dtype,
                   temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token log π(y_t | y_<t) (π at the sampling temperature) and V(s_t) at the response positions:
    ([rows, T], [rows, T], mask)."""
    logps, mask, hidden = batch_token_logps(model, batch, amp_dtype, temperature)
    values = value_head(hidden[mask].float()).squeeze(-1)
    return logps, torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_scatter(mask, values), mask


def reward_model_dir(reward_dir: str, model_dir: Path) -> tuple[Path, dict]:
    """The reward model's directory and manifest, checked to be an adapter on the policy's own base."""
    directory, meta = find_reward_model(reward_dir)
    if not (directory / "adapter").is_dir():
        raise ModelError(f"{directory}: PPO shares one base between policy and reward, so the reward model must be "
                         "a lora/qlora adapter (this one is a full fine-tune)")
    if Path(meta["base"]).resolve() != Path(model_dir).resolve():
        raise ModelError(f"{directory}: trained on {meta['base']}, but the policy's base is {model_dir}")
    return directory, meta


def attach_reward_adapter(model: torch.nn.Module, directory: Path, meta: dict, device: torch.device) -> torch.nn.Linear:
    """Load the reward model's adapter next to the policy's (frozen) and return its head."""
    model.load_adapter(str(directory / "adapter"), adapter_name=REWARD, is_trainable=False)
    model.set_adapter(POLICY)  # the policy stays the active, trainable adapter
    return load_reward_head(directory, meta, device)


@torch.no_grad()
def reward_scores(model: torch.nn.Module, head: torch.nn.Linear, batch: Batch, n: int, amp_dtype) -> torch.Tensor:
    """r(x, y) with the reward adapter switched in for this forward only."""
    model.set_adapter(REWARD)
    try:
        return head(batch_last_hidden(model, batch, n, amp_dtype).float()).squeeze(-1)
    finally:
        model.set_adapter(POLICY)


def run_ppo(cfg: PPOConfig, say: Callable[[str], None] = print, progress: bool = True) -> PPOResult:
    started = time.time()
    o = cfg.ppo
    # ---- setup -------------------------------------------------------------------------------
    dist = start_processes(cfg, "ppo")
    if not dist.is_main:  # rank 0 speaks and writes for all
        say, progress = (lambda s: None), False
    device = dist.device or select_device(cfg.device)
    amp_dtype = autocast_dtype(cfg.train.precision, device)
    model_dir = resolve_model_dir(cfg.model)
    tokenizer = load_tokenizer(model_dir)
    prompts = load_prompt_file(cfg.data.train)
    pad_id, eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    reward_dir, reward_meta = reward_model_dir(o.reward_model, model_dir)

    run_dir, resume_from = open_run_dir(cfg, "ppo", dist)
    model, trainable, total = build_trainable_model(cfg, model_dir, device, amp_dtype, say)
    reward_head = attach_reward_adapter(model, reward_dir, reward_meta, device)
    model.value_head = value_head = new_reward_head(unwrap(model).config.hidden_size, device)  # V starts at 0
    guard = start_guard(cfg, model, tokenizer, model_dir, device, amp_dtype, say)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, cfg.train.lr, cfg.train.weight_decay)
    kl_ctl = (AdaptiveKLController(o.kl_coef, o.kl_target, o.kl_horizon) if o.kl_target
              else FixedKLController(o.kl_coef))
    n_prompts = len(prompts)
    total_steps, warmup_steps, too_many = plan_steps(cfg.train, n_prompts)
    if too_many:
        say(f"warning: {too_many}")
    step = 0
    if resume_from is not None:
        state = load_checkpoint_everywhere(dist, resume_from, model, optimizer)
        step, kl_ctl.value = state["step"], state.get("kl_coef", kl_ctl.value)
        say(f"resumed from {resume_from} at step {step}")
    resume_step = step if resume_from else None
    metrics = MetricsLog(run_dir / "metrics.jsonl", resume_step) if dist.is_main else NullLog()
    samples_log = MetricsLog(run_dir / "samples.jsonl", resume_step) if dist.is_main else NullLog()
    mbs = cfg.train.micro_batch_size
    say(f"ppo on {n_prompts} prompts, {total_steps} steps of {o.rollouts_per_step} rollouts x {o.ppo_epochs} epochs, "
        f"kl_coef {o.kl_coef:g}" + (f" (adaptive, target {o.kl_target:g})" if o.kl_target else "")
        + f", lr {cfg.train.lr:g}, {device.type}" + (f", autocast {amp_dtype}" if amp_dtype else ", fp32")
        + (f", {dist.world} processes" if dist.active else ""))

    @torch.no_grad()
    def rollout(at_step: int, index: int, rows: list[PromptRow]) -> dict[str, Any]:
        """One completion for each prompt of micro-batch `index` of the step, sampled with its own seed, and
        the rollout statistics: old log-probs and values (policy), reference log-probs (adapters off), the
        reward model's score, per-token rewards and GAE."""
        p_ids = [prompt_ids(tokenizer, r.messages, cfg.data.max_prompt_length) for r in rows]
        completions = sample_completions(model, p_ids, 1, o.temperature, o.top_p, o.max_new_tokens, pad_id, eos_id,
                                         amp_dtype, seed=rollout_seed(cfg.train.seed, at_step, index))
        batch = collate_padded([completion_example(p, c, r.where) for p, c, r in zip(p_ids, completions, rows)],
                               pad_id).to(device)
        old_logp, old_values, mask = policy_forward(model, value_head, batch, amp_dtype, o.temperature)
        with model.disable_adapter():
            ref_logp = policy_forward(model, value_head, batch, amp_dtype, o.temperature)[0]
        scores = reward_scores(model, reward_head, batch, len(rows), amp_dtype)
        kl = kl_k1(old_logp, ref_logp) * mask
        rewards = per_token_rewards(scores, kl, mask, kl_ctl.value)
        advantages, returns = gae(rewards, old_values, mask, o.gamma, o.lam)
        return {"batch": batch, "old_logp": old_logp, "old_values": old_values, "mask": mask, "scores": scores,
                "kl": kl.sum(1), "advantages": advantages, "returns": returns, "completions": completions,
                "prompts": [r.messages[-1]["content"] for r in rows]}

    # ---- loop --------------------------------------------------------------------------------
    if step == 0 and guard is not None:
        metrics.write({"step": 0, **guard_start(guard)})
    bar = tqdm(total=total_steps, initial=step, disable=not progress, unit="step", dynamic_ncols=True)
    record: dict[str, Any] = {}
    while step < total_steps:
        t0 = time.perf_counter()
        lr = cfg.train.lr * lr_multiplier(step, total_steps, warmup_steps, cfg.train.schedule)
        set_lr(optimizer, lr)
        rows = [prompts[i] for i in step_indices(n_prompts, o.rollouts_per_step, cfg.train.seed, step)]
        # One rollout per micro-batch of prompts, sampled with its own seed: the same whichever process
        # samples it. Each process takes every N-th micro-batch.
        model.eval()
        roll = [rollout(step, index, rows[start : start + mbs])
                for index, start in dist.share(list(enumerate(range(0, len(rows), mbs))))]
        if o.whiten_advantages:  # across the whole batch of rollouts (every process's), not per micro-batch
            mean, std = dist.mean_std([r["advantages"][r["mask"]] for r in roll])
            for r in roll:
                r["advantages"] = torch.where(r["mask"], (r["advantages"] - mean) / max(std, 1e-8), 0.0)
        model.train()
        sums = dict.fromkeys(("policy_loss", "value_loss", "clip_fraction", "value_clip_fraction", "entropy"), 0.0)
        for epoch in range(o.ppo_epochs):
            for r in roll:
                logp, values, mask = policy_forward(model, value_head, r["batch"], amp_dtype, o.temperature)
                pl, pstats = ppo_policy_loss(logp, r["old_logp"], r["advantages"], mask, o.clip_range)
                vl, vstats = ppo_value_loss(values, r["old_values"], r["returns"], mask, o.clip_range_value)
                share = len(r["scores"]) / len(rows)
                ((pl + o.vf_coef * vl) * share).backward()
                per_epoch = share / o.ppo_epochs
                sums["policy_loss"] += float(pl.detach()) * per_epoch
                sums["value_loss"] += float(vl.detach()) * per_epoch
                sums["clip_fraction"] += float(pstats["clip_fraction"]) * per_epoch
                sums["value_clip_fraction"] += float(vstats["value_clip_fraction"]) * per_epoch
                if epoch == 0:  # −log π of the sampled tokens: a Monte-Carlo estimate of the entropy
                    sums["entropy"] += float(masked_mean(-logp.detach(), mask)) * share
            dist.sum_gradients(params)
            grad_norm = optimizer_step(params, optimizer, cfg.train.max_grad_norm)
        sums = {k: dist.sum(v) for k, v in sums.items()}
        # the whole step's rollouts, in order: (prompt, completion, score, sequence KL) each
        done = [x for part in dist.unshare([list(zip(r["prompts"], r["completions"], r["scores"].tolist(),
                                                         r["kl"].tolist())) for r in roll]) for x in part]
        scores, seq_kl = torch.tensor([d[2] for d in done]), torch.tensor([d[3] for d in done])
        kl_coef_used = kl_ctl.value
        kl_ctl.update(float(seq_kl.mean()), len(done))
        step += 1
        seconds = time.perf_counter() - t0
        record = {"step": step, "reward_mean": float(scores.mean()), "reward_std": float(scores.std()),
                  "kl": float(seq_kl.mean()), "kl_coef": kl_coef_used, **sums,
                  "response_length": sum(len(d[1]) for d in done) / len(done),
                  "lr": lr, "grad_norm": grad_norm, "step_s": seconds}
        over_budget = guard_step(guard, model, step, total_steps, record)
        if step % cfg.train.log_every == 0 or "kl_to_base" in record:
            metrics.write(record)
        if o.samples_every and (step % o.samples_every == 0 or step == 1):
            for prompt, c, s, _ in done[:4]:
                samples_log.write({"step": step, "prompt": prompt,
                                   "completion": tokenizer.decode(c, skip_special_tokens=True), "reward": s})
        bar.set_postfix(reward=f"{record['reward_mean']:.3f}", kl=f"{record['kl']:.3f}", refresh=False)
        bar.update(1)
        if over_budget:
            break
        if cfg.train.save_every and step % cfg.train.save_every == 0 and step < total_steps:
            save_checkpoint_on_main(dist, run_dir, step, model, optimizer, {"kl_coef": kl_ctl.value})
    bar.close()
    stop_over_budget(guard, model, metrics, step, say)

    # ---- save --------------------------------------------------------------------------------
    metrics.close()
    samples_log.close()
    save_checkpoint_on_main(dist, run_dir, step, model, optimizer, {"kl_coef": kl_ctl.value})
    model.delete_adapter(REWARD)  # the saved adapter/ is the policy alone
    output = run_dir / "adapter"
    if dist.is_main:
        del model.value_head
        output = save_trained(model, tokenizer, run_dir, cfg.method, model_dir)
        model.value_head = value_head
        atomic_write_bytes(run_dir / "value_head.safetensors", save(
            {"weight": value_head.weight.detach().cpu().contiguous(), "bias": value_head.bias.detach().cpu()}))
    seconds = time.time() - started
    final = {k: record[k] for k in ("reward_mean", "kl", "kl_coef", "response_length") if k in record}
    manifest = {"recipe": "ppo", "method": cfg.method, "model": cfg.model, "model_dir": str(model_dir),
                "reward_model": o.reward_model, "steps": step, "prompts": n_prompts, "final": final,
                "trainable_params": trainable, "total_params": total, "processes": dist.world,
                "seconds": round(seconds, 2), "output": output.name}
    if dist.is_main:
        write_run_result(run_dir, "ppo", manifest, guard, output, step, seconds, say)
    shut_down(dist)
    model.eval()
    return PPOResult(run_dir, output, step, final, seconds, model)
