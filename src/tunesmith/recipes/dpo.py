"""Preference optimisation (DPO, IPO, ORPO, SimPO) on chosen/rejected pairs: LoRA, QLoRA or full fine-tuning.

    setup:  processes, device, tokenizer -> pairs -> run dir, model (+ adapter) -> reference log-probs
            (precomputed once, or the adapter switched off each step; none for orpo/simpo) -> optimizer
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
ORPO and SimPO are reference-free: no reference pass at all.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save

from tunesmith.atomic import atomic_write_bytes
from tunesmith.config.schema import DPOConfig
from tunesmith.data.prepare import TokenizedPair, prepare_preference_data
from tunesmith.losses.dpo import PREFERENCE_LOSSES, PairLogps
from tunesmith.losses.reward import pair_accuracy
from tunesmith.models.forward import adapter_off, batch_sequence_logps, eval_mode
from tunesmith.recipes import RECIPES
from tunesmith.train.distributed import Dist
from tunesmith.train.metrics import RunningMeans
from tunesmith.train.model_setup import collate_pairs_for
from tunesmith.train.order import split_micro, step_indices
from tunesmith.train.run import OnEvent, Run, RunResult, Say, finish_run, open_run, start_run
from tunesmith.train.step import optimizer_step

REFERENCE_FILE = "reference_logps.safetensors"


@dataclass
class Forward:
    """A micro-batch's sequence log-probs: [pairs] each, summed over completion tokens."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_tokens: torch.Tensor  # completion tokens per sequence (the optional SFT term, ORPO, SimPO)
    rejected_tokens: torch.Tensor
    tokens: int  # real tokens through the model (chosen + rejected)


def pair_forward(
    model: torch.nn.Module,
    pairs: list[TokenizedPair],
    packing: bool,
    max_length: int,
    pad_id: int,
    device: torch.device,
    amp_dtype: torch.dtype | None,
) -> Forward:
    """Chosen and rejected sequences in ONE forward.

    Default: each pair's prompt computed once (`collate_pairs`: one flat row, or a row per pair); with
    packing, the 2n sequences packed into one row (`collate_packed`). Both give each sequence its own exact log-prob.
    """
    batch = collate_pairs_for(
        model, [p.chosen for p in pairs], [p.rejected for p in pairs], packing, max_length, pad_id
    )
    batch = batch.to(device)
    logps, counts = batch_sequence_logps(model, batch, 2 * len(pairs), amp_dtype)
    n = len(pairs)
    return Forward(logps[:n], logps[n:], counts[:n], counts[n:], batch.num_tokens)


@torch.no_grad()
def reference_logps(
    model: torch.nn.Module,
    pairs: list[TokenizedPair],
    micro_batch_size: int,
    packing: bool,
    max_length: int,
    pad_id: int,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    dist: Dist = Dist(),
) -> torch.Tensor:
    """[pairs, 2] (chosen, rejected) log π_ref, computed with the adapter off (or before any update); with
    several processes each computes every N-th micro-batch and they exchange the results."""
    out = []
    with adapter_off(model):
        for start in dist.share(range(0, len(pairs), micro_batch_size)):
            f = pair_forward(
                model, pairs[start : start + micro_batch_size], packing, max_length, pad_id, device, amp_dtype
            )
            out.append(torch.stack([f.chosen, f.rejected], dim=1).float())  # stays on the device
    if dist.active:
        out = [t.to(device) for t in dist.unshare([t.cpu() for t in out])]
    return torch.cat(out) if out else torch.zeros(0, 2)


def reference_fingerprint(
    model_dir: Path, method: str, amp_dtype, max_length: int, splits: dict[str, list[TokenizedPair]]
) -> str:
    """What the cached reference log-probs depend on: base, precision, and every token of every pair."""
    h = hashlib.sha256(json.dumps([str(model_dir), method, str(amp_dtype), max_length]).encode())
    for name, pairs in splits.items():
        h.update(name.encode())
        for p in pairs:
            h.update(
                json.dumps([p.chosen.input_ids, p.chosen.labels, p.rejected.input_ids, p.rejected.labels]).encode()
            )
    return h.hexdigest()


