"""`tunesmith sft`: supervised fine-tuning."""

from __future__ import annotations

from tunesmith.config.load import add_arguments, build_run_config
from tunesmith.config.schema import SFTConfig


def register(sub) -> None:
    p = sub.add_parser("sft", help="supervised fine-tuning on demonstrations (lora, qlora or full)",
                       description="Supervised fine-tuning on chat or prompt/completion JSONL.")
    add_arguments(p, SFTConfig)
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(handler=run)


def run(args) -> int:
    from tunesmith.recipes.sft import run_sft

    run_sft(build_run_config(SFTConfig, args), progress=args.progress)
    return 0
