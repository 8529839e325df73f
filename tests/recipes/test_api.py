"""The public Python API: the notebook example end to end, keyword arguments named like the flags,
events, and errors with the CLI's messages."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import tunesmith
from tests.conftest import write_jsonl

ROOT = Path(__file__).resolve().parents[2]


def test_the_notebook_example_runs_the_demo_sft(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "sft_notebook.py"),
            "--model",
            "tiny-random-llama",
            "--max-steps",
            "2",
            "--limit",
            "4",
            "--out",
            str(tmp_path / "nb"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ},
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "before:" in done.stdout and "after: " in done.stdout and "2 steps" in done.stdout
    assert (tmp_path / "nb" / "adapter" / "adapter_model.safetensors").is_file()


def test_keyword_arguments_are_the_flags_and_events_carry_everything(tmp_path, chat_file):
    events = []
    run = tunesmith.sft(
        model="tiny-random-llama",
        data=str(chat_file),
        out=str(tmp_path / "a"),
        lora_r=4,
        max_steps=3,
        batch_size=4,
        max_length=64,
        packing=False,
        save_every=0,
        quiet=True,
        on_event=events.append,
    )
    assert run.steps == 3 and run.output == tmp_path / "a" / "adapter" and run.final["loss"] > 0
    assert [r["step"] for r in run.metrics] == [1, 2, 3]
    assert run.manifest["recipe"] == "sft" and run.manifest["steps"] == 3
    metrics = [e["data"] for e in events if e["type"] == "metrics"]
    messages = [e["message"] for e in events if e["type"] == "message"]
    assert metrics == run.metrics
    assert any(m.startswith("training 24 examples") for m in messages) and any("saved" in m for m in messages)
    saved = (tmp_path / "a" / "config.yaml").read_text()
    assert "r: 4" in saved and "packing: false" in saved
    model, tokenizer = tunesmith.load(run.run_dir)
    assert hasattr(model, "peft_config") and tokenizer.pad_token_id is not None


def test_bad_arguments_raise_the_clis_errors(tmp_path, chat_file):
    with pytest.raises(tunesmith.ConfigError, match="did you mean 'lora_r'"):
        tunesmith.sft(data=str(chat_file), out=str(tmp_path / "x"), lora_rank=4)
    with pytest.raises(tunesmith.ConfigError, match="train.lr: must be > 0"):
        tunesmith.sft(data=str(chat_file), out=str(tmp_path / "x"), lr=-1)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"messages": [{"role": "robot", "content": "hi"}]}])
    with pytest.raises(tunesmith.DataError, match=f"{bad}:1:"):
        tunesmith.sft(model="tiny-random-llama", data=str(bad), out=str(tmp_path / "y"), quiet=True)
    with pytest.raises(tunesmith.ConfigError, match="named function"):
        tunesmith.grpo(prompts=str(chat_file), out=str(tmp_path / "z"), reward=[lambda p, c, r: 0.0])


def reward_for_test(prompt, completion, row):
    return -len(completion) / 100


def test_grpo_takes_python_functions_as_rewards(tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"say {w}"} for w in "abcd"])
    run = tunesmith.grpo(
        model="tiny-random-llama",
        prompts=str(prompts),
        out=str(tmp_path / "g"),
        quiet=True,
        reward=["json_valid", reward_for_test],
        max_steps=1,
        batch_size=2,
        group_size=2,
        max_new_tokens=4,
        save_every=0,
    )
    assert run.steps == 1
    assert "tests.recipes.test_api:reward_for_test" in (tmp_path / "g" / "config.yaml").read_text()
    assert "reward/tests.recipes.test_api:reward_for_test" in run.metrics[-1]
