"""Every family runs the commands a user runs, and its adapter means what it says.

Per family (tests/families/tiny.py: 16-token windows, Gemma's soft-caps, Granite's scaled logits) one
packed LoRA SFT run of 2 steps feeds the checks: the adapter switched off is the base (DPO's reference,
the KL of `eval`, `generate --use base`), `tunesmith merge` writes base + adapter, `generate` decodes the
model's own greedy reply through its KV cache (prompts run past the window) and `eval --adapter` measures
a drift. DPO starts from ln 2, and reward and GRPO run a step. Every run is as small as it can be: the
whole file is CI time multiplied by ten families.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import torch

import tunesmith
from tests.conftest import chat_rows, preference_rows, write_jsonl
from tests.families.tiny import FAMILIES, WINDOW, build_tiny
from tunesmith.cli import main
from tunesmith.generation import generate_chat
from tunesmith.models import load_model
from tunesmith.models.load import autocast_dtype
from tunesmith.train.run import RunResult

CPU = torch.device("cpu")
FAST = dict(batch_size=4, save_every=0, precision="fp32", lora_r=4, warmup_ratio=0.0, lr=1e-2, quiet=True)
PROMPT = "where is my parcel"  # with the template's system prompt, ~30 tokens: past the window
NEW_TOKENS = 6


def distinct_characters(prompt, completion, row):
    """A GRPO reward that differs between samples, so the step has advantages to follow."""
    return float(len(set(completion)))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread while these tiny models run: their ops are smaller than the cost of handing half
    to a second thread, which on a shared 2-core CI machine waits for a busy core (there the LM head's
    1 x 64 x 49152 product took 8 ms on two threads and 0.2 ms on one, and this file 127 s instead of 44 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("family_data")
    probe = [
        {"prompt": f"Tell me about {w}.", "answer": f"{w} is a word of {len(w)} letters."} for w in ("alpha", "mu")
    ]
    return {
        "chat": write_jsonl(root / "chat.jsonl", chat_rows(8)),
        "pairs": write_jsonl(root / "pairs.jsonl", preference_rows(4)),
        "prompts": write_jsonl(root / "prompts.jsonl", [{"prompt": "alpha beta"}]),
        "probe": write_jsonl(root / "probe.jsonl", probe),  # answers given: eval generates nothing
    }


class Tuned(NamedTuple):
    model_dir: Path  # the tiny base
    run: RunResult  # its SFT run
    model: Any  # the base + the run's adapter, as `tunesmith.load` gives it, on the CPU


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, tokenizer, files):
    """family -> Tuned: built, trained and loaded once, on first use."""
    root = tmp_path_factory.mktemp("family_runs")
    cache: dict[str, Tuned] = {}

    def get(family: str) -> Tuned:
        if family not in cache:
            model_dir = build_tiny(family, tokenizer, root / family)
            data, out = str(files["chat"]), str(root / f"{family}-sft")
            run = tunesmith.sft(model=str(model_dir), data=data, out=out, max_steps=2, max_length=64, **FAST)
            assert run.steps == 2 and math.isfinite(run.final["loss"])
            assert "packing: true" in (run.run_dir / "config.yaml").read_text()  # the default: packed rows
            cache[family] = Tuned(model_dir, run, tunesmith.load(run.run_dir, device="cpu")[0])
        return cache[family]

    return get


def _input_ids(tokenizer) -> torch.Tensor:
    """A chat of ~50 tokens as the template renders it: three windows long."""
    reply = "it left the depot on monday and should reach you by friday, tracking number 4471"
    chat = [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": reply}]
    text = tokenizer.apply_chat_template(chat, tokenize=False)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    assert ids.shape[1] > 2 * WINDOW
    return ids


@torch.no_grad()
def _logits(model, ids) -> torch.Tensor:
    return model(input_ids=ids).logits.float()


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_off_is_the_base(family, tuned, tokenizer):
    model_dir, _, model = tuned(family)
    ids = _input_ids(tokenizer)
    base = _logits(load_model(model_dir, CPU), ids)
    trained = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert trained and all(p.abs().max() > 0 for p in trained)  # two steps moved every B off zero
    on = _logits(model, ids)
    with model.disable_adapter():
        off = _logits(model, ids)
    assert (on - base).abs().max() > 1e-2, family  # the adapter changes the function ...
    assert torch.equal(off, base), (family, (off - base).abs().max())  # ... and off, it is the base exactly


@pytest.mark.parametrize("family", FAMILIES)
def test_merge_is_base_plus_adapter(family, tuned, tokenizer, tmp_path, capsys):
    model_dir, run, adapted = tuned(family)
    ids = _input_ids(tokenizer)
    assert main(["merge", "--model", str(model_dir), "--adapter", str(run.output), "--out", str(tmp_path)]) == 0
    assert "merged into" in capsys.readouterr().out
    merged = load_model(tmp_path, CPU)
    assert merged.config.model_type == json.loads((model_dir / "config.json").read_text())["model_type"]
    assert not any("lora" in n for n, _ in merged.named_parameters())
    ours, theirs = _logits(merged, ids), _logits(adapted, ids)
    # 1e-5 of the logits' scale: at logits of ~8 each fp32 forward alone (adapter or merged) is ~1.4e-5 from
    # the fp64 result, on small logits too (the error is the hidden state's); a wrong scale or a missed
    # layer moves them by the adapter's effect, ~1-8
    assert (ours - theirs).abs().max() <= 1e-5 * theirs.abs().max(), (family, (ours - theirs).abs().max())


@pytest.mark.parametrize("family", FAMILIES)
def test_first_dpo_loss_is_ln2(family, tuned, files, tmp_path):
    """A fresh adapter: the policy is its reference (the adapter off), every margin 0, the loss ln 2."""
    model_dir = tuned(family).model_dir
    run = tunesmith.dpo(
        model=str(model_dir), data=str(files["pairs"]), out=str(tmp_path), max_steps=1, max_length=64, **FAST
    )
    first = [r for r in run.metrics if "loss" in r][0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6), family
    assert abs(first["reward_margin"]) < 1e-6 and first["reward_accuracy"] == 0.5
    assert first["logp_chosen"] < 0 and first["logp_rejected"] < 0


@torch.no_grad()
def _greedy_without_cache(model, tokenizer, prompt: str, new_tokens: int) -> str:
    """The argmax continuation, each token from a full forward over everything so far (no KV cache)."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    assert ids.shape[1] > WINDOW
    reply: list[int] = []
    for _ in range(new_tokens):
        token = int(
            model(input_ids=torch.cat([ids, torch.tensor([reply], dtype=ids.dtype)], dim=1)).logits[0, -1].argmax()
        )
        reply.append(token)
        if token == tokenizer.eos_token_id:
            break
    return tokenizer.decode(reply, skip_special_tokens=True).strip()


