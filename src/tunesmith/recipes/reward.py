"""Reward model: a scalar head on the base (LoRA, QLoRA or full), trained on preference pairs.

    setup:  device -> model dir -> tokenizer -> pairs -> run dir -> model (+ adapter) + zero head -> optimizer
    loop:   per optimizer step: its pairs -> micro-batches -> one forward over chosen + rejected ->
            score = head(h at each sequence's last token) -> Bradley–Terry loss -> backward -> clip -> AdamW
            -> log loss, accuracy, margin; evaluate; checkpoint
    save:   RUN/reward_model/ (adapter/ or model/, reward_head.safetensors, reward_model.json), run.json

Under torchrun each process takes every N-th micro-batch of the step and the gradients are summed
(train/distributed.py; full fine-tuning is sharded with FSDP2, the head with the root).

`tunesmith score --reward-model RUN --data FILE` reads it back; PPO and GRPO use it as their reward.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import tqdm

from tunesmith.config.schema import RewardConfig
from tunesmith.data.packing import collate_pairs
from tunesmith.data.prepare import TokenizedPair, prepare_preference_data
from tunesmith.losses.reward import bradley_terry_loss, pair_accuracy
from tunesmith.models import load_tokenizer, resolve_model_dir, select_device
from tunesmith.models.attention import packs_flat, pairs_in_positions
from tunesmith.models.load import autocast_dtype
from tunesmith.models.reward import new_reward_head, save_reward_head
from tunesmith.train.distributed import (full_state, load_checkpoint_everywhere, save_checkpoint_on_main, shard_model,
                                         shut_down, start_processes)
from tunesmith.train.metrics import MetricsLog, NullLog, RunningMeans
from tunesmith.train.model_setup import build_trainable_model, save_trained
from tunesmith.train.order import split_micro, step_indices
from tunesmith.train.rundir import open_run_dir, write_run_result
from tunesmith.train.schedule import build_optimizer, lr_multiplier, plan_steps, set_lr
from tunesmith.models.forward import batch_last_hidden, unwrap
from tunesmith.train.step import optimizer_step


@dataclass
class RewardResult:
    run_dir: Path
    output: Path  # RUN/reward_model
    steps: int
    final: dict[str, float]
    eval: dict[str, float] | None
    seconds: float
    model: torch.nn.Module
    head: torch.nn.Linear


def pair_scores(model: torch.nn.Module, head: torch.nn.Linear, pairs: list[TokenizedPair], packing: bool,
                max_length: int, pad_id: int, device: torch.device,
                amp_dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(r_chosen [n], r_rejected [n], tokens computed): both sides in one forward, the head in fp32."""
    batch = collate_pairs([p.chosen for p in pairs], [p.rejected for p in pairs], packing, max_length, pad_id,
                          packs_flat(model), pairs_in_positions(model))
    last = batch_last_hidden(model, batch.to(device), 2 * len(pairs), amp_dtype)
    scores = head(last.float()).squeeze(-1)
    n = len(pairs)
    return scores[:n], scores[n:], batch.num_tokens


def add_reward_stats(stats: RunningMeans, losses: torch.Tensor, r_chosen: torch.Tensor,
                     r_rejected: torch.Tensor) -> None:
    """Loss, accuracy, margin and the mean score of each side, per pair."""
    stats.add(len(losses), loss=losses, accuracy=pair_accuracy(r_chosen, r_rejected), margin=r_chosen - r_rejected,
              reward_chosen=r_chosen, reward_rejected=r_rejected)


