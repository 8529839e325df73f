"""What GGUF export writes for each supported architecture: one `Family` table apiece.

Each table mirrors what llama.cpp's `convert_hf_to_gguf.py` does for that Hugging Face class and what
llama.cpp's loader then assumes (`src/models/<arch>.cpp`); transformers' GGUF reader
(`modeling_gguf_pytorch_utils.py`) is the inverse that the tests round-trip through. A table holds the
tensor names, the value changes on the way (Llama's rotary permutation, Gemma's `1 + w` norms), the
architecture's extra metadata keys, and the config values llama.cpp would silently get wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

# A decoder layer's Hugging Face module -> llama.cpp tensor name (inside `blk.N`), shared by most families.
_DENSE = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
# Gemma 2/3 normalise both before and after attention and the MLP ("sandwich" norms).
_SANDWICH = {
    **_DENSE,
    "post_attention_layernorm": "post_attention_norm",
    "pre_feedforward_layernorm": "ffn_norm",
    "post_feedforward_layernorm": "post_ffw_norm",
}
_QK_NORM = {"self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm"}

GLOBAL_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


@dataclass(frozen=True)
class Family:
    """How one Hugging Face causal-LM class is written as GGUF."""

    label: str
    hf_class: str
    model_type: str
    arch: str  # general.architecture, the prefix of every hyperparameter key
    layer_names: dict[str, str]
    biases: frozenset[str] = frozenset()  # layer modules whose bias is written (the rest must have none)
    activation: str = "silu"  # the one llama.cpp's graph for `arch` computes
    permute_qk: bool = False  # llama.cpp's "llama" graph pairs rotary dims (2i, 2i+1), HF pairs (i, i+d/2)
    norm_offset: float = 0.0  # Gemma's RMSNorm computes x * (1 + w); llama.cpp stores 1 + w and computes x * w
    tied_only: bool = False  # llama.cpp's graph always reuses token_embd as the output projection
    # None: llama.cpp runs every layer with full attention. n: layer i slides iff (i + 1) % n != 0,
    # llama.cpp's fixed `set_swa_pattern(n)` for the architecture.
    swa_period: int | None = None
    # `{arch}.`-less key -> value: int is written as uint32, float as float32 (the types llama.cpp reads)
    metadata: Callable[[dict], dict] = field(default=lambda config: {})
    # Reasons llama.cpp (or transformers' reader) would compute a different model from this config
    refuse: Callable[[dict], list[str]] = field(default=lambda config: [])


def _llama_cpp_attention_scalar(config: dict, layers_27b: int) -> int:
    """llama.cpp does not read query_pre_attn_scalar: it scales queries by 1/sqrt(head_dim), except for
    the 27B models, recognised by their layer count, where it uses hidden_size / num_attention_heads."""
    if config["num_hidden_layers"] == layers_27b:
        return config["hidden_size"] // config["num_attention_heads"]
    return config["head_dim"]


def _gemma_refusals(config: dict, layers_27b: int) -> list[str]:
    expected = _llama_cpp_attention_scalar(config, layers_27b)
    if config.get("query_pre_attn_scalar") != expected:
        why = (
            f"query_pre_attn_scalar {config.get('query_pre_attn_scalar')} (llama.cpp scales queries by "
            f"1/sqrt({expected}) for this shape)"
        )
        return [why]
    return []


def _gemma2_refusals(config: dict) -> list[str]:
    # llama.cpp always soft-caps Gemma 2 (50 and 30 when the keys are absent): an uncapped model cannot be said
    caps = [f"{key} None" for key in ("attn_logit_softcapping", "final_logit_softcapping") if config.get(key) is None]
    return caps + _gemma_refusals(config, layers_27b=46)


def _gemma3_refusals(config: dict) -> list[str]:
    # Gemma 3 has no soft-capping; llama.cpp's sliding-window graph for it never applies one.
    reasons = [
        f"{key} {config[key]}"
        for key in ("attn_logit_softcapping", "final_logit_softcapping")
        if config.get(key) is not None
    ]
    sliding = (config.get("rope_parameters") or {}).get("sliding_attention") or {}
    if sliding.get("rope_theta", 10000.0) != 10000.0:  # llama.cpp hard-codes 10000 for the local layers
        reasons.append(f"sliding-layer rope_theta {sliding['rope_theta']}")
    return reasons + _gemma_refusals(config, layers_27b=62)


LLAMA = Family("Llama", "LlamaForCausalLM", "llama", "llama", _DENSE, permute_qk=True)
# llama.cpp converts MistralForCausalLM as "llama": same tensors, same rotary permutation.
MISTRAL = Family("Mistral", "MistralForCausalLM", "mistral", "llama", _DENSE, permute_qk=True)
QWEN2 = Family(
    "Qwen2",
    "Qwen2ForCausalLM",
    "qwen2",
    "qwen2",
    _DENSE,
    biases=frozenset({"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"}),
)
QWEN3 = Family("Qwen3", "Qwen3ForCausalLM", "qwen3", "qwen3", {**_DENSE, **_QK_NORM})
GEMMA2 = Family(
    "Gemma 2",
    "Gemma2ForCausalLM",
    "gemma2",
    "gemma2",
    _SANDWICH,
    activation="gelu_pytorch_tanh",
    norm_offset=1.0,
    tied_only=True,
    swa_period=2,
    metadata=lambda c: {
        "attn_logit_softcapping": float(c["attn_logit_softcapping"]),
        "final_logit_softcapping": float(c["final_logit_softcapping"]),
        "attention.sliding_window": int(c["sliding_window"]),
    },
    refuse=_gemma2_refusals,
)
GEMMA3 = Family(
    "Gemma 3 (text)",
    "Gemma3ForCausalLM",
    "gemma3_text",
    "gemma3",
    {**_SANDWICH, **_QK_NORM},
    activation="gelu_pytorch_tanh",
    norm_offset=1.0,
    tied_only=True,
    swa_period=6,
    metadata=lambda c: {"attention.sliding_window": int(c["sliding_window"])},
    refuse=_gemma3_refusals,
)
# Phi-3 keeps its fused projections: llama.cpp's phi3 graph reads attn_qkv (q, k, v rows stacked) and
# ffn_up holding [gate; up], exactly HF's qkv_proj and gate_up_proj.
PHI3 = Family(
    "Phi-3",
    "Phi3ForCausalLM",
    "phi3",
    "phi3",
    {
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
        "self_attn.qkv_proj": "attn_qkv",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    },
    # as llama.cpp's converter: 0 marks "no window" (llama.cpp ignores Phi-3 windows either way)
    metadata=lambda c: {
        "attention.sliding_window": int(c.get("sliding_window") or 0),
        "rope.scaling.original_context_length": int(
            c.get("original_max_position_embeddings") or c["max_position_embeddings"]
        ),
    },
)

FAMILIES = {f.hf_class: f for f in (LLAMA, MISTRAL, QWEN2, QWEN3, GEMMA2, GEMMA3, PHI3)}
