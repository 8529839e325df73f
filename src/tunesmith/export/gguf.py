"""Export a Hugging Face decoder directory to a GGUF file (llama.cpp's format).

The file follows what llama.cpp's own `convert_hf_to_gguf.py` writes for the model's class: the
`<arch>.*` hyperparameters, the tokenizer as `tokenizer.ggml.*` metadata plus `tokenizer.chat_template`,
and every tensor under llama.cpp's standard name. What differs between architectures (tensor names,
value changes, extra keys, what llama.cpp cannot represent) is one table per family in
`gguf_families.py`: Llama, Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3 (text) and Phi-3. Shared details:

* Llama and Mistral store Q and K with their rows permuted per head (llama.cpp's rotary layout pairs
  dimensions `(2i, 2i+1)`, Hugging Face pairs `(i, i + head_dim/2)`). `_permute_qk` is llama.cpp's
  `LlamaModel.permute`; transformers' GGUF loader (`LlamaTensorProcessor._reverse_permute_weights`)
  applies its exact inverse. The other architectures use llama.cpp's NeoX rotary, HF's own layout.
* Tied embeddings are signalled by the *absence* of `output.weight`: that is how llama.cpp reads it,
  and how transformers' loader sets `tie_word_embeddings`.
* The tokenizer comes from tokenizer.json: a byte-level BPE as llama.cpp's "gpt2" vocabulary (merges and
  a pre-tokenizer name), a SentencePiece-style BPE with byte fallback (Llama 2, Mistral, Gemma, Phi-3)
  as its "llama" vocabulary (scores, byte tokens, add_space_prefix), as Gemma's own converter writes too.

Only what this exporter can write faithfully is accepted; anything else is a `ModelError`, never a
silently different model.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.atomic import fsync_dir
from tunesmith.errors import ConfigError, ModelError
from tunesmith.export.gguf_families import FAMILIES, GLOBAL_NAMES, Family

DTYPES = ("f16", "f32")

_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)\.(weight|bias)$")

# tokenizer.ggml.token_type values (gguf.TokenType)
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
_BYTE_TOKEN_RE = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")
_SPACE = "\u2581"  # SentencePiece's "▁", the space as its vocabularies spell it

# llama.cpp gives Phi-3's special tokens their attributes by the model's *name* (src/llama-vocab.cpp): a
# general.name containing "phi3" or "phi-3" (any case) makes it look up each of these tokens, and the load
# stops ("error loading model vocabulary: unordered_map::at") when one is missing from the vocabulary.
_PHI3_NAMES = ("phi3", "phi-3")
_PHI3_TOKENS = ("</s>", "<unk>", "<s>", "<|endoftext|>")

# Our key names for the special tokens -> (tokenizer_config.json key, config.json key)
_SPECIAL_TOKENS = {
    "bos": ("bos_token", "bos_token_id"),
    "eos": ("eos_token", "eos_token_id"),
    "unk": ("unk_token", "unk_token_id"),
    "pad": ("pad_token", "pad_token_id"),
}


def export_gguf(model_dir: Path, out_file: Path, dtype: str = "f16") -> dict:
    """Write the model in `model_dir` (config.json, *.safetensors, tokenizer.json) to `out_file`.

    The model's class must be one of `gguf_families.FAMILIES`; any other is a `ModelError`.

    2-D weights are stored in `dtype` ("f16" or "f32"); 1-D tensors (the RMS norms) always in f32.
    The file appears atomically: it is written to a temporary sibling, fsync'ed and renamed.
    Returns `{"path", "tensors", "bytes", "dtype"}`.
    """
    import gguf  # heavy: deferred for CLI start-up

    if dtype not in DTYPES:
        raise ConfigError(f"dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
    model_dir, out_file = Path(model_dir), Path(out_file)
    raw_config, family = _read_family(model_dir)
    config = _resolved_config(model_dir)
    hp = _hyperparameters(config, family, model_dir)
    tokenizer = _read_tokenizer(model_dir, raw_config, hp["vocab_size"])

    out_file.parent.mkdir(parents=True, exist_ok=True)
    # A sibling, so the rename stays on one file system; O_EXCL with 0o666 gives the usual
    # umask-derived permissions (mkstemp would leave the exported file readable by its owner only).
    tmp = out_file.parent / f".{out_file.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        writer = gguf.GGUFWriter(tmp, family.arch)
        _write_metadata(writer, gguf, raw_config, family.metadata(config), hp, tokenizer, model_dir, dtype)
        count = 0
        for name, array in _gguf_tensors(model_dir, family, hp, dtype):
            writer.add_tensor(name, array)
            count += 1
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=False)
        writer.close()
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, out_file)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(out_file.parent)
    return {"path": str(out_file), "tensors": count, "bytes": out_file.stat().st_size, "dtype": dtype}


# --- config -----------------------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path}: missing") from None
    except (OSError, ValueError) as e:
        raise ModelError(f"{path}: unreadable ({e})") from None


def _read_family(model_dir: Path) -> tuple[dict, Family]:
    """config.json as saved, and the family its class belongs to."""
    if not model_dir.is_dir():
        raise ModelError(f"{model_dir}: not a directory")
    if not (model_dir / "config.json").is_file():
        raise ModelError(f"{model_dir}: not a Hugging Face model directory (no config.json)")
    config = _read_json(model_dir / "config.json")
    model_type = config.get("model_type")
    architectures = config.get("architectures") or []
    if architectures:
        family = FAMILIES.get(architectures[0]) if len(architectures) == 1 else None
    else:
        family = next((f for f in FAMILIES.values() if f.model_type == model_type), None)
    if family is None or family.model_type != model_type:
        supported = ", ".join(f"{f.label} ({f.hf_class})" for f in FAMILIES.values())
        raise ModelError(
            f"{model_dir}: GGUF export does not support model_type {model_type!r}, architectures "
            f"{architectures}; supported: {supported}"
        )
    return config, family


def _resolved_config(model_dir: Path) -> dict:
    """The config transformers builds the model from: defaults filled in, legacy keys (rope_theta,
    rope_scaling, sliding_window_pattern) turned into rope_parameters and layer_types."""
    from transformers import AutoConfig  # heavy: deferred until used

    try:
        return AutoConfig.from_pretrained(model_dir).to_dict()
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelError(f"{model_dir}/config.json: transformers cannot read it ({e})") from None


def _rope_sets(config: dict) -> list[dict]:
    """rope_parameters as a list: one dict, or one per layer type (Gemma 3's full and sliding layers)."""
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    nested = rope and all(isinstance(v, dict) for v in rope.values())
    return list(rope.values()) if nested else [rope]


def _sliding_refusals(config: dict, family: Family) -> list[str]:
    window, n_layers = config.get("sliding_window"), config["num_hidden_layers"]
    layer_types = config.get("layer_types") or []
    if family.swa_period is None:
        # llama.cpp attends over the whole context on every layer of these architectures
        slides = "sliding_attention" in layer_types if layer_types else window is not None
        if slides and window is not None and window < config["max_position_embeddings"]:
            return [f"sliding_window {window} (llama.cpp's {family.arch} graph has no sliding window)"]
        return []
    period = family.swa_period
    expected = ["sliding_attention" if (i + 1) % period else "full_attention" for i in range(n_layers)]
    if window is None or (layer_types and layer_types != expected):
        why = (
            f"layer_types {layer_types} with sliding_window {window} (llama.cpp fixes one full-attention "
            f"layer in every {period}, each other layer sliding)"
        )
        return [why]
    return []


def _hyperparameters(config: dict, family: Family, model_dir: Path) -> dict:
    def need(key: str) -> Any:
        if config.get(key) is None:
            raise ModelError(f"{model_dir}/config.json: '{key}' is missing")
        return config[key]

    unsupported = list(family.refuse(config)) + _sliding_refusals(config, family)
    activation = config.get("hidden_activation") or config.get("hidden_act") or family.activation
    if activation != family.activation:
        unsupported.append(f"activation {activation!r} (llama.cpp's {family.arch} computes {family.activation})")
    # transformers' GGUF loader never sets attention_bias / mlp_bias, so such a file would load as a
    # different model (Qwen2's q/k/v biases are part of its architecture, not a config switch).
    for key in ("attention_bias", "mlp_bias", "use_bidirectional_attention"):
        if config.get(key):
            unsupported.append(f"{key}=true")
    ropes = _rope_sets(config)
    for rope in ropes:
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in (None, "default"):
            unsupported.append(f"rope_type {rope_type!r}")
        if rope.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0)) != 1.0:
            unsupported.append(f"partial_rotary_factor {rope.get('partial_rotary_factor')}")
    tied = bool(config.get("tie_word_embeddings", False))
    if family.tied_only and not tied:
        unsupported.append(f"untied embeddings (llama.cpp's {family.arch} reuses token_embd as the output)")
    if unsupported:
        raise ModelError(
            f"{model_dir}: cannot export this {family.label} model to GGUF: "
            f"{', '.join(dict.fromkeys(unsupported))} not supported"
        )

    hidden, heads = need("hidden_size"), need("num_attention_heads")
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // heads
    # the full-attention layers' theta when there is one per layer type; llama.cpp's rope.freq_base
    rope = (config.get("rope_parameters") or {}).get("full_attention") or ropes[0]
    rope_theta = rope.get("rope_theta", config.get("rope_theta", 10000.0))
    return {
        "context_length": need("max_position_embeddings"),
        "embedding_length": hidden,
        "block_count": need("num_hidden_layers"),
        "feed_forward_length": need("intermediate_size"),
        "head_count": heads,
        "head_count_kv": kv_heads,
        "head_dim": head_dim,
        "rope_freq_base": float(rope_theta),
        "rms_norm_eps": float(config.get("rms_norm_eps", 1e-6)),
        "vocab_size": need("vocab_size"),
        "tie_word_embeddings": tied,
    }


