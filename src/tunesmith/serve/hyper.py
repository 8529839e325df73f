"""OpenAI's hyperparameters -> tunesmith.sft / tunesmith.dpo keyword arguments.

"auto" is resolved from the data size, and the resolved values are what the job reports:
  n_epochs                  enough passes to see ~100 examples, between 1 and 3 (24 rows -> 3)
  batch_size                tunesmith's default (8), at most the number of rows
  learning_rate_multiplier  1.0: tunesmith's default lr for the recipe and method is used as is
  beta                      tunesmith's default DPO beta (0.1)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tunesmith.recipes import RECIPES

DEFAULT_SAVE_EVERY = 10


def resolve_hyperparameters(recipe: str, asked: dict[str, Any], n_rows: int) -> dict[str, Any]:
    config = RECIPES[recipe].config
    auto = {
        "n_epochs": min(3, max(1, math.ceil(100 / max(n_rows, 1)))),
        "batch_size": max(1, min(config.default_batch_size, n_rows)),
        "learning_rate_multiplier": 1.0,
        "beta": 0.1,
    }
    resolved = {k: (auto[k] if asked.get(k, "auto") == "auto" else asked[k]) for k in auto}
    if recipe != "dpo":
        resolved.pop("beta")
    return resolved


def run_options(
    recipe: str,
    hyper: dict[str, Any],
    extension: dict[str, Any],
    data: Path,
    eval_data: Path | None,
    seed: int,
    model: str,
    out: Path,
) -> dict[str, Any]:
    """The keyword arguments of tunesmith.<recipe>(...): the CLI's flag names."""
    config = RECIPES[recipe].config
    method = extension.get("method") or "lora"
    options: dict[str, Any] = {
        "model": model,
        "data": str(data),
        "out": str(out),
        "method": method,
        "seed": seed,
        "epochs": hyper["n_epochs"],
        "batch_size": hyper["batch_size"],
        "lr": hyper["learning_rate_multiplier"] * config.default_lr[method],
        "save_every": extension.get("save_every") or DEFAULT_SAVE_EVERY,
    }
    if eval_data is not None:
        options["eval_data"] = str(eval_data)
    if recipe == "dpo":
        options["beta"] = hyper["beta"]
    for key in ("lora_r", "target", "max_kl", "max_probe_ppl_increase", "max_steps", "forgetting_every"):
        if extension.get(key) is not None:
            options[key] = extension[key]
    if extension.get("replay") is not None:
        if recipe != "sft":
            options.pop("replay", None)
        else:
            options["replay"] = extension["replay"]
    return options
