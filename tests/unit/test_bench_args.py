"""The benchmark scripts hand their --extra flags to tunesmith (an `--compile` row that silently ran eager
would be a benchmark of nothing)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _script(name: str, monkeypatch):
    # `python bench/<name>.py` puts bench/ first on sys.path, where the scripts find their shared harness.py
    monkeypatch.syspath_prepend(str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["sft_vs_trl", "dpo_vs_trl"])
def test_extra_flags_reach_the_tunesmith_command(name, monkeypatch):
    argv = _script(name, monkeypatch).tunesmith_argv("MODEL", "DATA", 3, 0, "OUT", ["--compile", "--no-packing"])
    assert argv[-2:] == ["--compile", "--no-packing"]
    assert argv[argv.index("--model") + 1] == "MODEL" and argv[argv.index("--max-steps") + 1] == "3"


def test_mfu_counts_a_shared_prefix_once_for_the_rows_that_share_it(tiny_dir, monkeypatch):
    """bench/run.py: a tunesmith SFT row that computed a prefix once is not credited with its copies; TRL's
    and `--no-shared-prefix` rows are counted per example; a DPO row with the prompt once, likewise."""
    run = _script("run", monkeypatch)
    c, shape = run.model_counts(str(tiny_dir), "lora")
    sft = dict(examples=[dict(tokens=100, trained=20)] * 4, harness_step_tokens=[400], shared_prefixes=[[[60, 4]]])
    full = run.step_flops("sft-lora", sft, c, shape, {"side": "trl"})
    assert full == run.step_flops("sft-lora", sft, c, shape, {"shares_prefixes": False})
    shared = run.step_flops("sft-lora", sft, c, shape, {"shares_prefixes": True})
    assert shared[0] == pytest.approx(full[0] - 3 * run.sft_flops(c, shape, 60, 0))
    dpo = dict(examples=[dict(prompt=50, chosen=80, rejected=70)], harness_step_tokens=[150])
    both = run.step_flops("dpo-lora", dpo, c, shape, {})
    once = run.step_flops("dpo-lora", dpo, c, shape, {"shares_prompt": True})
    assert once[0] == pytest.approx(both[0] - run.sft_flops(c, shape, 49, 0) - run.reference_flops(c, shape, 49, 0))


def test_short_data_family_has_the_shapes_it_names(monkeypatch):
    """bench/data_family.py: short chats with no system prompt, mixed lengths spread over the range the
    issue names, multi-turn chats of 2-4 exchanges, and DPO pairs whose prompt is the chat before its last
    reply; the same seed gives the same rows."""
    fam = _script("data_family", monkeypatch)
    count = lambda text: len(text.split())  # noqa: E731 (a word count stands in for the tokenizer)
    short = fam.sft_rows("short", 40, 0, count)
    assert all([m["role"] for m in r["messages"]] == ["user", "assistant"] for r in short)
    mixed = [sum(count(m["content"]) for m in r["messages"]) for r in fam.sft_rows("mixed", 200, 0, count)]
    assert min(mixed) < 10 and max(mixed) > 300  # openers of a word or two, and pasted pages
    turns = {len(r["messages"]) // 2 for r in fam.sft_rows("multiturn", 60, 0, count)}
    assert turns == {2, 3, 4}
    for kind in fam.KINDS:
        chats, pairs = fam.sft_rows(kind, 20, 3, count), fam.dpo_rows(kind, 20, 3, count)
        assert chats == fam.sft_rows(kind, 20, 3, count) and pairs == fam.dpo_rows(kind, 20, 3, count)
        for chat, pair in zip(chats, pairs):
            assert pair["prompt"][-1]["role"] == "user" and len(pair["prompt"]) == len(chat["messages"]) - 1
            assert pair["chosen"] != pair["rejected"]
    with pytest.raises(ValueError, match="unknown kind"):
        fam.sft_rows("long", 1, 0, count)


def test_rss_trace_names_the_training_phases(monkeypatch):
    """harness.RssTrace: setup until the first forward, then forward, backward and the optimizer step,
    each seen by the sampler; the RSS at the first forward broken down by what backs it."""
    import time

    import torch

    harness = _script("harness", monkeypatch)
    trace = harness.RssTrace(interval=0.001)
    time.sleep(0.05)
    model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.Linear(256, 1))
    opt = torch.optim.AdamW(model.parameters())
    slow = lambda *a: time.sleep(0.05)  # noqa: E731 (each phase lasts long enough to be sampled)
    model[0].register_forward_hook(slow)
    model[0].weight.register_hook(lambda g: slow())
    opt.register_step_pre_hook(slow)
    model(torch.randn(8, 256)).sum().backward()
    opt.step()
    time.sleep(0.05)
    trace.stop()
    s = trace.summary()
    assert ["setup", "forward", "backward", "optimizer step"] == [p for p in s["phases"] if p != "other"]
    parts = s["first_forward"]
    assert parts["anonymous_mb"] > 0 and parts["libraries_mb"] > 0
    assert abs(parts["rss_mb"] - sum(v for k, v in parts.items() if k != "rss_mb")) < 0.05 * parts["rss_mb"]
    assert torch.autograd.backward is trace.backward  # stop() put it back
