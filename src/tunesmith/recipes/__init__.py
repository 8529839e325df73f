"""Recipes: one file per training method, each reading top to bottom: setup -> loop -> save.

`RECIPES` is the one list of them. The CLI's training commands, the Python API, the report's main
metric and the distributed checks are all generated from it, so a new recipe is its config class,
its run function and one entry here. Importing this module stays light (no torch): each run function
is named by its import path and loaded when it runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from tunesmith.config.schema import DPOConfig, GRPOConfig, KTOConfig, PPOConfig, RewardConfig, RunConfig, SFTConfig


@dataclass(frozen=True)
class Recipe:
    name: str
    config: type[RunConfig]
    run: str  # "module:function", imported on first use (torch and transformers load there)
    main_metric: str  # the headline metric in metrics.jsonl (the report plots it with its eval_ twin)
    samples: bool  # learns from its own samples (grpo, ppo): its "loss" is a surrogate, not a yardstick
    shards_full: bool  # full fine-tuning under several processes shards with FSDP2 (not when sampling out of step)
    output: str  # what the run leaves: adapter/ or model/ (lora/qlora or full), or reward_model/
    help: str
    description: str
    pair_rows: bool = False  # chosen and rejected in one row, the prompt once, unless it packs (collate_pairs)

    def run_function(self) -> Callable:
        module, name = self.run.split(":")
        return getattr(importlib.import_module(module), name)


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in [
        Recipe(
            "sft",
            SFTConfig,
            "tunesmith.recipes.sft:run_sft",
            "loss",
            False,
            True,
            "adapter",
            "supervised fine-tuning on demonstrations (lora, qlora or full)",
            "Supervised fine-tuning on chat or prompt/completion JSONL.",
        ),
        Recipe(
            "dpo",
            DPOConfig,
            "tunesmith.recipes.dpo:run_dpo",
            "reward_accuracy",
            False,
            True,
            "adapter",
            "preference optimisation on chosen/rejected pairs (DPO, IPO, ORPO, SimPO)",
            "Preference optimisation on OpenAI preference or prompt/chosen/rejected JSONL. DPO and IPO pull "
            "towards the base: the adapter switched off (lora, qlora) or log-probs computed once before training "
            "(full, or --precompute-ref). ORPO and SimPO need no reference.",
            pair_rows=True,
        ),
        Recipe(
            "kto",
            KTOConfig,
            "tunesmith.recipes.kto:run_kto",
            "reward_margin",
            False,
            True,
            "adapter",
            "preference optimisation on unpaired good/bad examples (KTO)",
            "Kahneman-Tversky optimisation on unpaired examples labelled desirable or not: "
            '{"prompt", "completion", "label": true|false} or {"messages": [...], "label": ...}.',
        ),
        Recipe(
            "reward",
            RewardConfig,
            "tunesmith.recipes.reward:run_reward",
            "accuracy",
            False,
            True,
            "reward_model",
            "train a reward model (scalar head, Bradley-Terry) on preference pairs",
            "Train a reward model on preference pairs (the formats `tunesmith dpo` reads): a scalar head on the "
            "base's last-token hidden state, with lora, qlora or full.",
            pair_rows=True,
        ),
        Recipe(
            "ppo",
            PPOConfig,
            "tunesmith.recipes.ppo:run_ppo",
            "reward_mean",
            True,
            True,
            "adapter",
            "PPO against a reward model (policy, value, reference, reward on one base)",
            "RLHF with PPO: sampled rollouts scored by a `tunesmith reward` model, per-token KL to the base, a value "
            "head, GAE, clipped policy and value losses. lora or qlora.",
        ),
        Recipe(
            "grpo",
            GRPOConfig,
            "tunesmith.recipes.grpo:run_grpo",
            "reward_mean",
            True,
            False,
            "adapter",
            "GRPO: K samples per prompt, rewards normalised within the group, KL to the base",
            "Group relative policy optimisation on a prompts JSONL with programmatic rewards (--reward) and/or a "
            "reward model (--reward-model). The reference is the base with the adapter switched off.",
        ),
    ]
}


def recipe(name: str) -> Recipe:
    return RECIPES[name]