# --- tokenizer --------------------------------------------------------------------------------------


def _pre_tokenizer_name(pre: dict | None, model_dir: Path) -> tuple[str, bool]:
    """llama.cpp's `tokenizer.ggml.pre` for a byte-level pre-tokenizer, and its add_prefix_space."""
    if pre and pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        # GPT-2's split regex: llama.cpp's "gpt-2"; transformers' loader builds the same by default.
        return "gpt-2", bool(pre.get("add_prefix_space", False))
    if pre and pre.get("type") == "Sequence":
        parts = pre.get("pretokenizers") or []
        kinds = [p.get("type") for p in parts]
        if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits") and parts[1].get("use_regex", True):
            # SmolLM / StarCoder: digits one by one, then GPT-2's regex (llama.cpp's "smollm")
            return "smollm", bool(parts[1].get("add_prefix_space", False))
        if kinds == ["Split", "ByteLevel"] and not parts[1].get("use_regex", True):
            regex = (parts[0].get("pattern") or {}).get("Regex")
            name = _known_split_name(regex)
            if name is not None:
                return name, bool(parts[1].get("add_prefix_space", False))
    raise ModelError(
        f"{model_dir}/tokenizer.json: pre-tokenizer {json.dumps(pre)[:200]} has no GGUF equivalent this exporter knows"
    )


