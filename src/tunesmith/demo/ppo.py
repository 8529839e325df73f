"""The PPO demo: RLHF on the embedded SmolLM2-135M against a reward model of the DPO demo's tone pairs.

    reward model (LoRA, Bradley-Terry) on the DPO demo's pairs -> base model's sampled replies to
    held-out messages, scored by it -> PPO (LoRA) against it, the KL to the base held under a target
    -> the tuned model's sampled replies, scored again -> report.json + a before/after table

The reward model learns what the DPO demo's pairs prefer: courteous, concise replies that act on the
customer's order. Replies are sampled at the rollout temperature both before and after, with the same
seeds, so the before/after reward compares the policy PPO optimised, not one greedy reply per message.
The KL to the base (per reply, summed over its tokens) is what keeps the policy from gaming the reward
model; the adaptive controller raises its coefficient when the KL runs over the target.

Layout: OUT/reward/ (the reward-model run), OUT/ppo/ (the PPO run), OUT/prompts.jsonl, OUT/report.json.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from tunesmith.atomic import atomic_write_text
from tunesmith.config.schema import PPOConfig, RewardConfig
from tunesmith.data.formats import Conversation
from tunesmith.data.preference import load_preference_file
from tunesmith.data.templates import tokenize_conversations
from tunesmith.demo.dpo import HELDOUT_FILE, TRAIN_FILE
from tunesmith.demo.run import MODEL
from tunesmith.demo.run import check_out as run_check_out
from tunesmith.train.metrics import read_metrics

DEFAULT_STEPS = 16
HELDOUT = 120  # held-out messages: all of the DPO demo's
SAMPLES_PER_MESSAGE = 2  # sampled replies per held-out message, before and after
TEMPERATURE = 0.7
MAX_NEW_TOKENS = 48
KL_TARGET = 6.0


def reward_config(out: Path, seed: int) -> RewardConfig:
    cfg = RewardConfig(model=MODEL, method="lora", out=str(out), overwrite=True)
    cfg.data.train, cfg.data.eval, cfg.data.max_length = str(TRAIN_FILE), str(HELDOUT_FILE), 128
    cfg.train.max_steps, cfg.train.lr, cfg.train.seed, cfg.train.save_every = 30, 5e-4, seed, 0
    cfg.validate()
    return cfg


def ppo_config(out: Path, prompts: Path, reward_run: Path, max_steps: int, seed: int) -> PPOConfig:
    cfg = PPOConfig(model=MODEL, method="lora", out=str(out), overwrite=True)
    cfg.data.train = str(prompts)
    o = cfg.ppo
    o.reward_model, o.rollouts_per_step = str(reward_run), 8
    cfg.sampling.max_new_tokens, cfg.sampling.temperature = MAX_NEW_TOKENS, TEMPERATURE
    o.kl_coef, o.kl_target, o.kl_horizon = 0.1, KL_TARGET, 200
    cfg.train.max_steps, cfg.train.lr, cfg.train.seed, cfg.train.save_every = max_steps, 1e-4, seed, 0
    cfg.validate()
    return cfg


def sampled_rewards(adapter: Path | None, reward_run: Path, prompts: list[list[dict]]) -> tuple[list[str], list[float]]:
    """SAMPLES_PER_MESSAGE replies per prompt from the base (+ adapter), sampled as in the rollouts with fixed
    seeds, and the reward model's score of each; prompt-major order."""
    from tunesmith.eval.reward import score_examples  # heavy: deferred for CLI start-up
    from tunesmith.generation import generate_chat
    from tunesmith.models.inference import load_for_inference
    from tunesmith.models.reward import load_reward_model

    model, tokenizer = load_for_inference(MODEL, [str(adapter)] if adapter else None, merge=adapter is not None)
    by_seed = [
        generate_chat(
            model,
            tokenizer,
            prompts,
            max_new_tokens=MAX_NEW_TOKENS,
            temperature=TEMPERATURE,
            batch_size=len(prompts),
            seed=seed,
        )
        for seed in range(SAMPLES_PER_MESSAGE)
    ]
    del model
    replies = [by_seed[s][i] for i in range(len(prompts)) for s in range(SAMPLES_PER_MESSAGE)]
    rm, head, rm_tokenizer = load_reward_model(reward_run)
    convs = [
        Conversation(
            [{**m, "weight": 0} for m in prompts[i // SAMPLES_PER_MESSAGE]]
            + [{"role": "assistant", "content": r, "weight": 1}],
            "demo",
        )
        for i, r in enumerate(replies)
    ]
    return replies, score_examples(rm, head, tokenize_conversations(rm_tokenizer, convs), rm_tokenizer.pad_token_id)


def stderr(xs: list[float]) -> float:
    """Standard error of the mean (sample standard deviation / sqrt(n))."""
    m = sum(xs) / len(xs)
    return (sum((x - m) ** 2 for x in xs) / max(1, len(xs) - 1) / len(xs)) ** 0.5


def paired_gain(before: list[float], after: list[float], per: int) -> tuple[float, float]:
    """The mean gain and its standard error with the replies paired by message (prompt-major, `per` each):
    d_i = mean(after_i) − mean(before_i) for each message i, gain = mean(d), s.e. = stderr(d). What a
    message itself draws (some get high rewards whatever the model) cancels in d_i; two independent
    standard errors, sqrt(se_before² + se_after²), would count it twice."""
    d = [(sum(after[i : i + per]) - sum(before[i : i + per])) / per for i in range(0, len(before), per)]
    return sum(d) / len(d), stderr(d)


def check_out(out: Path) -> None:
    """Replace a previous PPO demo's directory, never anything else."""
    run_check_out(out, "reward/config.yaml", "a PPO demo")


def run_ppo_demo(
    out: Path,
    max_steps: int = DEFAULT_STEPS,
    seed: int = 0,
    limit: int | None = None,
    say: Callable[[str], None] = print,
    progress: bool = True,
) -> dict:
    from tunesmith.recipes.ppo import run_ppo  # heavy: deferred for CLI start-up
    from tunesmith.recipes.reward import run_reward

    started = time.time()
    out = Path(out)
    check_out(out)
    out.mkdir(parents=True, exist_ok=True)
    heldout = load_preference_file(HELDOUT_FILE).pairs[: min(HELDOUT, limit or HELDOUT)]
    prompts = [p.prompt for p in heldout]
    train_prompts = out / "prompts.jsonl"
    atomic_write_text(
        train_prompts,
        "".join(json.dumps({"messages": p.prompt}) + "\n" for p in load_preference_file(TRAIN_FILE).pairs),
    )
    say(f"demo: {MODEL}, RLHF: PPO against a reward model of support-reply tone, {len(prompts)} held-out messages")

    say("1/4 reward model (LoRA, Bradley-Terry) on the DPO demo's tone pairs ...")
    rm = run_reward(reward_config(out / "reward", seed), say=say, progress=progress)
    say(f"2/4 base model: {SAMPLES_PER_MESSAGE} sampled replies per held-out message, scored by the reward model ...")
    base_replies, base_scores = sampled_rewards(None, rm.run_dir, prompts)
    say(f"3/4 PPO for {max_steps} steps of 8 rollouts (KL target {KL_TARGET:g} per reply) ...")
    result = run_ppo(ppo_config(out / "ppo", train_prompts, rm.run_dir, max_steps, seed), say=say, progress=progress)
    say("4/4 tuned model: the same sampled replies, scored ...")
    tuned_replies, tuned_scores = sampled_rewards(result.output, rm.run_dir, prompts)

    steps = read_metrics(result.run_dir / "metrics.jsonl")
    half = max(1, len(steps) // 2)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    every = SAMPLES_PER_MESSAGE
    assert rm.eval is not None  # reward_config holds out evaluation pairs
    report = {
        "reward_model": {"heldout_accuracy": rm.eval["eval_accuracy"], "heldout_margin": rm.eval["eval_margin"]},
        "heldout_reward": {
            "base": mean(base_scores),
            "tuned": mean(tuned_scores),
            "replies": len(base_scores),
            "base_stderr": stderr(base_scores),
            "tuned_stderr": stderr(tuned_scores),
            **dict(zip(("gain", "gain_stderr"), paired_gain(base_scores, tuned_scores, every))),
            "messages": len(prompts),
            "base_scores": base_scores,
            "tuned_scores": tuned_scores,
        },
        "rollout_reward": {
            "first_half": mean([s["reward_mean"] for s in steps[:half]]),
            "second_half": mean([s["reward_mean"] for s in steps[half:] or steps[-1:]]),
        },
        "kl": {
            "target": KL_TARGET,
            "max": max(s["kl"] for s in steps),
            "last": steps[-1]["kl"],
            "kl_coef_last": steps[-1]["kl_coef"],
        },
        "words_per_reply": {
            "base": mean([len(r.split()) for r in base_replies]),
            "tuned": mean([len(r.split()) for r in tuned_replies]),
        },
        "seconds": round(time.time() - started, 1),
        "ppo_steps": result.steps,
        "adapter": str(result.output),
        "samples": [
            {
                "message": p[-1]["content"],
                "base": base_replies[i * every],
                "base_reward": base_scores[i * every],
                "tuned": tuned_replies[i * every],
                "tuned_reward": tuned_scores[i * every],
            }
            for i, p in enumerate(prompts)
        ],
    }
    atomic_write_text(out / "report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    say(format_table(report))
    say(f"report: {out / 'report.json'}    policy adapter: {result.output}")
    return report


def format_table(report: dict) -> str:
    h, r, k = report["heldout_reward"], report["rollout_reward"], report["kl"]
    lines = [
        f"{'metric':44s} {'before':>8s} {'after':>8s}",
        f"{'reward of sampled held-out replies':44s} {h['base']:8.3f} {h['tuned']:8.3f}   "
        f"(± {h['base_stderr']:.2f} / ± {h['tuned_stderr']:.2f} s.e., {h['replies']} replies)",
        f"{'gain, paired by message':44s} {h['gain']:+8.3f} ± {h['gain_stderr']:.3f} s.e. "
        f"({h['gain'] / h['gain_stderr']:.1f} s.e., {h['messages']} messages)",
        f"{'reward of rollouts (first/second half)':44s} {r['first_half']:8.3f} {r['second_half']:8.3f}",
        f"{'words per held-out reply':44s} {report['words_per_reply']['base']:8.1f} "
        f"{report['words_per_reply']['tuned']:8.1f}",
        f"KL to the base per reply: max {k['max']:.2f}, last {k['last']:.2f} (target {k['target']:g}); "
        f"KL coefficient at the end {k['kl_coef_last']:.3f}",
        f"reward model: held-out pair accuracy {report['reward_model']['heldout_accuracy']:.3f}",
    ]
    for sample in report["samples"][:2]:
        lines += [
            "",
            f"customer: {sample['message']}",
            f"  base  ({sample['base_reward']:+.2f}): {sample['base']}",
            f"  tuned ({sample['tuned_reward']:+.2f}): {sample['tuned']}",
        ]
    lines.append(f"\nwhole demo: {report['seconds']:.0f} s")
    return "\n".join(lines)
