"""Two data-parallel processes train the same model as one: same losses, same weights (gloo, CPU)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tunesmith.cli import main
from tunesmith.train.metrics import read_metrics


def test_two_processes_equal_one(tmp_path, chat_file, capsys):
    """3 steps in one process == 2 steps in two processes, then --resume to step 3 in two processes."""
    common = ["sft", "--model", "tiny-random-llama", "--data", str(chat_file), "--batch-size", "8",
              "--micro-batch-size", "2", "--lr", "1e-2", "--precision", "fp32", "--schedule", "constant",
              "--save-every", "1", "--no-progress"]
    assert main([*common, "--max-steps", "3", "--out", str(tmp_path / "one")]) == 0
    two = ["--out", str(tmp_path / "two"), "--nproc", "2"]  # relaunched under torchrun
    assert main([*common, "--max-steps", "2", *two]) == 0
    assert main([*common, "--max-steps", "3", "--resume", *two]) == 0
    one, two = (read_metrics(tmp_path / d / "metrics.jsonl") for d in ("one", "two"))
    assert len(one) == len(two) == 3  # rank 0 alone wrote the metrics
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-4)
    w1, w2 = (load_file(tmp_path / d / "adapter" / "adapter_model.safetensors") for d in ("one", "two"))
    assert w1.keys() == w2.keys()
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 1e-4
    assert json.loads((tmp_path / "two" / "run.json").read_text())["processes"] == 2
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir())[-1] == "step-00000003"


def test_other_recipes_refuse_to_run_as_several_processes(monkeypatch):
    from tunesmith.errors import ConfigError
    from tunesmith.train.distributed import single_process_only

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="one process"):
        single_process_only("dpo")


def test_micro_batches_are_dealt_round_robin():
    from tunesmith.train.distributed import Dist

    items = list(range(7))
    assert Dist(0, 2).share(items) == [0, 2, 4, 6] and Dist(1, 2).share(items) == [1, 3, 5]
    assert Dist().share(items) == items and torch.distributed.is_available()
