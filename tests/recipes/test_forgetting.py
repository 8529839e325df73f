"""The forgetting guard: drift measured against the base, replay mixed in, the budget stop."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import chat_rows, write_jsonl
from tunesmith.cli import main
from tunesmith.config.schema import SFTConfig
from tunesmith.data.prepare import mix_replay, prepare_sft_data
from tunesmith.errors import ConfigError
from tunesmith.forgetting.guard import ForgettingGuard, spread_subset
from tunesmith.forgetting.measure import (
    base_perplexity,
    base_statistics,
    kl_and_nll_sums,
    kl_and_nll_sums_from_stats,
    measure_drift,
    stats_from_logits,
)
from tunesmith.forgetting.probe import base_answers, load_probe, probe_examples
from tunesmith.models import load_model
from tunesmith.models.attention import packs_flat
from tunesmith.models.forward import Head
from tunesmith.recipes.sft import run_sft
from tunesmith.train.metrics import read_metrics
from tunesmith.train.order import step_indices

QUIET = {"say": lambda s: None, "progress": False}


@pytest.fixture(scope="module")
def probe_file(tmp_path_factory):
    """A small probe with its answers given, so no generation is needed."""
    rows = [
        {"prompt": f"Tell me about {w}.", "answer": f"{w} is a word; {w} has {len(w)} letters."}
        for w in "alpha beta gamma delta epsilon zeta".split()
    ]
    return write_jsonl(tmp_path_factory.mktemp("probe") / "probe.jsonl", rows)


def _cfg(tmp_path, name, data, probe, **forgetting) -> SFTConfig:
    cfg = SFTConfig(model="tiny-random-llama", method=forgetting.pop("method", "lora"), out=str(tmp_path / name))
    cfg.data.train, cfg.data.max_length = str(data), 64
    cfg.train.precision, cfg.train.batch_size, cfg.train.save_every = "fp32", 4, 0
    cfg.train.max_steps, cfg.train.lr, cfg.train.warmup_ratio = forgetting.pop("steps", 4), 5e-3, 0.0
    cfg.forgetting.probe, cfg.forgetting.probe_size = str(probe), 0
    for key, value in forgetting.items():
        setattr(cfg.forgetting, key, value)
    cfg.validate()
    return cfg


def test_kl_and_nll_by_hand():
    base = torch.log(torch.tensor([[0.5, 0.5], [0.9, 0.1]]))
    tuned = torch.log(torch.tensor([[0.25, 0.75], [0.9, 0.1]]))
    kl, nll, base_nll = kl_and_nll_sums(tuned, base, torch.tensor([1, 0]))
    # KL(p||q) row 1 = .5 ln(.5/.25) + .5 ln(.5/.75); row 2 = 0
    assert float(kl) == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(0.5 / 0.75), abs=1e-6)
    assert float(nll) == pytest.approx(-math.log(0.75) - math.log(0.9), abs=1e-6)
    assert float(base_nll) == pytest.approx(-math.log(0.5) - math.log(0.9), abs=1e-6)


def test_kl_from_the_base_statistics_equals_the_full_vocabulary_sums():
    """m · h + p · b − logsumexp(z) = Σ p log q for z = W (h / scale) + b: the same three sums, from the tuned
    side's hidden states alone."""
    g = torch.Generator().manual_seed(0)
    head = Head(torch.randn(50, 8, generator=g), torch.randn(50, generator=g), scale=2.0)
    h_base, h_tuned = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    targets = torch.randint(0, 50, (6,), generator=g)
    expected = kl_and_nll_sums(head.logits(h_tuned), head.logits(h_base), targets)
    stats = stats_from_logits(head.logits(h_base), head, targets)
    got = kl_and_nll_sums_from_stats(h_tuned, head, stats, targets)
    for e, x in zip(expected, got, strict=True):
        assert float(x) == pytest.approx(float(e), rel=1e-5, abs=1e-5)
    assert float(got[0]) > 0.1  # a real difference, measured the same way


