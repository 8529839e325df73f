"""`tunesmith plan`: parameter counts of known models, the LoRA fractions people quote, memory ordering,
FLOPs/time/cost arithmetic, data token counts, the CLI's JSON and its errors, and its options: those of the
training command (`--recipe`), so a training config plans as it trains."""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
from pathlib import Path

import pytest

from tests.conftest import write_jsonl
from tests.families.tiny import FAMILIES, tiny_config
from tunesmith.config.load import add_arguments, leaf_fields
from tunesmith.errors import ConfigError, DataError
from tunesmith.planner import (
    GPUS,
    NF4_BITS,
    NOT_NEEDED_TO_PLAN,
    SHAPES,
    count_data_tokens,
    parameter_counts,
    plan,
    resolve_shape,
)
from tunesmith.recipes import RECIPES

GIB = 2**30
ROOT = Path(__file__).resolve().parents[2]

# Parameter totals of the released checkpoints (the sum of their tensors' sizes, the Hub's safetensors total),
# which is what the loaded model counts (`model.num_parameters()`, a tied embedding once).
KNOWN_TOTALS = {
    "smollm2-135m": 134_515_008,  # tied embeddings
    "llama-2-7b": 6_738_415_616,
    "llama-3.1-8b": 8_030_261_248,
    "llama-3.1-70b": 70_553_706_496,
    "mistral-7b": 7_241_732_096,
    "qwen2.5-7b": 7_615_616_512,  # q/k/v biases included
    "qwen2.5-0.5b": 494_032_768,  # tied embeddings, q/k/v biases
    "qwen3-8b": 8_190_735_360,  # head_dim 128 (qd 4096 = d), per-head q/k norms
    # the loaded model's count: its checkpoint also stores the tied embedding as lm_head.weight (751,632,384)
    "qwen3-0.6b": 596_049_920,  # head_dim 128 with d 1024, 16 heads: qd 2048 > d
    "gemma-2-2b": 2_614_341_888,  # head_dim 256 with d 2304, 8 heads; four norms per layer
    "gemma-3-1b": 999_885_952,  # head_dim 256 with d 1152, 4 heads; four norms, per-head q/k norms
    # the language model (Gemma3ForCausalLM of the text config); the checkpoint's 4,300,079,472 adds the
    # SigLIP vision tower and its projector
    "gemma-3-4b": 3_880_263_168,
    "phi-3-mini": 3_821_079_552,  # fused qkv_proj and gate_up_proj: the same weights
    "olmo-2-7b": 7_298_617_344,  # q/k norms over the whole projections (4096 each)
    "granite-3.3-8b": 8_170_864_640,
    "smollm3-3b": 3_075_098_624,
}


def plan_parser() -> argparse.ArgumentParser:
    from tunesmith.cli.plan import register

    parser = argparse.ArgumentParser(prog="tunesmith")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    parser.plan = sub.choices["plan"]
    return parser


def run_cli(argv, capsys) -> str:
    args = plan_parser().parse_args(["plan", *argv])
    assert args.handler(args) == 0
    return capsys.readouterr().out


def run_json(argv, capsys) -> dict:
    return json.loads(run_cli([*argv, "--json"], capsys))


@pytest.mark.parametrize("name", sorted(KNOWN_TOTALS))
def test_builtin_shapes_have_the_published_parameter_counts(name):
    assert set(KNOWN_TOTALS) == set(SHAPES)
    assert parameter_counts(SHAPES[name])["total"] == KNOWN_TOTALS[name]


def test_approximate_sizes_people_quote():
    approx = {
        "llama-2-7b": 6.74e9,
        "llama-3.1-8b": 8.03e9,
        "llama-3.1-70b": 70.6e9,
        "mistral-7b": 7.24e9,
        "qwen2.5-7b": 7.6e9,
        "qwen3-8b": 8.19e9,
        "gemma-3-1b": 1.0e9,
        "phi-3-mini": 3.82e9,
        "olmo-2-7b": 7.30e9,
        "smollm3-3b": 3.08e9,
    }
    for name, n in approx.items():
        assert plan(name, "full")["total_params"] == pytest.approx(n, rel=0.005)
    qwen = parameter_counts(SHAPES["qwen2.5-7b"])
    assert qwen["biases"] == 28 * (3584 + 2 * 512)


