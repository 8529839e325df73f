"""PPO's peak memory against LoRA SFT's on the same model: does sharing one base copy hold up?

Run from the repository root (CPU, about 5 minutes):

    PYTHONPATH=src python bench/ppo_memory.py [--steps 3] [--reward-model DIR]

Issue 4 asks that PPO (policy adapter, value head, reference = adapters off, reward model = a second
adapter + head, all on ONE copy of the base) peak at no more than 1.6x the LoRA SFT peak on the same model.
Three fresh subprocesses, each reporting its peak RSS (ru_maxrss, process start to end):
  reward  `tunesmith reward` on the bundled tone pairs (LoRA r16, 10 steps of 8, max length 128), unless
          --reward-model is given; only needed as PPO's reward model, not measured against anything
  sft     `tunesmith sft` LoRA r16 on the bundled support data: batch 8, max length 128, --steps steps
  ppo     `tunesmith ppo` with that reward model on the tone prompts: 8 rollouts of up to 64 new tokens
          (prompt + reply ~110-130 tokens, like the SFT rows), 4 PPO epochs, --steps steps
Both trained runs use fp32 and LoRA dropout 0. Writes bench/results/ppo_memory-<date>-<host>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import socket
import sys
import tempfile
from pathlib import Path

from harness import ROOT, child_tunesmith, read_jsonl, run_child, write_result

DATA = ROOT / "src" / "tunesmith" / "demo" / "data"
COMMON = [
    "--model",
    "smollm2-135m-instruct",
    "--method",
    "lora",
    "--precision",
    "fp32",
    "--save-every",
    "0",
    "--no-progress",
    "--overwrite",
]


def run(argv: list[str]) -> dict:
    """`tunesmith <argv>` in a fresh process: its exit code and peak RSS."""
    return run_child([sys.executable, __file__, "--child", *argv], f"tunesmith {argv[0]}", 4000, check_rc=True)[0]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child_tunesmith(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--reward-model", help="an existing `tunesmith reward` run on smollm2-135m-instruct (lora)")
    ap.add_argument("--results-dir", default=str(ROOT / "bench" / "results"))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rm = a.reward_model
        if rm is None:
            rm = os.path.join(tmp, "rm")
            print("training a reward model on the tone pairs ...", flush=True)
            run(
                [
                    "reward",
                    *COMMON,
                    "--data",
                    str(DATA / "tone_train.jsonl"),
                    "--max-length",
                    "128",
                    "--max-steps",
                    "10",
                    "--lr",
                    "5e-4",
                    "--out",
                    rm,
                ]
            )
        prompts = os.path.join(tmp, "prompts.jsonl")
        with open(DATA / "tone_heldout.jsonl") as f, open(prompts, "w") as out:
            for line in f:
                out.write(json.dumps({"messages": json.loads(line)["prompt"]}) + "\n")
        print("sft ...", flush=True)
        sft = run(
            [
                "sft",
                *COMMON,
                "--data",
                str(DATA / "support_train.jsonl"),
                "--max-length",
                "128",
                "--no-packing",
                "--batch-size",
                "8",
                "--max-steps",
                str(a.steps),
                "--out",
                os.path.join(tmp, "sft"),
            ]
        )
        print("ppo ...", flush=True)
        ppo = run(
            [
                "ppo",
                *COMMON,
                "--reward-model",
                rm,
                "--prompts",
                prompts,
                "--rollouts-per-step",
                "8",
                "--max-new-tokens",
                "64",
                "--ppo-epochs",
                "4",
                "--max-steps",
                str(a.steps),
                "--out",
                os.path.join(tmp, "ppo"),
            ]
        )
        ppo_rows = read_jsonl(Path(tmp, "ppo", "metrics.jsonl"))
    import torch

    sft_mb, ppo_mb = sft["maxrss_kib"] / 1024, ppo["maxrss_kib"] / 1024
    result = {
        "bench": "ppo_memory",
        "date": datetime.date.today().isoformat(),
        "host": socket.gethostname(),
        "command": " ".join(["python", "bench/ppo_memory.py", *sys.argv[1:]]),
        "steps": a.steps,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "sft_lora_peak_rss_mb": round(sft_mb),
        "ppo_peak_rss_mb": round(ppo_mb),
        "ppo_over_sft": round(ppo_mb / sft_mb, 3),
        "target": "<= 1.6",
        "ppo_response_length": [r.get("response_length") for r in ppo_rows],
        "ppo_step_s": [r.get("step_s") for r in ppo_rows],
    }
    print(
        f"\nLoRA SFT peak RSS {sft_mb:.0f} MB; PPO peak RSS {ppo_mb:.0f} MB; ratio {ppo_mb / sft_mb:.2f} (target <= 1.6)"
    )
    write_result(result, a.results_dir)


if __name__ == "__main__":
    main()
