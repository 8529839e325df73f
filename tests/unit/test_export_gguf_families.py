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


def round_trip_variant(tiny_dir, out, family: str, tokenizer, overrides: dict | None = None):
    """The ROUND_TRIP variant of a tiny model (and `overrides`), saved in `out`, with every 1-D tensor (norms,
    Qwen2's biases) drawn at random, so that a norm offset or a dropped bias shows."""
    from transformers import AutoModelForCausalLM

    config = _config_dir(tiny_dir, out, ROUND_TRIP[family] | (overrides or {}))
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


# --- SentencePiece-style vocabularies (BPE with byte fallback) ---------------------------------------

SP = "\u2581"
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A tokenizer splits text into pieces; the model reads the pieces as ids.",
    "Llama, Mistral, Gemma and Phi-3 use SentencePiece vocabularies with byte fallback.",
    "Numbers like 2024, 3.14 and 42 appear in text too.",
    "Export the model to GGUF, then load it in llama.cpp and compare the logits.",
    "She sells sea shells by the sea shore; the shells she sells are sea shells.",
]
# Spaces, digits, characters the tiny vocabulary lacks (bytes), a tab and a newline, edge spaces.
SP_TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "Numbers: 2024, 3.14 and 42!",
    "SentencePieceas compareare indog 20242024",  # run-together words: merge order matters
    "naïve café — 你好 🙂",
    "two  spaces\nnew line\ttab",
    "trailing space ",
    " leading space",
]
# style -> (special tokens at ids 0.., tokens added after the vocabulary as (content, special), bos, eos, pad,
# how "▁" reaches the text's start), each as the models' own tokenizer.json spells it
SP_STYLES = {
    # Llama 2, Mistral 7B v0.1, Phi-3: a Prepend("▁") + Replace(" ", "▁") normalizer, no pre-tokenizer
    "llama2": (["<unk>", "<s>", "</s>"], [], "<s>", "</s>", None, "prepend"),
    # Mistral 7B v0.3 and re-converted Llama 2 files: a Metaspace pre-tokenizer that does not split
    "metaspace": (["<unk>", "<s>", "</s>"], [], "<s>", "</s>", None, "metaspace"),
    # Phi-3-mini: Llama 2's, with special tokens (and a plain added one) after the vocabulary
    "phi3": (
        ["<unk>", "<s>", "</s>"],
        [("<|endoftext|>", True), ("<|user|>", True), ("<|placeholder|>", False)],
        "<s>",
        "</s>",
        "<|endoftext|>",
        "prepend",
    ),
    # Gemma 2/3: spaces replaced by the normalizer, nothing prepended
    "gemma": (["<pad>", "<eos>", "<bos>", "<unk>"], [], "<bos>", "<eos>", "<pad>", "none"),
}
SP_FAMILIES = {"llama": "metaspace", "mistral": "llama2", "gemma2": "gemma", "gemma3": "gemma", "phi3": "phi3"}
# A GGUF cannot say whether "▁" is prepended always (Llama 2's normalizer, SentencePiece itself, llama.cpp)
# or only to text not starting with a space (Metaspace "first"). transformers' reader decides by
# architecture: Phi-3's normalizer for phi3, Metaspace "first" for llama, so a Llama 2-style tokenizer
# reads back different ids for text that starts with a space (llama.cpp gives the original's).
HF_READER_DIFFERS = {"mistral": {" leading space"}}


def _added(token_id: int, content: str, special: bool) -> dict:
    flags = dict(single_word=False, lstrip=False, rstrip=False, normalized=False)
    return {"id": token_id, "content": content, **flags, "special": special}


