"""Turn a GGUF file into a plain Hugging Face directory, and build the tiny random test model."""

from __future__ import annotations

from pathlib import Path

import torch

from tunesmith.models.load import quiet_libraries


def _gguf_tokenizer(gguf: Path):
    from transformers import AutoTokenizer  # heavy: deferred until a model is converted

    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def gguf_to_hf_dir(gguf: Path, out: Path) -> None:
    """Dequantize `gguf` to float32 and save it (safetensors + config + tokenizer) into `out`.

    `save_pretrained` refuses a GGUF-loaded model, so the weights move into a fresh model built from
    the same config (without the GGUF quantization entry).
    """
    from transformers import AutoModelForCausalLM  # heavy: deferred until a model is converted

    quiet_libraries()
    tokenizer = _gguf_tokenizer(gguf)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    fresh.generation_config = loaded.generation_config
    fresh.save_pretrained(out)
    tokenizer.save_pretrained(out)


def tiny_random_llama(gguf: Path, out: Path, seed: int = 0) -> None:
    """A 2-layer, hidden-64 Llama with random weights and the embedded model's tokenizer and chat
    template: real tokenization, fast forward passes."""
    from transformers import LlamaConfig, LlamaForCausalLM  # heavy: deferred until used

    tokenizer = _gguf_tokenizer(gguf)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
