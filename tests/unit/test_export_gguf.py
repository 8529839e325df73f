"""GGUF export: the file transformers loads back is the same model, tokenizer and chat template.

Loading a GGUF with a 49k-token vocabulary costs seconds (gguf's reader parses every token and merge),
so each file is parsed as few times as possible: one config read shared by both loads, one tokenizer.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from tunesmith.errors import ConfigError, ModelError
from tunesmith.export.gguf import export_gguf

# f16 keeps 11 significant bits: each weight moves by at most 2**-11 (~4.9e-4) of itself. With the
# tiny model's logits of magnitude ~1 that gives differences of a few 1e-4 (measured 3.8e-4); 2e-3
# leaves margin. The exact check is against the source with its weights rounded to f16 the same way.
F16_TOL = 2e-3
F32_TOL = 1e-4


def _sequences(tokenizer) -> list[torch.Tensor]:
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Name 3 colours, please."}, {"role": "assistant", "content": "Red, blue, green."}],
        tokenize=False,
    )
    return [
        torch.tensor([tokenizer(chat)["input_ids"]]),
        torch.tensor([[tokenizer.bos_token_id, 28120, 216, 33, 34, 35, 500, 4000, len(tokenizer) - 1]]),
        torch.tensor([[7, 7, 7, 49000]]),
    ]


@pytest.fixture(scope="module")
def exported(tiny_dir, tmp_path_factory):
    from tunesmith.models.load import quiet_libraries

    quiet_libraries()
    out = tmp_path_factory.mktemp("gguf_export")
    info = {dtype: export_gguf(tiny_dir, out / f"tiny-{dtype}.gguf", dtype=dtype) for dtype in ("f32", "f16")}
    return out, info


@pytest.fixture(scope="module")
def loaded(tiny_dir, exported):
    from transformers import AutoConfig, AutoModelForCausalLM

    out, _ = exported
    config = AutoConfig.from_pretrained(out, gguf_file="tiny-f32.gguf")  # identical for both files
    models = {
        dtype: AutoModelForCausalLM.from_pretrained(
            out, gguf_file=f"tiny-{dtype}.gguf", config=config, dtype=torch.float32
        ).eval()
        for dtype in ("f32", "f16")
    }
    source = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    return source, models


def test_export_reports_and_leaves_only_the_file(exported):
    out, info = exported
    assert sorted(p.name for p in out.iterdir()) == ["tiny-f16.gguf", "tiny-f32.gguf"]  # no temp file left
    for dtype, result in info.items():
        path = out / f"tiny-{dtype}.gguf"
        assert result["dtype"] == dtype and result["bytes"] == path.stat().st_size
        assert result["tensors"] == 2 + 2 * 9  # token_embd, output_norm; 9 per block; tied: no `output`
    assert info["f16"]["bytes"] < 0.7 * info["f32"]["bytes"]


def test_metadata_and_tensor_types(exported, tiny_dir):
    # transformers' own header reader: it skips the 49k token strings gguf's GGUFReader would parse
    from gguf import GGMLQuantizationType
    from transformers.integrations.gguf import GgufHeader, read_gguf_metadata

    out, _ = exported
    metadata, names = read_gguf_metadata(str(out / "tiny-f16.gguf"))
    config = json.loads((tiny_dir / "config.json").read_text())
    assert metadata["general.architecture"] == "llama"
    assert metadata["llama.block_count"] == config["num_hidden_layers"]
    assert metadata["llama.attention.head_count_kv"] == config["num_key_value_heads"]
    assert metadata["llama.rope.dimension_count"] == config["head_dim"]
    assert metadata["llama.vocab_size"] == metadata["tokenizer.ggml.tokens"] == config["vocab_size"]
    assert metadata["tokenizer.ggml.model"] == "gpt2"
    assert "output.weight" not in names
    types = GgufHeader.from_file(str(out / "tiny-f16.gguf")).ggml_types
    assert types["blk.0.attn_norm.weight"] == GGMLQuantizationType.F32
    assert types["blk.1.attn_q.weight"] == GGMLQuantizationType.F16


def test_logits_match_the_source(loaded, tokenizer):
    source, models = loaded
    assert models["f32"].config.tie_word_embeddings
    rounded = type(source)(source.config).eval()
    rounded.load_state_dict({k: (v.half().float() if v.ndim >= 2 else v) for k, v in source.state_dict().items()})
    worst = {"f32": 0.0, "f16": 0.0, "f16_vs_rounded": 0.0}
    with torch.no_grad():
        for ids in _sequences(tokenizer):
            ref = source(ids).logits
            worst["f32"] = max(worst["f32"], (models["f32"](ids).logits - ref).abs().max().item())
            f16 = models["f16"](ids).logits
            worst["f16"] = max(worst["f16"], (f16 - ref).abs().max().item())
            worst["f16_vs_rounded"] = max(worst["f16_vs_rounded"], (f16 - rounded(ids).logits).abs().max().item())
    print("max logit differences:", worst)
    assert worst["f32"] <= F32_TOL
    assert worst["f16_vs_rounded"] <= F32_TOL
    assert worst["f16"] <= F16_TOL


def test_tokenizer_and_chat_template_round_trip(exported, tokenizer):
    from transformers import AutoTokenizer

    out, _ = exported
    back = AutoTokenizer.from_pretrained(out, gguf_file="tiny-f32.gguf")
    assert back.chat_template == tokenizer.chat_template
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Héllo wörld ✓ — 12345, tabs\tand\nnewlines?"},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert back.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == text
    ids = tokenizer(text)["input_ids"]
    assert back(text)["input_ids"] == ids
    assert back.decode(ids) == tokenizer.decode(ids) == text
    assert len(back) == len(tokenizer)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        assert getattr(back, name) == getattr(tokenizer, name), name


def _small_byte_level_dir(path, tiny_dir):
    """An untied Llama with head_dim != hidden/heads, one KV head, random norms and a 260-token
    byte-level tokenizer (cheap to parse) whose vocabulary is padded to the model's 264 rows."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    alphabet = sorted(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(alphabet)} | {"Ġt": 256, "he": 257}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("Ġ", "t"), ("h", "e")]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<s>", "</s>"])
    path.mkdir()
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    shutil.copy(tiny_dir / "chat_template.jinja", path / "chat_template.jinja")
    config = LlamaConfig(
        vocab_size=264,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 50000.0},
        tie_word_embeddings=False,
        bos_token_id=258,
        eos_token_id=259,
    )
    torch.manual_seed(1)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(1 + 0.2 * torch.randn_like(p) if p.ndim == 1 else 0.1 * torch.randn_like(p))
    model.save_pretrained(path)
    return model.eval()