def test_alias_and_local_config_give_the_builtin_shape(tmp_path):
    assert resolve_shape("smollm2-135m-instruct")[0] == SHAPES["smollm2-135m"]
    config = {
        "model_type": "llama",
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "vocab_size": 49152,
        "tie_word_embeddings": True,
        "head_dim": 64,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    for model in (str(tmp_path), str(tmp_path / "config.json")):
        assert plan(model, "full")["total_params"] == KNOWN_TOTALS["smollm2-135m"]
    qwen = {
        "model_type": "qwen2",
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "vocab_size": 152064,
        "tie_word_embeddings": False,
    }
    (tmp_path / "config.json").write_text(json.dumps(qwen))
    assert plan(str(tmp_path), "full")["total_params"] == KNOWN_TOTALS["qwen2.5-7b"]  # biases from model_type


def test_every_family_tunesmith_trains_has_a_builtin_shape():
    assert {shape.family for shape in SHAPES.values()} == set(FAMILIES)


@pytest.mark.parametrize("family", FAMILIES)
def test_each_familys_config_counts_like_its_model(family, tmp_path):
    """A local config.json of each family (its tiny test model's) plans the parameters transformers builds and
    the adapter PEFT adds: head_dim, q/k norms, Gemma's four norms, Phi-3's fused linears."""
    import torch
    from transformers import AutoModelForCausalLM

    from tunesmith.adapters.lora import apply_lora
    from tunesmith.adapters.lora import parameter_counts as model_counts
    from tunesmith.config.schema import LoraConfig

    config = tiny_config(family, vocab_size=512, pad_id=0)
    config.head_dim = 24  # not hidden / heads (64 / 4)
    config.save_pretrained(tmp_path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert plan(str(tmp_path), "full")["total_params"] == model_counts(model)[1]
    shape = resolve_shape(str(tmp_path))[0]
    assert shape.family == family and shape.hd == 24
    with torch.device("meta"):
        peft_model = apply_lora(AutoModelForCausalLM.from_config(config), LoraConfig(r=8, target="all-linear"))
    p = plan(str(tmp_path), "lora", lora_r=8)
    assert (p["trainable_params"], p["total_params"]) == model_counts(peft_model)
    if family == "phi3":
        assert p["lora"]["targets"] == ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
        with pytest.raises(
            ConfigError, match="no layer named q_proj, v_proj in a phi3 block; its linear layers are qkv_proj"
        ):
            plan(str(tmp_path), "lora", target="q_proj,v_proj")


def test_models_list_shows_each_family_with_its_shapes(capsys):
    from tunesmith.cli.models import list_models

    assert list_models(None) == 0
    aliases, families = capsys.readouterr().out.split("\n\n")
    rows = {line.split()[0]: line.split() for line in families.splitlines()[2:]}  # after the title and header
    assert list(rows) == list(FAMILIES)
    assert rows["qwen3"][1:] == ["yes", "qwen3-0.6b", "(596M),", "qwen3-8b", "(8.19B)"]
    assert (
        rows["olmo2"][1] == "no" and rows["gemma3"][1] == "yes"
    )  # GGUF export: tests/unit/test_export_gguf_families.py


def test_counts_match_a_real_model(tiny_dir):
    """The planner's counts equal what tunesmith's own training code counts on a loaded model."""
    import torch

    from tunesmith.adapters.lora import apply_lora
    from tunesmith.adapters.lora import parameter_counts as model_counts
    from tunesmith.config.schema import LoraConfig
    from tunesmith.models.load import load_model

    model = load_model(tiny_dir, torch.device("cpu"))
    assert plan(str(tiny_dir), "full")["total_params"] == model_counts(model)[1]
    for target in ("q_proj,v_proj", "all-linear"):
        peft_model = apply_lora(load_model(tiny_dir, torch.device("cpu")), LoraConfig(r=8, target=target))
        trainable, total = model_counts(peft_model)
        p = plan(str(tiny_dir), "lora", lora_r=8, target=target)
        assert (p["trainable_params"], p["total_params"]) == (trainable, total)


def test_lora_fractions_of_llama_2_7b():
    qv = plan("llama-2-7b", "lora", lora_r=16, target="q_proj,v_proj")
    assert qv["trainable_params"] == 32 * 2 * 16 * (4096 + 4096)
    assert 0.11 <= qv["trainable_percent"] <= 0.13
    all_linear = plan("llama-2-7b", "qlora", lora_r=16, target="all-linear")
    assert 0.5 <= all_linear["trainable_percent"] <= 0.7


@pytest.mark.parametrize("name", ["llama-2-7b", "llama-3.1-70b"])
def test_memory_full_above_lora_above_qlora(name):
    totals = {}
    for method in ("full", "lora", "qlora"):
        p = plan(name, method, seq_len=2048, batch_size=1, micro_batch_size=1, gradient_checkpointing=True)
        totals[method] = p["memory_bytes"]["total"]
        assert p["memory_bytes"]["total"] > 0
    assert totals["full"] > totals["lora"] > totals["qlora"]
    n = parameter_counts(SHAPES[name])["total"]
    assert totals["full"] > 16 * n  # fp32 weights + grads + two AdamW moments
    assert totals["qlora"] < totals["lora"] / 3


def test_memory_parts():
    counts = parameter_counts(SHAPES["llama-2-7b"], "qlora", 16)
    p = plan("llama-2-7b", "qlora", seq_len=2048, micro_batch_size=1, batch_size=1)
    m = p["memory_bytes"]
    rest = counts["total"] - counts["block_linear"]  # embedding, LM head, norms, adapter: fp32
    assert NF4_BITS == pytest.approx(4.127, abs=1e-3)
    assert m["weights"] == pytest.approx(counts["block_linear"] * NF4_BITS / 8 + 4 * rest, abs=1)
    assert m["gradients"] == 4 * counts["lora"] and m["optimizer"] == 8 * counts["lora"]
    full = plan("llama-2-7b", "full")["memory_bytes"]
    assert full["weights"] == 4 * KNOWN_TOTALS["llama-2-7b"]
    assert full["optimizer"] == 2 * full["gradients"] == 8 * KNOWN_TOTALS["llama-2-7b"]


@pytest.mark.parametrize("method", ["full", "lora"])
def test_gradients_meet_activations_only_under_accumulation(method):
    """One micro-batch per step: backward frees a layer's activations as it writes the layer's gradients,
    so only the LM head's gradient (written first) sits beside all of them. Accumulating: the earlier
    micro-batches' gradients are held through the next forward."""
    args = dict(seq_len=2048, gpus=2, gpu="h100")
    one = plan("llama-2-7b", method, batch_size=4, micro_batch_size=2, **args)  # one micro-batch per GPU
    acc = plan("llama-2-7b", method, batch_size=8, micro_batch_size=2, **args)
    m, a = one["memory_bytes"], acc["memory_bytes"]
    assert {k: v for k, v in m.items() if k != "total"} == {k: v for k, v in a.items() if k != "total"}
    forward_backward = m["activations"] + m["weight_copies"] + m["logits"]
    assert a["total"] == a["weights"] + a["gradients"] + a["optimizer"] + max(forward_backward, a["step_temporaries"])
    head_gradient = 4 * 32000 * 4096 if method == "full" else 0
    assert m["total"] == m["weights"] + m["optimizer"] + max(
        forward_backward + head_gradient, m["gradients"] + m["step_temporaries"]
    )
    assert m["total"] < a["total"]


def test_checkpointing_reduces_activations():
    for method in ("full", "lora", "qlora"):
        args = dict(seq_len=2048, batch_size=4, micro_batch_size=4)
        plain = plan("llama-3.1-8b", method, **args)
        ckpt = plan("llama-3.1-8b", method, gradient_checkpointing=True, **args)
        assert ckpt["memory_bytes"]["activations"] < plain["memory_bytes"]["activations"] / 4
        assert plain["activations_bytes"] == ckpt["activations_bytes"]  # both reported either way
        # without checkpointing only full fine-tuning recomputes: its head's logits, in backward
        head = 2 * plain["trained_fraction"] * 128256 * 4096 if method == "full" else 0
        assert ckpt["flops_per_token"]["recompute"] > plain["flops_per_token"]["recompute"] == int(head)
    longer = plan("llama-3.1-8b", "lora", seq_len=4096, batch_size=4, micro_batch_size=4)
    assert longer["memory_bytes"]["activations"] > 2 * plain["memory_bytes"]["activations"] - 1


def test_planner_chunk_is_the_loss_chunk():
    from tunesmith.losses.sft import CHUNK_ROWS
    from tunesmith.planner import CHUNK_ROWS as PLANNED

    assert PLANNED == CHUNK_ROWS


def test_logits_only_at_trained_positions():
    p = plan("llama-3.1-8b", "lora", seq_len=2048, batch_size=2, micro_batch_size=2, trained_fraction=0.25)
    lg = p["logits_bytes"]
    assert lg["naive_full"] == 2 * 2048 * 128256 * 4
    trained = 2 * 2048 // 4
    assert lg["tunesmith_chunked"] == trained * 4096 * 4  # E = softmax·W per trained row, no vocabulary-wide row
    assert lg["chunk_in_flight"] == 512 * 128256 * 6  # one 512-row chunk: bf16 logits + their fp32 copy
    assert p["memory_bytes"]["logits"] == lg["tunesmith_chunked"] + lg["chunk_in_flight"]


def test_flops_time_and_cost():
    counts = parameter_counts(SHAPES["llama-2-7b"], "lora", 16, ["q_proj", "v_proj"])
    full = plan("llama-2-7b", "full", seq_len=2048, tokens=10**8, gpus=8, price_per_hour=3.0)
    lora = plan("llama-2-7b", "lora", target="q_proj,v_proj", seq_len=2048, tokens=10**8, gpus=8, price_per_hour=3.0)
    attention = 6 * 32 * 2048 * 4096
    n_matmul = counts["block_linear"] + counts["head_matmul"]
    assert full["flops_per_token"]["model"] == 6 * n_matmul + attention
    assert lora["flops_per_token"]["model"] == 4 * n_matmul + 6 * counts["lora"] + attention
    assert full["flops"] == 10**8 * full["flops_per_token"]["executed"]
    assert full["hours"] == pytest.approx(full["flops"] / (989.4e12 * 0.4 * 8) / 3600)
    assert full["cost_usd"] == pytest.approx(full["hours"] * 8 * 3.0)
    assert lora["cost_usd"] < full["cost_usd"]
    assert full["steps"] == -(-(10**8) // (8 * 2048))
    cpu = plan("smollm2-135m", "lora", gpu="cpu", tokens=1000)
    assert cpu["mfu"] == 1.0 and cpu["precision"] == "fp32" and cpu["gpu"]["peak_tflops"] == GPUS["cpu"].peak_tflops
    assert plan("smollm2-135m", "lora", gpu="cpu", peak_tflops=2.0, tokens=1000)["mfu"] == 0.4
    assert plan("smollm2-135m", "lora")["hours"] is None  # no tokens: memory only


def test_fits_flag():
    big = plan("llama-3.1-70b", "full", seq_len=2048, micro_batch_size=1, batch_size=1, gpu="h200")
    assert big["fits"] is False and "does not fit" in big["warnings"][0]
    small = plan("smollm2-135m", "lora", gpu="h100")
    assert small["fits"] is True and not small["warnings"]
    assert (
        plan(
            "llama-3.1-70b",
            "qlora",
            seq_len=2048,
            micro_batch_size=1,
            batch_size=1,
            gradient_checkpointing=True,
            gpu="h100",
        )["fits"]
        is True
    )


def test_data_tokens(tmp_path):
    rows = [
        {"prompt": "a" * 40, "completion": "b" * 20},
        {
            "messages": [
                {"role": "user", "content": "c" * 8},
                {"role": "assistant", "content": "d" * 8, "weight": 0},
                {"role": "user", "content": "e" * 4},
                {"role": "assistant", "content": "f" * 12},
            ]
        },
    ]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    info = count_data_tokens(path, seq_len=512)
    assert info["tokens"] == (10 + 4) + (5 + 4) + (2 + 4) + (2 + 4) + (1 + 4) + (3 + 4)
    assert info["trained_tokens"] == (5 + 1) + (3 + 1)
    p = plan("smollm2-135m", "lora", data=str(path), epochs=3)
    assert p["tokens"] == 3 * info["tokens"]
    assert p["trained_fraction"] == pytest.approx(info["trained_tokens"] / info["tokens"])
    assert count_data_tokens(path, seq_len=8)["tokens"] == 16  # each row cut at --seq-len
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "x"}])
    with pytest.raises(DataError):
        plan("smollm2-135m", "lora", data=str(bad))


