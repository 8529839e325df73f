"""Kill -9 soak: a run checkpointing every step is killed with SIGKILL at random moments, some of them while a
checkpoint is being written, and resumed with `--resume` after each kill; its final weights must equal an
uninterrupted run's (max |difference| <= 1e-6), for sft (LoRA with dropout, micro-batches), dpo and grpo.

    PYTHONPATH=src python bench/crash_soak.py --kills 20                       # the embedded model, ~25 min
    PYTHONPATH=src python bench/crash_soak.py --kills 3 --model tiny-random-llama --recipes sft   # a smoke run

Each kill comes at a random moment of a run's life, paced by the run itself (after 0, 1 or 2 new checkpoints,
plus a random part of a step, or of the start-up), so that every start gets a step or two further whatever
the machine's speed; every `--write-kill-every`-th kill instead waits until a checkpoint's temporary
directory appears and kills the process then, mid-write. A run killed before its first checkpoint starts again (`--overwrite`); otherwise it
resumes from its newest complete checkpoint (a partial one never becomes visible: see train/checkpoint.py).
Writes bench/results/crash_soak-<date>-<host>.json and exits 1 when any recipe's weights differ.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import ROOT, child_env, write_result

DEMO_DATA = ROOT / "src/tunesmith/demo/data"
TOLERANCE = 1e-6


def recipe_argv(recipe: str, data: dict[str, Path], model: str, steps: int) -> list[str]:
    """The command of one soak run (without --out): a checkpoint every step, small and deterministic."""
    common = ["--model", model, "--max-steps", str(steps), "--save-every", "1", "--keep-checkpoints", "2"]
    common += ["--seed", "3", "--no-progress", "--precision", "fp32", "--no-memory-check"]
    if recipe == "sft":  # dropout draws random numbers; micro-batches accumulate
        extra = ["--data", str(data["chat"]), "--lora-dropout", "0.1", "--batch-size", "4", "--micro-batch-size", "2"]
        return ["sft", *common, *extra, "--max-length", "128"]
    if recipe == "dpo":
        return ["dpo", *common, "--data", str(data["pairs"]), "--batch-size", "4", "--max-length", "128"]
    grpo = ["--prompts", str(data["prompts"]), "--reward", "json_valid", "--batch-size", "2", "--group-size", "2"]
    return ["grpo", *common, *grpo, "--max-new-tokens", "16"]


def start(argv: list[str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "tunesmith", *argv], env=child_env(), stdout=f, stderr=subprocess.STDOUT
        )


def checkpoint_being_written(out: Path) -> bool:
    """A checkpoint's temporary directory (atomic_directory: `.step-N.<random>.tmp`) exists."""
    root = out / "checkpoints"
    return root.is_dir() and any(p.name.endswith(".tmp") for p in root.iterdir())


def has_checkpoint(out: Path) -> bool:
    root = out / "checkpoints"
    return root.is_dir() and any(p.name.startswith("step-") for p in root.iterdir())


def newest_step(out: Path) -> int:
    root = out / "checkpoints"
    steps = [int(p.name.split("-")[1]) for p in root.iterdir() if p.name.startswith("step-")] if root.is_dir() else []
    return max(steps, default=0)


def kill_once(argv: list[str], out: Path, log: Path, rng: random.Random, mid_write: bool) -> str:
    """Start (or resume) the run and SIGKILL it: `mid_write`, as soon as a checkpoint is being written; else at
    a random moment paced by the run itself, whatever the machine's speed: after 0, 1 or 2 new checkpoints,
    plus a random part of a step (or, with none, of the start-up). Returns "random", "mid-write", or
    "finished" when the run ended first."""
    resume = ["--resume"] if has_checkpoint(out) else (["--overwrite"] if out.exists() else [])
    p = start([*argv, "--out", str(out), *resume], log)
    began, first = time.monotonic(), newest_step(out)
    wanted, fraction = rng.randint(0, 2), rng.random()
    last_step, last_at, step_s = first, began, None
    while p.poll() is None:
        if mid_write and checkpoint_being_written(out):
            p.send_signal(signal.SIGKILL)
            p.wait()
            return "mid-write"
        now, step = time.monotonic(), newest_step(out)
        if step != last_step:
            step_s = None if last_step == first else (now - last_at) / (step - last_step)
            last_step, last_at = step, now
        done = last_step - first
        if not mid_write and done >= wanted:
            # within the start-up: a fraction of an assumed 5 s; after a checkpoint: of the step time seen
            pace = step_s if step_s is not None else (5.0 if done == 0 else now - began)
            if now - last_at >= fraction * pace:
                p.send_signal(signal.SIGKILL)
                p.wait()
                return "random"
        time.sleep(0.002 if mid_write else 0.02)
    if p.returncode:
        sys.exit(f"the run exited with code {p.returncode} before its kill: see {log}")
    return "finished"


