"""Tiny random models of each decoder family, built from its transformers config.

Two layers, hidden 64, the SmolLM2 tokenizer's vocabulary, and each family's peculiarity made small
enough for test examples to meet it: sliding windows of 16 tokens where the family has them (examples
run to ~40), soft-capping with small caps where it has it, Granite's scaled logits. Weights are drawn
with a wide initialiser so that attention and logits are far from uniform and a wrong mask or a
missed cap changes the loss.
"""

from __future__ import annotations

from pathlib import Path

import torch

WINDOW = 16
COMMON = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    initializer_range=0.2,
    tie_word_embeddings=True,
)
SLIDING_THEN_FULL = ["sliding_attention", "full_attention"]


def tiny_config(family: str, vocab_size: int, pad_id: int):
    """The transformers config of `family`'s tiny model."""
    import transformers as tf

    extra: dict = {}
    if family == "llama":
        cls = tf.LlamaConfig
    elif family == "mistral":
        cls, extra = tf.MistralConfig, dict(sliding_window=WINDOW)
    elif family == "qwen2":
        cls, extra = (
            tf.Qwen2Config,
            dict(use_sliding_window=True, sliding_window=WINDOW, max_window_layers=0, layer_types=SLIDING_THEN_FULL),
        )
    elif family == "qwen3":
        cls, extra = (
            tf.Qwen3Config,
            dict(use_sliding_window=True, sliding_window=WINDOW, max_window_layers=0, layer_types=SLIDING_THEN_FULL),
        )
    elif family == "gemma2":
        cls, extra = (
            tf.Gemma2Config,
            dict(
                sliding_window=WINDOW,
                layer_types=SLIDING_THEN_FULL,
                attn_logit_softcapping=2.0,
                final_logit_softcapping=3.0,
                query_pre_attn_scalar=16,
            ),
        )
    elif family == "gemma3":
        cls, extra = (
            tf.Gemma3TextConfig,
            dict(
                sliding_window=WINDOW,
                layer_types=SLIDING_THEN_FULL,
                final_logit_softcapping=3.0,
                query_pre_attn_scalar=16,
            ),
        )
    elif family == "phi3":
        cls, extra = tf.Phi3Config, dict(sliding_window=WINDOW)
    elif family == "olmo2":
        cls = tf.Olmo2Config
    elif family == "granite":
        cls, extra = (
            tf.GraniteConfig,
            dict(logits_scaling=4.0, attention_multiplier=0.1, embedding_multiplier=2.0, residual_multiplier=0.5),
        )
    elif family == "smollm3":
        cls, extra = (
            tf.SmolLM3Config,
            dict(use_sliding_window=True, sliding_window=WINDOW, layer_types=SLIDING_THEN_FULL, no_rope_layers=[1, 0]),
        )
    else:
        raise KeyError(family)
    return cls(**COMMON, **extra, vocab_size=vocab_size, pad_token_id=pad_id)


FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3", "olmo2", "granite", "smollm3")


def build_tiny(family: str, tokenizer, out: Path, seed: int = 0) -> Path:
    """A random `family` model with `tokenizer` saved in `out` (a Hugging Face directory)."""
    from transformers import AutoModelForCausalLM

    if (out / "config.json").is_file():
        return out
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, len(tokenizer), tokenizer.pad_token_id))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
