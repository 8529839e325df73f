"""What the training commands share: --no-progress, --nproc, and the relaunch under torchrun."""

from __future__ import annotations

import os
from typing import Callable

from tunesmith.config.load import build_run_config


def add_run_arguments(p, recipe: str) -> None:
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--nproc", type=int, default=1, help="data-parallel processes on this machine (launches torchrun; "
                   f"or run `torchrun --nproc_per_node N -m tunesmith {recipe} ...` yourself, also across nodes)")


def run_training(args, config_cls: type, recipe: str, run: Callable) -> int:
    """Build the config (bad input fails here, once, not in N processes), then train here or as --nproc processes."""
    from tunesmith.errors import ConfigError

    if args.nproc < 1:
        raise ConfigError("--nproc: must be >= 1")
    cfg = build_run_config(config_cls, args)
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        from tunesmith.train.distributed import check_parallel_config, relaunch_under_torchrun

        check_parallel_config(cfg, recipe, args.nproc)
        return relaunch_under_torchrun(args.nproc, args.argv)
    run(cfg, progress=args.progress)
    return 0
