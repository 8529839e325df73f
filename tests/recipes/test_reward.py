"""`tunesmith reward` and `tunesmith score` on the tiny model."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.conftest import preference_rows, write_jsonl
from tunesmith.cli import main
from tunesmith.config.schema import RewardConfig
from tunesmith.losses.reward import bradley_terry_loss, pair_accuracy
from tunesmith.recipes.reward import run_reward
from tunesmith.train.metrics import read_metrics


def test_bradley_terry_against_hand_arithmetic():
    r_w, r_l = torch.tensor([2.0, 0.0, -1.0]), torch.tensor([0.0, 0.0, 1.0])
    expected = [math.log(1 + math.exp(-2.0)), math.log(2.0), math.log(1 + math.exp(2.0))]  # -log σ(d) = log(1+e^-d)
    assert torch.allclose(bradley_terry_loss(r_w, r_l), torch.tensor(expected), atol=1e-6)
    assert pair_accuracy(r_w, r_l).tolist() == [1.0, 0.5, 0.0]


def _config(tmp_path, name, data, method="lora", steps=12, **train) -> RewardConfig:
    cfg = RewardConfig(model="tiny-random-llama", method=method, out=str(tmp_path / name))
    cfg.data.train = str(data)
    cfg.data.max_length = 64
    cfg.train.precision = "fp32"
    cfg.train.batch_size = 8
    cfg.train.max_steps = steps
    cfg.train.lr = 5e-3 if method != "full" else 1e-3
    cfg.train.warmup_ratio = 0.0
    cfg.train.save_every = 0
    for key, value in train.items():
        setattr(cfg.train, key, value)
    cfg.validate()
    return cfg


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("rm_pairs") / "pairs.jsonl", preference_rows(16))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, pairs_file):
    cfg = _config(tmp_path_factory.mktemp("rm"), "rm", pairs_file)
    cfg.data.eval = str(pairs_file)
    return run_reward(cfg, say=lambda s: None, progress=False)


def test_reward_model_learns_from_ln2(trained):
    records = [r for r in read_metrics(trained.run_dir / "metrics.jsonl") if "loss" in r]
    assert records[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # zero head: every score 0
    assert records[0]["accuracy"] == 0.5 and records[0]["margin"] == 0.0
    assert trained.eval["eval_accuracy"] >= 0.9 and trained.eval["eval_loss"] < 0.5, trained.eval
    for key in ("loss", "accuracy", "margin"):
        assert key in records[-1]
    out = trained.output
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "reward_head.safetensors").is_file() and (out / "reward_model.json").is_file()


def test_score_prints_the_trained_models_rewards(trained, pairs_file, tmp_path, capsys):
    from tunesmith.data.preference import load_preference_file
    from tunesmith.data.prepare import tokenize_pairs
    from tunesmith.models import load_tokenizer, resolve_model_dir
    from tunesmith.recipes.reward import pair_scores

    capsys.readouterr()
    assert main(["score", "--reward-model", str(trained.run_dir), "--data", str(pairs_file)]) == 0
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert [r["line"] for r in rows] == list(range(1, 17))
    assert "prefers the chosen reply in" in captured.err
    # the same numbers as the in-memory model (padded rows at scoring, prompt-shared rows in training)
    tokenizer = load_tokenizer(resolve_model_dir("tiny-random-llama"))
    pairs = tokenize_pairs(tokenizer, load_preference_file(pairs_file).pairs)
    trained.model.eval()
    with torch.no_grad():
        r_w, r_l, _ = pair_scores(
            trained.model,
            trained.model.reward_head,
            pairs,
            False,
            64,
            tokenizer.pad_token_id,
            torch.device("cpu"),
            None,
        )
    assert [r["chosen"] for r in rows] == pytest.approx(r_w.tolist(), abs=1e-4)
    assert [r["rejected"] for r in rows] == pytest.approx(r_l.tolist(), abs=1e-4)

    chats = write_jsonl(
        tmp_path / "chats.jsonl",
        [
            {"prompt": "alpha beta", "completion": "yes gamma"},
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "no delta"}]},
        ],
    )
    assert main(["score", "--reward-model", str(trained.output), "--data", str(chats)]) == 0
    scored = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["line"] for r in scored] == [1, 2] and all(isinstance(r["reward"], float) for r in scored)


def test_score_refuses_what_is_not_a_reward_model(tmp_path, pairs_file, capsys):
    assert main(["score", "--reward-model", str(tmp_path), "--data", str(pairs_file)]) == 2
    assert "not a reward model" in capsys.readouterr().err


class Crash(Exception):
    pass


def test_full_reward_model_and_resume(tmp_path, pairs_file, monkeypatch):
    """The head is checkpointed with the weights: 2 steps + crash + resume == 4 uninterrupted."""
    import tunesmith.train.run as run_scaffold
    from tunesmith.models.reward import load_reward_model

    whole = run_reward(
        _config(tmp_path, "whole", pairs_file, method="full", steps=4), say=lambda s: None, progress=False
    )
    assert (whole.output / "model" / "model.safetensors").is_file()
    real_save = run_scaffold.save_checkpoint_on_main

    def save_then_crash(*args, **kwargs):
        real_save(*args, **kwargs)
        raise Crash()

    split = _config(tmp_path, "split", pairs_file, method="full", steps=4, save_every=2)
    monkeypatch.setattr(run_scaffold, "save_checkpoint_on_main", save_then_crash)
    with pytest.raises(Crash):
        run_reward(split, say=lambda s: None, progress=False)
    monkeypatch.setattr(run_scaffold, "save_checkpoint_on_main", real_save)
    split.resume = True
    resumed = run_reward(split, say=lambda s: None, progress=False)
    a = [r["loss"] for r in read_metrics(whole.run_dir / "metrics.jsonl") if "loss" in r]
    b = [r["loss"] for r in read_metrics(resumed.run_dir / "metrics.jsonl") if "loss" in r]
    assert len(b) == 4 and a == pytest.approx(b, abs=1e-6)
    assert torch.allclose(whole.model.reward_head.weight, resumed.model.reward_head.weight, atol=1e-6)
    _, head, _ = load_reward_model(resumed.run_dir)
    assert torch.allclose(head.weight, resumed.model.reward_head.weight)
