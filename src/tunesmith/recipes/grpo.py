"""Group relative policy optimisation (GRPO) with programmatic rewards (and/or a reward model).

    setup:  device -> model dir -> tokenizer -> prompts -> rewards -> run dir -> model + adapter -> optimizer
    loop:   per step: its prompts -> K sampled completions each -> rewards -> advantages normalised within
            each prompt's group -> reference log-probs (adapter off) -> clipped surrogate + β·KL ->
            backward -> clip -> AdamW (epochs_per_step times) -> log, samples.jsonl, evaluate, checkpoint
    save:   adapter/ (PEFT format), run.json

Each micro-batch of prompts is sampled with a seed of its own (seed, step, micro-batch), so under
torchrun (train/distributed.py) the processes split the micro-batches, whole groups each, and the
rollouts, advantages and summed gradients are those of one process; the logged means are gathered.

The reference is the base with the adapter switched off: no second copy in memory, and with
--kl-coef 0 no reference pass at all (the only case where full fine-tuning is allowed).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import tqdm

from tunesmith.config.schema import GRPOConfig
from tunesmith.data.packing import Batch, collate_padded
from tunesmith.data.prompts import PromptRow, load_prompt_file
from tunesmith.data.templates import TokenizedExample
from tunesmith.errors import DataError
from tunesmith.forgetting.guard import guard_start, guard_step, start_guard, stop_over_budget
from tunesmith.losses.grpo import grpo_loss
from tunesmith.models import load_tokenizer, resolve_model_dir, select_device
from tunesmith.models.load import autocast_dtype
from tunesmith.rollout.advantages import group_advantages
from tunesmith.rollout.sampling import completion_example, prompt_ids, rollout_seed, sample_completions
from tunesmith.rollout.rewards import missing_reward_fields, parse_reward_specs, score_completions
from tunesmith.train.distributed import load_checkpoint_everywhere, save_checkpoint_on_main, shut_down, start_processes
from tunesmith.train.metrics import MetricsLog, NullLog
from tunesmith.train.model_setup import build_trainable_model, save_trained
from tunesmith.train.order import step_indices
from tunesmith.train.rundir import open_run_dir, write_run_result
from tunesmith.train.schedule import build_optimizer, lr_multiplier, plan_steps, set_lr
from tunesmith.models.forward import batch_token_logps
from tunesmith.train.step import optimizer_step


@dataclass
class GRPOResult:
    run_dir: Path
    output: Path
    steps: int
    final: dict[str, float]
    eval_before: float | None  # mean reward of greedy replies to the eval prompts
    eval_after: float | None
    seconds: float
    model: torch.nn.Module


@dataclass
class Scored:
    """Sampled completions (K per prompt, prompt-major) and their rewards: what a step logs."""
    prompts: list[str]  # each completion's prompt (its last user turn)
    texts: list[str]
    lengths: list[int]  # completion tokens
    totals: list[float]
    parts: dict[str, list[float]]  # per named reward

    @staticmethod
    def join(scored: list[Scored]) -> Scored:
        return Scored([p for s in scored for p in s.prompts], [t for s in scored for t in s.texts],
                      [n for s in scored for n in s.lengths], [r for s in scored for r in s.totals],
                      {k: [r for s in scored for r in s.parts[k]] for k in scored[0].parts})


@dataclass
class Rollout:
    """One micro-batch of prompts, whole groups: the completions as a batch and what training needs of them."""
    scored: Scored
    batch: Batch  # prompt + completion, the completion's tokens trained
    advantages: torch.Tensor  # [completions]
    old_logp: torch.Tensor | None = None  # the sampling policy's, when epochs_per_step > 1
    ref_logp: torch.Tensor | None = None  # the base's, when kl_coef > 0


def run_grpo(cfg: GRPOConfig, say: Callable[[str], None] = print, progress: bool = True) -> GRPOResult:
    started = time.time()
    g = cfg.grpo
    # ---- setup -------------------------------------------------------------------------------
    dist = start_processes(cfg, "grpo")  # full fine-tuning stays replicated: sampling is not in lock-step
    if not dist.is_main:  # rank 0 speaks and writes for all
        say, progress = (lambda s: None), False
    device = dist.device or select_device(cfg.device)
    amp_dtype = autocast_dtype(cfg.train.precision, device)
    model_dir = resolve_model_dir(cfg.model)
    tokenizer = load_tokenizer(model_dir)
    rewards = parse_reward_specs(g.reward) if g.reward else []
    prompts = load_prompt_file(cfg.data.train)
    eval_prompts = load_prompt_file(cfg.data.eval) if cfg.data.eval else []
    problems = missing_reward_fields(rewards, [(p.where, p.row) for p in prompts + eval_prompts])
    if problems:
        raise DataError(problems, f"{len(problems)} prompt(s) lack fields the rewards need; nothing was trained")
    reward_model = None
    if g.reward_model:
        from tunesmith.models.reward import load_reward_model

        reward_model = load_reward_model(g.reward_model, str(device))
    names = [r.name for r in rewards] + (["reward_model"] if reward_model else [])
    pad_id, eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id

    run_dir, resume_from = open_run_dir(cfg, "grpo", dist)
    model, trainable, total = build_trainable_model(cfg, model_dir, device, amp_dtype, say)
    guard = start_guard(cfg, model, tokenizer, model_dir, device, amp_dtype, say)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, cfg.train.lr, cfg.train.weight_decay)
    n_prompts = len(prompts)
    total_steps, warmup_steps, too_many = plan_steps(cfg.train, n_prompts)
    if too_many:
        say(f"warning: {too_many}")
    step = 0
    if resume_from is not None:
        step = load_checkpoint_everywhere(dist, resume_from, model, optimizer)["step"]
        say(f"resumed from {resume_from} at step {step}")
    resume_step = step if resume_from else None
    metrics = MetricsLog(run_dir / "metrics.jsonl", resume_step) if dist.is_main else NullLog()
    samples_log = MetricsLog(run_dir / "samples.jsonl", resume_step) if dist.is_main else NullLog()
    mbs = cfg.train.micro_batch_size  # prompts per micro-batch, K completions each
    say(f"grpo on {n_prompts} prompts, {total_steps} steps of {cfg.train.batch_size} prompts x {g.group_size} "
        f"samples, rewards {', '.join(names)}, kl_coef {g.kl_coef:g}, lr {cfg.train.lr:g}, {device.type}"
        + (f", autocast {amp_dtype}" if amp_dtype else ", fp32")
        + (f", {dist.world} processes" if dist.active else ""))

    def score(rows: list[PromptRow], texts: list[str], examples: list[TokenizedExample]) -> tuple[list[float], dict]:
        """Total reward per completion (sum of the named rewards, + the reward model's score)."""
        totals, parts = ([0.0] * len(texts), {})
        if rewards:
            totals, parts = score_completions(rewards, [r.messages for r in rows], texts, [r.row for r in rows],
                                              where=[r.where for r in rows])
        if reward_model is not None:
            from tunesmith.eval.reward import score_examples

            rm, head, _ = reward_model
            parts["reward_model"] = score_examples(rm, head, examples, pad_id)
            totals = [t + s for t, s in zip(totals, parts["reward_model"])]
        return totals, parts

    def rollout(at_step: int, index: int, rows: list[PromptRow]) -> Rollout:
        """K completions for each prompt of micro-batch `index` of the step, sampled with its own seed, scored,
        with advantages normalised within each prompt's group."""
        p_ids = [prompt_ids(tokenizer, r.messages, cfg.data.max_prompt_length) for r in rows]
        completions = sample_completions(model, p_ids, g.group_size, g.temperature, g.top_p, g.max_new_tokens,
                                         pad_id, eos_id, amp_dtype, seed=rollout_seed(cfg.train.seed, at_step, index))
        group_rows = [r for r in rows for _ in range(g.group_size)]  # prompt-major, like the samples
        examples = [completion_example(p_ids[i // g.group_size], c, group_rows[i].where)
                    for i, c in enumerate(completions)]
        texts = [tokenizer.decode(c, skip_special_tokens=True) for c in completions]
        totals, parts = score(group_rows, texts, examples)
        scored = Scored([r.messages[-1]["content"] for r in group_rows], texts, [len(c) for c in completions],
                        totals, parts)
        return Rollout(scored, collate_padded(examples, pad_id).to(device),
                       group_advantages(torch.tensor(totals), g.group_size).to(device))

    def evaluate() -> dict[str, float]:
        """Mean reward of greedy replies to the eval prompts, in all and per reward: {"eval_reward_mean": ...,
        "eval_reward/<name>": ...}; {} without eval prompts."""
        if not eval_prompts:
            return {}
        from tunesmith.generation import generate_chat

        was_training = model.training
        model.eval()
        texts = generate_chat(model, tokenizer, [p.messages for p in eval_prompts], max_new_tokens=g.max_new_tokens,
                              precision=cfg.train.precision)
        model.train(was_training)
        examples = [completion_example(prompt_ids(tokenizer, p.messages, cfg.data.max_prompt_length),
                               tokenizer(t, add_special_tokens=False)["input_ids"] + [eos_id], p.where)
                    for p, t in zip(eval_prompts, texts)]
        totals, parts = score(eval_prompts, texts, examples)
        return {"eval_reward_mean": sum(totals) / len(totals),
                **{f"eval_reward/{k}": sum(v) / len(v) for k, v in parts.items()}}

    # ---- loop --------------------------------------------------------------------------------
    eval_before = None
    if step == 0:
        before = {**evaluate(), **guard_start(guard)}
        eval_before = before.get("eval_reward_mean")
        if before:
            metrics.write({"step": 0, **before})
    bar = tqdm(total=total_steps, initial=step, disable=not progress, unit="step", dynamic_ncols=True)
    record: dict[str, Any] = {}
    while step < total_steps:
        t0 = time.perf_counter()
        lr = cfg.train.lr * lr_multiplier(step, total_steps, warmup_steps, cfg.train.schedule)
        set_lr(optimizer, lr)
        rows = [prompts[i] for i in step_indices(n_prompts, cfg.train.batch_size, cfg.train.seed, step)]
        n_seqs = len(rows) * g.group_size  # the step's completions, over all processes
        # One rollout per micro-batch of prompts (whole groups), sampled with its own seed: the same
        # completions whichever process samples them. Each process takes every N-th micro-batch.
        model.eval()  # sampling: no dropout
        mine = [rollout(step, index, rows[start : start + mbs])
                for index, start in dist.share(list(enumerate(range(0, len(rows), mbs))))]
        model.train()
        with torch.no_grad():
            for r in mine:
                if g.epochs_per_step > 1:  # later passes need the sampling policy's own log-probs
                    r.old_logp = batch_token_logps(model, r.batch, amp_dtype, g.temperature)[0]
                if g.kl_coef > 0:
                    with model.disable_adapter():
                        r.ref_logp = batch_token_logps(model, r.batch, amp_dtype, g.temperature)[0]
        sums: dict[str, float] = {"loss": 0.0, "clip_fraction": 0.0, "kl": 0.0, "entropy": 0.0}
        for _epoch in range(g.epochs_per_step):
            for r in mine:
                logp, mask, _ = batch_token_logps(model, r.batch, amp_dtype, g.temperature)
                old = r.old_logp if r.old_logp is not None else logp.detach()  # one pass: ratio 1, grad of A·log π
                loss, stats = grpo_loss(logp, old, r.ref_logp, r.advantages, mask, g.clip_range, g.kl_coef)
                share = len(r.advantages) / n_seqs  # the loss averages over sequences: weigh micro-batches by size
                (loss * share).backward()
                sums["loss"] += float(loss.detach()) * share / g.epochs_per_step
                sums["clip_fraction"] += float(stats["clip_fraction"]) * share / g.epochs_per_step
                if "kl" in stats:
                    sums["kl"] += float(stats["kl"]) * share / g.epochs_per_step
                if _epoch == 0:  # −log π of the sampled tokens: a Monte-Carlo estimate of the entropy
                    sums["entropy"] += float(-(logp.detach() * mask).sum() / mask.sum()) * share
            dist.sum_gradients(params)
            grad_norm = optimizer_step(params, optimizer, cfg.train.max_grad_norm)
        step += 1
        sums = {k: dist.sum(v) for k, v in sums.items()}
        scored = Scored.join(dist.unshare([r.scored for r in mine]))  # the whole step's, in order
        seconds = time.perf_counter() - t0
        t = torch.tensor(scored.totals)
        record = {"step": step, "reward_mean": float(t.mean()), "reward_std": float(t.std()),
                  **{f"reward/{k}": sum(v) / len(v) for k, v in scored.parts.items()}, **sums,
                  "response_length": sum(scored.lengths) / n_seqs,
                  "lr": lr, "grad_norm": grad_norm, "step_s": seconds, "samples_per_s": n_seqs / seconds}
        if g.kl_coef == 0:
            record.pop("kl")
        if cfg.train.eval_every and step % cfg.train.eval_every == 0 and step < total_steps:
            record.update(evaluate())
        over_budget = guard_step(guard, model, step, total_steps, record)
        if step % cfg.train.log_every == 0 or "eval_reward_mean" in record or "kl_to_base" in record:
            metrics.write(record)
        if g.samples_every and (step % g.samples_every == 0 or step == 1):
            for i in range(min(2 * g.group_size, n_seqs)):
                samples_log.write({"step": step, "prompt": scored.prompts[i], "completion": scored.texts[i],
                                   "reward": scored.totals[i]})
        bar.set_postfix(reward=f"{record['reward_mean']:.3f}", refresh=False)
        bar.update(1)
        if over_budget:
            break
        if cfg.train.save_every and step % cfg.train.save_every == 0 and step < total_steps:
            save_checkpoint_on_main(dist, run_dir, step, model, optimizer, {})
    bar.close()
    stop_over_budget(guard, model, metrics, step, say)

    # ---- save --------------------------------------------------------------------------------
    after = evaluate()
    eval_after = after.get("eval_reward_mean")
    if after:
        metrics.write({"step": step, **after, "final": True})
        say(f"eval on {len(eval_prompts)} prompts: mean reward of greedy replies "
            + (f"{eval_before:.4f} -> " if eval_before is not None else "") + f"{eval_after:.4f}")
    metrics.close()
    samples_log.close()
    save_checkpoint_on_main(dist, run_dir, step, model, optimizer, {})
    output = (save_trained(model, tokenizer, run_dir, cfg.method, model_dir) if dist.is_main
              else run_dir / ("adapter" if cfg.method in ("lora", "qlora") else "model"))
    seconds = time.time() - started
    final = {k: record[k] for k in ("reward_mean", "reward_std", "kl", "response_length") if k in record}
    manifest = {"recipe": "grpo", "method": cfg.method, "model": cfg.model, "model_dir": str(model_dir),
                "rewards": names, "group_size": g.group_size, "kl_coef": g.kl_coef, "steps": step,
                "prompts": n_prompts, "final": final, "eval_reward_before": eval_before,
                "eval_reward_after": eval_after, "trainable_params": trainable, "total_params": total,
                "processes": dist.world, "seconds": round(seconds, 2), "output": output.name}
    if dist.is_main:
        write_run_result(run_dir, "grpo", manifest, guard, output, step, seconds, say)
    shut_down(dist)
    model.eval()
    return GRPOResult(run_dir, output, step, final, eval_before, eval_after, seconds, model)
