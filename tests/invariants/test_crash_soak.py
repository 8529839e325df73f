"""The short version of bench/crash_soak.py: an SFT run (LoRA with dropout, micro-batches) checkpointing every
step is killed with SIGKILL twice, once while a checkpoint is being written, resumed after each kill, and
ends with the weights of an uninterrupted run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_sigkill_at_random_moments_and_mid_checkpoint_then_resume_equals_uninterrupted(tmp_path, tiny_dir):
    argv = [sys.executable, str(ROOT / "bench" / "crash_soak.py"), "--kills", "2", "--write-kill-every", "2"]
    argv += ["--model", "tiny-random-llama", "--recipes", "sft", "--steps", "8", "--results-dir", str(tmp_path)]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    (result,) = [json.loads(f.read_text()) for f in tmp_path.glob("crash_soak-*.json")]
    sft = result["recipes"]["sft"]
    assert sft["kills"] == {"random": 1, "mid-write": 1} and sft["equal"] and sft["max_abs_diff"] <= 1e-6
    assert sft["steps"] == 8 and sft["starts"] == 3
