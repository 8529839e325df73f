"""Reward model: a scalar head on the base (LoRA, QLoRA or full), trained on preference pairs.

    setup:  processes, device, tokenizer -> pairs -> run dir, model (+ adapter) + zero head -> optimizer
    loop:   per optimizer step: its pairs -> micro-batches -> one forward over chosen + rejected ->
            score = head(h at each sequence's last token) -> Bradley–Terry loss -> backward -> clip -> AdamW
            -> log loss, accuracy, margin; evaluate; checkpoint
    save:   RUN/reward_model/ (adapter/ or model/, reward_head.safetensors, reward_model.json), run.json

Under torchrun each process takes every N-th micro-batch of the step and the gradients are summed
(train/distributed.py; full fine-tuning is sharded with FSDP2, the head with the root).

`tunesmith score --reward-model RUN --data FILE` reads it back; PPO and GRPO use it as their reward.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tunesmith.config.schema import RewardConfig
from tunesmith.data.prepare import TokenizedPair, prepare_preference_data
from tunesmith.losses.reward import bradley_terry_loss, pair_accuracy
from tunesmith.models.forward import batch_last_hidden, eval_mode, unwrap
from tunesmith.models.reward import new_reward_head, save_reward_head
from tunesmith.recipes import RECIPES
from tunesmith.train.distributed import full_state
from tunesmith.train.metrics import RunningMeans
from tunesmith.train.model_setup import collate_pairs_for, save_trained
from tunesmith.train.order import split_micro, step_indices
from tunesmith.train.run import OnEvent, Run, RunResult, Say, finish_run, open_run, start_run
from tunesmith.train.step import optimizer_step


def pair_scores(
    model: torch.nn.Module,
    head: torch.nn.Linear,
    pairs: list[TokenizedPair],
    packing: bool,
    max_length: int,
    pad_id: int,
    device: torch.device,
    amp_dtype: torch.dtype | None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(r_chosen [n], r_rejected [n], tokens computed): both sides in one forward, the head in fp32."""
    batch = collate_pairs_for(
        model, [p.chosen for p in pairs], [p.rejected for p in pairs], packing, max_length, pad_id
    )
    last = batch_last_hidden(model, batch.to(device), 2 * len(pairs), amp_dtype)
    scores = head(last.float()).squeeze(-1)
    n = len(pairs)
    return scores[:n], scores[n:], batch.num_tokens


def add_reward_stats(
    stats: RunningMeans, losses: torch.Tensor, r_chosen: torch.Tensor, r_rejected: torch.Tensor
) -> None:
    """Loss, accuracy, margin and the mean score of each side, per pair."""
    stats.add(
        len(losses),
        loss=losses,
        accuracy=pair_accuracy(r_chosen, r_rejected),
        margin=r_chosen - r_rejected,
        reward_chosen=r_chosen,
        reward_rejected=r_rejected,
    )


def save_reward_model(run: Run[RewardConfig]) -> Path:
    """RUN/reward_model/: the base part (adapter/ or model/) and the head beside it."""
    model, head = run.model, run.model.reward_head
    output = run.run_dir / "reward_model"
    whole = full_state(model)[0] if run.dist.sharded else None  # every process takes part in the gather
    if not run.dist.is_main:
        return output
    output.mkdir(exist_ok=True)
    saved_head = head
    if whole is not None:  # the head's gathered weights, and the base part alone for the model directory
        saved_head = new_reward_head(head.in_features, torch.device("cpu"))
        saved_head.load_state_dict(
            {k.removeprefix("reward_head."): whole.pop(k) for k in list(whole) if k.startswith("reward_head.")}
        )
    del model.reward_head  # the PEFT adapter / model directory holds the base part only
    save_trained(model, run.tokenizer, output, run.cfg.method, run.model_dir, record_dir=run.run_dir, state_dict=whole)
    model.reward_head = head
    save_reward_head(output, saved_head, run.model_dir, run.cfg.method)
    return output


def run_reward(cfg: RewardConfig, say: Say = print, progress: bool = True, on_event: OnEvent = None) -> RunResult:
    # ---- setup -------------------------------------------------------------------------------
    assert cfg.train.batch_size is not None and cfg.train.micro_batch_size is not None  # validate() filled them
    run = start_run(cfg, RECIPES["reward"], say, progress, on_event)
    data = prepare_preference_data(cfg.data, run.tokenizer, cfg.train.seed)
    run.note(data)

    def attach_head(run: Run[RewardConfig]) -> None:
        # registered on the model, so checkpoints and the optimizer see the head like any trainable weight
        run.model.reward_head = new_reward_head(unwrap(run.model).config.hidden_size, run.device)
        run.trainable += run.model.reward_head.weight.numel() + 1

    run.counters["pairs_seen"] = 0
    open_run(run, len(data.train), attach=attach_head)
    model, head, dist, n_train = run.model, run.model.reward_head, run.dist, len(data.train)
    mbs, packing, max_len, pad_id = (
        cfg.train.micro_batch_size,
        cfg.data.packing,
        cfg.data.max_length,
        run.tokenizer.pad_token_id,
    )
    run.say(
        f"reward model on {n_train} pairs, {run.total_steps} steps of {cfg.train.batch_size} (micro-batch {mbs}), "
        f"lr {cfg.train.lr:g}, {run.where()}"
    )

    def scores(pairs: list[TokenizedPair]) -> tuple[torch.Tensor, torch.Tensor, int]:
        return pair_scores(model, head, pairs, packing, max_len, pad_id, run.device, run.amp_dtype)

    def evaluate() -> dict[str, float]:
        stats = RunningMeans()
        with eval_mode(model):
            for start in range(0, len(data.eval), mbs):
                r_w, r_l, _ = scores(data.eval[start : start + mbs])
                add_reward_stats(stats, bradley_terry_loss(r_w, r_l), r_w, r_l)
        return stats.means("eval_")

    # ---- loop --------------------------------------------------------------------------------
    run.begin(evaluate if cfg.train.eval_every else None)
    while run.step < run.total_steps:
        lr = run.begin_step()
        indices = step_indices(n_train, cfg.train.batch_size, cfg.train.seed, run.step)
        stats, tokens = RunningMeans(), 0
        for micro, weight in dist.deal(split_micro(indices, mbs)):  # weight 0: a filler keeping FSDP in step
            r_w, r_l, n_tokens = scores([data.train[i] for i in micro])
            losses = bradley_terry_loss(r_w, r_l)
            (weight * losses.sum() / len(indices)).backward()  # mean over the step's pairs, whatever the micro-batches
            if weight:
                add_reward_stats(stats, losses, r_w, r_l)
                tokens += n_tokens
        dist.sum_gradients(run.params)
        stats, tokens = dist.sum_means(stats), int(dist.sum(tokens))
        grad_norm = optimizer_step(run.params, run.optimizer, cfg.train.max_grad_norm)
        n = len(indices)
        record = run.step_record(stats.means(), lr, grad_norm, "pairs", n, n_train, pairs=n, tokens=tokens)
        run.end_step(record, evaluate, per_second={"pairs": len(indices)}, show=("loss", "accuracy"))

    # ---- save --------------------------------------------------------------------------------
    return finish_run(
        run,
        evaluate,
        lambda e: (
            f"eval on {len(data.eval)} pairs: loss {e['eval_loss']:.4f}, accuracy {e['eval_accuracy']:.3f}, "
            f"margin {e['eval_margin']:.3f}"
        ),
        {"train_pairs": n_train, "eval_pairs": len(data.eval)},
        final_keys=("loss", "accuracy", "margin"),
        save=save_reward_model,
    )