@pytest.mark.parametrize("family", FAMILIES)
def test_the_commands_a_user_runs(family, tuned, files, tokenizer, tmp_path, capsys):
    """sft (the fixture: LoRA, packed, 2 steps), reward and grpo a step each, generate and eval on the result."""
    model_dir, run, model = tuned(family)
    common = dict(model=str(model_dir), max_steps=1, **FAST)

    rm = tunesmith.reward(**common, data=str(files["pairs"]), out=str(tmp_path / "rm"), max_length=64)
    assert rm.metrics[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # a zero head scores every reply 0
    assert (rm.output / "reward_head.safetensors").is_file()

    prompts, out = str(files["prompts"]), str(tmp_path / "grpo")
    common["batch_size"] = 1  # one prompt, a group of two samples of four tokens
    rl = tunesmith.grpo(
        **common, prompts=prompts, out=out, reward=[distinct_characters], group_size=2, max_new_tokens=4
    )
    assert rl.steps == 1 and math.isfinite(rl.metrics[-1]["loss"]) and (rl.output / "adapter_config.json").is_file()

    expected = _greedy_without_cache(model, tokenizer, PROMPT, NEW_TOKENS)
    assert generate_chat(model, tokenizer, [PROMPT], NEW_TOKENS, precision="fp32") == [expected], family
    args = ["generate", "--model", str(model_dir), "--adapter", str(run.output), "--prompt", PROMPT, "--device", "cpu"]
    assert main([*args, "--max-new-tokens", str(NEW_TOKENS)]) == 0
    printed = capsys.readouterr().out
    if autocast_dtype("auto", CPU) is None:  # the command runs fp32 here (bf16 autocast on CPUs with AMX)
        assert printed == expected + "\n", family

    args = ["eval", "--model", str(model_dir), "--adapter", str(run.output), "--probe", str(files["probe"])]
    assert main([*args, "--max-length", "64", "--precision", "fp32", "--device", "cpu", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["kl_to_base"] > 0 and result["probe_ppl_increase"] != 0, result


@pytest.mark.parametrize("family", FAMILIES)
def test_the_row_layout_probe_passes_every_family(family, tuned):
    """The probe that a model with its own code must pass before it trains (train/model_setup.py) passes
    on every architecture transformers has: packed, shared-prefix and pair rows equal each sequence alone."""
    from tunesmith.train.model_setup import row_layout_errors

    assert row_layout_errors(load_model(tuned(family).model_dir, CPU)) == {}


@pytest.mark.parametrize("family", FAMILIES)
def test_a_batch_runs_its_shared_prefix_once_and_generates_what_each_prompt_would_alone(family, tuned, tokenizer):
    """generate_chat's prefix cache (the template's system prompt run once, copied to every row, each row's
    own tokens after it, middle-padded) gives each prompt the greedy tokens of a forward over it alone. A
    model with a sliding window gets left-padded rows instead: its cache keeps only a window's worth of the
    prefix, and transformers' windowed cache does not follow a middle-padded row (measured: 6 of 10
    families generated other tokens)."""
    from tunesmith.generation import prefix_cached_batch
    from tunesmith.models.attention import has_sliding_window

    model = tuned(family).model
    prompts = [PROMPT, "my order never came and nobody answers the phone"]  # past the 16-token window
    rows = [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
        for p in prompts
    ]
    rows = [tokenizer(r, add_special_tokens=False)["input_ids"] for r in rows]
    enc = prefix_cached_batch(model, rows, tokenizer.pad_token_id, CPU)
    assert ("past_key_values" in enc) == (not has_sliding_window(model.config)), family  # windows: left-padded
    expected = [_greedy_without_cache(model, tokenizer, p, NEW_TOKENS) for p in prompts]
    assert generate_chat(model, tokenizer, prompts, NEW_TOKENS, precision="fp32") == expected, family