def test_data_tokens_exact_with_a_local_tokenizer(tiny_dir, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    for f in tiny_dir.iterdir():
        if not f.name.endswith(".safetensors"):
            shutil.copy(f, model / f.name)
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "Hello there", "completion": "General Kenobi"}])
    info = count_data_tokens(path, 512, model)
    assert info["method"] == "tokenizer" and 0 < info["trained_tokens"] < info["tokens"]


def test_activation_formula_matches_what_autograd_saves(tmp_path):
    """Bytes autograd keeps for backward in a small llama (k/v repeated: a padded mask, as in packed rows)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from tunesmith.adapters.lora import apply_lora
    from tunesmith.config.schema import LoraConfig
    from tunesmith.losses.sft import token_nll_sum
    from tunesmith.models.forward import final_hidden

    shape = dict(
        hidden_size=256,
        intermediate_size=704,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=512,
        tie_word_embeddings=True,
    )
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", **shape}))
    b, s = 2, 128
    for method, precision in (("full", "fp32"), ("lora", "bf16")):
        torch.manual_seed(0)
        config = LlamaConfig(**shape)
        config._attn_implementation = "sdpa"
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model = apply_lora(model, LoraConfig(r=8)) if method == "lora" else model.requires_grad_(True)
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        ids = torch.randint(0, 512, (b, s))
        mask = torch.ones(b, s, dtype=torch.long)
        mask[1, -10:] = 0
        seen: dict[int, int] = {}

        def pack(t, params=params, seen=seen):
            st = t.untyped_storage()
            if st.data_ptr() not in params:
                seen[st.data_ptr()] = max(seen.get(st.data_ptr(), 0), st.nbytes())
            return t

        with (
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"),
        ):
            batch = argparse.Namespace(input_ids=ids, attention_mask=mask, position_ids=None)
            hidden, head = final_hidden(model, batch)
            token_nll_sum(hidden, ids, head.weight)
        p = plan(str(tmp_path), method, lora_r=8, seq_len=s, batch_size=b, precision=precision)
        m = p["memory_bytes"]
        predicted = m["activations"] + m["weight_copies"] + m["logits"] - p["logits_bytes"]["chunk_in_flight"]
        assert sum(seen.values()) == pytest.approx(predicted, rel=0.1), (method, precision)


def test_cli_json_and_table(capsys):
    out = run_cli(
        [
            "--model",
            "llama-2-7b",
            "--method",
            "lora",
            "--target",
            "q_proj,v_proj",
            "--max-length",
            "2048",
            "--micro-batch-size",
            "1",
            "--tokens",
            "100000000",
            "--gpus",
            "8",
            "--price-per-hour",
            "3",
            "--gradient-checkpointing",
            "--json",
        ],
        capsys,
    )
    p = json.loads(out)
    for key in (
        "total_params",
        "trainable_params",
        "trainable_percent",
        "memory_bytes",
        "flops",
        "hours",
        "cost_usd",
        "fits",
    ):
        assert key in p
    for part in ("weights", "gradients", "optimizer", "activations", "logits", "total"):
        assert p["memory_bytes"][part] >= 0
    assert p["gradient_checkpointing"] is True and p["gpu"]["count"] == 8
    table = run_cli(["--model", "smollm2-135m-instruct", "--method", "qlora", "--gpu", "4090"], capsys)
    assert "trainable" in table and "total (peak)" in table and "--tokens" in table


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(model="gpt-17"), "llama-2-7b"),
        (dict(method="adapter"), "--method"),
        (dict(target="q_proj,wrong"), "wrong"),
        (dict(target=" , "), "--target"),
        (dict(batch_size=8, micro_batch_size=3), "--micro-batch-size"),
        (dict(tokens=10, data="x.jsonl"), "--tokens"),
        (dict(epochs=2), "--epochs"),
        (dict(mfu=0.0), "--mfu"),
        (dict(gpu="tpu"), "--gpu"),
        (dict(seq_len=4), "--max-length"),
        (dict(tokens=10, max_steps=3), "--max-steps"),
        (dict(lora_r=0), "--lora-r"),
        (dict(trained_fraction=1.5), "--trained-fraction"),
    ],
)
def test_bad_input_is_a_config_error(kwargs, message):
    args = dict(model="llama-2-7b", method="lora") | kwargs
    with pytest.raises(ConfigError, match=message.replace("-", r"\-").replace(".", r"\.")) as e:
        plan(**args)
    if "model" in kwargs:
        assert all(name in str(e.value) for name in SHAPES)


def test_full_fine_tuning_on_several_gpus_is_sharded():
    """FSDP2: weights, gradients and optimizer state split N ways, plus the root unit and two layers gathered."""
    one, four = (plan("llama-2-7b", "full", gpus=n)["memory_bytes"] for n in (1, 4))
    assert four["optimizer"] == one["optimizer"] // 4 and four["gradients"] == one["gradients"] // 4
    gathered = four["weights"] - one["weights"] // 4  # root unit (embedding + untied LM head) + two layers, fp32
    assert 4 * (2 * 32000 * 4096) < gathered < 4 * (2 * 32000 * 4096 + 3 * 202_383_360)
    lora_one, lora_four = (plan("llama-2-7b", "lora", gpus=n)["memory_bytes"] for n in (1, 4))
    assert lora_four["weights"] == lora_one["weights"]  # replicated


def test_max_steps_sets_the_run_length_as_in_training(tmp_path):
    """--max-steps overrides --epochs: that many steps of the data's mean example, or of full rows without data."""
    full_rows = plan("smollm2-135m", "lora", seq_len=256, batch_size=8, max_steps=5)
    assert (full_rows["steps"], full_rows["tokens"]) == (5, 5 * 8 * 256)
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a" * 40, "completion": "b" * 20}] * 4)
    per_row = count_data_tokens(path, seq_len=256)["tokens"] / 4
    by_data = plan("smollm2-135m", "lora", seq_len=256, batch_size=8, data=str(path), epochs=3)
    assert (by_data["steps"], by_data["tokens"]) == (3, 3 * 4 * per_row)  # 4 rows a step of 8: one step an epoch
    capped = plan("smollm2-135m", "lora", seq_len=256, batch_size=8, data=str(path), epochs=3, max_steps=2)
    assert (capped["steps"], capped["tokens"], capped["data"]["epochs"]) == (2, 2 * 8 * per_row, 4)


