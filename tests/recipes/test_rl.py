"""`tunesmith grpo` and `tunesmith ppo` on tiny models with toy rewards."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from tests.conftest import write_jsonl
from tunesmith.cli import main
from tunesmith.config.schema import GRPOConfig
from tunesmith.recipes.grpo import run_grpo
from tunesmith.train.metrics import read_metrics

TOY_REWARD = """
def newlines(prompt, completion, row):
    return float(completion.count("\\n"))
"""


@pytest.fixture(scope="module")
def peaked_model(tmp_path_factory, tiny_dir):
    """The tiny random model with its final norm scaled up: its next-token distribution is peaked, so a
    newline is sampled often enough (about 1 in 10 tokens) for a toy reward to have a signal."""
    from tunesmith.models import load_model, load_tokenizer

    path = tmp_path_factory.mktemp("peaked") / "model"
    model = load_model(tiny_dir, torch.device("cpu"))
    with torch.no_grad():
        model.model.norm.weight.mul_(10.5)
    model.save_pretrained(path)
    load_tokenizer(tiny_dir).save_pretrained(path)
    return path


@pytest.fixture
def toy_reward(tmp_path, monkeypatch):
    (tmp_path / "toy_rewards.py").write_text(TOY_REWARD)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "toy_rewards:newlines"
    sys.modules.pop("toy_rewards", None)


def _config(tmp_path, model, prompts, reward, steps, **grpo) -> GRPOConfig:
    cfg = GRPOConfig(model=str(model), out=str(tmp_path / "run"))
    cfg.data.train = str(prompts)
    cfg.grpo.reward = reward
    cfg.grpo.group_size = 8
    cfg.sampling.max_new_tokens = 12
    cfg.grpo.kl_coef = 0.0
    for key, value in grpo.items():
        setattr(cfg.grpo, key, value)
    cfg.train.precision = "fp32"
    cfg.train.batch_size = 1
    cfg.train.max_steps = steps
    cfg.train.lr = 5e-4
    cfg.train.warmup_ratio = 0.0
    cfg.train.schedule = "constant"
    cfg.train.save_every = 0
    cfg.validate()
    return cfg


def test_grpo_raises_a_toy_reward(tmp_path, peaked_model, toy_reward):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "alpha beta gamma"}])
    result = run_grpo(_config(tmp_path, peaked_model, prompts, toy_reward, 20), say=lambda s: None, progress=False)
    rewards = [r["reward_mean"] for r in read_metrics(result.run_dir / "metrics.jsonl") if "reward_mean" in r]
    assert len(rewards) == 20
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + 0.5, rewards
    record = read_metrics(result.run_dir / "metrics.jsonl")[-1]
    for key in ("reward_std", "entropy", "clip_fraction", "response_length", f"reward/{toy_reward}"):
        assert key in record
    samples = [json.loads(line) for line in (result.run_dir / "samples.jsonl").read_text().splitlines()]
    assert samples and {"step", "prompt", "completion", "reward"} <= set(samples[0])
    assert (result.output / "adapter_model.safetensors").is_file()


def test_grpo_kl_and_eval(tmp_path, tiny_dir):
    """A KL term against the adapter-off base, and greedy eval replies scored before and after."""
    prompts = write_jsonl(
        tmp_path / "prompts.jsonl",
        [{"prompt": "alpha"}, {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "beta"}]}],
    )
    cfg = _config(tmp_path, "tiny-random-llama", prompts, "length_penalty:3", 2, kl_coef=0.1, group_size=2)
    cfg.data.eval = str(prompts)
    cfg.train.lr = 1e-2
    result = run_grpo(cfg, say=lambda s: None, progress=False)
    records = read_metrics(result.run_dir / "metrics.jsonl")
    assert records[0] == {
        "step": 0,
        "eval_reward_mean": result.manifest["eval_reward_before"],
        "eval_reward/length_penalty:3": result.manifest["eval_reward_before"],
    }  # one reward: its part is the total
    assert records[1]["kl"] == pytest.approx(0.0, abs=1e-6)  # a fresh adapter: policy == reference
    assert records[2]["kl"] > 0
    assert result.eval is not None and records[-1]["final"] is True


def test_grpo_bad_input(tmp_path, capsys):
    prompts = write_jsonl(
        tmp_path / "p.jsonl",
        [{"prompt": "a", "reference": "x"}, {"prompt": "b"}, {"messages": [{"role": "assistant", "content": "c"}]}],
    )
    out = tmp_path / "never"
    base = ["grpo", "--model", "tiny-random-llama", "--prompts", str(prompts), "--out", str(out), "--no-progress"]
    assert main([*base, "--reward", "exact_match"]) == 2
    err = capsys.readouterr().err
    assert f"{prompts}:3: `messages`: must end with a user turn" in err and not out.exists()

    good = write_jsonl(tmp_path / "g.jsonl", [{"prompt": "a", "reference": "x"}, {"prompt": "b"}])
    assert (
        main(
            [
                "grpo",
                "--model",
                "tiny-random-llama",
                "--prompts",
                str(good),
                "--out",
                str(out),
                "--reward",
                "exact_match",
            ]
        )
        == 2
    )
    assert f"{good}:2: missing `reference`" in capsys.readouterr().err and not out.exists()
    assert main(["grpo", "--prompts", str(good), "--out", str(out), "--reward", "json_vaild"]) == 2
    assert "did you mean 'json_valid'" in capsys.readouterr().err
    assert main(["grpo", "--prompts", str(good), "--out", str(out), "--reward", "json_valid", "--method", "full"]) == 2
    assert "--kl-coef 0" in capsys.readouterr().err


@pytest.fixture(scope="module")
def newline_reward_model(tmp_path_factory, peaked_model):
    """A reward model (lora on the peaked base) that prefers replies broken over several lines."""
    import random

    from tunesmith.config.schema import RewardConfig
    from tunesmith.recipes.reward import run_reward

    rng = random.Random(0)
    words = "alpha beta gamma delta epsilon zeta".split()
    rows = [
        {
            "prompt": " ".join(rng.choice(words) for _ in range(3)),
            "chosen": "\n".join(rng.choice(words) for _ in range(rng.randint(3, 6))),
            "rejected": " ".join(rng.choice(words) for _ in range(rng.randint(3, 6))),
        }
        for _ in range(32)
    ]
    root = tmp_path_factory.mktemp("rm_newlines")
    cfg = RewardConfig(model=str(peaked_model), out=str(root / "rm"))
    cfg.data.train = str(write_jsonl(root / "pairs.jsonl", rows))
    cfg.train.precision, cfg.train.max_steps, cfg.train.lr, cfg.train.save_every = "fp32", 15, 5e-3, 0
    cfg.validate()
    return run_reward(cfg, say=lambda s: None, progress=False).run_dir


def test_ppo_raises_the_reward_models_score(tmp_path, peaked_model, newline_reward_model):
    from tunesmith.config.schema import PPOConfig
    from tunesmith.recipes.ppo import run_ppo

    prompts = write_jsonl(
        tmp_path / "prompts.jsonl",
        [{"prompt": f"alpha beta {w}"} for w in "gamma delta epsilon zeta eta theta iota kappa".split()],
    )
    cfg = PPOConfig(model=str(peaked_model), out=str(tmp_path / "ppo"))
    cfg.data.train = str(prompts)
    cfg.ppo.reward_model = str(newline_reward_model)
    cfg.ppo.rollouts_per_step, cfg.sampling.max_new_tokens, cfg.ppo.kl_coef = 8, 12, 0.01
    cfg.train.precision, cfg.train.max_steps, cfg.train.lr = "fp32", 20, 5e-4
    cfg.train.warmup_ratio, cfg.train.schedule, cfg.train.save_every = 0.0, "constant", 0
    cfg.validate()
    result = run_ppo(cfg, say=lambda s: None, progress=False)
    records = read_metrics(result.run_dir / "metrics.jsonl")
    rewards = [r["reward_mean"] for r in records]
    assert len(rewards) == 20
    assert sum(rewards[-5:]) / 5 > sum(rewards[:5]) / 5 + 0.8, rewards
    assert records[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # a fresh adapter: policy == reference
    for key in ("reward_std", "kl_coef", "policy_loss", "value_loss", "clip_fraction", "entropy", "response_length"):
        assert key in records[-1]
    assert (result.run_dir / "value_head.safetensors").is_file()
    samples = [json.loads(line) for line in (result.run_dir / "samples.jsonl").read_text().splitlines()]
    assert {s["step"] for s in samples} == {1, 5, 10, 15, 20}  # step 1, then every --samples-every 5
    assert all(set(s) == {"step", "prompt", "completion", "reward"} for s in samples)
    adapter = json.loads((result.output / "adapter_config.json").read_text())
    assert adapter["r"] == 16  # the policy adapter alone: the reward adapter is not saved with it


def test_ppo_adaptive_kl_and_bad_input(tmp_path, newline_reward_model, peaked_model, capsys):
    from tunesmith.losses.kl import AdaptiveKLController

    ctl = AdaptiveKLController(0.1, target=1.0, horizon=100)
    ctl.update(3.0, 10)  # KL above target: the coefficient rises
    assert ctl.value > 0.1
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}, {"prompt": "b"}])
    base = ["ppo", "--prompts", str(prompts), "--out", str(tmp_path / "never"), "--no-progress"]
    assert main(base) == 2
    assert "use --reward-model DIR" in capsys.readouterr().err
    assert main([*base, "--reward-model", str(newline_reward_model), "--method", "full"]) == 2
    assert "use --method lora or qlora" in capsys.readouterr().err
    assert main([*base, "--reward-model", str(newline_reward_model), "--model", "tiny-random-llama"]) == 2
    assert "but the policy's base is" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def _probe(tmp_path):
    return write_jsonl(
        tmp_path / "probe.jsonl", [{"prompt": f"say {w}", "answer": f"{w} {w} {w}"} for w in ("alpha", "beta", "gamma")]
    )


def _drift_steps(run_dir) -> list[int]:
    return [r["step"] for r in read_metrics(run_dir / "metrics.jsonl") if "kl_to_base" in r]


def test_forgetting_guard_in_grpo_and_ppo(tmp_path, peaked_model, newline_reward_model):
    prompts = write_jsonl(
        tmp_path / "prompts.jsonl", [{"prompt": f"alpha {w}"} for w in "beta gamma delta eta".split()]
    )
    guard = [
        "--probe",
        str(_probe(tmp_path)),
        "--forgetting-every",
        "1",
        "--precision",
        "fp32",
        "--no-progress",
        "--model",
        str(peaked_model),
        "--prompts",
        str(prompts),
        "--max-steps",
        "2",
        "--max-new-tokens",
        "8",
    ]
    assert (
        main(
            [
                "grpo",
                "--reward",
                "length_penalty:3",
                "--group-size",
                "2",
                "--batch-size",
                "2",
                "--out",
                str(tmp_path / "grpo"),
                *guard,
            ]
        )
        == 0
    )
    assert _drift_steps(tmp_path / "grpo") == [0, 1, 2]
    assert (
        main(
            [
                "ppo",
                "--reward-model",
                str(newline_reward_model),
                "--rollouts-per-step",
                "2",
                "--out",
                str(tmp_path / "ppo"),
                *guard,
            ]
        )
        == 0
    )
    assert _drift_steps(tmp_path / "ppo") == [0, 1, 2]
    run = json.loads((tmp_path / "ppo" / "run.json").read_text())
    assert run["forgetting"]["budget_exceeded"] is None


def _adapter(run_dir) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run_dir / "adapter" / "adapter_model.safetensors")


def test_grpo_loss_variants_train_and_gspo_starts_where_grpo_does(tmp_path, peaked_model, toy_reward):
    """One pass per step leaves every ratio at 1, where GSPO's sequence ratio has the token ratios' gradient:
    its first step equals GRPO's. Dr. GRPO does not divide advantages by the group's std, so its first
    gradient differs in norm (Adam's first step is scale-free, so the adapters cannot show it). DAPO's
    token mean equals GRPO's mean of means when every completion has the same length, as the tiny
    model's 12-token samples do; its arithmetic is tested in tests/unit/test_ppo_math.py."""
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "alpha beta gamma"}])
    adapters, grad_norms = {}, {}
    for name, options in {
        "grpo": {},
        "gspo": {"importance_level": "sequence"},
        "dapo": {"loss_type": "dapo", "clip_range_high": 0.28},
        "dr_grpo": {"loss_type": "dr_grpo"},
    }.items():
        cfg = _config(tmp_path / name, peaked_model, prompts, toy_reward, 1, **options)
        result = run_grpo(cfg, say=lambda s: None, progress=False)
        saved = (result.run_dir / "config.yaml").read_text()
        for key, value in options.items():
            assert f"{key}: {value}" in saved
        adapters[name] = _adapter(result.run_dir)
        grad_norms[name] = read_metrics(result.run_dir / "metrics.jsonl")[0]["grad_norm"]
    for key, grpo in adapters["grpo"].items():
        assert torch.allclose(adapters["gspo"][key], grpo, atol=1e-6), key
    assert grad_norms["gspo"] == pytest.approx(grad_norms["grpo"], rel=1e-4)
    assert grad_norms["grpo"] > 0 and grad_norms["dr_grpo"] != pytest.approx(grad_norms["grpo"], rel=1e-2)


def test_grpo_loss_type_flags(tmp_path, capsys):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "alpha"}])
    common = ["grpo", "--model", "tiny-random-llama", "--prompts", str(prompts), "--reward", "json_valid"]
    with pytest.raises(SystemExit) as exit_info:
        main([*common, "--loss-type", "dapo-ish", "--out", str(tmp_path / "r")])
    assert exit_info.value.code == 2 and "dapo-ish" in capsys.readouterr().err
    assert main([*common, "--clip-range-high", "0", "--out", str(tmp_path / "r")]) == 2
    assert "grpo.clip_range_high" in capsys.readouterr().err
