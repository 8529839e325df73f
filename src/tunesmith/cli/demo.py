"""`tunesmith demo`: the main job on the embedded model, before and after."""

from __future__ import annotations

from pathlib import Path

from tunesmith.errors import ConfigError


def register(sub) -> None:
    p = sub.add_parser("demo", help="fine-tune the embedded model on a structured-output task, show before/after")
    p.add_argument("--out", default="runs/demo", help="run directory (default runs/demo)")
    p.add_argument("--max-steps", type=int, default=72, help="optimizer steps of 8 examples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, help="score only the first N held-out examples")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(handler=run)


def run(args) -> int:
    from tunesmith.demo.run import run_demo

    if args.max_steps < 1:
        raise ConfigError("--max-steps: must be >= 1")
    run_demo(Path(args.out), args.max_steps, args.seed, args.limit, progress=args.progress)
    return 0
