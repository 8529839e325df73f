"""GGUF export of every supported family, each from its tiny random model (tests/families/tiny.py).

Two checks per family. The round trip: transformers' own GGUF loader reads the file back into the same
model (logits within F32_TOL). The layout: the file holds exactly the tensors, shapes and keys that
llama.cpp's loader for the architecture creates (`src/models/<arch>.cpp`), which transformers does not
need to see: the soft-caps and sliding windows it ignores, the absent `output.weight`, Phi-3's fused
projections. Configs llama.cpp would run differently are refused, by the exporter and by the CLI (exit 2).

Loading a GGUF with the 49k-token vocabulary costs seconds, so each family's file is loaded once.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.families.tiny import build_tiny
from tunesmith.errors import ModelError
from tunesmith.export.gguf import _general_name, export_gguf

# Exported in f32: measured 0 for every family (Gemma's norms are stored as 1 + w, and the reader's
# (1 + w) - 1 is exact, so the model's 1 + w' gives back the same float).
F32_TOL = 1e-4

# What each tiny config changes to be both exportable and read back by transformers (transformers 5's
# GGUF reader rebuilds the config from the file's keys, and class defaults for everything else).
ROUND_TRIP = {
    "llama": {},
    # llama.cpp converts Mistral as "llama" and runs Llama, Qwen2/3 and Phi-3 with full attention on every
    # layer: their tiny 16-token windows are refused (test_configs_llama_cpp_would_misread_are_refused).
    "mistral": {"sliding_window": None},
    "qwen2": {"use_sliding_window": False, "layer_types": None},
    "qwen3": {"use_sliding_window": False, "layer_types": None},
    # The reader ignores the soft-cap keys and query_pre_attn_scalar, leaving Gemma2Config's defaults
    # (50, 30, 256); llama.cpp scales queries by 1/sqrt(head_dim = 256). The tiny caps are checked in
    # the file instead (test_gemma2_writes_its_own_soft_caps).
    "gemma2": {"query_pre_attn_scalar": 256, "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0},
    # Gemma 3 has no soft-capping in llama.cpp's sliding-window graph, which fixes five sliding layers to
    # one full one: six layers so both kinds run.
    "gemma3": {
        "query_pre_attn_scalar": 256,
        "final_logit_softcapping": None,
        "layer_types": None,
        "num_hidden_layers": 6,
    },
    "phi3": {"sliding_window": None},
}
FAMILIES = tuple(ROUND_TRIP)


def _config_dir(source, out, overrides: dict):
    """A directory with only `source`'s config.json, changed by `overrides` (derived fields recomputed)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(source)
    config = type(config).from_dict({**config.to_dict(), **overrides})
    config.save_pretrained(out)
    return config


def round_trip_variant(tiny_dir, out, family: str, tokenizer):
    """The ROUND_TRIP variant of a tiny model, saved in `out`, with every 1-D tensor (norms, Qwen2's biases)
    drawn at random, so that a norm offset or a dropped bias shows."""
    from transformers import AutoModelForCausalLM

    config = _config_dir(tiny_dir, out, ROUND_TRIP[family])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.2 * torch.randn_like(p))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny(tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return lambda family: build_tiny(family, tokenizer, root / family)


@pytest.fixture(scope="module")
def exported(tiny, tokenizer, tmp_path_factory):
    """family -> (HF directory, its f32 GGUF file) of the tiny model's round_trip_variant."""
    cache: dict = {}

    def get(family: str):
        if family not in cache:
            out = round_trip_variant(tiny(family), tmp_path_factory.mktemp(f"{family}-variant"), family, tokenizer)
            export_gguf(out, out / "gguf" / f"{family}.gguf", dtype="f32")
            cache[family] = out, out / "gguf" / f"{family}.gguf"
        return cache[family]

    return get


def _sequences(tokenizer) -> list[torch.Tensor]:
    """A chat turn and 40 random ids: both longer than the 16-token sliding windows."""
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Name 3 colours, please."}, {"role": "assistant", "content": "Red, blue, green."}],
        tokenize=False,
    )
    random_ids = torch.randint(0, len(tokenizer), (1, 40), generator=torch.Generator().manual_seed(0))
    return [torch.tensor([tokenizer(chat)["input_ids"]]), random_ids]


@pytest.mark.parametrize("family", FAMILIES)
def test_transformers_reads_back_the_same_model(family, exported, tokenizer):
    from transformers import AutoModelForCausalLM

    hf_dir, path = exported(family)
    source = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    back = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    # transformers reads general.architecture "llama" as Llama: Mistral without a window is the same model
    assert type(back).__name__ == ("LlamaForCausalLM" if family == "mistral" else type(source).__name__)
    assert back.config.tie_word_embeddings
    with torch.no_grad():
        worst = max((back(ids).logits - source(ids).logits).abs().max().item() for ids in _sequences(tokenizer))
    print(f"{family}: max logit difference {worst:.3g}")
    assert worst <= F32_TOL


