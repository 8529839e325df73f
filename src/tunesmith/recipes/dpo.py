"""Preference optimisation (DPO, IPO) on chosen/rejected pairs: LoRA, QLoRA or full fine-tuning.

    setup:  device -> model dir -> tokenizer -> pairs -> run dir -> model (+ adapter) -> reference
            log-probs (precomputed once, or the adapter switched off each step) -> optimizer
    loop:   per optimizer step: its pairs -> micro-batches -> reference log-probs -> one forward over
            chosen + rejected -> preference loss (+ sft_weight · chosen NLL) -> backward -> clip -> AdamW
            -> log implicit rewards, evaluate, checkpoint
    save:   adapter/ (PEFT format) or model/ (Hugging Face format), run.json

Under torchrun each process takes every N-th micro-batch of the step and the gradients are summed
(train/distributed.py; full fine-tuning is sharded with FSDP2); every process evaluates the whole eval set.

The reference policy π_ref is the model before training. For LoRA/QLoRA it is the same weights with
the adapter switched off, so no second copy is ever in memory; for full fine-tuning (and with
--precompute-ref) its log-probs are computed once before the first step and cached in
RUN/reference_logps.safetensors. A fresh adapter adds exactly zero, so the first loss is ln 2.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save
from tqdm import tqdm

from tunesmith.atomic import atomic_write_bytes
from tunesmith.config.schema import DPOConfig
from tunesmith.data.packing import collate_pairs
from tunesmith.data.prepare import TokenizedPair, prepare_preference_data
from tunesmith.forgetting.guard import guard_start, guard_step, start_guard, stop_over_budget
from tunesmith.losses.dpo import PREFERENCE_LOSSES
from tunesmith.losses.reward import pair_accuracy
from tunesmith.models import load_tokenizer, resolve_model_dir, select_device
from tunesmith.models.attention import packs_flat, pairs_in_positions
from tunesmith.models.load import autocast_dtype
from tunesmith.train.distributed import (Dist, full_state, load_checkpoint_everywhere, save_checkpoint_on_main,
                                         shard_model, shut_down, start_processes)
from tunesmith.train.metrics import MetricsLog, NullLog, RunningMeans
from tunesmith.train.model_setup import build_trainable_model, save_trained
from tunesmith.train.order import split_micro, step_indices
from tunesmith.train.rundir import open_run_dir, write_run_result
from tunesmith.train.schedule import build_optimizer, lr_multiplier, plan_steps, set_lr
from tunesmith.models.forward import batch_sequence_logps
from tunesmith.train.step import optimizer_step

REFERENCE_FILE = "reference_logps.safetensors"


@dataclass
class DPOResult:
    run_dir: Path
    output: Path  # adapter/ or model/
    steps: int
    final: dict[str, float]  # the last step's training metrics
    eval: dict[str, float] | None  # held-out metrics at the end (loss, rewards, accuracy)
    seconds: float
    model: torch.nn.Module


@dataclass
class Forward:
    """A micro-batch's sequence log-probs: [pairs] each, summed over completion tokens."""
    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_tokens: torch.Tensor  # completion tokens per chosen sequence (for the optional SFT term)
    tokens: int  # real tokens through the model (chosen + rejected)


def pair_forward(model: torch.nn.Module, pairs: list[TokenizedPair], packing: bool, max_length: int,
                 pad_id: int, device: torch.device, amp_dtype: torch.dtype | None) -> Forward:
    """Chosen and rejected sequences in ONE forward.

    Default: one row per pair with the prompt computed once (`collate_shared_prompt`); with packing,
    the 2n sequences packed into one row (`collate_packed`). Both give each sequence its own exact log-prob.
    """
    batch = collate_pairs([p.chosen for p in pairs], [p.rejected for p in pairs], packing, max_length, pad_id,
                          packs_flat(model), pairs_in_positions(model))
    batch = batch.to(device)
    logps, counts = batch_sequence_logps(model, batch, 2 * len(pairs), amp_dtype)
    n = len(pairs)
    return Forward(logps[:n], logps[n:], counts[:n], batch.num_tokens)