def test_cli_takes_the_training_flags(capsys):
    """The example from the issue: training's flag names (--max-length, not --seq-len), plan's defaults."""
    p = run_json(
        [
            "--model",
            "smollm2-135m-instruct",
            "--method",
            "qlora",
            "--max-length",
            "1024",
            "--batch-size",
            "16",
            "--micro-batch-size",
            "4",
            "--gradient-checkpointing",
        ],
        capsys,
    )
    shape = (p["recipe"], p["method"], p["seq_len"], p["batch_size"], p["micro_batch_size"])
    assert shape == ("sft", "qlora", 1024, 16, 4)
    assert p["gradient_checkpointing"] is True and p["lora"]["r"] == 16 and p["gpu"]["key"] == "h100"
    with pytest.raises(SystemExit):
        plan_parser().parse_args(["plan", "--seq-len", "1024"])


def test_cli_plans_a_shipped_training_config_as_it_trains(capsys):
    """`tunesmith plan --config FILE` answers for the run `tunesmith sft --config FILE` starts: its shape, its
    data's tokens, its epochs; flags and --set override the file exactly as in training."""
    config = ROOT / "configs" / "sft" / "smollm2-135m-lora.yaml"
    shipped = json.loads(run_cli(["--config", str(config), "--json"], capsys))
    data = str(ROOT / "src" / "tunesmith" / "demo" / "data" / "support_train.jsonl")
    expected = plan(
        "smollm2-135m-instruct", "lora", lora_r=16, seq_len=256, batch_size=8, micro_batch_size=8, data=data, epochs=1
    )
    for key in (
        "seq_len",
        "batch_size",
        "micro_batch_size",
        "tokens",
        "steps",
        "trained_fraction",
        "memory_bytes",
        "flops",
        "total_params",
        "trainable_params",
    ):
        assert shipped[key] == expected[key], key
    assert shipped["data"]["rows"] == expected["data"]["rows"] > 0
    changed = run_json(
        ["--config", str(config), "--lora-r", "8", "--set", "data.max_length=128", "--set", "train.epochs=2"], capsys
    )
    assert (changed["lora"]["r"], changed["seq_len"], changed["data"]["epochs"]) == (8, 128, 2)
    assert changed["tokens"] < 2 * shipped["tokens"]  # rows cut at 128 tokens
    on_cpu = run_json(["--config", str(config), "--device", "cpu"], capsys)
    assert on_cpu["gpu"]["key"] == "cpu" and on_cpu["precision"] == "fp32"


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_each_recipe_plans_with_its_training_flags_and_without_its_inputs(name, capsys):
    """`--recipe NAME` adds exactly that recipe's config flags (none clashing with the planner's own), and the
    run plans without what only training needs (--out, --data, --prompts, a reward)."""
    recipe = RECIPES[name]
    parser = plan_parser()
    parser.parse_args(["plan", "--recipe", name])
    plan_options = {s for a in parser.plan._actions for s in a.option_strings}
    training = argparse.ArgumentParser(add_help=False)
    add_arguments(training, recipe.config)
    assert {s for a in training._actions for s in a.option_strings} <= plan_options
    keys = {leaf.key for leaf in leaf_fields(recipe.config)}
    assert {"out", "data.train"} <= keys and set(NOT_NEEDED_TO_PLAN) & keys
    method = "full" if name in ("sft", "dpo", "reward") else "lora"
    p = run_json(["--recipe", name, "--method", method, "--max-steps", "2"], capsys)
    assert p["recipe"] == name and p["steps"] == 2 and p["tokens"] > 0


