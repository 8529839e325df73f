"""`tunesmith dpo` end to end on the tiny model: the reference, the first loss, learning, resume."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.conftest import preference_rows, write_jsonl
from tunesmith.cli import main
from tunesmith.config.schema import PREFERENCE_LOSS_NAMES, DPOConfig
from tunesmith.losses.dpo import PREFERENCE_LOSSES
from tunesmith.recipes.dpo import run_dpo
from tunesmith.train.metrics import read_metrics

LN2 = math.log(2)


def _config(tmp_path, name, data, **train) -> DPOConfig:
    cfg = DPOConfig(model="tiny-random-llama", method=train.pop("method", "lora"), out=str(tmp_path / name))
    cfg.data.train = str(data)
    cfg.data.max_length = 64
    cfg.data.packing = train.pop("packing", False)
    cfg.dpo.precompute_ref = train.pop("precompute_ref", False)
    cfg.dpo.sft_weight = train.pop("sft_weight", 0.0)
    cfg.dpo.loss = train.pop("loss", "dpo")
    cfg.train.precision = "fp32"  # exact comparisons
    cfg.train.batch_size = 8
    cfg.train.save_every = 0
    cfg.train.warmup_ratio = 0.0
    for key, value in train.items():
        setattr(cfg.train, key, value)
    cfg.validate()
    return cfg


def _train_records(run_dir):
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", preference_rows(16))


def test_loss_names_match_the_registry():
    assert set(PREFERENCE_LOSS_NAMES) == set(PREFERENCE_LOSSES)


@pytest.mark.parametrize("method,precompute", [("lora", False), ("lora", True), ("qlora", False), ("full", True)])
def test_first_loss_is_ln2_and_rewards_zero(tmp_path, pairs_file, method, precompute):
    """Policy == reference before the first update: margin 0, loss ln 2, reward accuracy one half."""
    cfg = _config(
        tmp_path, f"{method}-{precompute}", pairs_file, method=method, max_steps=1, lr=1e-3, precompute_ref=precompute
    )
    first = _train_records(run_dpo(cfg, say=lambda s: None, progress=False).run_dir)[0]
    # adapter off is the very same computation; a precomputed reference differs only by batch layout
    tol = 1e-6 if not precompute else 1e-4
    assert first["loss"] == pytest.approx(LN2, abs=tol)
    assert abs(first["reward_margin"]) < tol
    if not precompute:
        assert first["reward_accuracy"] == 0.5 and first["reward_chosen"] == 0.0
    assert first["logp_chosen"] < 0 and first["logp_rejected"] < 0


def test_training_raises_reward_accuracy_and_base_stays_reachable(tmp_path, pairs_file, tiny_dir):
    cfg = _config(tmp_path, "learn", pairs_file, max_steps=12, lr=5e-3)
    cfg.data.eval = str(pairs_file)  # the training pairs themselves
    result = run_dpo(cfg, say=lambda s: None, progress=False)
    records = _train_records(result.run_dir)
    assert records[0]["loss"] == pytest.approx(LN2, abs=1e-6)
    assert result.eval["eval_reward_accuracy"] >= 0.9, result.eval
    assert result.eval["eval_loss"] < LN2 - 0.05
    assert result.eval["eval_reward_margin"] > 0
    for key in (
        "loss",
        "reward_chosen",
        "reward_rejected",
        "reward_margin",
        "reward_accuracy",
        "logp_chosen",
        "logp_rejected",
    ):
        assert key in records[-1] and f"eval_{key}" in result.eval
    assert (result.output / "adapter_model.safetensors").is_file()
    run = json.loads((result.run_dir / "run.json").read_text())
    assert run["recipe"] == "dpo" and run["reference"] == "adapter off" and run["steps"] == 12

    # the reference really is the base: adapter off reproduces a freshly loaded base's logits
    from tunesmith.models import load_model

    ids = torch.tensor([[1, 5, 9, 200, 31, 7]])
    base = load_model(tiny_dir, torch.device("cpu"))
    model = result.model
    with torch.no_grad(), model.disable_adapter():
        off = model(input_ids=ids).logits
    with torch.no_grad():
        on = model(input_ids=ids).logits
        assert torch.allclose(off, base(input_ids=ids).logits, atol=1e-5)
    assert not torch.allclose(on, off, atol=1e-3)


def test_packing_and_micro_batches_give_the_same_step(tmp_path, pairs_file):
    """One forward over padded rows, packed rows, or two micro-batches: the same log-probs and loss."""
    runs = {}
    for name, packing, micro in [("padded", False, 8), ("packed", True, 8), ("micro", False, 4)]:
        cfg = _config(tmp_path, name, pairs_file, max_steps=2, lr=1e-2, packing=packing, micro_batch_size=micro)
        runs[name] = _train_records(run_dpo(cfg, say=lambda s: None, progress=False).run_dir)
    for name in ("packed", "micro"):
        assert [r["step"] for r in runs["padded"]] == [r["step"] for r in runs[name]] == [1, 2], name
        for a, b in zip(runs["padded"], runs[name]):  # step 2 also checks the accumulated gradient
            for key in ("loss", "logp_chosen", "logp_rejected", "reward_margin"):
                assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), (name, key, a["step"])


def test_sft_weight_adds_the_chosen_nll(tmp_path, pairs_file):
    """Against the same run without the term: the same first (preference) loss, but another gradient, and
    chosen replies made more likely by the step."""
    runs = {}
    for weight in (0.0, 0.5):
        cfg = _config(tmp_path, f"sftw-{weight}", pairs_file, max_steps=2, lr=1e-3, sft_weight=weight)
        runs[weight] = _train_records(run_dpo(cfg, say=lambda s: None, progress=False).run_dir)
    plain, sft = runs[0.0], runs[0.5]
    assert [r["step"] for r in plain] == [r["step"] for r in sft] == [1, 2]
    # the logged loss is the preference loss alone; the objective adds 0.5 * chosen_nll
    assert sft[0]["loss"] == pytest.approx(LN2, abs=1e-6) and plain[0]["loss"] == pytest.approx(LN2, abs=1e-6)
    assert sft[0]["logp_chosen"] == pytest.approx(plain[0]["logp_chosen"], rel=1e-6)  # the same model at step 1
    assert sft[0]["chosen_nll"] > 0 and "chosen_nll" not in plain[0]
    # the NLL term's gradient joins the preference loss's: a step that also raises the chosen replies' log-probs
    assert sft[0]["grad_norm"] != pytest.approx(plain[0]["grad_norm"], rel=1e-3)
    assert sft[1]["logp_chosen"] > plain[1]["logp_chosen"]


def test_ipo_first_loss(tmp_path, pairs_file):
    cfg = _config(tmp_path, "ipo", pairs_file, max_steps=1, lr=1e-3, loss="ipo")
    first = _train_records(run_dpo(cfg, say=lambda s: None, progress=False).run_dir)[0]
    assert first["loss"] == pytest.approx((1 / (2 * 0.1)) ** 2, rel=1e-6)  # (0 - 1/(2β))²


class Crash(Exception):
    pass


@pytest.mark.parametrize("method", ["lora", "full"])
def test_resume_equals_uninterrupted(tmp_path, pairs_file, monkeypatch, method):
    """3 steps + crash + resume == 6 uninterrupted steps (the full run reuses its cached reference)."""
    import tunesmith.train.run as run_scaffold

    def config(name, resume=False):
        cfg = _config(
            tmp_path,
            name,
            pairs_file,
            method=method,
            max_steps=6,
            lr=1e-2 if method == "lora" else 1e-4,
            micro_batch_size=4,
            seed=3,
        )
        cfg.train.save_every = 3
        cfg.resume = resume
        return cfg

    whole = run_dpo(config("whole"), say=lambda s: None, progress=False)
    real_save = run_scaffold.save_checkpoint_on_main

    def save_then_crash(*args, **kwargs):
        real_save(*args, **kwargs)
        raise Crash()

    monkeypatch.setattr(run_scaffold, "save_checkpoint_on_main", save_then_crash)
    with pytest.raises(Crash):
        run_dpo(config("split"), say=lambda s: None, progress=False)
    monkeypatch.setattr(run_scaffold, "save_checkpoint_on_main", real_save)
    said = []
    resumed = run_dpo(config("split", resume=True), say=said.append, progress=False)
    assert resumed.steps == whole.steps == 6
    if method == "full":
        assert any("reference log-probs: reusing" in line for line in said)
    a, b = _train_records(whole.run_dir), _train_records(resumed.run_dir)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    for x, y in zip(a, b):
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-6)
        assert x["reward_margin"] == pytest.approx(y["reward_margin"], abs=1e-6)


def test_cli_dpo_and_bad_data(tmp_path, pairs_file, capsys):
    bad = write_jsonl(
        tmp_path / "bad.jsonl",
        [
            {"prompt": "q", "chosen": "a", "rejected": "b"},
            {"prompt": "q", "chosen": "a"},
            {
                "input": {"messages": [{"role": "user", "content": "q"}]},
                "preferred_output": [{"role": "user", "content": "a"}],
                "non_preferred_output": "b",
            },
        ],
    )
    out = tmp_path / "never"
    code = main(["dpo", "--model", "tiny-random-llama", "--data", str(bad), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{bad}:2: missing `rejected`" in err
    assert f"{bad}:3: `preferred_output[0].role`: must be 'assistant'" in err
    assert "Traceback" not in err and not out.exists()

    assert main(["dpo", "--data", str(pairs_file), "--out", str(out), "--beta", "0"]) == 2
    assert "dpo.beta: must be > 0" in capsys.readouterr().err


def test_data_validate_preference(tmp_path, capsys):
    rows = preference_rows(4) + [
        {"prompt": "same", "chosen": "x", "rejected": "x"},  # 5 identical
        {"prompt": "q", "chosen": "   ", "rejected": "b"},  # 6 empty
        {
            "input": {"messages": [{"role": "assistant", "content": "q"}]},
            "preferred_output": [{"role": "assistant", "content": "a"}],
            "non_preferred_output": [{"role": "assistant", "content": "b"}],
        },  # 7 prompt ends badly
    ]
    path = write_jsonl(tmp_path / "prefs.jsonl", rows)
    code = main(["data", "validate", str(path), "--kind", "preference", "--model", "tiny-random-llama"])
    out = capsys.readouterr().out
    assert code == 2
    assert f"{path}: 4 valid pair(s), 2 problem(s)" in out
    assert "1 pair(s) with identical chosen and rejected will be dropped (line 5)" in out
    assert f"{path}:6: `chosen`: empty" in out
    assert f"{path}:7: `input.messages`: must end with a user turn" in out
    assert "prompt + chosen tokens: min" in out and "prompt + rejected tokens: min" in out

    good = write_jsonl(tmp_path / "good.jsonl", preference_rows(4))
    assert main(["data", "validate", str(good), "--kind", "preference", "--model", "tiny-random-llama"]) == 0


def test_forgetting_guard_in_dpo(tmp_path, pairs_file):
    probe = write_jsonl(tmp_path / "probe.jsonl", [{"prompt": "say yes", "answer": "yes yes"}])
    cfg = _config(tmp_path, "guarded", pairs_file, max_steps=2, lr=1e-2)
    cfg.forgetting.probe, cfg.forgetting.every = str(probe), 1
    result = run_dpo(cfg, say=lambda s: None, progress=False)
    drift = [r for r in read_metrics(result.run_dir / "metrics.jsonl") if "kl_to_base" in r]
    assert [r["step"] for r in drift] == [0, 1, 2] and drift[0]["kl_to_base"] == 0.0 and drift[-1]["kl_to_base"] > 0