def adapter_off(model: torch.nn.Module):
    """The reference policy: PEFT's disable_adapter() for LoRA/QLoRA; the model itself otherwise."""
    return model.disable_adapter() if hasattr(model, "peft_config") else contextlib.nullcontext()


@torch.no_grad()
def reference_logps(model: torch.nn.Module, pairs: list[TokenizedPair], micro_batch_size: int, packing: bool,
                    max_length: int, pad_id: int, device: torch.device, amp_dtype: torch.dtype | None,
                    dist: Dist = Dist()) -> torch.Tensor:
    """[pairs, 2] (chosen, rejected) log π_ref, computed with the adapter off (or before any update); with
    several processes each computes every N-th micro-batch and they exchange the results."""
    out = []
    with adapter_off(model):
        for start in dist.share(range(0, len(pairs), micro_batch_size)):
            f = pair_forward(model, pairs[start : start + micro_batch_size], packing, max_length, pad_id,
                             device, amp_dtype)
            out.append(torch.stack([f.chosen, f.rejected], dim=1).float())  # stays on the device
    if dist.active:
        out = [t.to(device) for t in dist.unshare([t.cpu() for t in out])]
    return torch.cat(out) if out else torch.zeros(0, 2)


def reference_fingerprint(model_dir: Path, method: str, amp_dtype, max_length: int,
                          splits: dict[str, list[TokenizedPair]]) -> str:
    """What the cached reference log-probs depend on: base, precision, and every token of every pair."""
    h = hashlib.sha256(json.dumps([str(model_dir), method, str(amp_dtype), max_length]).encode())
    for name, pairs in splits.items():
        h.update(name.encode())
        for p in pairs:
            h.update(json.dumps([p.chosen.input_ids, p.chosen.labels, p.rejected.input_ids,
                                 p.rejected.labels]).encode())
    return h.hexdigest()


def cached_reference(run_dir: Path, fingerprint: str, compute: Callable[[], dict[str, torch.Tensor]],
                     say: Callable[[str], None], dist: Dist = Dist()) -> dict[str, torch.Tensor]:
    """Reuse RUN/reference_logps.safetensors when it was computed for exactly this setup, else compute it
    (every process takes part; rank 0 decides and writes)."""
    path = run_dir / REFERENCE_FILE
    same = False
    if dist.is_main and path.is_file():
        with safe_open(str(path), "pt") as f:
            same = (f.metadata() or {}).get("fingerprint") == fingerprint
    if dist.first(same):
        say(f"reference log-probs: reusing {path}")
        return load_file(str(path))
    started = time.perf_counter()
    tensors = compute()
    if dist.is_main:
        atomic_write_bytes(path, save({k: v.cpu().contiguous() for k, v in tensors.items()},
                                      {"fingerprint": fingerprint}))
    say(f"reference log-probs: {sum(len(v) for v in tensors.values())} pairs in "
        f"{time.perf_counter() - started:.0f} s, cached in {path}")
    return tensors


LOGGED = ("loss", "reward_chosen", "reward_rejected", "reward_margin", "reward_accuracy", "logp_chosen",
          "logp_rejected")


def add_preference_stats(stats: RunningMeans, losses: torch.Tensor, r_chosen: torch.Tensor,
                         r_rejected: torch.Tensor, f: Forward) -> None:
    """The logged per-pair quantities (`LOGGED`, in that order) of one micro-batch."""
    stats.add(len(losses), loss=losses, reward_chosen=r_chosen, reward_rejected=r_rejected,
              reward_margin=r_chosen - r_rejected,
              # a tie (policy == reference, e.g. before training) is a coin flip: it counts one half
              reward_accuracy=pair_accuracy(r_chosen, r_rejected),
              logp_chosen=f.chosen, logp_rejected=f.rejected)