def sentencepiece_tokenizer(style: str):
    """A tiny SentencePiece-style tokenizer (BPE with byte fallback, <0x00>..<0xFF> after the special tokens,
    ~450 tokens) trained on CORPUS, with the normalizer and pre-tokenizer of `style` (SP_STYLES)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials, added, bos, eos, pad, prefix = SP_STYLES[style]
    trainer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    trainer.normalizer = normalizers.Replace(" ", SP)
    trainer.pre_tokenizer = pre_tokenizers.Metaspace(SP, prepend_scheme="never" if prefix == "none" else "always")
    bpe = trainers.BpeTrainer(vocab_size=200, special_tokens=specials, show_progress=False)
    trainer.train_from_iterator(CORPUS * 3, bpe)
    spec = json.loads(trainer.to_str())
    trained = sorted(spec["model"]["vocab"], key=spec["model"]["vocab"].get)
    # as in Llama 2's vocabulary: special tokens, the 256 byte tokens, then the pieces in merge order
    pieces = specials + [f"<0x{b:02X}>" for b in range(256)] + [t for t in trained if t not in specials]
    spec["model"]["vocab"] = {t: i for i, t in enumerate(pieces)}
    spec["added_tokens"] = [_added(i, t, True) for i, t in enumerate(specials)]
    spec["added_tokens"] += [_added(len(pieces) + k, t, special) for k, (t, special) in enumerate(added)]
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.pre_tokenizer = None
    tok.normalizer = normalizers.Replace(" ", SP)
    if prefix == "prepend":
        tok.normalizer = normalizers.Sequence([normalizers.Prepend(SP), normalizers.Replace(" ", SP)])
    elif prefix == "metaspace":
        tok.normalizer = None
        tok.pre_tokenizer = pre_tokenizers.Metaspace(SP, prepend_scheme="first", split=False)
    strip = [] if prefix == "none" else [decoders.Strip(" ", 1, 0)]
    tok.decoder = decoders.Sequence([decoders.Replace(SP, " "), decoders.ByteFallback(), decoders.Fuse(), *strip])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, pieces.index(bos))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, unk_token="<unk>", pad_token=pad)


def sentencepiece_variant(family: str, root: Path) -> tuple[Path, object]:
    """`family`'s round-trip variant with the SentencePiece-style tokenizer of its own models (SP_FAMILIES)."""
    tok = sentencepiece_tokenizer(SP_FAMILIES[family])
    base = build_tiny(family, tok, root / f"{family}-spm-base")
    # Phi3Config's class defaults name id 32000 for eos and pad: the tiny vocabulary's own ids instead
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    return round_trip_variant(base, root / f"{family}-spm", family, tok, ids), tok


@pytest.fixture(scope="module")
def sp_exported(tmp_path_factory):
    """family -> (HF directory, its f32 GGUF file, the tokenizer) with the family's SentencePiece tokenizer."""
    cache: dict = {}

    def get(family: str):
        if family not in cache:
            out, tok = sentencepiece_variant(family, tmp_path_factory.mktemp("spm"))
            export_gguf(out, out / "gguf" / f"{family}.gguf", dtype="f32")
            cache[family] = out, out / "gguf" / f"{family}.gguf", tok
        return cache[family]

    return get