def test_cli_checks_the_config_as_training_does(capsys):
    with pytest.raises(ConfigError, match="train.micro_batch_size"):
        run_cli(["--batch-size", "8", "--micro-batch-size", "3"], capsys)
    with pytest.raises(ConfigError, match="method full"):
        run_cli(["--recipe", "ppo", "--method", "full"], capsys)
    dpo = run_json(["--recipe", "dpo", "--batch-size", "4", "--micro-batch-size", "2", "--max-length", "300"], capsys)
    assert (dpo["batch_size"], dpo["micro_batch_size"], dpo["seq_len"]) == (8, 4, 300)  # chosen + rejected per pair
    assert any("reference" in w for w in dpo["warnings"])
    grpo = run_json(
        ["--recipe", "grpo", "--group-size", "8", "--max-prompt-length", "100", "--max-new-tokens", "28"], capsys
    )
    assert (grpo["batch_size"], grpo["seq_len"]) == (8 * 8, 128)
    risky = run_json(["--lr", "0.01"], capsys)
    assert any("learning rate" in w for w in risky["warnings"])


def test_readme_plan_commands_parse():
    """Every `tunesmith plan` command in README.md uses flags the command has."""
    readme = (ROOT / "README.md").read_text()
    commands = [shlex.split(line)[2:] for line in re.findall(r"^tunesmith plan .*$", readme, re.M)]
    assert commands
    for argv in commands:
        plan_parser().parse_args(["plan", *argv])


def test_the_python_api_plans_what_the_command_plans(tmp_path, capsys):
    """`tunesmith.plan(recipe, **options)` takes the recipe function's keyword arguments and answers exactly as
    `tunesmith plan --recipe ... --json` does for the same flags; a bad argument raises the command's error."""
    import tunesmith

    config = tmp_path / "run.yaml"
    config.write_text("model: llama-2-7b\nmethod: qlora\nlora:\n  r: 32\n")
    cli = run_json(
        ["--recipe", "dpo", "--config", str(config), "--max-length", "1024", "--max-steps", "50", "--gpu", "a100-80g"],
        capsys,
    )
    api = tunesmith.plan("dpo", config=str(config), max_length=1024, max_steps=50, gpu="a100-80g")
    assert api == cli
    assert (api["method"], api["lora"]["r"], api["seq_len"], api["steps"]) == ("qlora", 32, 1024, 50)
    with pytest.raises(ConfigError, match="lora_rank.*lora_r"):
        tunesmith.plan("sft", model="llama-2-7b", lora_rank=8)
    with pytest.raises(ConfigError, match="kto"):
        tunesmith.plan("ktoo")
    with pytest.raises(ConfigError, match="method full"):
        tunesmith.plan("ppo", method="full")