def run_dpo(cfg: DPOConfig, say: Callable[[str], None] = print, progress: bool = True) -> DPOResult:
    started = time.time()
    # ---- setup -------------------------------------------------------------------------------
    dist = start_processes(cfg, "dpo")
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

    run_dir, resume_from = open_run_dir(cfg, "dpo", dist)
    model, trainable, total = build_trainable_model(cfg, model_dir, device, amp_dtype, say)
    guard = start_guard(cfg, model, tokenizer, model_dir, device, amp_dtype, say)
    loss_fn = PREFERENCE_LOSSES[cfg.dpo.loss]
    beta, sft_weight = cfg.dpo.beta, cfg.dpo.sft_weight
    mbs, packing, max_len, pad_id = cfg.train.micro_batch_size, cfg.data.packing, cfg.data.max_length, tokenizer.pad_token_id

    # Full fine-tuning has no frozen copy to switch back to: its reference must be computed now,
    # before any update (and before a resumed run loads its trained weights below).
    precompute = cfg.dpo.precompute_ref or cfg.method == "full"
    reference: dict[str, torch.Tensor] = {}
    if precompute:
        splits = {"train": data.train, "eval": data.eval}
        fingerprint = reference_fingerprint(model_dir, cfg.method, amp_dtype, max_len, splits)
        reference = cached_reference(run_dir, fingerprint, lambda: {
            name: reference_logps(model, pairs, mbs, packing, max_len, pad_id, device, amp_dtype, dist)
            for name, pairs in splits.items()}, say, dist)
    shard_model(model, dist)  # full fine-tuning in several processes: FSDP2 (after the reference pass)

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
    say(f"{cfg.dpo.loss} on {n_train} pairs, {total_steps} steps of {cfg.train.batch_size} (micro-batch {mbs}), "
        f"beta {beta:g}, lr {cfg.train.lr:g}, reference "
        + ("precomputed" if precompute else "= adapter off") + f", {device.type}"
        + (f", autocast {amp_dtype}" if amp_dtype else ", fp32")
        + (f", {dist.world} processes" + (" (FSDP)" if dist.sharded else "") if dist.active else ""))

    def preference_step(pairs: list[TokenizedPair], ref: torch.Tensor | None, stats: RunningMeans,
                        scale: float) -> tuple[torch.Tensor, Forward]:
        """Loss of one micro-batch, already divided by the step's pair count (`scale` = 1 / pairs)."""
        if ref is None:  # the reference is this very model with its adapter switched off
            ref = reference_logps(model, pairs, len(pairs), packing, max_len, pad_id, device, amp_dtype)
        f = pair_forward(model, pairs, packing, max_len, pad_id, device, amp_dtype)
        ref = ref.to(device)
        losses, r_chosen, r_rejected = loss_fn(f.chosen.float(), f.rejected.float(), ref[:, 0], ref[:, 1], beta)
        add_preference_stats(stats, losses, r_chosen, r_rejected, f)
        return losses.sum() * scale, f

    @torch.no_grad()
    def evaluate() -> dict[str, float] | None:
        if not data.eval:
            return None
        was_training = model.training
        model.eval()
        stats = RunningMeans()
        for start in range(0, len(data.eval), mbs):
            ref = reference["eval"][start : start + mbs] if precompute else None
            preference_step(data.eval[start : start + mbs], ref, stats, 1.0)
        model.train(was_training)
        return stats.means("eval_")

    def checkpoint(at_step: int) -> None:
        save_checkpoint_on_main(dist, run_dir, at_step, model, optimizer, {"pairs_seen": pairs_seen})

    # ---- loop --------------------------------------------------------------------------------
    if step == 0:  # the starting point: policy == reference
        start = evaluate() if cfg.train.eval_every and data.eval else {}
        start.update(guard_start(guard))
        if start:
            metrics.write({"step": 0, **start})
    model.train()
    bar = tqdm(total=total_steps, initial=step, disable=not progress, unit="step", dynamic_ncols=True)
    record: dict[str, Any] = {}
    while step < total_steps:
        t0 = time.perf_counter()
        lr = cfg.train.lr * lr_multiplier(step, total_steps, warmup_steps, cfg.train.schedule)
        set_lr(optimizer, lr)
        indices = step_indices(n_train, cfg.train.batch_size, cfg.train.seed, step)
        # Normalise by the whole step's pairs (and chosen tokens for the SFT term), not per
        # micro-batch: accumulated gradients then equal those of one big batch.
        chosen_tokens = sum(data.train[i].chosen.num_targets for i in indices)
        stats, tokens, nll_sum = RunningMeans(), 0, 0.0
        for micro, weight in dist.deal(split_micro(indices, mbs)):  # weight 0: a filler keeping FSDP in step
            ref = reference["train"][micro] if precompute else None
            loss, f = preference_step([data.train[i] for i in micro], ref, stats if weight else RunningMeans(),
                                      weight / len(indices))
            if sft_weight > 0:
                loss = loss + weight * sft_weight * -f.chosen.sum() / max(1, chosen_tokens)
            loss.backward()
            tokens += int(weight) * f.tokens
            nll_sum -= weight * float(f.chosen.detach().sum())
        dist.sum_gradients(params)
        stats, tokens, nll_sum = dist.sum_means(stats), int(dist.sum(tokens)), dist.sum(nll_sum)
        grad_norm = optimizer_step(params, optimizer, cfg.train.max_grad_norm)
        step += 1
        pairs_seen += len(indices)
        seconds = time.perf_counter() - t0
        record = {"step": step, **stats.means(), "lr": lr, "grad_norm": grad_norm, "pairs": len(indices),
                  "tokens": tokens, "step_s": seconds, "pairs_per_s": len(indices) / seconds,
                  "tokens_per_s": tokens / seconds, "epoch": pairs_seen / n_train}
        if sft_weight > 0:
            record["chosen_nll"] = nll_sum / max(1, chosen_tokens)
        if cfg.train.eval_every and step % cfg.train.eval_every == 0 and step < total_steps:
            record.update(evaluate() or {})
        over_budget = guard_step(guard, model, step, total_steps, record)
        if step % cfg.train.log_every == 0 or "eval_loss" in record or "kl_to_base" in record:
            metrics.write(record)
        bar.set_postfix(loss=f"{record['loss']:.4f}", acc=f"{record['reward_accuracy']:.2f}",
                        pairs_s=f"{record['pairs_per_s']:.2f}", refresh=False)
        bar.update(1)
        if over_budget:
            break
        if cfg.train.save_every and step % cfg.train.save_every == 0 and step < total_steps:
            checkpoint(step)
    bar.close()
    stop_over_budget(guard, model, metrics, step, say)

    # ---- save --------------------------------------------------------------------------------
    final_eval = evaluate()
    if final_eval is not None:
        metrics.write({"step": step, **final_eval, "final": True})
        say(f"eval on {len(data.eval)} pairs: loss {final_eval['eval_loss']:.4f}, reward accuracy "
            f"{final_eval['eval_reward_accuracy']:.3f}, margin {final_eval['eval_reward_margin']:.3f}")
    metrics.close()
    checkpoint(step)  # lets `--resume --max-steps MORE` extend a finished run
    whole = full_state(model)[0] if dist.sharded else None  # every process takes part in the gather
    output = (save_trained(model, tokenizer, run_dir, cfg.method, model_dir, state_dict=whole) if dist.is_main
              else run_dir / ("adapter" if cfg.method in ("lora", "qlora") else "model"))
    seconds = time.time() - started
    final = {k: record[k] for k in LOGGED if k in record}
    manifest = {"recipe": "dpo", "loss": cfg.dpo.loss, "beta": beta, "method": cfg.method, "model": cfg.model,
                "model_dir": str(model_dir), "reference": "precomputed" if precompute else "adapter off",
                "steps": step, "train_pairs": n_train, "eval_pairs": len(data.eval), "pairs_seen": pairs_seen,
                "final": final, "eval": final_eval, "trainable_params": trainable, "total_params": total,
                "processes": dist.world, "seconds": round(seconds, 2), "output": output.name}
    if dist.is_main:
        write_run_result(run_dir, "dpo", manifest, guard, output, step, seconds, say)
    shut_down(dist)
    model.eval()
    return DPOResult(run_dir, output, step, final, final_eval, seconds, model)
