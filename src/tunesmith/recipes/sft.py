"""Supervised fine-tuning: LoRA, QLoRA (LoRA over an NF4 base) or full fine-tuning.

    setup:  device -> model dir -> tokenizer -> data -> run dir -> model (+ adapter) -> optimizer
    loop:   per optimizer step: its examples -> micro-batches (this process's share under torchrun) ->
            loss / step tokens -> backward -> [sum gradients over processes] -> clip -> AdamW ->
            log, evaluate, forgetting guard (stop over budget), checkpoint (rank 0)
    save:   adapter/ (PEFT format) or model/ (Hugging Face format), run.json, final metrics

Under torchrun (train/distributed.py) lora/qlora train replicated with summed gradients and full
fine-tuning is sharded with FSDP2; either way N processes make the update one process makes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import tqdm

from tunesmith.atomic import atomic_write_text
from tunesmith.config.schema import SFTConfig
from tunesmith.data.packing import collate
from tunesmith.data.prepare import prepare_sft_data
from tunesmith.forgetting.guard import guard_start, guard_step, guard_summary, start_guard, stop_over_budget
from tunesmith.models import load_tokenizer, resolve_model_dir, select_device
from tunesmith.models.attention import packs_flat
from tunesmith.models.integrity import run_summary
from tunesmith.models.load import autocast_dtype
from tunesmith.report import write_report
from tunesmith.train.distributed import (full_state, load_checkpoint_everywhere, save_checkpoint_on_main, shard_model,
                                         shut_down, start_processes)
from tunesmith.train.metrics import MetricsLog, NullLog
from tunesmith.train.model_setup import build_trainable_model, save_trained
from tunesmith.train.order import split_micro, step_indices
from tunesmith.train.rundir import open_run_dir
from tunesmith.train.schedule import build_optimizer, lr_multiplier, plan_steps, set_lr
from tunesmith.models.forward import batch_nll_sum
from tunesmith.train.step import evaluate_nll, optimizer_step


@dataclass
class SFTResult:
    run_dir: Path
    output: Path  # adapter/ or model/
    steps: int
    final_loss: float | None
    eval_loss: float | None
    seconds: float
    model: torch.nn.Module  # the trained model, still in memory (PEFT-wrapped for lora/qlora)


def run_sft(cfg: SFTConfig, say: Callable[[str], None] = print, progress: bool = True) -> SFTResult:
    started = time.time()
    # ---- setup -------------------------------------------------------------------------------
    dist = start_processes(cfg, "sft")
    if not dist.is_main:  # rank 0 speaks and writes for all
        say, progress = (lambda s: None), False
    device = dist.device or select_device(cfg.device)
    amp_dtype = autocast_dtype(cfg.train.precision, device)
    model_dir = resolve_model_dir(cfg.model)
    tokenizer = load_tokenizer(model_dir)
    data = prepare_sft_data(cfg.data, tokenizer, cfg.train.seed, model_dir, say)
    for line in data.notes:
        say(f"data: {line}")
    for line in data.warnings:
        say(f"warning: {line}")

    run_dir, resume_from = open_run_dir(cfg, "sft", dist)
    model, trainable, total = build_trainable_model(cfg, model_dir, device, amp_dtype, say)
    guard = start_guard(cfg, model, tokenizer, model_dir, device, amp_dtype, say)
    shard_model(model, dist)  # full fine-tuning in several processes: FSDP2

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, cfg.train.lr, cfg.train.weight_decay)
    n_train = len(data.train)
    total_steps, warmup_steps, too_many = plan_steps(cfg.train, n_train)
    if too_many:
        say(f"warning: {too_many}")
    step, tokens_seen = 0, 0
    if resume_from is not None:
        state = load_checkpoint_everywhere(dist, resume_from, model, optimizer)
        step, tokens_seen = state["step"], state.get("tokens_seen", 0)
        say(f"resumed from {resume_from} at step {step}")
    metrics = (MetricsLog(run_dir / "metrics.jsonl", resume_step=step if resume_from else None)
               if dist.is_main else NullLog())
    pad_id = tokenizer.pad_token_id
    flat = packs_flat(model)  # per-example attention: a micro-batch packs into one row, no padding
    share = flat and cfg.data.shared_prefix  # ... with a prefix its examples share computed once
    say(f"training {n_train} examples, {total_steps} steps of {cfg.train.batch_size} "
        f"(micro-batch {cfg.train.micro_batch_size}), lr {cfg.train.lr:g}, {device.type}"
        + (f", autocast {amp_dtype}" if amp_dtype else ", fp32")
        + (f", {dist.world} processes" + (" (FSDP)" if dist.sharded else "") if dist.active else ""))

    def evaluate() -> float | None:
        if not data.eval:
            return None
        return evaluate_nll(model, data.eval, cfg.train.micro_batch_size, cfg.data.packing,
                            cfg.data.max_length, pad_id, device, amp_dtype, cfg.data.shared_prefix)

    def checkpoint(at_step: int) -> None:
        save_checkpoint_on_main(dist, run_dir, at_step, model, optimizer, {"tokens_seen": tokens_seen})

    # ---- loop --------------------------------------------------------------------------------
    if step == 0:  # the starting point of the eval and forgetting curves
        start = {"eval_loss": evaluate()} if cfg.train.eval_every and data.eval else {}
        start.update(guard_start(guard))
        if start:
            metrics.write({"step": 0, **start})
    model.train()
    bar = tqdm(total=total_steps, initial=step, disable=not progress, unit="step", dynamic_ncols=True)
    last_loss, eval_loss = None, None
    while step < total_steps:
        t0 = time.perf_counter()
        lr = cfg.train.lr * lr_multiplier(step, total_steps, warmup_steps, cfg.train.schedule)
        set_lr(optimizer, lr)
        examples = [data.train[i] for i in step_indices(n_train, cfg.train.batch_size, cfg.train.seed, step)]
        batches = [collate(micro, cfg.data.packing, cfg.data.max_length, pad_id, flat, share)
                   for micro in split_micro(examples, cfg.train.micro_batch_size)]
        # Normalise by the trained-token count of the whole step, not per micro-batch: accumulated
        # gradients then equal those of one big batch, and packed == unpacked exactly.
        step_targets = sum(b.num_targets for b in batches)
        loss_sum = 0.0
        for batch, weight in dist.deal(batches):  # weight 0: a filler that keeps FSDP's processes in step
            nll = batch_nll_sum(model, batch.to(device), amp_dtype)
            (weight * nll / max(1, step_targets)).backward()
            loss_sum += weight * nll.item()
        dist.sum_gradients(params)
        loss_sum = dist.sum(loss_sum)
        grad_norm = optimizer_step(params, optimizer, cfg.train.max_grad_norm)
        step += 1
        step_tokens = sum(b.num_tokens for b in batches)
        tokens_seen += step_tokens
        seconds = time.perf_counter() - t0
        last_loss = loss_sum / max(1, step_targets)
        record: dict[str, Any] = {"step": step, "loss": last_loss, "lr": lr, "grad_norm": grad_norm,
                                  "tokens": step_tokens, "step_s": seconds, "tokens_per_s": step_tokens / seconds,
                                  "epoch": step * cfg.train.batch_size / n_train}
        if cfg.train.eval_every and step % cfg.train.eval_every == 0 and step < total_steps:
            eval_loss = evaluate()
            if eval_loss is not None:
                record["eval_loss"] = eval_loss
        over_budget = guard_step(guard, model, step, total_steps, record)
        if step % cfg.train.log_every == 0 or "eval_loss" in record or "kl_to_base" in record:
            metrics.write(record)
        bar.set_postfix(loss=f"{last_loss:.4f}", tok_s=f"{step_tokens / seconds:.0f}", refresh=False)
        bar.update(1)
        if over_budget:
            break
        if cfg.train.save_every and step % cfg.train.save_every == 0 and step < total_steps:
            checkpoint(step)
    bar.close()
    stop_over_budget(guard, model, metrics, step, say)

    # ---- save --------------------------------------------------------------------------------
    eval_loss = evaluate()
    if eval_loss is not None:
        metrics.write({"step": step, "eval_loss": eval_loss, "final": True})
        say(f"eval loss {eval_loss:.4f} on {len(data.eval)} examples")
    metrics.close()
    checkpoint(step)  # lets `--resume --max-steps MORE` extend a finished run
    whole = full_state(model)[0] if dist.sharded else None  # every process takes part in the gather
    output = (save_trained(model, tokenizer, run_dir, cfg.method, model_dir, state_dict=whole) if dist.is_main
              else run_dir / ("adapter" if cfg.method in ("lora", "qlora") else "model"))
    seconds = time.time() - started
    if dist.is_main:
        manifest = {"recipe": "sft", "method": cfg.method, "model": cfg.model, "model_dir": str(model_dir),
                    "steps": step, "train_examples": n_train, "eval_examples": len(data.eval),
                    "tokens_seen": tokens_seen, "final_loss": last_loss, "eval_loss": eval_loss,
                    "replay_examples": data.replayed, "trainable_params": trainable, "total_params": total,
                    "processes": dist.world, "seconds": round(seconds, 2), "output": output.name,
                    "base_checksum": run_summary(run_dir), **guard_summary(guard)}
        atomic_write_text(run_dir / "run.json", json.dumps(manifest, indent=2) + "\n")
        say(write_report(run_dir, "sft"))
        say(f"saved {output} ({step} steps, {seconds:.0f} s)")
    shut_down(dist)
    model.eval()
    return SFTResult(run_dir, output, step, last_loss, eval_loss, seconds, model)

