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


def test_4bit_model_keeps_no_view_of_the_checkpoint_mapping(tiny_dir):
    """After NF4 quantisation no weight views the mapped *.safetensors file, so the mapping (and the
    resident pages of the fp32 linears read once to quantise them) can go."""
    from pathlib import Path

    import pytest
    import torch

    maps = Path("/proc/self/maps")
    if not maps.exists():
        pytest.skip("needs /proc/self/maps (Linux)")
    from tunesmith.models import load_model

    model = load_model(tiny_dir, torch.device("cpu"), quantize_4bit=True)
    ranges = []
    for line in maps.read_text().splitlines():
        if line.endswith(".safetensors") and str(tiny_dir) in line:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            ranges.append((lo, hi))
    inside = [n for n, p in model.named_parameters() if any(lo <= p.data_ptr() < hi for lo, hi in ranges)]
    assert not inside, inside
    unquantized = [n for n, p in model.named_parameters() if p.dtype == torch.float32]
    assert unquantized  # the embedding and norms were copied, not dropped


def test_the_cpu_isa_is_read_from_the_flags_and_capped_by_the_emulation_variables(monkeypatch):
    import torch

    from tunesmith.models.load import cpu_isa

    for name in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS"):
        monkeypatch.delenv(name, raising=False)
    sapphire_rapids = "processor : 0\nflags : fpu sse4_1 avx2 fma avx512f avx512bw avx512_bf16 amx_bf16 amx_tile\n"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert cpu_isa(sapphire_rapids) == "amx"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)  # a kernel that grants no tiles
    assert cpu_isa(sapphire_rapids) == "avx512_bf16"
    assert cpu_isa("flags : sse4_1 avx2 fma avx512f avx512bw\n") == "avx512"
    assert cpu_isa("flags : sse4_1 avx2 fma\n") == "avx2"  # this project's AMD EPYC
    assert cpu_isa("flags : sse4_1\n") == "baseline"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")  # the emulation of an AVX2-only machine
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert cpu_isa(sapphire_rapids) == "avx2"
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx512")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    assert cpu_isa(sapphire_rapids) == "avx512_bf16"
    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "AVX2")  # fp32 matmuls are MKL's: capped there too
    assert cpu_isa(sapphire_rapids) == "avx2"
