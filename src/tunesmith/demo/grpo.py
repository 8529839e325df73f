"""The GRPO demo: from the base, reinforce JSON extraction with programmatic rewards (no demonstrations).

    bundled support messages -> prompts asking for their JSON, each with its reference answer
    -> base model's greedy replies to held-out prompts, scored -> GRPO (LoRA): K samples per prompt,
    rewards json_valid + json_fields, advantages within each group -> greedy replies scored again
    -> report.json + a before/after table

The messages are the SFT demo's (scripts/build_demo_data.py), but nothing is imitated: the model only
sees its own samples and their rewards. json_valid pays 1 for a reply that is exactly one JSON object;
json_fields pays the share of the five fields (name, order_id, product, intent, urgency) whose value
equals the reference. The prompt shows an example object whose values belong to no message, so the base
mostly answers with valid JSON that copies them: most of what there is to learn is reading the fields
from the message.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from tunesmith.atomic import atomic_write_text
from tunesmith.config.schema import GRPOConfig
from tunesmith.data.formats import load_sft_file
from tunesmith.demo.run import HELDOUT_FILE, MODEL, TRAIN_FILE
from tunesmith.demo.run import check_out as run_check_out
from tunesmith.demo.task import extraction_instruction
from tunesmith.train.metrics import read_metrics

DEFAULT_STEPS = 48
HELDOUT = 40  # held-out prompts scored before and after
REWARDS = ("json_valid", "json_fields")


def write_prompts(source: Path, target: Path, limit: int | None = None) -> int:
    """Prompt rows {"messages": [user turn], "reference": {...}} from the demo's chat rows; returns the count."""
    rows = []
    for conv in load_sft_file(source)[:limit]:
        message = next(m["content"] for m in conv.messages if m["role"] == "user")
        answer = next(m["content"] for m in conv.messages if m["role"] == "assistant")
        rows.append(
            {
                "messages": [{"role": "user", "content": extraction_instruction(message)}],
                "reference": json.loads(answer),
            }
        )
    atomic_write_text(target, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return len(rows)


def demo_config(run_dir: Path, train: Path, heldout: Path, max_steps: int, seed: int) -> GRPOConfig:
    cfg = GRPOConfig(model=MODEL, method="lora", out=str(run_dir), overwrite=True)
    cfg.data.train, cfg.data.eval, cfg.data.max_prompt_length = str(train), str(heldout), 256
    g = cfg.grpo
    g.reward, g.group_size, g.kl_coef = ",".join(REWARDS), 4, 0.04
    cfg.sampling.temperature, cfg.sampling.max_new_tokens = 0.7, 64
    cfg.train.max_steps, cfg.train.batch_size, cfg.train.lr = max_steps, 4, 3e-4
    cfg.train.seed, cfg.train.save_every, cfg.train.log_every = seed, 0, 1
    cfg.validate()
    return cfg


def check_out(out: Path) -> None:
    """Replace a previous GRPO demo's directory, never anything else."""
    run_check_out(out, "grpo/config.yaml", "a GRPO demo")


def run_grpo_demo(
    out: Path,
    max_steps: int = DEFAULT_STEPS,
    seed: int = 0,
    limit: int | None = None,
    say: Callable[[str], None] = print,
    progress: bool = True,
) -> dict:
    from tunesmith.recipes.grpo import run_grpo  # heavy: deferred for CLI start-up

    started = time.time()
    out = Path(out)
    check_out(out)
    out.mkdir(parents=True, exist_ok=True)
    train, heldout = out / "prompts_train.jsonl", out / "prompts_heldout.jsonl"
    write_prompts(TRAIN_FILE, train)
    n_heldout = write_prompts(HELDOUT_FILE, heldout, min(HELDOUT, limit or HELDOUT))
    say(
        f"demo: {MODEL}, JSON extraction reinforced by GRPO with rewards {' + '.join(REWARDS)}, "
        f"{n_heldout} held-out prompts"
    )
    say(
        f"GRPO (LoRA) for {max_steps} steps of 4 prompts x 4 samples; "
        "held-out greedy replies scored before and after ..."
    )
    result = run_grpo(demo_config(out / "grpo", train, heldout, max_steps, seed), say=say, progress=progress)

    records = read_metrics(result.run_dir / "metrics.jsonl")
    evals = [r for r in records if "eval_reward_mean" in r]
    steps = [r for r in records if "reward_mean" in r]
    keys = ["eval_reward_mean"] + [f"eval_reward/{name}" for name in REWARDS]
    quarter = max(1, len(steps) // 4)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    samples = [json.loads(line) for line in (result.run_dir / "samples.jsonl").read_text().splitlines()]
    report = {
        "before": {k.removeprefix("eval_"): evals[0][k] for k in keys},
        "after": {k.removeprefix("eval_"): evals[-1][k] for k in keys},
        "sampled_reward": {
            "first_quarter": mean([s["reward_mean"] for s in steps[:quarter]]),
            "last_quarter": mean([s["reward_mean"] for s in steps[-quarter:]]),
        },
        "kl_last": steps[-1].get("kl"),
        "seconds": round(time.time() - started, 1),
        "heldout_prompts": n_heldout,
        "grpo_steps": result.steps,
        "adapter": str(result.output),
        "samples_first_step": samples[:2],
        "samples_last_step": [s for s in samples if s["step"] == samples[-1]["step"]][:2],
    }
    atomic_write_text(out / "report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    say(format_table(report))
    say(f"report: {out / 'report.json'}    adapter: {result.output}")
    return report


def format_table(report: dict) -> str:
    rows = [("reward_mean", "held-out reward (greedy, max 2)")] + [(f"reward/{n}", f"  {n}") for n in REWARDS]
    lines = [f"{'metric':34s} {'before':>8s} {'after':>8s}"]
    lines += [f"{label:34s} {report['before'][k]:8.3f} {report['after'][k]:8.3f}" for k, label in rows]
    q = report["sampled_reward"]
    lines.append(f"{'sampled reward (1st/last quarter)':34s} {q['first_quarter']:8.3f} {q['last_quarter']:8.3f}")
    if report["kl_last"] is not None:
        lines.append(f"KL to the base at the last step: {report['kl_last']:.4f}")
    for label, key in (("first step", "samples_first_step"), ("last step", "samples_last_step")):
        for s in report[key][:1]:
            lines.append(f"\na sample at the {label} (reward {s['reward']:.2f}): {s['completion']}")
    lines.append(f"\nwhole demo: {report['seconds']:.0f} s")
    return "\n".join(lines)