def run_reward(cfg: RewardConfig, say: Callable[[str], None] = print, progress: bool = True) -> RewardResult:
    started = time.time()
    # ---- setup -------------------------------------------------------------------------------
    dist = start_processes(cfg, "reward")
    if not dist.is_main:  # rank 0 speaks and writes for all
        say, progress = (lambda s: None), False
    device = dist.device or select_device(cfg.device)
    amp_dtype = autocast_dtype(cfg.train.precision, device)
    model_dir = resolve_model_dir(cfg.model)
    tokenizer = load_tokenizer(model_dir)
    data = prepare_preference_data(cfg.data, tokenizer, cfg.train.seed)
    for line in data.notes:
        say(f"data: {line}")
    for line in data.warnings:
        say(f"warning: {line}")

    run_dir, resume_from = open_run_dir(cfg, "reward", dist)
    model, trainable, total = build_trainable_model(cfg, model_dir, device, amp_dtype, say)
    # registered on the model, so checkpoints and the optimizer see the head like any trainable weight
    model.reward_head = head = new_reward_head(unwrap(model).config.hidden_size, device)
    shard_model(model, dist)  # full fine-tuning in several processes: FSDP2
    mbs, packing, max_len, pad_id = cfg.train.micro_batch_size, cfg.data.packing, cfg.data.max_length, tokenizer.pad_token_id

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, cfg.train.lr, cfg.train.weight_decay)
    n_train = len(data.train)
    total_steps, warmup_steps, too_many = plan_steps(cfg.train, n_train)
    if too_many:
        say(f"warning: {too_many}")
    step, pairs_seen = 0, 0
    if resume_from is not None:
        state = load_checkpoint_everywhere(dist, resume_from, model, optimizer)
        step, pairs_seen = state["step"], state.get("pairs_seen", 0)
        say(f"resumed from {resume_from} at step {step}")
    metrics = (MetricsLog(run_dir / "metrics.jsonl", resume_step=step if resume_from else None)
               if dist.is_main else NullLog())
    say(f"reward model on {n_train} pairs, {total_steps} steps of {cfg.train.batch_size} (micro-batch {mbs}), "
        f"lr {cfg.train.lr:g}, {device.type}" + (f", autocast {amp_dtype}" if amp_dtype else ", fp32")
        + (f", {dist.world} processes" + (" (FSDP)" if dist.sharded else "") if dist.active else ""))

    @torch.no_grad()
    def evaluate() -> dict[str, float] | None:
        if not data.eval:
            return None
        was_training = model.training
        model.eval()
        stats = RunningMeans()
        for start in range(0, len(data.eval), mbs):
            r_w, r_l, _ = pair_scores(model, head, data.eval[start : start + mbs], packing, max_len, pad_id,
                                      device, amp_dtype)
            add_reward_stats(stats, bradley_terry_loss(r_w, r_l), r_w, r_l)
        model.train(was_training)
        return stats.means("eval_")

    def checkpoint(at_step: int) -> None:
        save_checkpoint_on_main(dist, run_dir, at_step, model, optimizer, {"pairs_seen": pairs_seen})

    # ---- loop --------------------------------------------------------------------------------
    if cfg.train.eval_every and step == 0 and data.eval:
        metrics.write({"step": 0, **evaluate()})
    model.train()
    bar = tqdm(total=total_steps, initial=step, disable=not progress, unit="step", dynamic_ncols=True)
    record: dict[str, Any] = {}
    while step < total_steps:
        t0 = time.perf_counter()
        lr = cfg.train.lr * lr_multiplier(step, total_steps, warmup_steps, cfg.train.schedule)
        set_lr(optimizer, lr)
        indices = step_indices(n_train, cfg.train.batch_size, cfg.train.seed, step)
        stats, tokens = RunningMeans(), 0
        for micro, weight in dist.deal(split_micro(indices, mbs)):  # weight 0: a filler keeping FSDP in step
            r_w, r_l, n_tokens = pair_scores(model, head, [data.train[i] for i in micro], packing, max_len, pad_id,
                                             device, amp_dtype)
            losses = bradley_terry_loss(r_w, r_l)
            (weight * losses.sum() / len(indices)).backward()  # mean over the step's pairs, whatever the micro-batches
            if weight:
                add_reward_stats(stats, losses, r_w, r_l)
                tokens += n_tokens
        dist.sum_gradients(params)
        stats, tokens = dist.sum_means(stats), int(dist.sum(tokens))
        grad_norm = optimizer_step(params, optimizer, cfg.train.max_grad_norm)
        step += 1
        pairs_seen += len(indices)
        seconds = time.perf_counter() - t0
        record = {"step": step, **stats.means(), "lr": lr, "grad_norm": grad_norm, "pairs": len(indices),
                  "tokens": tokens, "step_s": seconds, "pairs_per_s": len(indices) / seconds,
                  "epoch": pairs_seen / n_train}
        if cfg.train.eval_every and step % cfg.train.eval_every == 0 and step < total_steps:
            record.update(evaluate() or {})
        if step % cfg.train.log_every == 0 or "eval_loss" in record:
            metrics.write(record)
        bar.set_postfix(loss=f"{record['loss']:.4f}", acc=f"{record['accuracy']:.2f}", refresh=False)
        bar.update(1)
        if cfg.train.save_every and step % cfg.train.save_every == 0 and step < total_steps:
            checkpoint(step)
    bar.close()

    # ---- save --------------------------------------------------------------------------------
    final_eval = evaluate()
    if final_eval is not None:
        metrics.write({"step": step, **final_eval, "final": True})
        say(f"eval on {len(data.eval)} pairs: loss {final_eval['eval_loss']:.4f}, accuracy "
            f"{final_eval['eval_accuracy']:.3f}, margin {final_eval['eval_margin']:.3f}")
    metrics.close()
    checkpoint(step)
    output = run_dir / "reward_model"
    whole = full_state(model)[0] if dist.sharded else None  # every process takes part in the gather
    if dist.is_main:
        output.mkdir(exist_ok=True)
        saved_head = head
        if whole is not None:  # the head's gathered weights, and the base part alone for the model directory
            saved_head = new_reward_head(head.in_features, torch.device("cpu"))
            saved_head.load_state_dict({k.removeprefix("reward_head."): whole.pop(k) for k in list(whole)
                                        if k.startswith("reward_head.")})
        del model.reward_head  # the PEFT adapter / model directory holds the base part only
        save_trained(model, tokenizer, output, cfg.method, model_dir, record_dir=run_dir, state_dict=whole)
        model.reward_head = head
        save_reward_head(output, saved_head, model_dir, cfg.method)
    seconds = time.time() - started
    final = {k: record[k] for k in ("loss", "accuracy", "margin") if k in record}
    manifest = {"recipe": "reward", "method": cfg.method, "model": cfg.model, "model_dir": str(model_dir),
                "steps": step, "train_pairs": n_train, "eval_pairs": len(data.eval), "pairs_seen": pairs_seen,
                "final": final, "eval": final_eval, "trainable_params": trainable + head.weight.numel() + 1,
                "total_params": total, "processes": dist.world, "seconds": round(seconds, 2), "output": output.name}
    if dist.is_main:
        write_run_result(run_dir, "reward", manifest, None, output, step, seconds, say)
    shut_down(dist)
    model.eval()
    return RewardResult(run_dir, output, step, final, final_eval, seconds, model, head)
