"""Two data-parallel processes train the same model as one: same losses, same weights (gloo, CPU).

Every recipe: sft (lora through `--nproc 2`; full fine-tuning, sharded with FSDP2), dpo, reward, grpo and
ppo. The two-process runs other than the first share one torchrun launch (`torchrun_commands.py`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import chat_rows, preference_rows, write_jsonl
from tunesmith.cli import main
from tunesmith.train.metrics import read_metrics

TINY = [
    "--model",
    "tiny-random-llama",
    "--precision",
    "fp32",
    "--schedule",
    "constant",
    "--warmup-ratio",
    "0",
    "--save-every",
    "0",
    "--no-progress",
]


def assert_same_weights(one: Path, two: Path) -> None:
    w1, w2 = load_file(one), load_file(two)
    assert w1.keys() == w2.keys()
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 1e-4


def assert_same_steps(one: Path, two: Path, keys: tuple[str, ...]) -> list[dict]:
    """Same per-step values in both runs' metrics.jsonl, written by rank 0 alone (one record per step)."""
    r1, r2 = ([r for r in read_metrics(d / "metrics.jsonl") if keys[0] in r] for d in (one, two))
    assert len(r1) == len(r2) and [r["step"] for r in r2] == list(range(1, len(r2) + 1))
    for a, b in zip(r1, r2):
        for key in keys:
            assert b[key] == pytest.approx(a[key], abs=1e-4), (key, a["step"])
    assert json.loads((two / "run.json").read_text())["processes"] == 2
    return r1


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Each recipe once in this process and once as two processes; the run directories, `one-*` and `two-*`."""
    root = tmp_path_factory.mktemp("distributed")
    chat = write_jsonl(root / "chat.jsonl", chat_rows(24))
    pairs = write_jsonl(root / "pairs.jsonl", preference_rows(16))
    prompts = write_jsonl(root / "prompts.jsonl", [{"prompt": f"alpha beta {w}"} for w in "gamma delta eta mu".split()])
    reward = [
        "reward",
        *TINY,
        "--data",
        str(pairs),
        "--batch-size",
        "4",
        "--micro-batch-size",
        "1",
        "--lr",
        "1e-2",
        "--max-steps",
        "2",
    ]
    dpo = ["dpo", *TINY, "--data", str(pairs), "--batch-size", "4", "--micro-batch-size", "1", "--lr", "1e-2"]
    grpo = [
        "grpo",
        *TINY,
        "--prompts",
        str(prompts),
        "--reward",
        "length_penalty:1",
        "--group-size",
        "4",
        "--max-new-tokens",
        "8",
        "--batch-size",
        "2",
        "--micro-batch-size",
        "1",
        "--kl-coef",
        "0.1",
        "--lr",
        "1e-2",
        "--max-steps",
        "2",
    ]
    ppo = [
        "ppo",
        *TINY,
        "--prompts",
        str(prompts),
        "--reward-model",
        str(root / "one-reward"),
        "--rollouts-per-step",
        "4",
        "--micro-batch-size",
        "2",
        "--ppo-epochs",
        "2",
        "--max-new-tokens",
        "6",
        "--lr",
        "1e-2",
        "--max-steps",
        "2",
    ]
    # 3 micro-batches of 2 for 2 processes: under FSDP the second repeats one at weight 0 to stay in step
    full = [
        "sft",
        *TINY,
        "--method",
        "full",
        "--data",
        str(chat),
        "--eval-data",
        str(chat),
        "--batch-size",
        "6",
        "--micro-batch-size",
        "2",
        "--lr",
        "1e-3",
    ]
    for argv in (
        [*reward, "--out", str(root / "one-reward")],
        [*dpo, "--max-steps", "3", "--out", str(root / "one-dpo")],
        [*grpo, "--out", str(root / "one-grpo")],
        [*ppo, "--out", str(root / "one-ppo")],
        [*full, "--max-steps", "2", "--out", str(root / "one-full")],
    ):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as each torchrun process runs (OMP_NUM_THREADS=1): the same matmul blocking
        try:
            assert main(argv) == 0, argv
        finally:
            torch.set_num_threads(threads)
    commands = [
        [*reward, "--out", str(root / "two-reward")],
        [*dpo, "--max-steps", "2", "--out", str(root / "two-dpo")],  # then resumed as two processes
        [*dpo, "--max-steps", "3", "--resume", "--out", str(root / "two-dpo")],
        [*grpo, "--out", str(root / "two-grpo")],
        [*ppo, "--out", str(root / "two-ppo")],
        [*full, "--max-steps", "1", "--save-every", "1", "--out", str(root / "two-full")],  # FSDP checkpoint
        [*full, "--max-steps", "2", "--resume", "--out", str(root / "two-full")],
    ]
    (root / "commands.json").write_text(json.dumps(commands))
    launch = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(Path(__file__).with_name("torchrun_commands.py")),
        str(root / "commands.json"),
    ]
    done = subprocess.run(launch, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return root


def test_sft_lora_two_processes_equal_one(tmp_path, chat_file):
    """3 steps in one process == 2 steps in two processes (`--nproc 2`), then --resume to step 3."""
    common = [
        "sft",
        "--model",
        "tiny-random-llama",
        "--data",
        str(chat_file),
        "--batch-size",
        "8",
        "--micro-batch-size",
        "2",
        "--lr",
        "1e-2",
        "--precision",
        "fp32",
        "--schedule",
        "constant",
        "--save-every",
        "1",
        "--no-progress",
    ]
    assert main([*common, "--max-steps", "3", "--out", str(tmp_path / "one")]) == 0
    two = ["--out", str(tmp_path / "two"), "--nproc", "2"]  # relaunched under torchrun
    assert main([*common, "--max-steps", "2", *two]) == 0
    assert main([*common, "--max-steps", "3", "--resume", *two]) == 0
    assert len(assert_same_steps(tmp_path / "one", tmp_path / "two", ("loss",))) == 3
    assert_same_weights(*(tmp_path / d / "adapter" / "adapter_model.safetensors" for d in ("one", "two")))
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir())[-1] == "step-00000003"


def test_sft_full_fine_tuning_is_sharded_and_equal(runs):
    """FSDP2: same losses and eval loss, and the saved model/ (gathered on rank 0) has the same tensors,
    also after a checkpoint and --resume."""
    records = assert_same_steps(runs / "one-full", runs / "two-full", ("loss", "grad_norm"))
    assert len(records) == 2
    evals = [
        [r["eval_loss"] for r in read_metrics(runs / d / "metrics.jsonl") if "final" in r][-1]
        for d in ("one-full", "two-full")
    ]  # (the resumed run also keeps its first part's final eval)
    assert evals[1] == pytest.approx(evals[0], abs=1e-4)
    assert_same_weights(*(runs / d / "model" / "model.safetensors" for d in ("one-full", "two-full")))
    trainable = load_file(runs / "two-full" / "checkpoints" / "step-00000002" / "trainable.safetensors")
    assert "model.embed_tokens.weight" in trainable and "lm_head.weight" not in trainable  # tied, stored once


def test_dpo_two_processes_equal_one_across_resume(runs):
    assert len(assert_same_steps(runs / "one-dpo", runs / "two-dpo", ("loss", "reward_margin", "grad_norm"))) == 3
    assert_same_weights(*(runs / d / "adapter" / "adapter_model.safetensors" for d in ("one-dpo", "two-dpo")))
    assert sorted(p.name for p in (runs / "two-dpo" / "checkpoints").iterdir())[-1] == "step-00000003"


def test_reward_two_processes_equal_one(runs):
    assert_same_steps(runs / "one-reward", runs / "two-reward", ("loss", "accuracy", "margin"))
    for name in ("adapter/adapter_model.safetensors", "reward_head.safetensors"):
        assert_same_weights(*(runs / d / "reward_model" / name for d in ("one-reward", "two-reward")))


def test_grpo_rollouts_and_updates_do_not_depend_on_the_processes(runs):
    records = assert_same_steps(
        runs / "one-grpo", runs / "two-grpo", ("reward_mean", "reward_std", "loss", "kl", "response_length")
    )
    assert len(records) == 2 and records[1]["kl"] > 0  # the first update moved the policy
    assert_same_weights(*(runs / d / "adapter" / "adapter_model.safetensors" for d in ("one-grpo", "two-grpo")))
    samples = [(runs / d / "samples.jsonl").read_text() for d in ("one-grpo", "two-grpo")]
    assert samples[0] == samples[1]  # the same completions, sampled by other processes


def test_ppo_two_processes_equal_one(runs):
    assert_same_steps(runs / "one-ppo", runs / "two-ppo", ("reward_mean", "kl", "policy_loss", "value_loss"))
    assert_same_weights(*(runs / d / "adapter" / "adapter_model.safetensors" for d in ("one-ppo", "two-ppo")))
    assert_same_weights(*(runs / d / "value_head.safetensors" for d in ("one-ppo", "two-ppo")))


def test_full_fine_tuning_with_a_forgetting_guard_is_refused_as_several_processes(tmp_path, chat_file, capsys):
    out = tmp_path / "never"
    argv = [
        "sft",
        "--method",
        "full",
        "--data",
        str(chat_file),
        "--out",
        str(out),
        "--forgetting-every",
        "1",
        "--nproc",
        "2",
    ]
    assert main(argv) == 2
    assert "--forgetting-every with --method full runs in one process" in capsys.readouterr().err
    assert not out.exists()


def test_micro_batches_are_dealt_round_robin():
    from tunesmith.train.distributed import Dist

    items = list(range(7))
    assert Dist(0, 2).share(items) == [0, 2, 4, 6] and Dist(1, 2).share(items) == [1, 3, 5]
    assert Dist().share(items) == items and torch.distributed.is_available()
    # under FSDP every process runs as many micro-batches: the short one repeats one at weight 0
    assert Dist(1, 2).deal(items) == [(1, 1.0), (3, 1.0), (5, 1.0)]
    assert Dist(1, 2, sharded=True).deal(items) == [(1, 1.0), (3, 1.0), (5, 1.0), (0, 0.0)]
    assert Dist(2, 3, sharded=True).deal([0, 1]) == [(0, 0.0)]
    assert Dist().unshare([3, 1, 2]) == [3, 1, 2]
