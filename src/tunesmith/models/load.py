"""Load a tokenizer and a causal LM from a local Hugging Face directory, full precision or NF4."""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from tunesmith.errors import ConfigError, ModelError
from tunesmith.models.attention import use_packed_attention
from tunesmith.models.kernels import use_liger_kernels

if TYPE_CHECKING:
    from bitsandbytes.nn import Linear4bit


def quiet_libraries() -> None:
    """Keep third-party chatter (load bars, optional-kernel notices) off a user's terminal."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in ("transformers", "bitsandbytes", "peft", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging  # heavy: transformers, deferred until used

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
    warnings.filterwarnings("ignore", module="peft")
    warnings.filterwarnings("ignore", module="bitsandbytes")
    warnings.filterwarnings("ignore", message=".*torch_dtype.*")
    warnings.filterwarnings("ignore", category=FutureWarning)


def select_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device: unknown device '{name}' (auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: '{name}' asked for but no CUDA device is available")
    return device


# what the matmul kernels may use, ascending: name -> (label, the /proc/cpuinfo flags it needs)
CPU_ISAS = {
    "baseline": ("no AVX2", set()),
    "avx2": ("AVX2", {"avx2", "fma"}),
    "avx512": ("AVX-512", {"avx512f", "avx512bw"}),
    "avx512_bf16": ("AVX-512 BF16", {"avx512_bf16"}),
    "amx": ("AMX", {"amx_bf16", "amx_tile"}),  # and the kernel granting the tiles (_is_amx_tile_supported)
}
# the emulation caps (ONEDNN_MAX_CPU_ISA for oneDNN's matmuls, ATEN_CPU_CAPABILITY for ATen's vector kernels,
# MKL_ENABLE_INSTRUCTIONS for MKL's: fp32 torch.mm goes to MKL, which the other two leave on AVX-512)
_ONEDNN_CAP = {"sse41": "baseline", "avx": "baseline", "avx2": "avx2", "avx2_vnni": "avx2", "avx2_vnni_2": "avx2"}
_ONEDNN_CAP |= {"avx512_core": "avx512", "avx512_core_vnni": "avx512", "avx512_core_bf16": "avx512_bf16"}
_ATEN_CAP = {"default": "baseline", "avx2": "avx2", "avx512": "amx"}  # ATen has no bf16 level of its own
_MKL_CAP = {"sse4_2": "baseline", "avx": "baseline", "avx2": "avx2", "avx512": "avx512", "avx512_e1": "avx512"}


def cpu_isa(cpuinfo: str | None = None) -> str:
    """The best of CPU_ISAS this CPU has (/proc/cpuinfo's flags; AMX only where the kernel grants its tiles),
    capped by ONEDNN_MAX_CPU_ISA, ATEN_CPU_CAPABILITY and MKL_ENABLE_INSTRUCTIONS, so that an emulated AVX2
    machine says AVX2."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    flags = set(next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), []))
    tiles = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    found = "baseline"
    for isa, (_, needs) in CPU_ISAS.items():
        if needs <= flags and (isa != "amx" or tiles()):
            found = isa
    caps = [
        _ONEDNN_CAP.get(os.environ.get("ONEDNN_MAX_CPU_ISA", "").lower(), "amx"),
        _ATEN_CAP.get(os.environ.get("ATEN_CPU_CAPABILITY", "").lower(), "amx"),
        _MKL_CAP.get(os.environ.get("MKL_ENABLE_INSTRUCTIONS", "").lower(), "amx"),
    ]
    return min([found, *caps], key=list(CPU_ISAS).index)


def cpu_has_fast_bf16() -> bool:
    """AMX tiles: bf16 matmuls ran ~1.5x faster than fp32 for SmolLM2 training on this project's AMX machine.
    Without them (AVX-512 BF16 has no tiles; AVX2 converts every bf16 value) fp32 is the faster choice."""
    return cpu_isa() == "amx"


def cpu_description() -> str:
    """`cpu (AVX2)`: the device with the instruction set its matmuls use, for a run's first lines."""
    return f"cpu ({CPU_ISAS[cpu_isa()][0]})"


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device` (None: plain fp32).

    auto: bf16 on GPUs that support it and on CPUs with AMX; fp32 elsewhere (bf16 without hardware
    support is slower than fp32 on a CPU). Weights, gradients and optimizer state stay fp32 either way.
    """
    if precision == "fp32":
        return None
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
    else:
        supported = cpu_has_fast_bf16()
    if precision == "bf16":
        if device.type == "cuda" and not supported:
            raise ConfigError("train.precision: bf16 asked for but this GPU does not support it")
        return torch.bfloat16
    return torch.bfloat16 if supported else None  # auto


def needs_remote_code(path: Path) -> bool:
    """Whether the model directory's architecture is Python code shipped in it (config.json's `auto_map`
    for a `model_type` transformers does not have), which only trust_remote_code=True loads."""
    config_file = Path(path) / "config.json"
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"{config_file}: unreadable ({e})") from None
    if not isinstance(config, dict):
        raise ModelError(f"{config_file}: not a JSON object")
    if not config.get("auto_map"):
        return False
    from transformers import CONFIG_MAPPING  # heavy: transformers, deferred until a local model is named

    return config.get("model_type") not in CONFIG_MAPPING


def load_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer  # heavy: transformers, deferred until used

    # a directory with its own code reaches here only through resolve_model_dir(..., trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=needs_remote_code(model_dir))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError(f"{model_dir}: the tokenizer has no chat template; tunesmith renders data with it")
    return tokenizer


def damaged_weights(model_dir: Path) -> Path | None:
    """The first *.safetensors file of `model_dir` whose header does not read (truncated, not safetensors)."""
    from safetensors import SafetensorError, safe_open  # heavy: deferred until a load failed

    for path in sorted(model_dir.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except (SafetensorError, OSError):
            return path
    return None


def nf4_config(compute_dtype: torch.dtype):
    """4-bit NormalFloat with double quantization (the QLoRA paper's storage for the frozen base)."""
    from transformers import BitsAndBytesConfig  # heavy: transformers, deferred until used

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def load_model(
    model_dir: Path, device: torch.device, quantize_4bit: bool = False, compute_dtype: torch.dtype = torch.float32
):
    """The causal LM in float32 weights (or NF4 for QLoRA) on `device`, in eval mode, attending per packed example,
    on Liger's fused kernels where they apply (models/kernels.py: CUDA, installed, TUNESMITH_LIGER not 0)."""
    from transformers import AutoModelForCausalLM  # heavy: transformers, deferred until used

    quiet_libraries()
    # a directory with its own code reaches here only through resolve_model_dir(..., trust_remote_code=True)
    kwargs: dict[str, Any] = {"dtype": torch.float32, "trust_remote_code": needs_remote_code(model_dir)}
    if quantize_4bit:
        kwargs.update(quantization_config=nf4_config(compute_dtype), device_map={"": str(device)})
    from safetensors import SafetensorError  # heavy: deferred with transformers

    try:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), **kwargs)
    except SafetensorError as e:  # a truncated or damaged weight file: name it
        raise ModelError(f"{damaged_weights(Path(model_dir)) or model_dir}: cannot load model: {e}") from None
    except (OSError, ValueError) as e:
        raise ModelError(f"{model_dir}: cannot load model: {e}") from None
    if quantize_4bit:
        own_unquantized_weights(model)
    else:
        model.to(device)  # type: ignore[arg-type]  # transformers wraps `to` in functools.wraps, typed as unbound
    use_packed_attention(model)
    use_liger_kernels(model, device)
    model.eval()
    return model


def own_unquantized_weights(model: torch.nn.Module) -> None:
    """Copy a 4-bit model's unquantized weights (embedding, norms, head) out of the checkpoint's mapping.

    transformers memory-maps the *.safetensors file and fp32 weights stay views of it. Quantising read
    every fp32 linear once, and those pages stay resident for as long as the mapping lives, which is as
    long as any tensor still views it: the embedding alone kept ~400 MB of SmolLM2's dead fp32 linears
    in the process's RSS. Owning the few unquantized weights lets the mapping go.
    """
    import bitsandbytes as bnb  # heavy: deferred until used

    for param in model.parameters():  # each once: parameters() skips tied duplicates
        if not isinstance(param, bnb.nn.Params4bit):
            param.data = param.data.clone()


def keep_4bit_differentiable(model: torch.nn.Module) -> int:
    """Stop bitsandbytes from repacking NF4 weights for CPU inference inside a model that trains.

    bitsandbytes 0.50, on CPUs with AVX512-BF16, repacks a Linear4bit's weight the first time it runs
    in eval mode without grad (an evaluation pass, or DPO's reference log-probs) and from then on
    uses a kernel with no autograd: later training forwards silently stop propagating gradients
    through the frozen base, so every adapter below the top layer gets a wrong gradient. Returns the
    number of layers switched to the differentiable path.
    """
    count = 0
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            cast("Linear4bit", module).support_avx512bf16_for_cpu = False  # the flag only bitsandbytes' Linear4bit has
            count += 1
    return count


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes held by parameters and buffers as stored (4-bit weights count as packed bytes)."""
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def fp32_weight_bytes(model: torch.nn.Module) -> int:
    """What the same weights take in float32 (a 4-bit weight knows its logical shape)."""
    total = 0
    for p in model.parameters():
        shape = getattr(getattr(p, "quant_state", None), "shape", None)
        total += (torch.Size(shape).numel() if shape is not None else p.numel()) * 4
    return total
