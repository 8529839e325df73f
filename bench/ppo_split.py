"""Where a PPO step's time goes: sampling, the rest of the rollout (old log-probs and values, reference,
reward model, GAE) and the update (--ppo-epochs passes of forward + backward + AdamW).

    PYTHONPATH=src python bench/ppo_split.py --reward-model DIR --prompts FILE [--precision auto] [--steps 3]

Runs `tunesmith ppo` in this process with the settings of bench/ppo_step_time.sh (which trains the reward
model and writes the prompts it uses: pass WORK/rm and WORK/prompts.jsonl), timing the recipe's own
functions by wrapping them; prints the mean seconds per step of each stage and each step's step_s.
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path

from harness import stage_timer

import tunesmith.recipes.ppo as ppo
from tunesmith.cli import main as tunesmith_main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reward-model", required=True)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--steps", type=int, default=3)
    a = ap.parse_args()
    stages: list[dict[str, float]] = [collections.defaultdict(float)]  # one entry: the whole run's seconds
    ppo.sample_prompts = stage_timer(stages, ppo.sample_prompts, "sampling")
    ppo.rollout = stage_timer(stages, ppo.rollout, "rollout")
    ppo.update = stage_timer(stages, ppo.update, "update")
    with tempfile.TemporaryDirectory() as out:
        argv = ["ppo", "--model", "smollm2-135m-instruct", "--method", "lora", "--save-every", "0", "--no-progress"]
        argv += ["--overwrite", "--precision", a.precision, "--reward-model", a.reward_model, "--prompts", a.prompts]
        argv += ["--rollouts-per-step", "8", "--max-new-tokens", "64", "--ppo-epochs", "4"]
        argv += ["--max-steps", str(a.steps), "--out", out]
        if tunesmith_main(argv) != 0:
            raise SystemExit("tunesmith ppo failed")
        rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step_s"] for r in rows if "step_s" in r]
    per_step = {k: v / len(steps) for k, v in stages[0].items()}
    per_step["rollout without sampling"] = per_step.pop("rollout") - per_step["sampling"]
    print(
        f"precision {a.precision}: "
        + ", ".join(f"{k} {v:.2f} s" for k, v in per_step.items())
        + f"; step_s {[round(s, 1) for s in steps]}"
    )


if __name__ == "__main__":
    main()
