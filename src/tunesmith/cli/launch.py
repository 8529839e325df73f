"""The training commands, one per recipe in the registry (`tunesmith.recipes.RECIPES`): the recipe's
config schema as flags, plus --no-progress, --nproc, and the relaunch under torchrun."""

from __future__ import annotations

import os

from tunesmith.config.load import add_arguments, build_run_config
from tunesmith.errors import ConfigError
from tunesmith.recipes import RECIPES, Recipe


def register(sub) -> None:
    for recipe in RECIPES.values():
        p = sub.add_parser(recipe.name, help=recipe.help, description=recipe.description)
        add_arguments(p, recipe.config)
        p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
        p.add_argument(
            "--nproc",
            type=int,
            default=1,
            help="data-parallel processes on this machine (launches "
            f"torchrun; or run `torchrun --nproc_per_node N -m tunesmith {recipe.name} ...` yourself, "
            "also across nodes)",
        )
        p.set_defaults(handler=lambda args, recipe=recipe: run_training(args, recipe))


def run_training(args, recipe: Recipe) -> int:
    """Build the config (bad input fails here, once, not in N processes), then train here or as --nproc processes."""
    if args.nproc < 1:
        raise ConfigError("--nproc: must be >= 1")
    cfg = build_run_config(recipe.config, args)
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        from tunesmith.train.distributed import check_parallel_config, relaunch_under_torchrun  # heavy: torch

        check_parallel_config(cfg, recipe.name, args.nproc, recipe.shards_full)
        return relaunch_under_torchrun(args.nproc, args.argv)
    recipe.run_function()(cfg, progress=args.progress)
    return 0