def cached_reference(
    run_dir: Path,
    fingerprint: str,
    compute: Callable[[], dict[str, torch.Tensor]],
    say: Callable[[str], None],
    dist: Dist = Dist(),
) -> dict[str, torch.Tensor]:
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
        atomic_write_bytes(
            path, save({k: v.cpu().contiguous() for k, v in tensors.items()}, {"fingerprint": fingerprint})
        )
    say(
        f"reference log-probs: {sum(len(v) for v in tensors.values())} pairs in "
        f"{time.perf_counter() - started:.0f} s, cached in {path}"
    )
    return tensors


LOGGED = (
    "loss",
    "reward_chosen",
    "reward_rejected",
    "reward_margin",
    "reward_accuracy",
    "logp_chosen",
    "logp_rejected",
)


def add_preference_stats(
    stats: RunningMeans, losses: torch.Tensor, r_chosen: torch.Tensor, r_rejected: torch.Tensor, f: Forward
) -> None:
    """The logged per-pair quantities (`LOGGED`, in that order) of one micro-batch."""
    stats.add(
        len(losses),
        loss=losses,
        reward_chosen=r_chosen,
        reward_rejected=r_rejected,
        reward_margin=r_chosen - r_rejected,
        # a tie (policy == reference, e.g. before training) is a coin flip: it counts one half
        reward_accuracy=pair_accuracy(r_chosen, r_rejected),
        logp_chosen=f.chosen,
        logp_rejected=f.rejected,
    )


