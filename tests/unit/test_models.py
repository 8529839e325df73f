from __future__ import annotations

import json
import os
import stat
import time

import pytest

from tunesmith.errors import ModelError
from tunesmith.models.registry import ALIASES, embedded_gguf_path, resolve_model_dir


def test_unknown_model_lists_aliases():
    with pytest.raises(ModelError) as e:
        resolve_model_dir("no-such-model")
    for alias in ALIASES:
        assert alias in str(e.value)


def test_directory_without_config_is_refused(tmp_path):
    with pytest.raises(ModelError, match="config.json"):
        resolve_model_dir(str(tmp_path))


def test_tiny_model_cache_is_read_only(tiny_dir):
    assert (tiny_dir / "config.json").is_file()
    for p in tiny_dir.iterdir():
        assert not p.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH), p
    config = json.loads((tiny_dir / "config.json").read_text())
    assert config["num_hidden_layers"] == 2 and config["hidden_size"] == 64
    assert resolve_model_dir("tiny-random-llama") == tiny_dir


def test_gguf_file_becomes_a_cached_hf_directory():
    """The embedded model's own GGUF file, given as a path: dequantized once, then served from the cache."""
    from tunesmith.models import load_tokenizer

    gguf = embedded_gguf_path()
    out = resolve_model_dir(str(gguf))
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    assert (out / "model.safetensors").is_file()
    assert load_tokenizer(out).chat_template
    mtime = os.stat(out / "model.safetensors").st_mtime
    start = time.time()
    assert resolve_model_dir(str(gguf)) == out
    assert time.time() - start < 5  # cached: no second conversion
    assert os.stat(out / "model.safetensors").st_mtime == mtime
