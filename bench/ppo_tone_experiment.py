"""Experiment (not yet a demo): PPO on the embedded SmolLM2-135M against a reward model of the tone pairs.

Run from the repository root (CPU, about 10 minutes):

    PYTHONPATH=src python bench/ppo_tone_experiment.py [--out runs/ppo-tone] [--max-steps 16]

Issue 4 wants `tunesmith demo` to show PPO raising the reward while the KL stays under its target. This
script is the attempt, kept so its numbers can be rerun; on 2026-11-28 it did not yet show that (see
bench/README.md).

    reward model (LoRA, Bradley–Terry) on the bundled tone pairs -> base model's greedy replies to
    held-out messages, scored by it -> PPO against it (KL to the base held near a target) -> the tuned
    model's greedy replies, scored again -> report.json + a before/after table

Layout: OUT/reward/ (the reward-model run), OUT/ppo/ (the PPO run), OUT/report.json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from tunesmith.atomic import atomic_write_text
from tunesmith.config.schema import PPOConfig, RewardConfig
from tunesmith.data.preference import load_preference_file
from tunesmith.demo.dpo import HELDOUT_FILE, TRAIN_FILE
from tunesmith.demo.run import MODEL
from tunesmith.train.metrics import read_metrics

DEFAULT_STEPS = 16
SAMPLES = 16
KL_TARGET = 4.0


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
    o.reward_model, o.rollouts_per_step, o.max_new_tokens = str(reward_run), 8, 48
    o.kl_coef, o.kl_target = 0.05, KL_TARGET
    cfg.train.max_steps, cfg.train.lr, cfg.train.seed, cfg.train.save_every = max_steps, 3e-4, seed, 0
    cfg.validate()
    return cfg


def greedy_scores(model_adapters: list[str], reward_run: Path, prompts: list[list[dict]]) -> tuple[list[str], list[float]]:
    """Greedy replies of the base (+ adapters) to `prompts`, and the reward model's score of each."""
    from tunesmith.data.formats import Conversation
    from tunesmith.data.templates import tokenize_conversations
    from tunesmith.eval.reward import score_examples
    from tunesmith.generation import generate_chat, load_for_inference
    from tunesmith.models.reward import load_reward_model

    model, tokenizer = load_for_inference(MODEL, model_adapters or None, merge=bool(model_adapters))
    replies = generate_chat(model, tokenizer, prompts, max_new_tokens=80, batch_size=len(prompts))
    del model
    rm, head, rm_tokenizer = load_reward_model(reward_run)
    convs = [Conversation([{**m, "weight": 0} for m in p] + [{"role": "assistant", "content": r, "weight": 1}], "demo")
             for p, r in zip(prompts, replies)]
    examples = tokenize_conversations(rm_tokenizer, convs)
    return replies, score_examples(rm, head, examples, rm_tokenizer.pad_token_id)


def run_ppo_demo(out: Path, max_steps: int = DEFAULT_STEPS, seed: int = 0, limit: int | None = None,
                 say: Callable[[str], None] = print, progress: bool = True) -> dict:
    from tunesmith.recipes.ppo import run_ppo
    from tunesmith.recipes.reward import run_reward

    started = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    heldout = load_preference_file(HELDOUT_FILE).pairs[: min(SAMPLES, limit or SAMPLES)]
    prompts = [p.prompt for p in heldout]
    train_prompts = out / "prompts.jsonl"
    atomic_write_text(train_prompts, "".join(json.dumps({"messages": p.prompt}) + "\n"
                                             for p in load_preference_file(TRAIN_FILE).pairs))
    say(f"demo: {MODEL}, RLHF with PPO against a reward model of support-reply tone")

    say("1/4 reward model (LoRA, Bradley-Terry) on the tone pairs ...")
    rm = run_reward(reward_config(out / "reward", seed), say=say, progress=progress)
    say(f"2/4 base model replies to {len(prompts)} held-out messages, scored by the reward model ...")
    base_replies, base_scores = greedy_scores([], rm.run_dir, prompts)
    say(f"3/4 PPO for {max_steps} steps of 8 rollouts (KL target {KL_TARGET:g}) ...")
    result = run_ppo(ppo_config(out / "ppo", train_prompts, rm.run_dir, max_steps, seed), say=say, progress=progress)
    say("4/4 tuned model replies, scored ...")
    tuned_replies, tuned_scores = greedy_scores([str(result.output)], rm.run_dir, prompts)

    steps = read_metrics(result.run_dir / "metrics.jsonl")
    quarter = max(1, len(steps) // 4)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    report = {
        "reward_model": {"heldout_accuracy": rm.eval["eval_accuracy"], "heldout_margin": rm.eval["eval_margin"]},
        "heldout_reward": {"base": mean(base_scores), "tuned": mean(tuned_scores)},
        "rollout_reward": {"first_quarter": mean([s["reward_mean"] for s in steps[:quarter]]),
                           "last_quarter": mean([s["reward_mean"] for s in steps[-quarter:]])},
        "kl": {"target": KL_TARGET, "max": max(s["kl"] for s in steps), "last": steps[-1]["kl"]},
        "seconds": round(time.time() - started, 1),
        "ppo_steps": result.steps,
        "adapter": str(result.output),
        "samples": [{"message": p[-1]["content"], "base": b, "base_reward": bs, "tuned": t, "tuned_reward": ts}
                    for p, b, bs, t, ts in zip(prompts, base_replies, base_scores, tuned_replies, tuned_scores)],
    }
    atomic_write_text(out / "report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    say(format_table(report))
    say(f"report: {out / 'report.json'}    policy adapter: {result.output}")
    return report


def format_table(report: dict) -> str:
    lines = [f"{'metric':40s} {'before':>8s} {'after':>8s}",
             f"{'reward of greedy held-out replies':40s} {report['heldout_reward']['base']:8.3f} "
             f"{report['heldout_reward']['tuned']:8.3f}",
             f"{'reward of sampled rollouts (1st/4th q.)':40s} {report['rollout_reward']['first_quarter']:8.3f} "
             f"{report['rollout_reward']['last_quarter']:8.3f}",
             f"KL to the base per reply: max {report['kl']['max']:.2f}, last {report['kl']['last']:.2f} "
             f"(target {report['kl']['target']:g})",
             f"reward model held-out accuracy {report['reward_model']['heldout_accuracy']:.3f}"]
    for sample in report["samples"][:2]:
        lines += ["", f"customer: {sample['message']}", f"  base  ({sample['base_reward']:+.2f}): {sample['base']}",
                  f"  tuned ({sample['tuned_reward']:+.2f}): {sample['tuned']}"]
    lines.append(f"\nwhole demo: {report['seconds']:.0f} s")
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="PPO against a tone reward model on the embedded model")
    ap.add_argument("--out", default="runs/ppo-tone")
    ap.add_argument("--max-steps", type=int, default=DEFAULT_STEPS)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    run_ppo_demo(Path(a.out), a.max_steps, a.seed)