def test_spread_subset_keeps_the_ends_and_count():
    assert spread_subset(10, 0) == list(range(10))
    assert spread_subset(10, 20) == list(range(10))
    assert spread_subset(10, 5) == [0, 2, 4, 6, 8]
    assert len(set(spread_subset(337, 96))) == 96


def test_kl_is_zero_for_the_base_and_positive_after_a_change(tiny_dir, tokenizer, probe_file):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    items = load_probe(probe_file)
    examples = probe_examples(tokenizer, items, base_answers(items, tiny_dir))
    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    alone = measure_drift(base, examples, tokenizer.pad_token_id, base=base)
    assert alone["kl_to_base"] == 0.0
    model = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear"))
    fresh = measure_drift(model, examples, tokenizer.pad_token_id)  # base = the adapter switched off
    assert fresh["kl_to_base"] == 0.0  # lora_B starts at zero: the very same logits
    assert fresh["probe_perplexity"] == pytest.approx(alone["probe_perplexity"], rel=1e-6)
    assert fresh["base_probe_perplexity"] == pytest.approx(alone["probe_perplexity"], rel=1e-6)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    moved = measure_drift(model, examples, tokenizer.pad_token_id)
    assert moved["kl_to_base"] > 1e-4
    assert moved["probe_perplexity"] != pytest.approx(alone["probe_perplexity"], rel=1e-6)
    assert moved["base_probe_perplexity"] == pytest.approx(alone["probe_perplexity"], rel=1e-5)  # the adapter off
    # the base's statistics stand in for its pass: the same three numbers from one forward, of the adapter model
    stats = base_statistics(model, examples, tokenizer.pad_token_id)
    from_stats = measure_drift(model, examples, tokenizer.pad_token_id, batch_size=4, base_stats=stats)  # 2 batches
    assert from_stats["kl_to_base"] == pytest.approx(moved["kl_to_base"], abs=1e-6)  # per token, after cancellation
    for key in ("probe_perplexity", "base_probe_perplexity"):
        assert from_stats[key] == pytest.approx(moved[key], rel=1e-5)

    # a model that attends per packed example reads a micro-batch as one row, the system prompt once: the
    # same numbers as one padded row per example
    packed = load_model(tiny_dir, torch.device("cpu"))
    assert packs_flat(packed)
    packed_alone = measure_drift(packed, examples, tokenizer.pad_token_id, base=packed)
    assert packed_alone["probe_perplexity"] == pytest.approx(alone["probe_perplexity"], rel=1e-5)


