"""Kahneman-Tversky optimisation (KTO) on unpaired examples labelled desirable or undesirable: LoRA or QLoRA.

    setup:  processes, device, tokenizer -> labelled examples (+ each prompt with the next row's
            completion, the KL sample) -> run dir, model + adapter -> optimizer
    loop:   per optimizer step: the reference point z0 = max(0, mean KL to the base on the step's
            mismatched samples, no gradient) -> per micro-batch: reference log-probs (adapter off) ->
            policy log-probs -> KTO loss -> backward -> clip -> AdamW -> log, evaluate, checkpoint
    save:   adapter/ (PEFT format), run.json, report

z0 is taken over the whole step (summed over micro-batches and processes) before any loss, so
micro-batches and processes change nothing but speed. The reference is the base with the adapter off:
a fresh adapter gives r = 0 and z0 = 0, so the first loss is λ · 0.5.
"""

from __future__ import annotations

import torch

from tunesmith.config.schema import KTOConfig
from tunesmith.data.packing import collate
from tunesmith.data.prepare import TokenizedUnpaired, prepare_unpaired_data
from tunesmith.losses.kto import kto_loss
from tunesmith.models.attention import packs_flat
from tunesmith.models.forward import adapter_off, batch_sequence_logps, eval_mode
from tunesmith.recipes import RECIPES
from tunesmith.train.metrics import RunningMeans
from tunesmith.train.order import split_micro, step_indices
from tunesmith.train.run import OnEvent, Run, RunResult, Say, finish_run, open_run, start_run
from tunesmith.train.step import optimizer_step


def sequence_logps(run: Run[KTOConfig], examples: list) -> torch.Tensor:
    """log π(y | x) of each example (prompt + completion), packed into one forward."""
    data = run.cfg.data
    batch = collate(examples, data.packing, data.max_length, run.tokenizer.pad_token_id, packs_flat(run.model))
    return batch_sequence_logps(run.model, batch.to(run.device), len(examples), run.amp_dtype)[0].float()


@torch.no_grad()
def kl_sums(run: Run[KTOConfig], items: list[TokenizedUnpaired]) -> float:
    """Σ (log πθ − log π_ref) over the items' mismatched samples: the reference point's numerator."""
    mismatched = [i.mismatched for i in items]
    with adapter_off(run.model):
        ref = sequence_logps(run, mismatched)
    return float((sequence_logps(run, mismatched) - ref).sum())


def kto_step(run: Run[KTOConfig], items: list[TokenizedUnpaired], z0: float, stats: RunningMeans) -> torch.Tensor:
    """Summed KTO loss of one micro-batch (logged into `stats`)."""
    o = run.cfg.kto
    with torch.no_grad(), adapter_off(run.model):
        ref = sequence_logps(run, [i.example for i in items])
    logp = sequence_logps(run, [i.example for i in items])
    desirable = torch.tensor([i.desirable for i in items], device=logp.device)
    losses, rewards = kto_loss(
        logp, ref, desirable, torch.tensor(z0, device=logp.device), o.beta, o.desirable_weight, o.undesirable_weight
    )
    good, bad = rewards[desirable], rewards[~desirable]
    stats.add(len(items), loss=losses)
    stats.sums["reward_chosen_sum"] = stats.sums.get("reward_chosen_sum", 0.0) + float(good.sum())
    stats.sums["reward_rejected_sum"] = stats.sums.get("reward_rejected_sum", 0.0) + float(bad.sum())
    stats.sums["desirable"] = stats.sums.get("desirable", 0.0) + len(good)
    return losses.sum()


def summarise(stats: RunningMeans, z0: float, prefix: str = "") -> dict[str, float]:
    """Mean loss, mean reward β·r of the desirable and of the undesirable examples, their margin, z0."""
    s, n = stats.sums, stats.count
    good = s.get("reward_chosen_sum", 0.0) / max(1.0, s.get("desirable", 0.0))
    bad = s.get("reward_rejected_sum", 0.0) / max(1.0, n - s.get("desirable", 0.0))
    return {
        f"{prefix}loss": s.get("loss", 0.0) / max(1, n),
        f"{prefix}reward_chosen": good,
        f"{prefix}reward_rejected": bad,
        f"{prefix}reward_margin": good - bad,
        f"{prefix}kl": z0,
    }


def run_kto(cfg: KTOConfig, say: Say = print, progress: bool = True, on_event: OnEvent = None) -> RunResult:
    # ---- setup -------------------------------------------------------------------------------
    assert cfg.train.batch_size is not None and cfg.train.micro_batch_size is not None  # validate() filled them
    run = start_run(cfg, RECIPES["kto"], say, progress, on_event)
    data = prepare_unpaired_data(cfg.data, run.tokenizer, cfg.train.seed)
    run.note(data)
    run.counters["examples_seen"] = 0
    open_run(run, len(data.train))
    dist, n_train, mbs = run.dist, len(data.train), cfg.train.micro_batch_size
    desirable = sum(i.desirable for i in data.train)
    run.say(
        f"kto on {n_train} examples ({desirable} desirable, {n_train - desirable} undesirable), {run.total_steps} "
        f"steps of {cfg.train.batch_size} (micro-batch {mbs}), beta {cfg.kto.beta:g}, lr {cfg.train.lr:g}, "
        f"{run.where()}"
    )

    def reference_point(items: list[list[TokenizedUnpaired]], count: int) -> float:
        return max(0.0, dist.sum(sum(kl_sums(run, micro) for micro in items if micro)) / count)

    def evaluate() -> dict[str, float]:
        if not data.eval:
            return {}
        micros = split_micro(data.eval, mbs)
        with eval_mode(run.model):
            z0, stats = reference_point(micros, len(data.eval)), RunningMeans()
            for micro in micros:
                kto_step(run, micro, z0, stats)
        return summarise(stats, z0, "eval_")

    # ---- loop --------------------------------------------------------------------------------
    run.begin(evaluate if cfg.train.eval_every else None)
    while run.step < run.total_steps:
        lr = run.begin_step()
        indices = step_indices(n_train, cfg.train.batch_size, cfg.train.seed, run.step)
        mine = [([data.train[i] for i in micro], weight) for micro, weight in dist.deal(split_micro(indices, mbs))]
        z0 = reference_point([items for items, weight in mine if weight], len(indices))
        stats = RunningMeans()
        for items, weight in mine:  # weight 0: a filler keeping FSDP in step
            loss = kto_step(run, items, z0, stats if weight else RunningMeans())
            (weight * loss / len(indices)).backward()  # the mean over the step's examples
        dist.sum_gradients(run.params)
        stats = dist.sum_means(stats)
        grad_norm = optimizer_step(run.params, run.optimizer, cfg.train.max_grad_norm)
        record = run.step_record(summarise(stats, z0), lr, grad_norm, "examples", len(indices), n_train)
        if run.end_step(record, evaluate, per_second={"examples": len(indices)}, show=("loss", "reward_margin")):
            break

    # ---- save --------------------------------------------------------------------------------
    return finish_run(
        run,
        evaluate,
        lambda e: (
            f"eval on {len(data.eval)} examples: loss {e['eval_loss']:.4f}, reward margin {e['eval_reward_margin']:.3f}"
        ),
        {"beta": cfg.kto.beta, "train_examples": n_train, "desirable": desirable, "eval_examples": len(data.eval)},
        final_keys=("loss", "reward_margin", "kl"),
    )
