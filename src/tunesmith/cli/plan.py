"""`tunesmith plan`: what a run will take (parameters, memory, FLOPs, time, cost), answered before it starts.

Its options are the training command's own: `--recipe NAME` (default sft) picks the recipe, and that
recipe's config schema gives the flags, the `--config` YAML keys and the `--set` keys, so
`tunesmith plan --config run.yaml` plans the run `tunesmith sft --config run.yaml` starts. Only what
training has no field for (the hardware, its price, the run's size in tokens) is the planner's own.
"""

from __future__ import annotations

import argparse
import json
import sys

from tunesmith.config.load import add_arguments
from tunesmith.planner import GPUS, SHAPES, format_plan, plan_recipe
from tunesmith.recipes import RECIPES

_RECIPE = argparse.ArgumentParser(add_help=False, exit_on_error=False)
_RECIPE.add_argument("--recipe", default="sft")


class RecipeOptionsParser(argparse.ArgumentParser):
    """`plan`'s parser. Before it parses, it adds the options of the recipe that `--recipe` names (argparse
    matches every option string before it runs any action, so the `--recipe` action itself cannot add them)."""

    recipe: str | None = None

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        try:
            name = _RECIPE.parse_known_args(args)[0].recipe
        except argparse.ArgumentError:  # `--recipe` without a name: the full parse below says so
            name = "sft"
        name = name if name in RECIPES else "sft"  # an unknown name: its `choices` say so below
        if self.recipe is None:
            add_arguments(self, RECIPES[name].config)
            self.recipe = name
        elif self.recipe != name:
            raise ValueError(f"this parser holds the options of {self.recipe}; build another for {name}")
        return super().parse_known_args(args, namespace)


def register(sub) -> None:
    p = sub.add_parser(
        "plan",
        help="parameters, memory, FLOPs, time and cost of a run, before running it",
        description="Arithmetic on the model's shape, no download and no torch: total and trainable "
        "parameters; memory per GPU split into weights, gradients, AdamW state, "
        "activations, bf16 weight copies and the logits buffer; FLOPs per token and for "
        "the run; time at an MFU and cost. Formulas: the docstring of tunesmith/planner.py. "
        "The options are those of the training command --recipe names (the same "
        "--config files and --set keys; --out and --data are not needed), then the "
        f"planner's own. Built-in shapes: {', '.join(SHAPES)} (and smollm2-135m-instruct).",
    )
    p.__class__ = RecipeOptionsParser  # add_parser builds a plain ArgumentParser
    p.add_argument(
        "--recipe",
        choices=tuple(RECIPES),
        default="sft",
        help="the training command whose options follow (default sft); `tunesmith plan --recipe dpo -h` lists dpo's",
    )
    own = p.add_argument_group("planner options (training has no field for these)")
    own.add_argument(
        "--tokens",
        type=int,
        help="tokens the run trains on, all epochs (instead of counting --data or taking --max-steps of full rows)",
    )
    own.add_argument(
        "--trained-fraction", type=float, help="share of positions that carry a loss (default: from --data, else 1.0)"
    )
    own.add_argument("--gpu", choices=tuple(GPUS), help="the device (default h100; cpu with --device cpu)")
    own.add_argument(
        "--gpus",
        type=int,
        default=1,
        help="data-parallel processes, as --nproc N trains (lora/qlora: "
        "each holds the whole model; full: FSDP2-sharded)",
    )
    own.add_argument("--price-per-hour", type=float, help="USD per GPU-hour")
    own.add_argument("--mfu", type=float, help="fraction of peak reached (default 0.4; cpu: 1.0 of the measured peak)")
    own.add_argument("--peak-tflops", type=float, help="override the device's peak (cpu default: measured 0.095)")
    own.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(handler=run)


def run(args) -> int:
    result = plan_recipe(
        args.recipe,
        args,
        tokens=args.tokens,
        gpu=args.gpu,
        gpus=args.gpus,
        price_per_hour=args.price_per_hour,
        mfu=args.mfu,
        peak_tflops=args.peak_tflops,
        trained_fraction=args.trained_fraction,
    )
    print(json.dumps(result) if args.json else format_plan(result))
    return 0
