"""`tunesmith sft`: supervised fine-tuning."""

from __future__ import annotations

from tunesmith.cli.launch import add_run_arguments, run_training
from tunesmith.config.load import add_arguments
from tunesmith.config.schema import SFTConfig


def register(sub) -> None:
    p = sub.add_parser("sft", help="supervised fine-tuning on demonstrations (lora, qlora or full)",
                       description="Supervised fine-tuning on chat or prompt/completion JSONL.")
    add_arguments(p, SFTConfig)
    add_run_arguments(p, "sft")
    p.set_defaults(handler=run)


def run(args) -> int:
    from tunesmith.recipes.sft import run_sft

    return run_training(args, SFTConfig, "sft", run_sft)