def run_dpo(cfg: DPOConfig, say: Say = print, progress: bool = True, on_event: OnEvent = None) -> RunResult:
    # ---- setup -------------------------------------------------------------------------------
    assert cfg.train.batch_size is not None and cfg.train.micro_batch_size is not None  # validate() filled them
    run = start_run(cfg, RECIPES["dpo"], say, progress, on_event)
    data = prepare_preference_data(cfg.data, run.tokenizer, cfg.train.seed)
    run.note(data)
    loss = PREFERENCE_LOSSES[cfg.dpo.loss]
    beta, gamma, sft_weight = cfg.dpo.beta, cfg.dpo.gamma, cfg.dpo.sft_weight
    mbs, packing, max_len = cfg.train.micro_batch_size, cfg.data.packing, cfg.data.max_length
    pad_id, device, amp_dtype = run.tokenizer.pad_token_id, run.device, run.amp_dtype
    # Full fine-tuning has no frozen copy to switch back to: its reference must be computed before any
    # update (and before a resumed run loads its trained weights), which `attach` does.
    precompute = loss.reference and (cfg.dpo.precompute_ref or cfg.method == "full")
    reference: dict[str, torch.Tensor] = {}

    def precompute_reference(run: Run[DPOConfig]) -> None:
        splits = {"train": data.train, "eval": data.eval}
        fingerprint = reference_fingerprint(run.model_dir, cfg.method, amp_dtype, max_len, splits)
        reference.update(
            cached_reference(
                run.run_dir,
                fingerprint,
                lambda: {
                    name: reference_logps(run.model, pairs, mbs, packing, max_len, pad_id, device, amp_dtype, run.dist)
                    for name, pairs in splits.items()
                },
                run.say,
                run.dist,
            )
        )

    run.counters["pairs_seen"] = 0
    open_run(run, len(data.train), attach=precompute_reference if precompute else None)
    model, dist, n_train = run.model, run.dist, len(data.train)
    run.say(
        f"{cfg.dpo.loss} on {n_train} pairs, {run.total_steps} steps of {cfg.train.batch_size} (micro-batch "
        f"{mbs}), beta {beta:g}, lr {cfg.train.lr:g}, reference "
        + ("precomputed" if precompute else "= adapter off" if loss.reference else "none")
        + f", {run.where()}"
    )

    def preference_step(
        pairs: list[TokenizedPair], ref: torch.Tensor | None, stats: RunningMeans, scale: float
    ) -> tuple[torch.Tensor, Forward]:
        """Loss of one micro-batch, already divided by the step's pair count (`scale` = 1 / pairs)."""
        if loss.reference and ref is None:  # the reference is this very model with its adapter switched off
            ref = reference_logps(model, pairs, len(pairs), packing, max_len, pad_id, device, amp_dtype)
        f = pair_forward(model, pairs, packing, max_len, pad_id, device, amp_dtype)
        ref = None if ref is None else ref.to(device).float()
        logps = PairLogps(
            f.chosen.float(),
            f.rejected.float(),
            f.chosen_tokens,
            f.rejected_tokens,
            *((ref[:, 0], ref[:, 1]) if ref is not None else ()),
        )
        losses, r_chosen, r_rejected = loss.fn(logps, beta, gamma)
        add_preference_stats(stats, losses, r_chosen, r_rejected, f)
        return losses.sum() * scale, f

    def evaluate() -> dict[str, float]:
        stats = RunningMeans()
        with eval_mode(model):
            for start in range(0, len(data.eval), mbs):
                ref = reference["eval"][start : start + mbs] if precompute else None
                preference_step(data.eval[start : start + mbs], ref, stats, 1.0)
        return stats.means("eval_")

    # ---- loop --------------------------------------------------------------------------------
    run.begin(evaluate if cfg.train.eval_every else None)  # step 0: policy == reference
    while run.step < run.total_steps:
        lr = run.begin_step()
        indices = step_indices(n_train, cfg.train.batch_size, cfg.train.seed, run.step)
        # Normalise by the whole step's pairs (and chosen tokens for the SFT term), not per
        # micro-batch: accumulated gradients then equal those of one big batch.
        chosen_tokens = sum(data.train[i].chosen.num_targets for i in indices)
        stats, tokens, nll_sum = RunningMeans(), 0, 0.0
        for micro, weight in dist.deal(split_micro(indices, mbs)):  # weight 0: a filler keeping FSDP in step
            ref = reference["train"][micro] if precompute else None
            step_loss, f = preference_step(
                [data.train[i] for i in micro], ref, stats if weight else RunningMeans(), weight / len(indices)
            )
            if sft_weight > 0:
                step_loss = step_loss + weight * sft_weight * -f.chosen.sum() / max(1, chosen_tokens)
            step_loss.backward()
            tokens += int(weight) * f.tokens
            nll_sum -= weight * float(f.chosen.detach().sum())
        dist.sum_gradients(run.params)
        stats, tokens, nll_sum = dist.sum_means(stats), int(dist.sum(tokens)), dist.sum(nll_sum)
        grad_norm = optimizer_step(run.params, run.optimizer, cfg.train.max_grad_norm)
        n = len(indices)
        record = run.step_record(stats.means(), lr, grad_norm, "pairs", n, n_train, pairs=n, tokens=tokens)
        if sft_weight > 0:
            record["chosen_nll"] = nll_sum / max(1, chosen_tokens)
        if run.end_step(
            record, evaluate, per_second={"pairs": len(indices), "tokens": tokens}, show=("loss", "reward_accuracy")
        ):
            break

    # ---- save --------------------------------------------------------------------------------
    return finish_run(
        run,
        evaluate,
        lambda e: (
            f"eval on {len(data.eval)} pairs: loss {e['eval_loss']:.4f}, reward accuracy "
            f"{e['eval_reward_accuracy']:.3f}, margin {e['eval_reward_margin']:.3f}"
        ),
        {
            "loss": cfg.dpo.loss,
            "beta": beta,
            "reference": "precomputed" if precompute else "adapter off" if loss.reference else "none",
            "train_pairs": n_train,
            "eval_pairs": len(data.eval),
        },
        final_keys=LOGGED,
    )
