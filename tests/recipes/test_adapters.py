"""Adapter lifecycle on the tiny model: merge (LoRA and QLoRA), base integrity, info, combine, --use, chat."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.conftest import chat_rows, write_jsonl
from tunesmith.cli import main
from tunesmith.config.schema import SFTConfig
from tunesmith.generation import chat_loop, end_of_turn_ids, stream_reply
from tunesmith.models.inference import load_for_inference
from tunesmith.recipes.sft import run_sft

IDS = torch.tensor([[1, 17, 23, 99, 140, 7, 300, 12]])


def _train(tmp_path, name, method="lora", seed=0):
    cfg = SFTConfig(model="tiny-random-llama", method=method, out=str(tmp_path / name))
    cfg.data.train = str(write_jsonl(tmp_path / f"{name}.jsonl", chat_rows(16, seed=seed)))
    cfg.data.max_length, cfg.train.precision, cfg.train.save_every = 64, "fp32", 0
    cfg.train.max_steps, cfg.train.lr, cfg.train.batch_size, cfg.train.seed = 3, 2e-2, 8, seed
    cfg.validate()
    return run_sft(cfg, say=lambda s: None, progress=False)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("lora"), "support")


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits.float()


def test_merge_equals_base_plus_adapter(tmp_path, lora_run, capsys):
    out = tmp_path / "merged"
    assert main(["merge", "--model", "tiny-random-llama", "--adapter", str(lora_run.output), "--out", str(out)]) == 0
    assert "base weights: original" in capsys.readouterr().out
    merged = AutoModelForCausalLM.from_pretrained(out)
    peft_model, tokenizer = load_for_inference("tiny-random-llama", [str(lora_run.output)], "cpu")
    assert (_logits(merged) - _logits(peft_model)).abs().max() < 1e-4
    assert (out / "tokenizer_config.json").is_file() and list(out.glob("*.safetensors"))
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(out).chat_template == tokenizer.chat_template
    assert main(["merge", "--model", "tiny-random-llama", "--adapter", str(lora_run.output), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_qlora_merges_into_the_dequantized_nf4_weights(tmp_path, capsys):
    """The QLoRA model's logits are matched by the merge into dequantize(NF4(W)), not into W."""
    result = _train(tmp_path, "q", method="qlora")
    trained = _logits(result.model)  # the QLoRA model itself: adapter over the NF4 base
    out = tmp_path / "merged"
    assert main(["merge", "--model", "tiny-random-llama", "--adapter", str(result.output), "--out", str(out)]) == 0
    assert "dequantized NF4" in capsys.readouterr().out
    nf4_merge = _logits(AutoModelForCausalLM.from_pretrained(out))
    assert (
        main(
            [
                "merge",
                "--model",
                "tiny-random-llama",
                "--adapter",
                str(result.output),
                "--out",
                str(tmp_path / "orig"),
                "--base-weights",
                "original",
            ]
        )
        == 0
    )
    original_merge = _logits(AutoModelForCausalLM.from_pretrained(tmp_path / "orig"))
    near, far = (nf4_merge - trained).abs().max(), (original_merge - trained).abs().max()
    assert near < 1e-3, near
    assert far > 10 * near, (far, near)


def test_every_run_records_the_base_checksum_and_verify_confirms(tmp_path, lora_run, capsys):
    run = json.loads((lora_run.run_dir / "run.json").read_text())
    assert run["base_checksum"]["untouched"] is True and run["base_checksum"]["start"] == run["base_checksum"]["end"]
    assert main(["verify", "--run", str(lora_run.run_dir)]) == 0
    assert "base untouched" in capsys.readouterr().out
    # a run whose recorded base differs: verify says so, exit code 1
    record = json.loads((lora_run.run_dir / "base_checksum.json").read_text())
    fake = tmp_path / "run"
    fake.mkdir()
    name = next(iter(record["start"]["files"]))
    record["start"]["files"][name] = "0" * 64
    record.pop("end")
    (fake / "base_checksum.json").write_text(json.dumps(record))
    assert main(["verify", "--run", str(fake)]) == 1
    assert "differs" in capsys.readouterr().err
    assert main(["verify", "--run", str(tmp_path / "nothing")]) == 2


