"""Supervised fine-tuning: LoRA, QLoRA (LoRA over an NF4 base) or full fine-tuning.

    setup:  processes, device, tokenizer -> data (+ replayed general examples) -> run dir, model (+ adapter),
            guard, optimizer (train/run.py)
    loop:   per optimizer step: its examples -> micro-batches (this process's share under torchrun) ->
            loss / step tokens -> backward -> [sum gradients over processes] -> clip -> AdamW ->
            log, evaluate, forgetting guard (stop over budget), checkpoint (rank 0)
    save:   adapter/ (PEFT format) or model/ (Hugging Face format), run.json, report

Under torchrun (train/distributed.py) lora/qlora train replicated with summed gradients and full
fine-tuning is sharded with FSDP2; either way N processes make the update one process makes.
"""

from __future__ import annotations

from tunesmith.config.schema import SFTConfig
from tunesmith.data.packing import collate
from tunesmith.data.prepare import prepare_sft_data
from tunesmith.models.attention import packs_flat
from tunesmith.models.forward import batch_nll_sum
from tunesmith.recipes import RECIPES
from tunesmith.train.order import split_micro, step_indices
from tunesmith.train.run import OnEvent, RunResult, Say, finish_run, open_run, start_run
from tunesmith.train.step import evaluate_nll, optimizer_step


def run_sft(cfg: SFTConfig, say: Say = print, progress: bool = True, on_event: OnEvent = None) -> RunResult:
    # ---- setup -------------------------------------------------------------------------------
    assert cfg.train.batch_size is not None and cfg.train.micro_batch_size is not None  # validate() filled them
    run = start_run(cfg, RECIPES["sft"], say, progress, on_event)
    self_replay = None
    if cfg.data.replay == "self":  # the base's own answers to general prompts, generated once and cached
        from tunesmith.forgetting.replay import self_replay_examples  # heavy: loads the base to answer

        self_replay = self_replay_examples(run.tokenizer, run.model_dir, run.say)
    data = prepare_sft_data(cfg.data, run.tokenizer, cfg.train.seed, self_replay)
    run.note(data)
    run.counters["tokens_seen"] = 0
    open_run(run, len(data.train))
    model, dist, n_train = run.model, run.dist, len(data.train)
    pad_id = run.tokenizer.pad_token_id
    flat = packs_flat(model)  # per-example attention: a micro-batch packs into one row, no padding
    share = flat and cfg.data.shared_prefix  # ... with a prefix its examples share computed once
    run.say(
        f"training {n_train} examples, {run.total_steps} steps of {cfg.train.batch_size} "
        f"(micro-batch {cfg.train.micro_batch_size}), lr {cfg.train.lr:g}, {run.where()}"
    )

    def evaluate() -> dict[str, float]:
        if not data.eval:
            return {}
        assert cfg.train.micro_batch_size is not None  # validate() filled it
        return {
            "eval_loss": evaluate_nll(
                model,
                data.eval,
                cfg.train.micro_batch_size,
                cfg.data.packing,
                cfg.data.max_length,
                pad_id,
                run.device,
                run.amp_dtype,
                cfg.data.shared_prefix,
            )
        }

    # ---- loop --------------------------------------------------------------------------------
    run.begin(evaluate if cfg.train.eval_every else None)
    while run.step < run.total_steps:
        lr = run.begin_step()
        examples = [data.train[i] for i in step_indices(n_train, cfg.train.batch_size, cfg.train.seed, run.step)]
        batches = [
            collate(micro, cfg.data.packing, cfg.data.max_length, pad_id, flat, share)
            for micro in split_micro(examples, cfg.train.micro_batch_size)
        ]
        # Normalise by the trained-token count of the whole step, not per micro-batch: accumulated
        # gradients then equal those of one big batch, and packed == unpacked exactly.
        step_targets = sum(b.num_targets for b in batches)
        loss_sum = 0.0
        for batch, weight in dist.deal(batches):  # weight 0: a filler that keeps FSDP's processes in step
            nll = batch_nll_sum(model, batch.to(run.device), run.amp_dtype)
            (weight * nll / max(1, step_targets)).backward()
            loss_sum += weight * nll.item()
        dist.sum_gradients(run.params)
        loss_sum = dist.sum(loss_sum)
        grad_norm = optimizer_step(run.params, run.optimizer, cfg.train.max_grad_norm)
        step_tokens = sum(b.num_tokens for b in batches)
        run.counters["tokens_seen"] += step_tokens
        record = {
            "loss": loss_sum / max(1, step_targets),
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens": step_tokens,
            "epoch": (run.step + 1) * cfg.train.batch_size / n_train,
        }
        if run.end_step(record, evaluate, per_second={"tokens": step_tokens}):
            break

    # ---- save --------------------------------------------------------------------------------
    return finish_run(
        run,
        evaluate,
        lambda e: f"eval loss {e['eval_loss']:.4f} on {len(data.eval)} examples",
        {"train_examples": n_train, "eval_examples": len(data.eval), "replay_examples": data.replayed},
        final_keys=("loss",),
    )
