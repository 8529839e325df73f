"""--compile (torch.compile of each decoder layer) trains the same model as eager execution."""

from __future__ import annotations

import pytest
from safetensors.torch import load_file

from tunesmith.cli import main
from tunesmith.errors import ConfigError
from tunesmith.train.metrics import read_metrics


def test_compiled_layers_train_like_eager(tmp_path, chat_file):
    common = [
        "sft",
        "--model",
        "tiny-random-llama",
        "--data",
        str(chat_file),
        "--batch-size",
        "4",
        "--lr",
        "1e-2",
        "--precision",
        "fp32",
        "--max-steps",
        "3",
        "--schedule",
        "constant",
        "--no-progress",
    ]
    assert main([*common, "--out", str(tmp_path / "eager")]) == 0
    assert main([*common, "--compile", "--out", str(tmp_path / "compiled")]) == 0
    eager, compiled = (read_metrics(tmp_path / d / "metrics.jsonl") for d in ("eager", "compiled"))
    losses = [(a["loss"], b["loss"]) for a, b in zip(eager, compiled) if "loss" in a]
    assert len(losses) == 3
    for a, b in losses:  # fused kernels sum in another order: equal up to float rounding
        assert b == pytest.approx(a, rel=1e-4, abs=1e-5)
    w1, w2 = (load_file(tmp_path / d / "adapter" / "adapter_model.safetensors") for d in ("eager", "compiled"))
    assert w1.keys() == w2.keys()
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 1e-4


def test_recipes_that_sample_refuse_compile():
    from tunesmith.config.load import build_config
    from tunesmith.config.schema import GRPOConfig, PPOConfig

    for cls, args in ((GRPOConfig, {"grpo.reward": "json_valid"}), (PPOConfig, {"ppo.reward_model": "rm"})):
        with pytest.raises(ConfigError, match="train.compile: not with a recipe that samples"):
            build_config(cls, {"data.train": "p.jsonl", "train.compile": True, "out": "o", **args})
