"""`tunesmith demo`: the main job on the embedded model, before and after."""

from __future__ import annotations

from pathlib import Path

from tunesmith.errors import ConfigError


def register(sub) -> None:
    p = sub.add_parser("demo", help="fine-tune the embedded model on a bundled task, show before/after",
                       description="sft (default): LoRA SFT teaches support messages -> JSON. "
                                   "dpo: LoRA DPO teaches a courteous, concise, actionable support-reply tone. "
                                   "grpo: LoRA GRPO rewards JSON extraction (json_valid + json_fields), from the base. "
                                   "ppo: a reward model of the dpo demo's pairs, then LoRA PPO against it.")
    p.add_argument("--recipe", choices=("sft", "dpo", "grpo", "ppo"), default="sft", help="which demo (default sft)")
    p.add_argument("--out", help="run directory (default runs/demo, or runs/demo-RECIPE)")
    p.add_argument("--max-steps", type=int, help="optimizer steps (default 72 sft and 24 dpo, of 8 examples; "
                                                 "18 grpo, of 4 prompts x 4 samples; 16 ppo, of 8 rollouts)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, help="sft: score only the first N held-out examples; "
                                             "dpo: generate replies for only N held-out messages; "
                                             "grpo, ppo: score only N held-out prompts")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(handler=run)


def run(args) -> int:
    if args.max_steps is not None and args.max_steps < 1:
        raise ConfigError("--max-steps: must be >= 1")
    if args.limit is not None and args.limit < 1:
        raise ConfigError("--limit: must be >= 1")
    if args.recipe == "dpo":
        from tunesmith.demo.dpo import DEFAULT_STEPS, run_dpo_demo

        run_dpo_demo(Path(args.out or "runs/demo-dpo"), args.max_steps or DEFAULT_STEPS, args.seed, args.limit,
                     progress=args.progress)
        return 0
    if args.recipe in ("grpo", "ppo"):
        if args.recipe == "grpo":
            from tunesmith.demo.grpo import DEFAULT_STEPS, run_grpo_demo as run_rl_demo
        else:
            from tunesmith.demo.ppo import DEFAULT_STEPS, run_ppo_demo as run_rl_demo

        run_rl_demo(Path(args.out or f"runs/demo-{args.recipe}"), args.max_steps or DEFAULT_STEPS, args.seed,
                    args.limit, progress=args.progress)
        return 0
    from tunesmith.demo.run import run_demo

    run_demo(Path(args.out or "runs/demo"), args.max_steps or 72, args.seed, args.limit, progress=args.progress)
    return 0