def test_adapters_info(lora_run, capsys):
    assert main(["adapters", "info", str(lora_run.output), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["rank"] == 16 and info["alpha"] == 32 and info["method"] == "lora" and info["recipe"] == "sft"
    assert info["trainable_params"] > 0 and info["base"] and info["data"]["train"]["sha256"]
    assert "loss" in info["metrics"]["final"]


def test_combine_is_the_weighted_sum_of_deltas(tmp_path, tiny_dir, lora_run, capsys):
    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    same = ["adapters", "combine", "--model", "tiny-random-llama", "--adapter", str(lora_run.output)]
    assert main([*same, "--weights", "1", "--out", str(tmp_path / "one")]) == 0
    one, _ = load_for_inference("tiny-random-llama", [str(tmp_path / "one")], "cpu")
    alone, _ = load_for_inference("tiny-random-llama", [str(lora_run.output)], "cpu")
    assert (_logits(one) - _logits(alone)).abs().max() < 1e-4
    # the adapter minus itself: the base again
    assert main([*same, "--adapter", str(lora_run.output), "--weights", "1,-1", "--out", str(tmp_path / "zero")]) == 0
    zero, _ = load_for_inference("tiny-random-llama", [str(tmp_path / "zero")], "cpu")
    assert (_logits(zero) - _logits(base)).abs().max() < 1e-4
    assert main([*same, "--weights", "1,2", "--out", str(tmp_path / "bad")]) == 2


def test_peft_trained_adapter_loads_in_tunesmith(tmp_path, tiny_dir, capsys):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_dir), LoraConfig(r=4, target_modules=["q_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    model.save_pretrained(tmp_path / "peft_adapter")
    expected = _logits(model)
    ours, _ = load_for_inference("tiny-random-llama", [str(tmp_path / "peft_adapter")], "cpu")
    assert (_logits(ours) - expected).abs().max() < 1e-5
    assert main(["adapters", "info", str(tmp_path / "peft_adapter")]) == 0
    assert "q_proj" in capsys.readouterr().out


def test_generate_picks_an_adapter_per_prompt(tmp_path, lora_run, capsys):
    other = _train(tmp_path, "other", seed=1)
    args = [
        "generate",
        "--model",
        "tiny-random-llama",
        "--adapter",
        str(lora_run.output),
        "--adapter",
        str(other.output),
        "--max-new-tokens",
        "5",
    ]
    assert (
        main(
            [
                *args,
                "--prompt",
                "hi",
                "--prompt",
                "hi",
                "--prompt",
                "hi",
                "--use",
                "support",
                "--use",
                "other",
                "--use",
                "base",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "(support)" in printed and "(other)" in printed and "(base)" in printed
    assert main([*args, "--prompt", "hi", "--use", "nope"]) == 2
    assert "no such adapter" in capsys.readouterr().err


def test_end_of_turn_comes_from_the_template(tokenizer):
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert end_of_turn_ids(tokenizer)[0] == im_end
    wrong = copy.deepcopy(tokenizer)
    wrong.eos_token = "<|endoftext|>"  # a tokenizer whose eos is not what ends a turn
    assert end_of_turn_ids(wrong)[0] == im_end


def test_chat_stops_at_end_of_turn_and_keeps_history(tiny_dir, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[im_end] = 1e4  # the end-of-turn token always wins
    model.lm_head = head
    wrong = copy.deepcopy(tokenizer)
    wrong.eos_token = "<|endoftext|>"
    reply, generated = stream_reply(
        model, wrong, [{"role": "user", "content": "hi"}], lambda t: None, max_new_tokens=20
    )
    assert generated == 1 and reply == ""  # stopped at <|im_end|>, not after 20 tokens
    lines = iter(["hello", "/reset", "again", "/exit", "never read"])
    shown = []
    history = chat_loop(model, tokenizer, lambda: next(lines), shown.append, system="be brief", max_new_tokens=5)
    assert [m["role"] for m in history] == ["system", "user", "assistant"] and history[1]["content"] == "again"
    assert "(history cleared)\n" in shown


def test_chat_command_reads_stdin(monkeypatch, capsys):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n/exit\n"))
    assert main(["chat", "--model", "tiny-random-llama", "--max-new-tokens", "4", "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    assert "you> hello" in out and "bot> " in out


def test_export_with_an_adapter_to_gguf_loads_back(tmp_path, lora_run, capsys):
    out = tmp_path / "support.gguf"
    args = ["export", "--model", "tiny-random-llama", "--adapter", str(lora_run.output), "--format", "gguf"]
    assert main([*args, "--dtype", "f32", "--out", str(out)]) == 0
    assert "tensors" in capsys.readouterr().out
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=out.name)
    peft_model, _ = load_for_inference("tiny-random-llama", [str(lora_run.output)], "cpu")
    assert (_logits(loaded) - _logits(peft_model)).abs().max() < 1e-4
    assert main([*args, "--out", str(out)]) == 2  # exists: refused without --overwrite
    assert main([*args, "--out", str(tmp_path / "x.bin")]) == 2
    assert ".gguf" in capsys.readouterr().err
