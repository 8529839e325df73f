"""`tunesmith demo`: the main job on the embedded model, before and after."""

from __future__ import annotations

from pathlib import Path

from tunesmith.demo import dpo, grpo, ppo
from tunesmith.demo.run import run_demo
from tunesmith.errors import ConfigError

# --recipe: (the demo, its default --out, its default --max-steps)
DEMOS = {
    "sft": (run_demo, "runs/demo", 72),
    "dpo": (dpo.run_dpo_demo, "runs/demo-dpo", dpo.DEFAULT_STEPS),
    "grpo": (grpo.run_grpo_demo, "runs/demo-grpo", grpo.DEFAULT_STEPS),
    "ppo": (ppo.run_ppo_demo, "runs/demo-ppo", ppo.DEFAULT_STEPS),
}


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="fine-tune the embedded model on a bundled task, show before/after",
        description="sft (default): LoRA SFT teaches support messages -> JSON. "
        "dpo: LoRA DPO teaches a courteous, concise, actionable support-reply tone. "
        "grpo: LoRA GRPO rewards JSON extraction (json_valid + json_fields), from the base. "
        "ppo: a reward model of the dpo demo's pairs, then LoRA PPO against it.",
    )
    p.add_argument("--recipe", choices=tuple(DEMOS), default="sft", help="which demo (default sft)")
    p.add_argument("--out", help="run directory (default runs/demo, or runs/demo-RECIPE)")
    p.add_argument(
        "--max-steps",
        type=int,
        help="optimizer steps (default 72 sft and 24 dpo, of 8 examples; "
        "48 grpo, of 4 prompts x 4 samples; 16 ppo, of 8 rollouts)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--limit",
        type=int,
        help="sft: score only the first N held-out examples; "
        "dpo: generate replies for only N held-out messages; "
        "grpo, ppo: score only N held-out prompts",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(handler=run)


def run(args) -> int:
    if args.max_steps is not None and args.max_steps < 1:
        raise ConfigError("--max-steps: must be >= 1")
    if args.limit is not None and args.limit < 1:
        raise ConfigError("--limit: must be >= 1")
    run_one, out, steps = DEMOS[args.recipe]
    run_one(Path(args.out or out), args.max_steps or steps, args.seed, args.limit, progress=args.progress)
    return 0
