"""Group relative policy optimisation (GRPO) with programmatic rewards (and/or a reward model).

    setup:  processes, device, tokenizer -> prompts -> rewards -> run dir, model + adapter -> optimizer
    loop:   per step: its prompts -> K sampled completions each -> rewards -> advantages normalised within
            each prompt's group -> reference log-probs (adapter off) -> clipped surrogate + β·KL (per
            token or per completion, reduced as --loss-type grpo | dapo | dr_grpo: losses/grpo.py) ->
            backward -> clip -> AdamW (epochs_per_step times) -> log, samples.jsonl, evaluate, checkpoint
    save:   adapter/ (PEFT format), run.json

Each micro-batch of prompts is sampled with a seed of its own (seed, step, micro-batch), so under
torchrun (train/distributed.py) the processes split the micro-batches, whole groups each, and the
rollouts, advantages and summed gradients are those of one process; the logged means are gathered.

The reference is the base with the adapter switched off: no second copy in memory, and with
--kl-coef 0 no reference pass at all (the only case where full fine-tuning is allowed).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tunesmith.config.schema import GRPOConfig
from tunesmith.data.packing import Batch, collate_groups, target_positions
from tunesmith.data.prompts import PromptRow, load_prompt_file
from tunesmith.data.templates import TokenizedExample
from tunesmith.errors import DataError
from tunesmith.losses.grpo import grpo_loss, loss_denominator
from tunesmith.models.forward import adapter_off, batch_token_logps, eval_mode
from tunesmith.recipes import RECIPES
from tunesmith.rollout.advantages import group_advantages
from tunesmith.rollout.rewards import missing_reward_fields, parse_reward_specs, score_completions
from tunesmith.rollout.sampling import completion_example, prompt_ids, rollout_seed, sample_prompts
from tunesmith.train.model_setup import shares_prompts
from tunesmith.train.order import step_indices
from tunesmith.train.run import OnEvent, Run, RunResult, Say, finish_run, open_run, start_run
from tunesmith.train.step import optimizer_step


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
        return Scored(
            [p for s in scored for p in s.prompts],
            [t for s in scored for t in s.texts],
            [n for s in scored for n in s.lengths],
            [r for s in scored for r in s.totals],
            {k: [r for s in scored for r in s.parts[k]] for k in scored[0].parts},
        )


@dataclass
class Rollout:
    """One micro-batch of prompts, whole groups: the completions as a batch and what training needs of them."""

    scored: Scored
    batch: Batch  # prompt + completion, the completion's tokens trained; each prompt once where the model allows
    advantages: torch.Tensor  # [completions]
    mask: torch.Tensor  # [completions, tokens]: each completion's tokens from column 0, as log-probs come
    old_logp: torch.Tensor | None = None  # the sampling policy's, when epochs_per_step > 1
    ref_logp: torch.Tensor | None = None  # the base's, when kl_coef > 0


class Scorer:
    """Total reward per completion: the sum of the named reward functions, plus a reward model's score."""

    def __init__(self, cfg: GRPOConfig, prompts: list[PromptRow], device: torch.device, pad_id: int):
        self.rewards = parse_reward_specs(cfg.grpo.reward) if cfg.grpo.reward else []
        problems = missing_reward_fields(self.rewards, [(p.where, p.row) for p in prompts])
        if problems:
            raise DataError(problems, f"{len(problems)} prompt(s) lack fields the rewards need; nothing was trained")
        self.reward_model = None
        if cfg.grpo.reward_model:
            from tunesmith.models.reward import load_reward_model  # heavy: loads a second model

            self.reward_model = load_reward_model(cfg.grpo.reward_model, str(device))
        self.names = [r.name for r in self.rewards] + (["reward_model"] if self.reward_model else [])
        self.pad_id = pad_id

    def __call__(
        self, rows: list[PromptRow], texts: list[str], examples: list[TokenizedExample]
    ) -> tuple[list[float], dict[str, list[float]]]:
        parts: dict[str, list[float]]
        totals, parts = ([0.0] * len(texts), {})
        if self.rewards:
            totals, parts = score_completions(
                self.rewards, [r.messages for r in rows], texts, [r.row for r in rows], where=[r.where for r in rows]
            )
        if self.reward_model is not None:
            from tunesmith.eval.reward import score_examples  # heavy only with a reward model

            rm, head, _ = self.reward_model
            parts["reward_model"] = score_examples(rm, head, examples, self.pad_id)
            totals = [t + s for t, s in zip(totals, parts["reward_model"])]
        return totals, parts