def weights(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(out / "adapter" / "adapter_model.safetensors")


def soak(recipe: str, data: dict[str, Path], work: Path, a: argparse.Namespace, rng: random.Random) -> dict:
    argv = recipe_argv(recipe, data, a.model, a.steps)
    log = work / f"{recipe}.log"
    t = time.perf_counter()
    reference = subprocess.run(
        [sys.executable, "-m", "tunesmith", *argv, "--out", str(work / f"{recipe}-whole")],
        env=child_env(),
        capture_output=True,
        text=True,
    )
    if reference.returncode:
        sys.exit(f"{recipe}: the uninterrupted run failed:\n{reference.stderr[-3000:]}")
    whole_s = time.perf_counter() - t
    step_s = [
        r["step_s"] for r in map(json.loads, (work / f"{recipe}-whole" / "metrics.jsonl").open()) if "step_s" in r
    ]
    per_step = sorted(step_s)[len(step_s) // 2]  # the median: a first step also pays for warming up
    startup_s = max(0.5, whole_s - per_step * len(step_s))
    out = work / f"{recipe}-soak"
    kills: dict[str, int] = {"random": 0, "mid-write": 0}
    starts = 0
    while sum(kills.values()) < a.kills:
        mid_write = (sum(kills.values()) + 1) % a.write_kill_every == 0
        how = kill_once(argv, out, log, rng, mid_write)
        starts += 1
        if how == "finished":  # it ended before the kill: train further with a longer run next time
            break
        kills[how] += 1
        print(f"  {recipe}: kill {sum(kills.values())} ({how})", flush=True)
    last = subprocess.run(
        [
            sys.executable,
            "-m",
            "tunesmith",
            *argv,
            "--out",
            str(out),
            "--resume" if has_checkpoint(out) else "--overwrite",
        ],
        env=child_env(),
        capture_output=True,
        text=True,
    )
    if last.returncode:
        sys.exit(f"{recipe}: the last resume failed:\n{last.stderr[-3000:]}")
    a_w, b_w = weights(work / f"{recipe}-whole"), weights(out)
    diff = max(float((a_w[k] - b_w[k]).abs().max()) for k in a_w) if a_w.keys() == b_w.keys() else float("inf")
    run = json.loads((out / "run.json").read_text())
    return {
        "kills": kills,
        "all_kills_done": sum(kills.values()) >= a.kills,
        "starts": starts + 1,
        "steps": run["steps"],
        "max_abs_diff": diff,
        "equal": diff <= TOLERANCE,
        "startup_s": round(startup_s, 1),
        "step_s": round(per_step, 2),
        "uninterrupted_s": round(whole_s, 1),
    }


def prepare_data(work: Path) -> dict[str, Path]:
    code = "from tunesmith.demo.grpo import write_prompts; import sys; write_prompts(sys.argv[1], sys.argv[2], 64)"
    prompts = work / "prompts.jsonl"
    subprocess.run(
        [sys.executable, "-c", code, str(DEMO_DATA / "support_train.jsonl"), str(prompts)], env=child_env(), check=True
    )
    return {"chat": DEMO_DATA / "support_train.jsonl", "pairs": DEMO_DATA / "tone_train.jsonl", "prompts": prompts}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=20, help="SIGKILLs per recipe (default 20)")
    p.add_argument("--recipes", default="sft,dpo,grpo")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--steps", type=int, help="optimizer steps of each run (default: kills + 10, so the kills fit)")
    p.add_argument("--write-kill-every", type=int, default=3, help="every N-th kill waits for a checkpoint write")
    p.add_argument("--seed", type=int, default=0, help="of the kill times")
    p.add_argument("--results-dir", default=str(ROOT / "bench/results"))
    a = p.parse_args()
    rng = random.Random(a.seed)
    a.steps = a.steps or a.kills + 10
    work = Path(tempfile.mkdtemp(prefix="tunesmith-soak-"))
    data = prepare_data(work)
    results = {}
    for recipe in a.recipes.split(","):
        print(f"{recipe}: {a.kills} kills, {a.steps} steps, {a.model}", flush=True)
        results[recipe] = soak(recipe, data, work, a, rng)
        print(f"{recipe}: {json.dumps(results[recipe])}", flush=True)
    result = {
        "bench": "crash_soak",
        "date": datetime.date.today().isoformat(),
        "host": socket.gethostname(),
        "model": a.model,
        "kills_per_recipe": a.kills,
        "steps": a.steps,
        "tolerance": TOLERANCE,
        "cpus": os.cpu_count(),
        "recipes": results,
    }
    write_result(result, a.results_dir)
    sys.exit(0 if all(r["equal"] and r["all_kills_done"] for r in results.values()) else 1)


if __name__ == "__main__":
    main()
