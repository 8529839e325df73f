"""`tunesmith grpo`: group relative policy optimisation with programmatic rewards or a reward model."""

from __future__ import annotations

from tunesmith.cli.launch import add_run_arguments, run_training
from tunesmith.config.load import add_arguments
from tunesmith.config.schema import GRPOConfig


def register(sub) -> None:
    p = sub.add_parser("grpo", help="GRPO: K samples per prompt, rewards normalised within the group, KL to the base",
                       description="Group relative policy optimisation on a prompts JSONL with programmatic rewards "
                                   "(--reward) and/or a reward model (--reward-model). The reference is the base "
                                   "with the adapter switched off.")
    add_arguments(p, GRPOConfig)
    add_run_arguments(p, "grpo")
    p.set_defaults(handler=run)


def run(args) -> int:
    from tunesmith.recipes.grpo import run_grpo

    return run_training(args, GRPOConfig, "grpo", run_grpo)