def test_the_guard_measures_lora_in_one_forward_with_the_same_numbers(tiny_dir, tokenizer, probe_file):
    """With an adapter the guard runs the base once, at its start; its later measurements (one forward) give
    what two forwards give."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(load_model(tiny_dir, torch.device("cpu")), LoraConfig(r=4, target_modules="all-linear"))
    cfg = _cfg(tiny_dir.parent, "unused", probe_file, probe_file, every=1)
    guard = ForgettingGuard(
        cfg.forgetting, model, tokenizer, tiny_dir, "lora", torch.device("cpu"), None, lambda s: None
    )
    assert guard.stats is not None and len(guard.stats) == len(guard.examples)
    assert guard.base_perplexity == pytest.approx(
        base_perplexity(model, guard.examples, tokenizer.pad_token_id), rel=1e-5
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    measured = guard.measure(model, 1)
    two_forwards = measure_drift(model, guard.examples, tokenizer.pad_token_id)
    assert measured["kl_to_base"] > 1e-4
    assert measured["kl_to_base"] == pytest.approx(two_forwards["kl_to_base"], abs=1e-6)
    assert measured["probe_perplexity"] == pytest.approx(two_forwards["probe_perplexity"], rel=1e-5)


def test_base_answers_are_generated_once_and_cached(tiny_dir, tmp_path, tunesmith_home):
    probe = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hello"}, {"prompt": "bye", "answer": "see you"}])
    items = load_probe(probe)
    first = base_answers(items, tiny_dir, say=lambda s: None)
    assert first[1] == "see you" and isinstance(first[0], str)
    cached = list((tunesmith_home / "probes").glob(f"{tiny_dir.name}-*.jsonl"))
    assert cached
    messages = []
    assert base_answers(items, tiny_dir, say=messages.append) == first and messages == []  # from the cache
    assert base_answers(items[:1], tiny_dir, say=messages.append) == first[:1] and messages == []  # by prompt
    more = load_probe(write_jsonl(tmp_path / "q.jsonl", [{"prompt": "hello"}, {"prompt": "new one"}]))
    assert base_answers(more, tiny_dir, say=messages.append)[0] == first[0]
    assert messages == [f"probe: the base model answers 1 prompts once (cached in {cached[0].parent})"]


def test_probe_file_problems_name_file_and_line(tmp_path):
    from tunesmith.errors import DataError

    probe = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "ok"}, {"prompt": "x", "answer": ""}, {"nothing": 1}])
    with pytest.raises(DataError) as e:
        load_probe(probe)
    assert f"{probe}:3" in str(e.value)


def test_sft_logs_drift_from_zero(tmp_path, chat_file, probe_file):
    result = run_sft(_cfg(tmp_path, "guarded", chat_file, probe_file, every=2), **QUIET)
    drift = [r for r in read_metrics(result.run_dir / "metrics.jsonl") if "kl_to_base" in r]
    assert [r["step"] for r in drift] == [0, 2, 4]
    assert drift[0]["kl_to_base"] == 0.0 and drift[0]["probe_ppl_increase"] == 0.0
    assert drift[-1]["kl_to_base"] > 0
    assert json.loads((result.run_dir / "run.json").read_text())["forgetting"]["budget_exceeded"] is None


def test_budget_stop_keeps_the_last_weights_within_budget(tmp_path, chat_file, probe_file, capsys):
    out = tmp_path / "tight"
    code = main(
        [
            "sft",
            "--model",
            "tiny-random-llama",
            "--data",
            str(chat_file),
            "--out",
            str(out),
            "--max-steps",
            "6",
            "--lr",
            "5e-3",
            "--batch-size",
            "4",
            "--precision",
            "fp32",
            "--save-every",
            "0",
            "--probe",
            str(probe_file),
            "--probe-size",
            "0",
            "--forgetting-every",
            "2",
            "--max-kl",
            "1e-12",
            "--no-progress",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "forgetting budget exceeded at step 2" in printed and "as it was at step 0" in printed
    records = read_metrics(out / "metrics.jsonl")
    stop = [r for r in records if "budget_exceeded" in r]
    assert len(stop) == 1 and stop[0]["kept_step"] == 0 and stop[0]["step"] == 2
    assert max(r["step"] for r in records if "loss" in r) == 2  # no step after the stop
    run = json.loads((out / "run.json").read_text())
    assert run["forgetting"]["kept_step"] == 0 and run["steps"] == 2
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")  # step 0: the fresh adapter, B = 0
    lora_b = [t for k, t in adapter.items() if "lora_B" in k]
    assert lora_b and all(float(t.abs().max()) == 0.0 for t in lora_b)
    # the report says it too, with the drift curve and the table printed at the end
    report = (out / "report.html").read_text()
    assert "Forgetting budget exceeded at step 2" in report and 'src="forgetting.png"' in report
    assert all((out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for png in ("forgetting.png", "loss.png"))
    assert "kl_to_base" in printed and "result (the end column) = step 0" in printed


def test_budget_needs_measurements(tmp_path, chat_file, probe_file):
    with pytest.raises(ConfigError, match="--forgetting-every"):
        _cfg(tmp_path, "x", chat_file, probe_file, max_probe_ppl_increase=0.05)


def test_mix_replay_ratio_and_counts():
    train, pool = list(range(90)), [f"r{i}" for i in range(4)]
    mixed, n = mix_replay(train, pool, 0.1, seed=0)
    assert n == 10 and len(mixed) == 100 and mixed[:90] == train
    assert sorted(set(mixed[90:])) == pool  # a small pool is cycled through, each used before any repeats


def test_replay_ratio_holds_in_the_data_stream(tmp_path, tokenizer):
    task = write_jsonl(tmp_path / "task.jsonl", chat_rows(30, seed=1))
    general = write_jsonl(tmp_path / "general.jsonl", chat_rows(12, seed=2))
    cfg = SFTConfig(model="tiny-random-llama", out=str(tmp_path / "o"))
    cfg.data.train, cfg.data.replay, cfg.data.replay_ratio = str(task), str(general), 0.25
    data = prepare_sft_data(cfg.data, tokenizer, seed=0)
    assert data.replayed == 10 and len(data.train) == 40
    assert any("replay: mixed 10 general example(s)" in n for n in data.notes)
    replay_ids = {id(e) for e in data.train[30:]}
    # one epoch of the shuffled stream (5 steps of 8) holds each example once: 10 of 40 replayed
    seen = [i for step in range(5) for i in step_indices(40, 8, 0, step)]
    assert sorted(seen) == list(range(40))
    assert sum(id(data.train[i]) in replay_ids for i in seen) == 10


def test_guard_rail_warning_for_a_high_full_learning_rate(tmp_path, chat_file):
    cfg = SFTConfig(model="tiny-random-llama", method="full", out=str(tmp_path / "o"))
    cfg.data.train, cfg.train.lr = str(chat_file), 1e-4
    cfg.validate()
    (warning,) = cfg.guard_rail_warnings()
    assert "0.0001 is above 5e-05 for full" in warning
    cfg.train.lr = 1e-5
    assert cfg.guard_rail_warnings() == []


def test_eval_command(tmp_path, chat_file, probe_file, capsys, tunesmith_home, tiny_dir, tokenizer):
    from peft import PeftModel

    base = ["eval", "--model", "tiny-random-llama", "--probe", str(probe_file), "--precision", "fp32", "--json"]
    assert main(base + ["--data", str(chat_file)]) == 0
    alone = json.loads(capsys.readouterr().out)
    assert alone["kl_to_base"] == 0.0 and alone["probe_ppl_increase"] == 0.0 and alone["task_loss"] > 0
    result = run_sft(_cfg(tmp_path, "run", chat_file, probe_file), **QUIET)
    assert main(base + ["--adapter", str(result.output)]) == 0
    tuned = json.loads(capsys.readouterr().out)
    assert tuned["kl_to_base"] > 0
    assert tuned["base_probe_perplexity"] == pytest.approx(alone["probe_perplexity"], rel=1e-5)
    # the base's side came from one pass, cached: a second eval reads it back and gives the same numbers as
    # the two forwards over the full vocabulary do
    assert list((tunesmith_home / "probes").glob(f"{tiny_dir.name}-*-stats-fp32.safetensors"))
    assert main(base + ["--adapter", str(result.output)]) == 0
    assert json.loads(capsys.readouterr().out) == tuned
    model = PeftModel.from_pretrained(load_model(tiny_dir, torch.device("cpu")), str(result.output))
    items = load_probe(probe_file)
    examples = probe_examples(tokenizer, items, [i.answer for i in items])
    two_passes = measure_drift(model, examples, tokenizer.pad_token_id)
    assert tuned["kl_to_base"] == pytest.approx(two_passes["kl_to_base"], abs=1e-6)
    for key in ("probe_perplexity", "base_probe_perplexity"):
        assert tuned[key] == pytest.approx(two_passes[key], rel=1e-5)
    assert main(base + ["--adapter", str(result.output), "--base", "tiny-random-llama"]) == 2
    assert "give one" in capsys.readouterr().err


def test_full_fine_tuning_measures_against_a_frozen_copy(tmp_path, chat_file, probe_file):
    result = run_sft(_cfg(tmp_path, "full", chat_file, probe_file, method="full", every=1, steps=2), **QUIET)
    drift = [r for r in read_metrics(result.run_dir / "metrics.jsonl") if "kl_to_base" in r]
    assert [r["step"] for r in drift] == [0, 1, 2]
    assert drift[0]["kl_to_base"] == 0.0 and drift[1]["kl_to_base"] > 0 and drift[2]["kl_to_base"] > 0