def _llama_cpp_tensors(family: str, c: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor llama.cpp's loader creates for the tiny variant (tied: no `output`), torch-order shapes."""
    e, ff = c["hidden_size"], c["intermediate_size"]
    d = c.get("head_dim") or e // c["num_attention_heads"]
    q, kv = c["num_attention_heads"] * d, c["num_key_value_heads"] * d
    layer = {
        "attn_norm.weight": (e,),
        "attn_q.weight": (q, e),
        "attn_k.weight": (kv, e),
        "attn_v.weight": (kv, e),
        "attn_output.weight": (e, q),
        "ffn_norm.weight": (e,),
        "ffn_gate.weight": (ff, e),
        "ffn_up.weight": (ff, e),
        "ffn_down.weight": (e, ff),
    }
    if family == "qwen2":
        layer |= {"attn_q.bias": (q,), "attn_k.bias": (kv,), "attn_v.bias": (kv,)}
    if family in ("qwen3", "gemma3"):
        layer |= {"attn_q_norm.weight": (d,), "attn_k_norm.weight": (d,)}
    if family in ("gemma2", "gemma3"):
        layer |= {"post_attention_norm.weight": (e,), "post_ffw_norm.weight": (e,)}
    if family == "phi3":  # fused: q, k, v rows stacked; [gate; up]
        layer = {
            "attn_norm.weight": (e,),
            "attn_qkv.weight": (q + 2 * kv, e),
            "attn_output.weight": (e, q),
            "ffn_norm.weight": (e,),
            "ffn_up.weight": (2 * ff, e),
            "ffn_down.weight": (e, ff),
        }
    tensors = {"token_embd.weight": (c["vocab_size"], e), "output_norm.weight": (e,)}
    for i in range(c["num_hidden_layers"]):
        tensors |= {f"blk.{i}.{name}": shape for name, shape in layer.items()}
    return tensors


# general.architecture, and the keys each architecture's llama.cpp loader reads beyond the common ones
LLAMA_CPP_KEYS = {
    "llama": ("llama", {}),
    "mistral": ("llama", {}),
    "qwen2": ("qwen2", {}),
    "qwen3": ("qwen3", {}),
    "gemma2": (
        "gemma2",
        {"attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, "attention.sliding_window": 16},
    ),
    "gemma3": ("gemma3", {"attention.sliding_window": 16}),
    "phi3": ("phi3", {"attention.sliding_window": 0, "rope.scaling.original_context_length": 4096}),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_file_holds_what_llama_cpp_loads(family, exported):
    import gguf
    from transformers import AutoConfig
    from transformers.integrations.gguf import GgufHeader, read_gguf_metadata

    hf_dir, path = exported(family)
    c = AutoConfig.from_pretrained(hf_dir).to_dict()
    metadata, _ = read_gguf_metadata(str(path))
    shapes = {t.name: tuple(t.shape) for t in GgufHeader.from_file(str(path)).tensors}
    assert shapes == _llama_cpp_tensors(family, c)

    arch, extra = LLAMA_CPP_KEYS[family]
    assert metadata["general.architecture"] == arch
    # and every name is one gguf-py lists for the architecture (what llama.cpp's converter may write)
    arch_id = next(a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == arch)
    allowed = {
        gguf.TENSOR_NAMES[t].format(bid=i) for t in gguf.MODEL_TENSORS[arch_id] for i in range(c["num_hidden_layers"])
    }
    assert {name.rsplit(".", 1)[0] for name in shapes} <= allowed
    rope = c["rope_parameters"].get("full_attention", c["rope_parameters"])
    common = {
        "block_count": c["num_hidden_layers"],
        "embedding_length": c["hidden_size"],
        "feed_forward_length": c["intermediate_size"],
        "context_length": c["max_position_embeddings"],
        "attention.head_count": c["num_attention_heads"],
        "attention.head_count_kv": c["num_key_value_heads"],
        "attention.key_length": c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"],
        "rope.freq_base": rope["rope_theta"],
        "attention.layer_norm_rms_epsilon": c["rms_norm_eps"],
    }
    for key, value in (common | extra).items():
        assert metadata[f"{arch}.{key}"] == pytest.approx(value), key
    written = {k.removeprefix(f"{arch}.") for k in metadata if k.startswith(f"{arch}.")}
    absent = {"attn_logit_softcapping", "final_logit_softcapping", "attention.sliding_window"} - set(extra)
    assert not written & absent  # e.g. no window key where llama.cpp has no sliding window to set


def test_gemma2_writes_its_own_soft_caps(tiny, tmp_path):
    """The tiny Gemma 2's caps (2 and 3), not llama.cpp's defaults: transformers never reads them back."""
    from transformers.integrations.gguf import read_gguf_metadata

    hf_dir = shutil.copytree(tiny("gemma2"), tmp_path / "gemma2")
    _config_dir(hf_dir, hf_dir, {"query_pre_attn_scalar": 256})  # same shapes: the tiny weights still fit
    export_gguf(hf_dir, tmp_path / "g.gguf", dtype="f16")
    metadata, _ = read_gguf_metadata(str(tmp_path / "g.gguf"))
    assert metadata["gemma2.attn_logit_softcapping"] == 2.0
    assert metadata["gemma2.final_logit_softcapping"] == 3.0
    assert metadata["gemma2.attention.sliding_window"] == 16


def test_a_phi3_name_is_left_out_where_llama_cpp_would_stop_on_the_vocabulary(exported):
    """llama.cpp sets Phi-3's token attributes for any general.name containing phi3 / phi-3 and stops
    loading ("_Map_base::at") when </s>, <unk>, <s> or <|endoftext|> is not in the vocabulary: the tiny
    Phi-3 (SmolLM2's vocabulary, in a directory phi3-variant*) is written without a name."""
    from transformers.integrations.gguf import read_gguf_metadata

    hf_dir, path = exported("phi3")
    assert "phi3" in Path(hf_dir).name
    metadata, _ = read_gguf_metadata(str(path))
    assert "general.name" not in metadata
    phi3_tokens = ["<unk>", "<s>", "</s>", "<|endoftext|>", "hello"]
    assert _general_name({}, Path("Phi-3-mini-4k-instruct"), phi3_tokens) == "Phi-3-mini-4k-instruct"
    assert _general_name({"_name_or_path": "org/my-PHI3"}, Path("x"), phi3_tokens[1:]) is None
    assert _general_name({}, Path("tiny-llama"), ["hello"]) == "tiny-llama"


def test_a_sentencepiece_tokenizer_is_refused_not_misread(tiny, tmp_path):
    """Phi-3's own tokenizer (like Llama 2's and Gemma's) is SentencePiece BPE with byte fallback, which
    GGUF stores as a "llama" vocabulary with scores, not as byte-level "gpt2" merges: it is refused."""
    hf_dir = shutil.copytree(tiny("phi3"), tmp_path / "phi3")
    _config_dir(hf_dir, hf_dir, ROUND_TRIP["phi3"])
    tok_file = hf_dir / "tokenizer.json"
    tok = json.loads(tok_file.read_text(encoding="utf-8"))
    tok["model"]["byte_fallback"] = True
    tok_file.write_text(json.dumps(tok), encoding="utf-8")
    with pytest.raises(ModelError, match="only byte-level BPE tokenizers can be exported"):
        export_gguf(hf_dir, tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()


@pytest.mark.parametrize(
    "family, overrides, reason",
    [
        ("mistral", {}, "sliding_window 16"),
        ("qwen2", {}, "sliding_window 16"),
        ("phi3", {}, "sliding_window 16"),
        ("gemma2", {}, "query_pre_attn_scalar 16"),
        ("gemma2", {"query_pre_attn_scalar": 256, "tie_word_embeddings": False}, "untied embeddings"),
        ("gemma3", {"query_pre_attn_scalar": 256, "final_logit_softcapping": None}, "layer_types"),
        ("gemma3", ROUND_TRIP["gemma3"] | {"final_logit_softcapping": 3.0}, "final_logit_softcapping 3.0"),
        ("qwen3", ROUND_TRIP["qwen3"] | {"attention_bias": True}, "attention_bias"),
        (
            "phi3",
            {
                "sliding_window": None,
                "rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5},
            },
            "partial_rotary_factor",
        ),
    ],
)
def test_configs_llama_cpp_would_misread_are_refused(family, overrides, reason, tiny, tmp_path):
    _config_dir(tiny(family), tmp_path, overrides)
    with pytest.raises(ModelError, match=reason):
        export_gguf(tmp_path, tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()


@pytest.mark.parametrize("family", ["olmo2", "granite", "smollm3"])
def test_other_architectures_are_refused_by_the_cli(family, tiny, tmp_path, capsys):
    from tunesmith.cli import main

    out = tmp_path / "out.gguf"
    assert main(["export", "--model", str(tiny(family)), "--format", "gguf", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"model_type '{family}'" in err and "supported: Llama (LlamaForCausalLM)" in err
    assert "Phi-3 (Phi3ForCausalLM)" in err and "Traceback" not in err
    assert not out.exists()
