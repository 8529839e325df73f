"""OpenAI's hyperparameters -> tunesmith.sft / tunesmith.dpo / tunesmith.grpo keyword arguments.

"auto" is resolved from the data size, and the resolved values are what the job reports:
  n_epochs                  enough passes to see ~100 examples, between 1 and 3 (24 rows -> 3)
  batch_size                tunesmith's default (8), at most the number of rows (reinforcement: prompts per step)
  learning_rate_multiplier  1.0: tunesmith's default lr for the recipe and method is used as is
  beta                      tunesmith's default DPO beta (0.1)
The reinforcement method runs grpo, with the grader as its reward (`reward="grader:PATH"`), and also takes:
  compute_multiplier        scales the completions sampled per prompt: group_size = max(2, round(K * m)), with
                            K = the tunesmith.group_size extension or grpo's default (4); "auto" is 1.0
  eval_interval             eval_every: greedy replies to the validation prompts scored every N steps; "auto"
                            is 0 (before and after training only)
  eval_samples              accepted and reported, not used: the eval scores one greedy reply per validation
                            prompt; "auto" is 1
  reasoning_effort          accepted and reported, not used (tunesmith trains no reasoning-effort setting)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tunesmith.config.schema import GRPOOptions
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
    if recipe == "grpo":
        auto.update(compute_multiplier=1.0, eval_interval=0, eval_samples=1)
    resolved = {k: (auto[k] if asked.get(k, "auto") == "auto" else asked[k]) for k in auto}
    if recipe != "dpo":
        resolved.pop("beta")
    if recipe == "grpo":
        resolved["reasoning_effort"] = asked.get("reasoning_effort") or "default"
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
    reward: str | None = None,
) -> dict[str, Any]:
    """The keyword arguments of tunesmith.<recipe>(...): the CLI's flag names. `reward` is grpo's."""
    config = RECIPES[recipe].config
    method = extension.get("method") or "lora"
    data_key, eval_key = ("prompts", "eval_prompts") if recipe == "grpo" else ("data", "eval_data")
    options: dict[str, Any] = {
        "model": model,
        data_key: str(data),
        "out": str(out),
        "method": method,
        "seed": seed,
        "epochs": hyper["n_epochs"],
        "batch_size": hyper["batch_size"],
        "lr": hyper["learning_rate_multiplier"] * config.default_lr[method],
        "save_every": extension.get("save_every") or DEFAULT_SAVE_EVERY,
    }
    if eval_data is not None:
        options[eval_key] = str(eval_data)
    if recipe == "dpo":
        options["beta"] = hyper["beta"]
    if recipe == "grpo":
        group = extension.get("group_size") or GRPOOptions().group_size
        options["group_size"] = max(2, round(group * hyper["compute_multiplier"]))
        options["reward"] = reward
        if hyper["eval_interval"]:
            options["eval_every"] = hyper["eval_interval"]
        if extension.get("max_new_tokens") is not None:
            options["max_new_tokens"] = extension["max_new_tokens"]
    for key in ("lora_r", "target", "max_kl", "max_probe_ppl_increase", "max_steps", "forgetting_every"):
        if extension.get(key) is not None:
            options[key] = extension[key]
    if extension.get("replay") is not None:
        if recipe != "sft":
            options.pop("replay", None)
        else:
            options["replay"] = extension["replay"]
    return options
