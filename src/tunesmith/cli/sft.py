"""`tunesmith sft`: supervised fine-tuning."""

from __future__ import annotations

from tunesmith.config.load import add_arguments, build_run_config
from tunesmith.config.schema import SFTConfig


def register(sub) -> None:
    p = sub.add_parser("sft", help="supervised fine-tuning on demonstrations (lora, qlora or full)",
                       description="Supervised fine-tuning on chat or prompt/completion JSONL.")
    add_arguments(p, SFTConfig)
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--nproc", type=int, default=1, help="data-parallel processes on this machine (launches torchrun; "
                   "or run `torchrun --nproc_per_node N -m tunesmith sft ...` yourself, also across nodes)")
    p.set_defaults(handler=run)


def run(args) -> int:
    import os

    from tunesmith.errors import ConfigError
    from tunesmith.recipes.sft import run_sft

    if args.nproc < 1:
        raise ConfigError("--nproc: must be >= 1")
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        from tunesmith.train.distributed import relaunch_under_torchrun

        build_run_config(SFTConfig, args)  # bad input fails here, once, not in N processes
        return relaunch_under_torchrun(args.nproc, args.argv)
    run_sft(build_run_config(SFTConfig, args), progress=args.progress)
    return 0
