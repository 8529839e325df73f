"""SIGTERM and Ctrl-C during training: the step finishes, a checkpoint is saved, the command exits with
128 + the signal and a resume hint, and --resume then completes the run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import chat_rows, write_jsonl


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_a_checkpoint_and_resume_finishes(tmp_path, sig):
    data = write_jsonl(tmp_path / "train.jsonl", chat_rows(24))
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "tunesmith",
        "sft",
        "--model",
        "tiny-random-llama",
        "--data",
        str(data),
        "--out",
        str(out),
        "--max-steps",
        "400",
        "--batch-size",
        "2",
        "--max-length",
        "64",
        "--save-every",
        "0",
        "--no-progress",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ})
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and not (metrics.is_file() and metrics.read_text().count("\n") >= 2):
        time.sleep(0.2)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 128 + sig, stderr[-2000:]
    assert "--resume" in stderr and "Traceback" not in stderr
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    saved = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert saved == [f"step-{steps[-1]:08d}"] and 2 <= steps[-1] < 400
    assert not (out / "adapter").exists()
    done = subprocess.run(
        cmd[:-5] + ["--max-steps", str(steps[-1] + 2), "--resume", "--no-progress"],
        capture_output=True,
        text=True,
        env={**os.environ},
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resumed from" in done.stdout and (out / "adapter" / "adapter_model.safetensors").is_file()