def test_untied_model_with_other_head_layout(tmp_path, tiny_dir):
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM

    source = _small_byte_level_dir(tmp_path / "hf", tiny_dir)
    result = export_gguf(tmp_path / "hf", tmp_path / "out" / "small.gguf", dtype="f32")
    assert result["tensors"] == 3 + 2 * 9
    reader = GGUFReader(tmp_path / "out" / "small.gguf")
    assert "output.weight" in {t.name for t in reader.tensors}
    assert reader.fields["tokenizer.ggml.tokens"].contents()[258:] == [
        "<s>",
        "</s>",
        "[PAD260]",
        "[PAD261]",
        "[PAD262]",
        "[PAD263]",
    ]
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "out", gguf_file="small.gguf", dtype=torch.float32).eval()
    assert not back.config.tie_word_embeddings and back.config.head_dim == 16
    assert back.config.rope_parameters["rope_theta"] == 50000.0
    ids = torch.tensor([[258, 5, 256, 257, 40, 100, 259, 263]])
    with torch.no_grad():
        diff = (back(ids).logits - source(ids).logits).abs().max().item()
    assert diff <= F32_TOL


@pytest.mark.parametrize(
    "config",
    [
        {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]},
        {"model_type": "llama", "architectures": ["LlamaForSequenceClassification"]},
        {"model_type": "mistral", "architectures": ["LlamaForCausalLM"]},
    ],
)
def test_unsupported_architectures_are_refused(tmp_path, config):
    # the other supported families: tests/unit/test_export_gguf_families.py
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match=r"does not support .* supported: Llama \(LlamaForCausalLM\)"):
        export_gguf(tmp_path, tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()


def test_bad_inputs(tmp_path, tiny_dir):
    with pytest.raises(ModelError, match="no config.json"):
        export_gguf(tmp_path, tmp_path / "out.gguf")
    with pytest.raises(ConfigError, match="dtype"):
        export_gguf(tiny_dir, tmp_path / "out.gguf", dtype="q4_0")
    scaled = json.loads((tiny_dir / "config.json").read_text())
    scaled["rope_parameters"] = {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,  # Llama 3.1's
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    (tmp_path / "config.json").write_text(json.dumps(scaled))
    with pytest.raises(ModelError, match="rope_type 'llama3'"):
        export_gguf(tmp_path, tmp_path / "out.gguf")
    assert list(tmp_path.iterdir()) == [tmp_path / "config.json"]