def _known_split_name(regex: str | None) -> str | None:
    """The llama.cpp pre-tokenizer name for a split regex transformers' GGUF loader also knows."""
    if regex is None:
        return None
    try:
        # heavy: transformers, deferred until used
        from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS
    except ImportError:  # pragma: no cover - older transformers
        return None
    preferred = ("llama-bpe", "qwen2", "tekken", "gpt-4o")
    names = [n for n, r in GGUF_PRE_TOKENIZER_SPLITS.items() if r == regex]
    return next((n for n in preferred if n in names), names[0] if names else None)


def _post_processor_adds(post: dict | None) -> tuple[bool, bool]:
    """Whether tokenizer.json's post-processor puts a special token before / after a single text."""
    if not post:
        return False, False
    if post.get("type") == "Sequence":
        found = [_post_processor_adds(p) for p in post.get("processors") or []]
        return any(b for b, _ in found), any(e for _, e in found)
    if post.get("type") == "TemplateProcessing":
        single = post.get("single") or []
        return (bool(single) and "SpecialToken" in single[0], bool(single) and "SpecialToken" in single[-1])
    return False, False


def _token_content(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _chat_template(model_dir: Path, tok_config: dict) -> str | list | None:
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    return tok_config.get("chat_template")


def _read_tokenizer(model_dir: Path, config: dict, vocab_size: int) -> dict:
    """The tokenizer as GGUF metadata: a byte-level BPE as llama.cpp's "gpt2" vocabulary (merges), a
    SentencePiece-style BPE (byte fallback, "▁" for spaces) as its "llama" vocabulary (scores)."""
    tok_json = _read_json(model_dir / "tokenizer.json")
    config_file = model_dir / "tokenizer_config.json"
    tok_config = _read_json(config_file) if config_file.is_file() else {}
    model = tok_json.get("model") or {}
    if model.get("type") != "BPE":
        raise ModelError(
            f"{model_dir}/tokenizer.json: only BPE tokenizers (byte-level, or SentencePiece-style with "
            f"byte_fallback) can be exported (this is {model.get('type')!r})"
        )
    if model.get("byte_fallback"):
        kind, pre, add_space_prefix = "llama", "default", _sentencepiece_space_prefix(tok_json, model_dir)
    else:
        kind = "gpt2"
        pre, add_space_prefix = _pre_tokenizer_name(tok_json.get("pre_tokenizer"), model_dir)

    by_id: dict[int, str] = {i: t for t, i in model["vocab"].items()}
    types: dict[int, int] = {i: _NORMAL for i in by_id}
    if kind == "llama":
        for i, token in by_id.items():
            if _BYTE_TOKEN_RE.match(token):
                types[i] = _BYTE
        if model.get("unk_token") in model["vocab"]:
            types[model["vocab"][model["unk_token"]]] = _UNKNOWN
    for added in tok_json.get("added_tokens") or []:
        by_id[added["id"]] = added["content"]
        if types.get(added["id"]) != _UNKNOWN:
            types[added["id"]] = _CONTROL if added.get("special") else _USER_DEFINED
    if max(by_id) >= vocab_size:
        raise ModelError(
            f"{model_dir}: the tokenizer has token id {max(by_id)}, past the model's vocab_size {vocab_size}"
        )
    tokens, token_types = [], []
    for i in range(vocab_size):  # ids the tokenizer never produces still need a row: llama.cpp pads them
        tokens.append(by_id.get(i, f"[PAD{i}]"))
        token_types.append(types.get(i, _UNUSED))
    if kind == "llama" and _BYTE not in token_types:
        raise ModelError(f"{model_dir}/tokenizer.json: byte_fallback without the <0x00>..<0xFF> byte tokens")

    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    if kind == "llama" and any(" " in part for m in model.get("merges") or [] if not isinstance(m, str) for part in m):
        merges = []  # a piece with a real space cannot be written "left right": readers derive them from the scores
    ids = {t: i for i, t in by_id.items()}
    special: dict[str, int] = {}
    for key, (tok_key, config_key) in _SPECIAL_TOKENS.items():
        content = _token_content(tok_config.get(tok_key))
        token_id = ids.get(content) if content is not None else None
        if token_id is None and isinstance(config.get(config_key), int):
            token_id = config[config_key]
        if token_id is not None:
            special[key] = token_id
    if kind == "llama" and "unk" not in special and model.get("unk_token") in ids:
        special["unk"] = ids[model["unk_token"]]
    add_bos, add_eos = _post_processor_adds(tok_json.get("post_processor"))
    return {
        "model": kind,
        "pre": pre,
        "add_space_prefix": add_space_prefix,
        "tokens": tokens,
        # SentencePiece merges the adjacent pair whose union scores highest; a BPE with byte fallback
        # learned its merges in vocabulary order, so -id ranks them as its merge list does (what a
        # SentencePiece BPE model's own scores say; llama.cpp's converter writes -1000 for all of them
        # when it has only tokenizer.json, which merges left to right instead).
        "scores": [-float(i) if t == _NORMAL else 0.0 for i, t in enumerate(token_types)],
        "token_types": token_types,
        "merges": merges,
        "special": special,
        "add_bos": bool(tok_config.get("add_bos_token", add_bos)),
        "add_eos": bool(tok_config.get("add_eos_token", add_eos)),
        "chat_template": _chat_template(model_dir, tok_config),
    }


def _sentencepiece_space_prefix(tok_json: dict, model_dir: Path) -> bool:
    """llama.cpp's add_space_prefix for a BPE with byte fallback, if its normalizer and pre-tokenizer do only
    what llama.cpp's SentencePiece tokenizer does: spell spaces "▁" (a Replace normalizer or Metaspace),
    optionally put one "▁" in front (Llama 2's Prepend normalizer, Metaspace's prepend_scheme), and keep the
    text whole (llama.cpp does not split it into words first). Gemma prepends nothing."""
    norm, pre = tok_json.get("normalizer"), tok_json.get("pre_tokenizer")
    steps = (norm.get("normalizers") or [] if norm.get("type") == "Sequence" else [norm]) if norm else []
    escapes = prefix = False
    for step in steps:
        if step.get("type") == "Prepend" and step.get("prepend") == _SPACE:
            prefix = True
        elif step.get("type") == "Replace" and step.get("pattern") == {"String": " "} and step.get("content") == _SPACE:
            escapes = True
        else:
            raise ModelError(
                f"{model_dir}/tokenizer.json: normalizer {json.dumps(norm)[:200]} has no GGUF equivalent "
                "(llama.cpp's SentencePiece tokenizer only turns spaces into ▁ and prepends one)"
            )
    if pre is None:
        pass
    elif pre.get("type") == "Metaspace" and pre.get("replacement") == _SPACE and not pre.get("split", True):
        escapes = True
        scheme = pre.get("prepend_scheme") or ("always" if pre.get("add_prefix_space", True) else "never")
        prefix = prefix or scheme in ("always", "first")
    elif pre.get("type") == "Split" and pre.get("pattern") == {"String": " "} and escapes:
        pass  # Gemma's: the normalizer has already turned every space into ▁, so nothing is split
    else:
        raise ModelError(
            f"{model_dir}/tokenizer.json: pre-tokenizer {json.dumps(pre)[:200]} has no GGUF equivalent "
            "(llama.cpp's SentencePiece tokenizer does not split the text into words)"
        )
    if not escapes:
        raise ModelError(f"{model_dir}/tokenizer.json: a byte-fallback BPE that does not spell spaces as ▁")
    return prefix


# --- writing ----------------------------------------------------------------------------------------


def _write_metadata(writer, gguf, config: dict, extra: dict, hp: dict, tok: dict, model_dir: Path, dtype: str) -> None:
    writer.add_type("model")
    name = _general_name(config, model_dir, tok["tokens"])
    if name is not None:
        writer.add_name(name)
    writer.add_context_length(hp["context_length"])
    writer.add_embedding_length(hp["embedding_length"])
    writer.add_block_count(hp["block_count"])
    writer.add_feed_forward_length(hp["feed_forward_length"])
    writer.add_head_count(hp["head_count"])
    writer.add_head_count_kv(hp["head_count_kv"])
    writer.add_rope_freq_base(hp["rope_freq_base"])
    writer.add_layer_norm_rms_eps(hp["rms_norm_eps"])
    writer.add_vocab_size(hp["vocab_size"])
    writer.add_rope_dimension_count(hp["head_dim"])
    # Always stated: transformers' Gemma reader takes head_dim from it, not from the other shapes.
    writer.add_key_length(hp["head_dim"])
    writer.add_value_length(hp["head_dim"])
    for key, value in extra.items():  # the family's own keys, in the types llama.cpp reads them as
        add = writer.add_float32 if isinstance(value, float) else writer.add_uint32
        add(f"{writer.arch}.{key}", value)
    file_type = gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32
    writer.add_file_type(int(file_type))

    writer.add_tokenizer_model(tok["model"])
    writer.add_tokenizer_pre(tok["pre"])
    writer.add_token_list(tok["tokens"])
    if tok["model"] == "llama":
        writer.add_token_scores(tok["scores"])
    writer.add_token_types(tok["token_types"])
    # llama.cpp's "llama" vocabulary tokenizes by the scores alone; transformers' reader takes these
    # merges when they are there (it derives them from the scores otherwise)
    if tok["merges"] or tok["model"] == "gpt2":
        writer.add_token_merges(tok["merges"])
    setters = {
        "bos": writer.add_bos_token_id,
        "eos": writer.add_eos_token_id,
        "unk": writer.add_unk_token_id,
        "pad": writer.add_pad_token_id,
    }
    for key, token_id in tok["special"].items():
        setters[key](token_id)
    writer.add_add_bos_token(tok["add_bos"])
    writer.add_add_eos_token(tok["add_eos"])
    writer.add_add_space_prefix(tok["add_space_prefix"])
    if tok["chat_template"]:
        writer.add_chat_template(tok["chat_template"])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _general_name(config: dict, model_dir: Path, tokens: list[str]) -> str | None:
    """general.name: the model's own name, or None (the key left out) where llama.cpp would take the name
    for Phi-3's and stop on a vocabulary without Phi-3's tokens (e.g. a tiny Phi-3 in a directory `phi3`
    with a borrowed tokenizer). Nothing is lost but the label: llama.cpp builds the model from
    general.architecture, and transformers reads the name only to tell a "mistral" from a "llama"."""
    name = str(config.get("_name_or_path") or config.get("_model_name_or_path") or model_dir.name)
    if any(n in name.lower() for n in _PHI3_NAMES) and not set(_PHI3_TOKENS) <= set(tokens):
        return None
    return name


def _permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's `LlamaModel.permute`: per head, interleave the two rotary halves of the rows."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _gguf_name(hf_name: str, family: Family) -> str | None:
    if hf_name in GLOBAL_NAMES:
        return GLOBAL_NAMES[hf_name]
    m = _LAYER_RE.match(hf_name)
    if not m or m.group(2) not in family.layer_names:
        return None
    if m.group(3) == "bias" and m.group(2) not in family.biases:
        return None
    return f"blk.{m.group(1)}.{family.layer_names[m.group(2)]}.{m.group(3)}"


def _safetensors_files(model_dir: Path) -> list[Path]:
    from safetensors import SafetensorError, safe_open  # heavy: deferred until the weights are read

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ModelError(f"{model_dir}: no *.safetensors weights (only safetensors checkpoints can be exported)")
    for file in files:  # every header readable before the first byte of GGUF is written
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except (SafetensorError, OSError) as e:
            raise ModelError(f"{file}: not a readable safetensors file (truncated or damaged?): {e}") from None
    return files


def _gguf_tensors(model_dir: Path, family: Family, hp: dict, dtype: str) -> Iterator[tuple[str, np.ndarray]]:
    import torch  # heavy: deferred until the weights are written
    from safetensors import safe_open

    np_dtype = np.float16 if dtype == "f16" else np.float32
    seen: set[str] = set()
    for file in _safetensors_files(model_dir):
        with safe_open(str(file), framework="pt") as f:
            for hf_name in f.keys():
                if hf_name.endswith("rotary_emb.inv_freq"):  # a buffer some old checkpoints saved
                    continue
                if hf_name == "lm_head.weight" and hp["tie_word_embeddings"]:
                    continue  # tied: llama.cpp and transformers reuse token_embd when `output` is absent
                name = _gguf_name(hf_name, family)
                if name is None:
                    raise ModelError(f"{file}: tensor '{hf_name}' has no {family.arch} GGUF equivalent")
                array = f.get_tensor(hf_name).to(torch.float32).numpy()
                if family.permute_qk and ".attn_q." in name:
                    array = _permute_qk(array, hp["head_count"])
                elif family.permute_qk and ".attn_k." in name:
                    array = _permute_qk(array, hp["head_count_kv"])
                if family.norm_offset and name.endswith("norm.weight"):  # in f32: the norms stay f32
                    array = array + np.float32(family.norm_offset)
                array = np.ascontiguousarray(array.astype(np_dtype if array.ndim >= 2 else np.float32))
                seen.add(name)
                yield name, array
    expected = {"token_embd.weight", "output_norm.weight"}
    if not hp["tie_word_embeddings"]:
        expected.add("output.weight")
    for i in range(hp["block_count"]):
        expected |= {f"blk.{i}.{n}.weight" for n in family.layer_names.values()}
        expected |= {f"blk.{i}.{family.layer_names[m]}.bias" for m in family.biases}
    missing = sorted(expected - seen)
    if missing:
        raise ModelError(
            f"{model_dir}: weights missing for GGUF tensors {', '.join(missing[:6])}"
            f"{' ...' if len(missing) > 6 else ''}"
        )
