"""`tunesmith ppo`: RLHF with PPO against a trained reward model."""

from __future__ import annotations

from tunesmith.cli.launch import add_run_arguments, run_training
from tunesmith.config.load import add_arguments
from tunesmith.config.schema import PPOConfig


def register(sub) -> None:
    p = sub.add_parser("ppo", help="PPO against a reward model (policy, value, reference, reward on one base)",
                       description="RLHF with PPO: sampled rollouts scored by a `tunesmith reward` model, per-token KL "
                                   "to the base, a value head, GAE, clipped policy and value losses. lora or qlora.")
    add_arguments(p, PPOConfig)
    add_run_arguments(p, "ppo")
    p.set_defaults(handler=run)


def run(args) -> int:
    from tunesmith.recipes.ppo import run_ppo

    return run_training(args, PPOConfig, "ppo", run_ppo)