@pytest.mark.parametrize("family", SP_FAMILIES)
def test_a_sentencepiece_vocabulary_reads_back_the_same(family, sp_exported):
    """GGUF's "llama" vocabulary: transformers rebuilds the same tokenizer (ids) and the same model (logits)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.integrations.gguf import read_gguf_metadata

    hf_dir, path, tok = sp_exported(family)
    metadata, _ = read_gguf_metadata(str(path), ("tokenizer.ggml.token_type",))
    assert metadata["tokenizer.ggml.model"] == "llama"
    # Gemma prepends no "▁"; Llama 2's normalizer, Metaspace's "first" and Phi-3's do
    assert metadata["tokenizer.ggml.add_space_prefix"] == (family not in ("gemma2", "gemma3"))
    assert metadata["tokenizer.ggml.add_bos_token"] is True
    types = metadata["tokenizer.ggml.token_type"]
    assert types.count(6) == 256 and types.count(2) == 1  # the byte tokens, <unk>
    assert types[tok.bos_token_id] == types[tok.eos_token_id] == 3
    assert metadata["tokenizer.ggml.bos_token_id"] == tok.bos_token_id
    if family == "phi3":  # Phi-3's tokens all there: llama.cpp's Phi-3 special-casing can have its name
        assert types[-3:] == [3, 3, 4] and "general.name" in metadata

    back = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    for text in SP_TEXTS:
        same = back(text)["input_ids"] == tok(text)["input_ids"]
        assert same != (text in HF_READER_DIFFERS.get(family, ())), text
    source = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    random_ids = torch.randint(0, len(tok), (1, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        worst = max(
            (model(ids).logits - source(ids).logits).abs().max().item()
            for ids in [torch.tensor([tok(" ".join(SP_TEXTS))["input_ids"]]), random_ids]
        )
    assert worst <= F32_TOL


def _sentencepiece_encode(text: str, tokens: list[str], scores: list[float], add_space_prefix: bool) -> list[int]:
    """llama.cpp's SentencePiece tokenizer (llm_tokenizer_spm_session) in brief: from single characters,
    merge the adjacent pair whose union is a token of the highest score (the leftmost on ties), until
    none is; a piece that is no token goes out as its UTF-8 bytes' <0xXX> tokens."""
    ids = {t: i for i, t in enumerate(tokens)}
    pieces = list(((" " if add_space_prefix else "") + text).replace(" ", SP))
    while True:
        pairs = [(scores[ids[a + b]], -i) for i, (a, b) in enumerate(zip(pieces, pieces[1:])) if a + b in ids]
        if not pairs:
            break
        i = -max(pairs)[1]
        pieces[i : i + 2] = [pieces[i] + pieces[i + 1]]
    return [j for p in pieces for j in ([ids[p]] if p in ids else [ids[f"<0x{b:02X}>"] for b in p.encode()])]


@pytest.mark.parametrize("family", ["mistral", "gemma2"])
def test_sentencepiece_scores_rank_merges_as_the_tokenizer_does(family, sp_exported):
    """llama.cpp's "llama" vocabulary reads no merges, only scores: merging by the written scores gives
    the tokenizer's own ids."""
    from transformers.integrations.gguf import read_gguf_metadata

    _, path, tok = sp_exported(family)
    keys = ("tokenizer.ggml.tokens", "tokenizer.ggml.scores")
    metadata, _ = read_gguf_metadata(str(path), keys)
    tokens, scores = metadata["tokenizer.ggml.tokens"], metadata["tokenizer.ggml.scores"]
    prefix = metadata["tokenizer.ggml.add_space_prefix"]
    for text in SP_TEXTS[:-1]:  # " leading space": SentencePiece adds its "▁" even then; Metaspace does not
        expected = tok(text, add_special_tokens=False)["input_ids"]
        assert _sentencepiece_encode(text, tokens, scores, prefix) == expected, text
    # llama.cpp's converter writes -1000 for every piece of a tokenizer.json-only vocabulary: merging
    # left to right then, it cuts run-together words differently
    flat = [-1000.0] * len(scores)
    text = SP_TEXTS[3]
    assert _sentencepiece_encode(text, tokens, flat, prefix) != tok(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"model": {"type": "Unigram", "unk_id": 0, "vocab": [["<unk>", 0.0], ["a", -1.0]]}}, "this is 'Unigram'"),
        ({"model": {"type": "WordPiece", "unk_token": "[UNK]", "vocab": {"[UNK]": 0}}}, "this is 'WordPiece'"),
        (
            {"pre_tokenizer": {"type": "Metaspace", "replacement": SP, "prepend_scheme": "first", "split": True}},
            "words",
        ),
        ({"normalizer": {"type": "NFKC"}}, "normalizer"),
    ],
)
def test_tokenizers_gguf_cannot_state_are_refused(change, reason, sp_exported, tmp_path):
    """Unigram and WordPiece vocabularies, and a SentencePiece BPE whose text pipeline llama.cpp would not
    follow (words split apart, a normalizer it has not), are refused rather than written differently."""
    hf_dir = shutil.copytree(sp_exported("mistral")[0], tmp_path / "model", ignore=shutil.ignore_patterns("gguf"))
    tok_file = hf_dir / "tokenizer.json"
    tok_file.write_text(json.dumps(json.loads(tok_file.read_text(encoding="utf-8")) | change), encoding="utf-8")
    with pytest.raises(ModelError, match=reason):
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
