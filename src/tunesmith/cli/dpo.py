"""`tunesmith dpo`: preference optimisation (DPO or IPO) on chosen/rejected pairs."""

from __future__ import annotations

from tunesmith.cli.launch import add_run_arguments, run_training
from tunesmith.config.load import add_arguments
from tunesmith.config.schema import DPOConfig


def register(sub) -> None:
    p = sub.add_parser("dpo", help="preference optimisation on chosen/rejected pairs (DPO or IPO)",
                       description="Direct preference optimisation on OpenAI preference or prompt/chosen/rejected "
                                   "JSONL. The reference model is the base: the adapter switched off (lora, qlora) "
                                   "or log-probs computed once before training (full, or --precompute-ref).")
    add_arguments(p, DPOConfig)
    add_run_arguments(p, "dpo")
    p.set_defaults(handler=run)


def run(args) -> int:
    from tunesmith.recipes.dpo import run_dpo

    return run_training(args, DPOConfig, "dpo", run_dpo)