def rollout(
    run: Run[GRPOConfig], score: Scorer, rows: list[PromptRow], at_step: int, index: int, share_prompts: bool
) -> Rollout:
    """K completions for each prompt of micro-batch `index` of the step, sampled with its own seed (the same
    whichever process samples it), scored, with advantages normalised within each prompt's group; batched
    for scoring with each prompt once and its K completions continuing it where `share_prompts`."""
    cfg, tokenizer, k = run.cfg, run.tokenizer, run.cfg.grpo.group_size
    seed = rollout_seed(cfg.train.seed, at_step, index)
    p_ids, completions = sample_prompts(
        run.model,
        tokenizer,
        [r.messages for r in rows],
        k,
        cfg.sampling,
        cfg.data.max_prompt_length,
        run.amp_dtype,
        seed,
    )
    group_rows = [r for r in rows for _ in range(k)]  # prompt-major, like the samples
    examples = [completion_example(p_ids[i // k], c, group_rows[i].where) for i, c in enumerate(completions)]
    texts = [tokenizer.decode(c, skip_special_tokens=True) for c in completions]
    totals, parts = score(group_rows, texts, examples)
    scored = Scored(
        [r.messages[-1]["content"] for r in group_rows], texts, [len(c) for c in completions], totals, parts
    )
    batch = collate_groups(examples, k, tokenizer.pad_token_id, share_prompts).to(run.device)
    return Rollout(
        scored,
        batch,
        group_advantages(torch.tensor(totals), k, scale=cfg.grpo.loss_type != "dr_grpo").to(run.device),
        target_positions(batch, len(examples))[1],
    )


def greedy_eval(run: Run[GRPOConfig], score: Scorer, prompts: list[PromptRow]) -> dict[str, float]:
    """Mean reward of greedy replies to the eval prompts, in all and per reward: {"eval_reward_mean": ...,
    "eval_reward/<name>": ...}; {} without eval prompts."""
    if not prompts:
        return {}
    from tunesmith.generation import generate_chat

    cfg, model, tokenizer = run.cfg, run.model, run.tokenizer
    with eval_mode(model):
        texts = generate_chat(
            model,
            tokenizer,
            [p.messages for p in prompts],
            max_new_tokens=cfg.sampling.max_new_tokens,
            precision=cfg.train.precision,
        )
    examples = [
        completion_example(
            prompt_ids(tokenizer, p.messages, cfg.data.max_prompt_length),
            tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id],
            p.where,
        )
        for p, t in zip(prompts, texts)
    ]
    totals, parts = score(prompts, texts, examples)
    return {
        "eval_reward_mean": sum(totals) / len(totals),
        **{f"eval_reward/{k}": sum(v) / len(v) for k, v in parts.items()},
    }


def update(run: Run[GRPOConfig], mine: list[Rollout], n_seqs: int) -> tuple[dict[str, float], float]:
    """The policy update on this process's rollouts (epochs_per_step passes, an optimizer step each):
    the step's mean loss, clip fraction, KL and entropy estimate, and the last gradient norm."""
    g, model, amp, temperature = run.cfg.grpo, run.model, run.amp_dtype, run.cfg.sampling.temperature

    def token_logps(r: Rollout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # per completion, [K·N, tokens], whether its batch shares the prompts or pads rows
        return batch_token_logps(model, r.batch, amp, temperature, len(r.advantages))

    with torch.no_grad():
        for r in mine:
            if g.epochs_per_step > 1:  # later passes need the sampling policy's own log-probs
                r.old_logp = token_logps(r)[0]
            if g.kl_coef > 0:
                with adapter_off(model):
                    r.ref_logp = token_logps(r)[0]
    sums: dict[str, float] = {"loss": 0.0, "clip_fraction": 0.0, "kl": 0.0, "entropy": 0.0}
    # what the step's loss divides by (completions, tokens, or completions x max tokens), over every process
    denominator = run.dist.sum(loss_denominator(g.loss_type, [r.mask for r in mine], run.cfg.sampling.max_new_tokens))
    grad_norm = 0.0
    for epoch in range(g.epochs_per_step):
        for r in mine:
            logp, mask, _ = token_logps(r)
            old = r.old_logp if r.old_logp is not None else logp.detach()  # one pass: ratio 1, grad of A·log π
            loss, stats = grpo_loss(
                logp,
                old,
                r.ref_logp,
                r.advantages,
                mask,
                g.clip_range,
                g.kl_coef,
                loss_type=g.loss_type,
                clip_range_high=g.clip_range_high,
                importance_level=g.importance_level,
                denominator=denominator,
            )
            loss.backward()  # micro-batch losses add up to the step's
            share = len(r.advantages) / n_seqs  # the stats are means: weigh micro-batches by size
            sums["loss"] += float(loss.detach()) / g.epochs_per_step
            sums["clip_fraction"] += float(stats["clip_fraction"]) * share / g.epochs_per_step
            if "kl" in stats:
                sums["kl"] += float(stats["kl"]) * share / g.epochs_per_step
            if epoch == 0:  # −log π of the sampled tokens: a Monte-Carlo estimate of the entropy
                sums["entropy"] += float(-(logp.detach() * mask).sum() / mask.sum()) * share
        run.dist.sum_gradients(run.params)
        grad_norm = optimizer_step(run.params, run.optimizer, run.cfg.train.max_grad_norm)
    if g.kl_coef == 0:
        sums.pop("kl")
    return {k: run.dist.sum(v) for k, v in sums.items()}, grad_norm


def run_grpo(cfg: GRPOConfig, say: Say = print, progress: bool = True, on_event: OnEvent = None) -> RunResult:
    g = cfg.grpo
    # ---- setup -------------------------------------------------------------------------------
    assert cfg.train.batch_size is not None and cfg.train.micro_batch_size is not None  # validate() filled them
    run = start_run(cfg, RECIPES["grpo"], say, progress, on_event)  # full fine-tuning stays replicated
    assert cfg.data.train is not None  # PromptDataConfig.check() requires it
    prompts = load_prompt_file(cfg.data.train)
    eval_prompts = load_prompt_file(cfg.data.eval) if cfg.data.eval else []
    score = Scorer(cfg, prompts + eval_prompts, run.device, run.tokenizer.pad_token_id)
    open_run(run, len(prompts))
    share_prompts = shares_prompts(run.model, run.model_dir)  # scoring runs each prompt once per group
    samples_log = run.open_log("samples.jsonl")
    mbs, n_prompts = cfg.train.micro_batch_size, len(prompts)  # prompts per micro-batch, K completions each
    run.say(
        f"grpo on {n_prompts} prompts, {run.total_steps} steps of {cfg.train.batch_size} prompts x {g.group_size} "
        f"samples, rewards {', '.join(score.names)}, kl_coef {g.kl_coef:g}, lr {cfg.train.lr:g}, {run.where()}"
    )

    def evaluate() -> dict[str, float]:
        return greedy_eval(run, score, eval_prompts)

    # ---- loop --------------------------------------------------------------------------------
    eval_before = run.begin(evaluate).get("eval_reward_mean")
    while run.step < run.total_steps:
        lr = run.begin_step()
        rows = [prompts[i] for i in step_indices(n_prompts, cfg.train.batch_size, cfg.train.seed, run.step)]
        n_seqs = len(rows) * g.group_size  # the step's completions, over all processes
        run.model.eval()  # sampling: no dropout; each process takes every N-th micro-batch of prompts
        mine = [
            rollout(run, score, rows[start : start + mbs], run.step, index, share_prompts)
            for index, start in run.dist.share(list(enumerate(range(0, len(rows), mbs))))
        ]
        run.model.train()
        sums, grad_norm = update(run, mine, n_seqs)
        scored = Scored.join(run.dist.unshare([r.scored for r in mine]))  # the whole step's, in order
        t = torch.tensor(scored.totals)
        record = {
            "reward_mean": float(t.mean()),
            "reward_std": float(t.std()),
            **{f"reward/{k}": sum(v) / len(v) for k, v in scored.parts.items()},
            **sums,
            "response_length": sum(scored.lengths) / n_seqs,
            "lr": lr,
            "grad_norm": grad_norm,
        }
        stop = run.end_step(record, evaluate, per_second={"samples": n_seqs}, show=("reward_mean",))
        if cfg.sampling.samples_every and (run.step % cfg.sampling.samples_every == 0 or run.step == 1):
            for i in range(min(2 * g.group_size, n_seqs)):
                samples_log.write(
                    {
                        "step": run.step,
                        "prompt": scored.prompts[i],
                        "completion": scored.texts[i],
                        "reward": scored.totals[i],
                    }
                )
        if stop:
            break

    # ---- save --------------------------------------------------------------------------------
    return finish_run(
        run,
        evaluate,
        lambda e: (
            f"eval on {len(eval_prompts)} prompts: mean reward of greedy replies "
            + (f"{eval_before:.4f} -> " if eval_before is not None else "")
            + f"{e['eval_reward_mean']:.4f}"
        ),
        {
            "rewards": score.names,
            "group_size": g.group_size,
            "kl_coef": g.kl_coef,
            "prompts": n_prompts,
            "eval_reward_before": eval_before,
        },
        final_keys=("reward_mean", "reward_std", "kl", "response_length"),
    )
