"""`tunesmith plan`: parameters, memory, FLOPs, time and cost of a fine-tuning run, before the run.

Pure arithmetic on a model's shape (no torch, no download): a built-in shape, a local Hugging Face
directory or its config.json. Every number below is per GPU (per process) unless it says otherwise.

Notation: d hidden size, f MLP intermediate size, L layers, h attention heads, k key/value heads,
hd head dim (config `head_dim`, else d/h), qd = h·hd, kd = k·hd, V vocabulary; s sequence length,
b micro-batch size, t = b·s tokens per forward, φ the fraction of positions that are trained (carry a
loss: tunesmith puts the loss on assistant turns only), a the activation element size (2 B under
bf16 autocast, 4 B in fp32).

Parameters (the decoder families tunesmith trains, tests/families/: Llama, Mistral, Qwen2, Qwen3, Gemma 2,
Gemma 3, Phi-3, OLMo 2, Granite, SmolLM3; `Shape.family` is the config's model_type)
    per layer   attention  d·qd (q) + 2·d·kd (k, v; grouped-query attention: k < h) + qd·d (o)
                           + qd + 2·kd when the q/k/v projections have biases (Qwen2)
                           + 2·hd with per-head q/k RMSNorms (Qwen3, Gemma 3: one hd-wide weight each)
                           + qd + kd with q/k RMSNorms over the whole projection (OLMo 2)
                gated MLP  3·d·f (gate, up, down)   (+ 2f + d with `mlp_bias`)
                norms      2·d (two RMSNorm weights; Gemma 2/3: 4·d, a norm before and after attention and MLP)
    model       L·layer + d (final norm) + V·d (embedding) + V·d (LM head, only when untied)
    LoRA        r·(d_in + d_out) per targeted linear per layer (A: r×d_in, B: d_out×r); the targets
                are named like `--target` (all-linear: q,k,v,o,gate,up,down; never the LM head). Phi-3
                fuses q/k/v into one linear (qkv_proj, d -> qd + 2·kd) and gate/up into another
                (gate_up_proj, d -> 2f): the same weights, but one adapter each, so fewer LoRA parameters.
    trainable   full: every weight; lora/qlora: the adapter only. total = base (+ adapter).

Memory (tunesmith keeps every weight in fp32 and runs matmuls under bf16 autocast, so there is no
separate fp32 master copy: the weights ARE the master copy)
    weights      full, lora: 4 B × every parameter (adapter included).
                 qlora: block linear weights in NF4: 4 bits + double-quantised absmax ≈ 4.127 bits =
                 0.516 B/param (blocksize 64 with an 8-bit absmax per block = 0.125 bits/param, plus
                 one fp32 second-level constant per 256 blocks = 0.002 bits/param); embedding, LM head,
                 norms and biases stay fp32 (bitsandbytes quantises only the blocks' nn.Linear layers,
                 transformers keeps lm_head out); the adapter is fp32.
    gradients    4 B × trainable (fp32).
    optimizer    AdamW: 8 B × trainable (two fp32 moments).
    activations  saved for backward, per token per layer (HF llama layer, fused SDPA kernel: no s×s
                 score matrix; k and v counted at full width qd because HF repeats kv heads when an
                 attention mask is passed; the residual stream and RMSNorm stay fp32 because the
                 weights are fp32 — HF's RMSNorm upcasts):
                   full        16·d + a·(3d + 4·qd + 2d + 4f)   (bf16: each of q/k/v and of gate/up
                               saves its own autocast copy of the norm output; fp32: one, so 1d + 1d)
                               = norms 2×(input + normalised, fp32) + q/k/v inputs + SDPA (q, k, v, out;
                               o_proj's input is SDPA's output, same storage) + gate/up inputs
                               + MLP (gate, silu(gate), up, their product = down's input)
                   lora/qlora   8·d + a·(4·qd + 3f) + Σ_targets a·(d_in + r)
                               (frozen linears keep no input; each LoRA A keeps its input — in fp32 the
                               linears reading one tensor share it — and each B the r-wide A output)
                 plus, per token, the final norm (4d, 8d for full) and, for full, the LM head input
                 at trained positions (a·d·φ); plus the attention mask, b·s²·a bytes, shared by all layers.
                 Checked against the tensors autograd saves (saved_tensors_hooks) for a small llama on
                 CPU, fp32 and bf16, full and LoRA, with and without checkpointing: within about 5%.
                 Without checkpointing: t·(L·layer + final). With activation (gradient) checkpointing,
                 only each layer's input is kept (fp32 residual, 4d per token per layer) plus one layer's
                 worth during its recompute: t·(L·4d + layer + final). LoRA dropout masks are not counted
                 (tunesmith's default dropout is 0).
                 This is the Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large
                 Transformer Models", sbh·(34 + 5as/h)) count redone for a llama layer: SDPA instead of the
                 5as/h score term, a gated MLP, no dropout, fp32 norms. Other families are counted as that
                 layer (with their own linears: Phi-3's fused ones read one autocast copy each); Gemma's two
                 extra norms and the q/k norms of Qwen3, Gemma 3 and OLMo 2 are not counted.
    weight_copies (bf16 autocast only) the bf16 casts of fp32 weights that autograd keeps for backward:
                 full: 2 B × (block linears + LM head) — trainable leaves are cast once and held by
                 autocast's weight cache until the forward ends, checkpointing or not;
                 lora: 2 B × block linears (÷ L with checkpointing: one layer at a time) + 2 B × adapter
                 + 2 B × V·d (the frozen LM head, cast for the logits chunk in flight; no chunk keeps
                 it); qlora: as lora without the block linears (bitsandbytes keeps the packed 4-bit
                 weight and dequantises it again in backward).
    logits       tunesmith computes logits only at trained positions, 512 rows per matmul, and keeps
                 no vocabulary-wide row for backward (losses/sft.py `_LinearTargetLogps`): with a
                 frozen head it keeps G = (softmax − onehot)·W per trained row, t·φ·d·4 B
                 (`logits_bytes.tunesmith_chunked`); full fine-tuning keeps nothing and recomputes each
                 chunk in backward. In flight: one chunk, min(512, t·φ)·V·(a + 4) B (bf16 logits and
                 their fp32 copy; full: + 4 B for the softmax of the backward's recompute;
                 `chunk_in_flight`); the part `logits` is their sum. The naive size, fp32 logits at every
                 position, t·V·4 B (`naive_full`), is reported beside it (not in the total).
    step_temporaries  4 B × trainable at optimizer-step time: foreach AdamW's sqrt(v) buffer (and, on
                 several GPUs, the flat all-reduce buffer of the same size, at another moment).
    total        the larger of the forward/backward peak and the optimizer-step peak (they do not overlap).
                 With gradient accumulation (more than one micro-batch per process and step) the earlier
                 micro-batches' gradients are held through the next forward:
                   weights + gradients + optimizer + max(activations + weight_copies + logits, step_temporaries)
                 Without, backward frees each layer's activations as it writes that layer's gradients, so
                 the peak is at the start of backward, beside only the LM head's gradient (written first,
                 4·V·d B; full only) — for full fine-tuning of SmolLM2 this is 0.4 GiB less:
                   weights + optimizer + max(activations + weight_copies + logits + head gradient,
                                             gradients + step_temporaries)
                 With --gpus N, lora/qlora processes each hold the whole model (replicated, gradients
                 summed); full fine-tuning is sharded with FSDP2: weights, gradients, optimizer state and
                 step temporaries are divided by N, plus what is gathered at a time: the root unit
                 (embedding, LM head, final norm; gathered for the whole step) and two decoder layers (the
                 one running and the one prefetched), 4 B each. The total is per GPU (process). FSDP's
                 unsharded gradient of the layer being reduced, the CUDA context and allocator
                 fragmentation (often 0.5-2 GiB) are not included.

FLOPs (a multiply-add is 2 FLOPs; N_lin = block linear weights, N_head = V·d, N_lora = adapter)
    full         6·(N_lin + φ·N_head) + 6·L·s·qd per token: forward 2N, backward 4N (activation and
                 weight gradients); the LM head runs at trained positions only; the attention score and
                 value matmuls are 6·L·s·qd (Kaplan et al. 2020's causal count: forward 2·L·s·qd).
    lora, qlora  4·(N_lin + φ·N_head) + 6·N_lora + 6·L·s·qd: frozen weights need the forward 2N and the
                 activation gradients 2N but no weight gradients. QLoRA's dequantisation is not FLOPs;
                 expect it to run slower than LoRA at the same MFU setting.
    checkpointing adds one more forward of the blocks: 2·(N_lin + N_lora) + 2·L·s·qd per token.
    full         also recomputes the head's logits in backward (none are kept): 2·φ·N_head per token.
    run          flops = tokens × (model + recompute) per token; `model_flops` leaves the recompute out.
Time and cost
    hours = flops / (peak × MFU × gpus) / 3600; cost_usd = hours × price per GPU-hour × gpus.
    MFU here is the fraction of the GPU's dense bf16 peak that the executed matmuls reach (default 0.4).
    cpu: the default peak is the throughput tunesmith measured on CPU (see CPU_MEASURED_TFLOPS) with
    MFU 1.0, since that number is already achieved throughput; give --peak-tflops for another machine.

Calibration (tests/calibration/test_plan_calibration.py, run by the test suite): real `tunesmith sft` steps of
SmolLM2-135M-Instruct on the demo data, fp32 on a 2-core CPU, micro-batch 8 rows of ~195 tokens, trained
fraction ~0.22, each in a fresh process (tests/calibration/measure_run.py).
    memory       peak RSS of the training steps above the RSS just before the model loads (VmHWM reset after
                 loading, so load transients are not measured), with glibc's mmap threshold pinned
                 (MALLOC_MMAP_THRESHOLD_=65536) so a freed tensor leaves RSS, against `total`; tolerance 25%:
                   lora 2799 MiB measured / 2744 planned (1.02), qlora 2452 / 2391 (1.03), full 3954 / 3909
                   (1.01; 0.91 before the no-accumulation total above).
                 QLoRA's figure leaves out ~405 MiB of clean, reclaimable pages of the memory-mapped fp32
                 checkpoint, read once to quantise it. With glibc's default malloc, peak RSS ran 1.2-2.0x
                 `total` (lora 4.4-5.3 GiB, full 4.7 GiB): freed activations stay in malloc's arenas. Pinning
                 the threshold removes that but made steps 1.8x slower here (every tensor faults in fresh pages).
    time         the fp32 matmul peak (best 2048³ product: 0.23-0.31 TFLOPS from run to run) and the MFU of
                 LoRA steps of 8 x ~195 tokens against it (0.34-0.56: 0.11-0.13 TFLOPS achieved, default
                 malloc) predict the step time of 8 x 128 tokens within 30%: 3.9-4.5 s predicted, 4.0 s
                 measured (medians, the warm-up step left out).

Tokens of a data file (--data): characters/4 per message plus 4 template tokens per message, each row
cut at --max-length; trained tokens are those of assistant turns with weight 1 (+1 end-of-turn each);
φ = trained / all. With --model a local directory holding a tokenizer and a chat template, rows are
counted exactly with the template instead. Rows are assumed packed (tunesmith's default): no padding.

A training config (`plan_config`; `tunesmith plan --recipe NAME` reads the training command's flags,
--config files and --set keys): s is --max-length (grpo, ppo: --max-prompt-length + --max-new-tokens), a
step's rows are --batch-size examples × the sequences each trains (dpo, reward: chosen and rejected; grpo:
--group-size samples), and the run's length is --data × --epochs or --max-steps (which overrides the epochs, as
in training). Passes without gradients (references, sampling) are not counted; the plan's warnings say which.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from tunesmith.config.load import build_config, leaf_fields
from tunesmith.data.formats import problems_error, read_sft_file
from tunesmith.errors import ConfigError, ModelError
from tunesmith.recipes import RECIPES

METHODS = ("full", "lora", "qlora")
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
FUSED_LINEARS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")  # Phi-3
CHUNK_ROWS = 512  # losses/sft.py CHUNK_ROWS (tested equal; the planner does not import torch)
NF4_BITS = 4 + 8 / 64 + 32 / (64 * 256)  # 4-bit code + 8-bit absmax per 64 + fp32 per 256 blocks = 4.127
GIB = 2**30


@dataclass(frozen=True)
class Shape:
    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool
    head_dim: int | None = None
    qkv_bias: bool = False
    mlp_bias: bool = False
    source: str = ""
    family: str = "llama"  # the config's model_type (Gemma 3's text model: gemma3)
    norms: int = 2  # d-wide RMSNorm weights per layer (Gemma 2/3: 4)
    qk_norm: str = ""  # "head": hd-wide q and k norms (Qwen3, Gemma 3); "full": qd- and kd-wide (OLMo 2)
    fused: bool = False  # q/k/v and gate/up each one linear (Phi-3)

    @property
    def hd(self) -> int:
        return self.head_dim or self.hidden // self.heads


def _family(family: str) -> dict[str, Any]:
    """The `Shape` fields of a family's decoder layer: what it has beyond a llama layer."""
    peculiar: dict[str, dict[str, Any]] = {
        "qwen2": dict(qkv_bias=True),
        "qwen3": dict(qk_norm="head"),
        "gemma2": dict(norms=4),
        "gemma3": dict(norms=4, qk_norm="head"),
        "phi3": dict(fused=True),
        "olmo2": dict(qk_norm="full"),
    }
    return dict(family=family, **peculiar.get(family, {}))


def _shape(
    family: str,
    name: str,
    source: str,
    d: int,
    f: int,
    L: int,
    h: int,
    k: int,
    V: int,
    tied: bool,
    hd: int | None = None,
) -> Shape:
    return Shape(name, d, f, L, h, k, V, tied, hd, source=source, **_family(family))


# Values from each model's published config.json on the Hugging Face hub (hidden_size, intermediate_size,
# num_hidden_layers, num_attention_heads, num_key_value_heads, vocab_size, tie_word_embeddings, head_dim);
# each family's layer from its transformers modelling code (`_family`). Gemma 3 4B: its language model
# (text_config), without the SigLIP vision tower of the released checkpoint.
SHAPES: dict[str, Shape] = {
    s.name: s
    for s in [
        # family, name, source; hidden d, intermediate f, layers L, heads h, kv heads k, vocab V, tied, head_dim
        _shape("llama", "llama-2-7b", "meta-llama/Llama-2-7b-hf", 4096, 11008, 32, 32, 32, 32000, False),
        _shape("llama", "llama-3.1-8b", "meta-llama/Llama-3.1-8B", 4096, 14336, 32, 32, 8, 128256, False),
        _shape("llama", "llama-3.1-70b", "meta-llama/Llama-3.1-70B", 8192, 28672, 80, 64, 8, 128256, False),
        _shape("llama", "smollm2-135m", "HuggingFaceTB/SmolLM2-135M", 576, 1536, 30, 9, 3, 49152, True),
        _shape("mistral", "mistral-7b", "mistralai/Mistral-7B-v0.1", 4096, 14336, 32, 32, 8, 32000, False),
        _shape("qwen2", "qwen2.5-0.5b", "Qwen/Qwen2.5-0.5B", 896, 4864, 24, 14, 2, 151936, True),
        _shape("qwen2", "qwen2.5-7b", "Qwen/Qwen2.5-7B", 3584, 18944, 28, 28, 4, 152064, False),
        _shape("qwen3", "qwen3-0.6b", "Qwen/Qwen3-0.6B", 1024, 3072, 28, 16, 8, 151936, True, 128),
        _shape("qwen3", "qwen3-8b", "Qwen/Qwen3-8B", 4096, 12288, 36, 32, 8, 151936, False, 128),
        _shape("gemma2", "gemma-2-2b", "google/gemma-2-2b", 2304, 9216, 26, 8, 4, 256000, True, 256),
        _shape("gemma3", "gemma-3-1b", "google/gemma-3-1b-pt", 1152, 6912, 26, 4, 1, 262144, True, 256),
        _shape("gemma3", "gemma-3-4b", "google/gemma-3-4b-pt", 2560, 10240, 34, 8, 4, 262208, True, 256),
        _shape("phi3", "phi-3-mini", "microsoft/Phi-3-mini-4k-instruct", 3072, 8192, 32, 32, 32, 32064, False),
        _shape("olmo2", "olmo-2-7b", "allenai/OLMo-2-1124-7B", 4096, 11008, 32, 32, 32, 100352, False),
        _shape("granite", "granite-3.3-8b", "ibm-granite/granite-3.3-8b-base", 4096, 12800, 40, 32, 8, 49159, True),
        _shape("smollm3", "smollm3-3b", "HuggingFaceTB/SmolLM3-3B", 2048, 11008, 36, 16, 4, 128256, True, 128),
    ]
}
SHAPE_ALIASES = {"smollm2-135m-instruct": "smollm2-135m"}


@dataclass(frozen=True)
class Gpu:
    name: str
    peak_tflops: float  # dense bf16 tensor-core peak (no sparsity)
    memory_bytes: int | None


# Peaks: NVIDIA datasheets (H100 SXM5, H200 SXM, A100 80GB SXM, L4) and the Ada Lovelace whitepaper
# (RTX 4090: BF16 with FP32 accumulate); dense, i.e. half the "with sparsity" figure. Memory: the total
# nvidia-smi reports (MiB) for each card.
# CPU: tunesmith's own measured throughput, bench/results/sft_vs_trl-2026-11-28-vm.json: LoRA r16
# all-linear on SmolLM2-135M, fp32, seq 128, 2 threads of a VM: 190 tokens/s × 0.49 GFLOPs/token
# (this module's count, trained fraction 0.23 of the demo data) ≈ 0.094 TFLOPS achieved. It scales
# roughly with cores and is used with MFU 1.0: give --peak-tflops (and --mfu) for another machine.
CPU_MEASURED_TFLOPS = 0.095
GPUS: dict[str, Gpu] = {
    "h100": Gpu("NVIDIA H100 SXM 80GB", 989.4, 81559 * 2**20),
    "h200": Gpu("NVIDIA H200 SXM 141GB", 989.4, 143771 * 2**20),
    "a100-80g": Gpu("NVIDIA A100 80GB SXM", 312.0, 81920 * 2**20),
    "l4": Gpu("NVIDIA L4 24GB", 121.0, 23034 * 2**20),
    "4090": Gpu("NVIDIA GeForce RTX 4090 24GB", 165.2, 24564 * 2**20),
    "cpu": Gpu("CPU", CPU_MEASURED_TFLOPS, None),
}
DEFAULT_MFU = 0.4


# ---------------------------------------------------------------------------------------------- shapes


TIED_BY_DEFAULT = ("gemma2", "gemma3", "smollm3")  # transformers' default tie_word_embeddings for these


def shape_from_config(config: dict, name: str) -> Shape:
    """A Shape from a Hugging Face config.json (a decoder of one of the families above; Gemma 3's
    multimodal config: its text model)."""
    outer = config
    config = config.get("text_config", config) if "hidden_size" not in config else config
    missing = [
        k
        for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
        if not isinstance(config.get(k), int)
    ]
    if missing:
        raise ModelError(
            f"{name}: config.json lacks {', '.join(missing)}; plan knows the decoders of Llama, Mistral, "
            "Qwen2, Qwen3, Gemma 2, Gemma 3, Phi-3, OLMo 2, Granite and SmolLM3"
        )
    family = str(config.get("model_type") or outer.get("model_type", "")).removesuffix("_text")
    tied = config.get("tie_word_embeddings", outer.get("tie_word_embeddings", family in TIED_BY_DEFAULT))
    layer = _family(family)
    return Shape(
        name=name,
        hidden=config["hidden_size"],
        intermediate=config["intermediate_size"],
        layers=config["num_hidden_layers"],
        heads=config["num_attention_heads"],
        kv_heads=config.get("num_key_value_heads") or config["num_attention_heads"],
        vocab=config["vocab_size"],
        tied=bool(tied),
        head_dim=config.get("head_dim"),
        qkv_bias=bool(config.get("attention_bias", layer.pop("qkv_bias", False))),
        mlp_bias=bool(config.get("mlp_bias", False)),
        source=name,
        **layer,
    )


def resolve_shape(model: str) -> tuple[Shape, Path | None]:
    """(shape, local model directory or None) for a built-in name, a HF directory or a config.json path."""
    key = model.strip().lower()
    key = SHAPE_ALIASES.get(key, key)
    if key in SHAPES:
        return SHAPES[key], None
    path = Path(model).expanduser()
    config_path = path / "config.json" if path.is_dir() else path
    if config_path.is_file() and config_path.suffix == ".json":
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ModelError(f"{config_path}: cannot read config: {e}") from None
        if not isinstance(config, dict):
            raise ModelError(f"{config_path}: not a Hugging Face config (a JSON object)")
        return shape_from_config(config, str(model)), config_path.parent
    known = ", ".join([*SHAPES, *SHAPE_ALIASES])
    raise ConfigError(
        f"--model: unknown model '{model}': not a built-in shape, a Hugging Face directory "
        f"(with config.json) or a config.json file. Built-in shapes: {known}"
    )


def linear_dims(shape: Shape) -> dict[str, tuple[int, int]]:
    """(d_in, d_out) of each linear layer of one block, by its module name."""
    d, f, qd, kd = shape.hidden, shape.intermediate, shape.heads * shape.hd, shape.kv_heads * shape.hd
    if shape.fused:
        return {"qkv_proj": (d, qd + 2 * kd), "o_proj": (qd, d), "gate_up_proj": (d, 2 * f), "down_proj": (f, d)}
    return {
        "q_proj": (d, qd),
        "k_proj": (d, kd),
        "v_proj": (d, kd),
        "o_proj": (qd, d),
        "gate_proj": (d, f),
        "up_proj": (d, f),
        "down_proj": (f, d),
    }


def parse_targets(target: str, shape: Shape | None = None) -> list[str]:
    """The linear layers LoRA adapts: `all-linear` (every block linear, not the LM head) or a list such as
    q_proj,v_proj, named as in `shape`'s block (Phi-3: qkv_proj, gate_up_proj). Same syntax as
    tunesmith.adapters.lora.parse_targets (kept torch-free here)."""
    linears = FUSED_LINEARS if shape is not None and shape.fused else LINEARS
    target = target.strip()
    if target == "all-linear":
        return list(linears)
    names = [t.strip() for t in target.split(",") if t.strip()]
    if not names:
        raise ConfigError("--target: empty; use all-linear or a list such as q_proj,v_proj")
    unknown = [t for t in names if t not in linears]
    if unknown:
        raise ConfigError(
            f"--target: no layer named {', '.join(unknown)} in a {shape.family if shape else 'llama'} block; "
            f"its linear layers are {', '.join(linears)}"
        )
    return list(dict.fromkeys(names))


# ------------------------------------------------------------------------------------------ parameters


def parameter_counts(shape: Shape, method: str = "full", r: int = 16, targets: list[str] | None = None) -> dict:
    d, f, L, V = shape.hidden, shape.intermediate, shape.layers, shape.vocab
    dims = linear_dims(shape)
    qd, kd = shape.heads * shape.hd, shape.kv_heads * shape.hd
    block_linear = L * sum(i * o for i, o in dims.values())
    biases = L * ((qd + 2 * kd if shape.qkv_bias else 0) + (2 * f + d if shape.mlp_bias else 0))
    qk_norms = {"": 0, "head": 2 * shape.hd, "full": qd + kd}[shape.qk_norm]
    norms = L * (shape.norms * d + qk_norms) + d
    embedding = V * d
    lm_head = 0 if shape.tied else V * d
    base = block_linear + biases + norms + embedding + lm_head
    lora = 0
    if method in ("lora", "qlora"):
        lora = L * sum(r * (dims[t][0] + dims[t][1]) for t in targets or dims)
    total = base + lora
    trainable = base if method == "full" else lora
    return {
        "total": total,
        "trainable": trainable,
        "base": base,
        "block_linear": block_linear,
        "biases": biases,
        "norms": norms,
        "embedding": embedding,
        "lm_head": lm_head,
        "lora": lora,
        "head_matmul": V * d,
    }


# ---------------------------------------------------------------------------------------------- memory


def activation_bytes_per_token_layer(shape: Shape, method: str, targets: list[str], r: int, act_bytes: int) -> int:
    """Bytes one decoder layer saves for backward per token (formula in the module docstring)."""
    a, d, f = act_bytes, shape.hidden, shape.intermediate
    dims = linear_dims(shape)
    qd = shape.heads * shape.hd
    bf16 = a == 2
    sdpa = a * 4 * qd  # q, k, v (kv heads repeated to h) and the output
    if method == "full":  # under autocast each linear keeps its own bf16 copy of its input (Phi-3: one of each)
        qkv_in = (3 if bf16 and not shape.fused else 1) * a * d
        mlp_in = (2 if bf16 and not shape.fused else 1) * a * d
        return 16 * d + qkv_in + sdpa + mlp_in + 4 * a * f  # o_proj's input is SDPA's output (same storage)
    lora = 0
    if bf16:  # each LoRA A casts (and keeps) its own copy of its input
        lora += sum(a * dims[t][0] for t in targets)
    else:  # fp32: linears that read the same tensor keep it once
        groups = {
            "q_proj": "attn_in",
            "k_proj": "attn_in",
            "v_proj": "attn_in",
            "qkv_proj": "attn_in",
            "o_proj": "o_in",
            "gate_proj": "mlp_in",
            "up_proj": "mlp_in",
            "gate_up_proj": "mlp_in",
            "down_proj": "down_in",
        }
        lora += sum(a * dims[next(t for t in targets if groups[t] == g)][0] for g in {groups[t] for t in targets})
    lora += len(targets) * a * r
    return 8 * d + sdpa + 3 * a * f + lora


def memory_breakdown(
    shape: Shape,
    method: str,
    counts: dict,
    targets: list[str],
    r: int,
    seq_len: int,
    micro_batch: int,
    checkpointing: bool,
    act_bytes: int,
    trained_fraction: float,
    accumulating: bool = True,
    shards: int = 1,
) -> dict:
    d, L, V = shape.hidden, shape.layers, shape.vocab
    full = method == "full"
    T = counts["trainable"]
    if method == "qlora":
        nf4 = math.ceil(counts["block_linear"] * NF4_BITS / 8)
        weights = nf4 + 4 * (counts["total"] - counts["block_linear"])
    else:
        weights = 4 * counts["total"]
    tokens = micro_batch * seq_len
    trained = max(1, math.ceil(tokens * trained_fraction))
    per_layer = activation_bytes_per_token_layer(shape, method, targets, r, act_bytes)
    final = (8 * d + act_bytes * d * trained_fraction) if full else 4 * d
    mask = micro_batch * seq_len * seq_len * act_bytes
    act_plain = int(tokens * (L * per_layer + final) + mask)
    act_ckpt = int(tokens * (L * 4 * d + per_layer + final) + mask)
    if act_bytes == 2:
        head = 2 * V * d  # full: autocast's cached cast of the head; lora: one chunk's cast at a time
        if full:
            blocks = 2 * counts["block_linear"]
        elif method == "lora":
            blocks = 2 * counts["block_linear"] // (L if checkpointing else 1) + 2 * counts["lora"]
        else:
            blocks = 2 * counts["lora"]
        copies = blocks + head
    else:
        copies = 0
    kept = 0 if full else trained * d * 4  # G_t = (p_t - onehot) W per trained row; full keeps none
    per_row = (act_bytes + 4 if act_bytes == 2 else 4) + (4 if full else 0)  # z fp32 (+ bf16); full: + softmax
    in_flight = min(CHUNK_ROWS, trained) * V * per_row
    logits = kept + in_flight
    grads, optim, temps = 4 * T, 8 * T, 4 * T
    if full and shards > 1:  # FSDP2: each process keeps 1/N of everything, plus what is gathered at a time
        layer = (counts["total"] - counts["embedding"] - counts["lm_head"] - d) // L
        gathered = 4 * (counts["embedding"] + counts["lm_head"] + d) + 2 * 4 * layer
        weights, grads, optim, temps = weights // shards + gathered, grads // shards, optim // shards, temps // shards
    parts = {
        "weights": weights,
        "gradients": grads,
        "optimizer": optim,
        "activations": act_ckpt if checkpointing else act_plain,
        "weight_copies": copies,
        "logits": logits,
        "step_temporaries": temps,
    }
    forward_backward = parts["activations"] + parts["weight_copies"] + parts["logits"]
    if accumulating:  # the micro-batches before this one left their gradients in .grad
        parts["total"] = (
            parts["weights"]
            + parts["gradients"]
            + parts["optimizer"]
            + max(forward_backward, parts["step_temporaries"])
        )
    else:  # backward frees each layer's activations as it writes that layer's gradients
        head_gradient = 4 * counts["head_matmul"] if full else 0  # the LM head's, written first
        parts["total"] = (
            parts["weights"]
            + parts["optimizer"]
            + max(forward_backward + head_gradient, parts["gradients"] + parts["step_temporaries"])
        )
    return {
        "memory_bytes": parts,
        "activations_bytes": {
            "without_checkpointing": act_plain,
            "with_checkpointing": act_ckpt,
            "per_token_per_layer": per_layer,
        },
        "logits_bytes": {"naive_full": tokens * V * 4, "tunesmith_chunked": kept, "chunk_in_flight": in_flight},
    }


# ----------------------------------------------------------------------------------------------- flops


def flops_per_token(
    shape: Shape, method: str, counts: dict, seq_len: int, checkpointing: bool, trained_fraction: float
) -> dict:
    L, qd = shape.layers, shape.heads * shape.hd
    lin = counts["block_linear"] + trained_fraction * counts["head_matmul"]
    attention = 6 * L * seq_len * qd
    if method == "full":
        model = 6 * lin + attention
    else:
        model = 4 * lin + 6 * counts["lora"] + attention
    recompute = 2 * (counts["block_linear"] + counts["lora"]) + 2 * L * seq_len * qd if checkpointing else 0
    if method == "full":  # a trainable head's logits are recomputed chunk by chunk in backward (losses/sft.py)
        recompute += 2 * trained_fraction * counts["head_matmul"]
    return {
        "model": int(model),
        "recompute": int(recompute),
        "executed": int(model + recompute),
        "attention": int(attention),
    }


# ------------------------------------------------------------------------------------------------ data


def _local_tokenizer(model_dir: Path | None):
    if model_dir is None or not (model_dir / "tokenizer_config.json").is_file():
        return None
    try:
        from transformers import AutoTokenizer  # heavy: deferred for CLI start-up

        tok = AutoTokenizer.from_pretrained(str(model_dir))
    except Exception:  # an unreadable tokenizer falls back to the estimate
        return None
    return tok if getattr(tok, "chat_template", None) else None


def count_data_tokens(path: str | Path, seq_len: int, model_dir: Path | None = None) -> dict:
    """Tokens and trained tokens of one pass over an SFT JSONL file (see the module docstring)."""
    parsed = read_sft_file(path)
    if parsed.problems:
        raise problems_error(parsed.path, parsed.problems)
    tok = _local_tokenizer(model_dir)
    tokens = trained = 0
    for row in parsed.rows:
        if tok is not None:
            msgs = [{"role": m["role"], "content": m["content"]} for m in row.messages]
            n = len(tok.apply_chat_template(msgs, tokenize=True, return_dict=True)["input_ids"])
            t = sum(
                len(tok(m["content"], add_special_tokens=False)["input_ids"]) + 1
                for m in row.messages
                if m["role"] == "assistant" and m["weight"]
            )
        else:
            n = sum(math.ceil(len(m["content"]) / 4) + 4 for m in row.messages)
            t = sum(
                math.ceil(len(m["content"]) / 4) + 1 for m in row.messages if m["role"] == "assistant" and m["weight"]
            )
        n = min(n, seq_len)
        tokens += n
        trained += min(t, n)
    return {
        "rows": len(parsed.rows),
        "tokens": tokens,
        "trained_tokens": trained,
        "method": "tokenizer" if tok is not None else "chars/4 + 4 per message",
    }


# ------------------------------------------------------------------------------------------------ plan


def _host_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def fitting_flags(method: str, gradient_checkpointing: bool, micro_batch_size: int) -> list[str]:
    """What would make a run that does not fit need less memory, from its method and settings."""
    return [
        flag
        for flag, helps in (
            ("--method lora", method == "full"),
            ("--method qlora", method != "qlora"),
            ("--gradient-checkpointing", not gradient_checkpointing),
            ("a smaller --micro-batch-size", micro_batch_size > 1),
            ("a shorter --max-length", True),
        )
        if helps
    ]


def plan(
    model: str,
    method: str,
    lora_r: int = 16,
    target: str = "all-linear",
    seq_len: int = 512,
    batch_size: int = 8,
    micro_batch_size: int | None = None,
    tokens: int | None = None,
    data: str | None = None,
    epochs: int | None = None,
    gpu: str = "h100",
    gpus: int = 1,
    price_per_hour: float | None = None,
    mfu: float | None = None,
    peak_tflops: float | None = None,
    gradient_checkpointing: bool = False,
    precision: str | None = None,
    trained_fraction: float | None = None,
    max_steps: int | None = None,
) -> dict:
    """Everything `tunesmith plan` prints, as one JSON-ready dict.

    `seq_len` is the tokens per row (`--max-length` of an SFT run) and `batch_size` the rows per step. The
    run's length is `tokens`, or `data` × `epochs`, or `max_steps` steps (which, as in training, overrides
    the epochs: that many steps of the data's mean example, or, without data, of full rows)."""
    if method not in METHODS:
        raise ConfigError(f"--method: unknown method '{method}' (expected one of {', '.join(METHODS)})")
    gpu_key = gpu.strip().lower()
    if gpu_key not in GPUS:
        raise ConfigError(f"--gpu: unknown GPU '{gpu}' (known: {', '.join(GPUS)})")
    micro_batch_size = batch_size if micro_batch_size is None else micro_batch_size
    checks = [
        (lora_r >= 1, "--lora-r must be >= 1"),
        (seq_len >= 8, "--max-length must be >= 8"),
        (batch_size >= 1 and micro_batch_size >= 1, "--batch-size and --micro-batch-size must be >= 1"),
        (batch_size % micro_batch_size == 0, f"--micro-batch-size must divide --batch-size ({batch_size})"),
        (gpus >= 1, "--gpus must be >= 1"),
        (tokens is None or tokens >= 1, "--tokens must be >= 1"),
        (not (tokens is not None and data), "--tokens and --data: give one (the data's tokens x --epochs, or a count)"),
        (
            not (tokens is not None and max_steps),
            "--tokens and --max-steps: give one (--max-steps is that many steps of --batch-size)",
        ),
        (max_steps is None or max_steps >= 1, "--max-steps must be >= 1"),
        (epochs is None or data, "--epochs needs --data"),
        (epochs is None or epochs >= 1, "--epochs must be >= 1"),
        (mfu is None or 0 < mfu <= 1, "--mfu must be in (0, 1]"),
        (peak_tflops is None or peak_tflops > 0, "--peak-tflops must be > 0"),
        (price_per_hour is None or price_per_hour >= 0, "--price-per-hour must be >= 0"),
        (precision in (None, "bf16", "fp32"), "--precision must be bf16 or fp32"),
        (trained_fraction is None or 0 < trained_fraction <= 1, "--trained-fraction must be in (0, 1]"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    shape, model_dir = resolve_shape(model)
    targets = parse_targets(target, shape) if method != "full" else []
    device = GPUS[gpu_key]
    if peak_tflops is not None:
        device = replace(device, peak_tflops=peak_tflops)
    if mfu is None:
        mfu = 1.0 if gpu_key == "cpu" and peak_tflops is None else DEFAULT_MFU
    if precision is None:
        precision = "fp32" if gpu_key == "cpu" else "bf16"
    act_bytes = 2 if precision == "bf16" else 4

    data_info = steps = None
    if data:
        data_info = count_data_tokens(data, seq_len, model_dir)
        rows = data_info["rows"]
        if max_steps:  # training's --max-steps overrides --epochs: that many steps of the data's examples
            steps = max_steps
            data_info["epochs"] = round(max_steps * batch_size / rows, 2) if rows else 0
            tokens = round(data_info["tokens"] * max_steps * batch_size / rows) if rows else 0
        else:
            data_info["epochs"] = epochs or 1
            steps = data_info["epochs"] * math.ceil(rows / batch_size)
            tokens = data_info["tokens"] * data_info["epochs"]
        if trained_fraction is None and data_info["tokens"]:
            trained_fraction = data_info["trained_tokens"] / data_info["tokens"]
    elif max_steps:  # no data to measure: every row full, an upper bound
        steps, tokens = max_steps, max_steps * batch_size * seq_len
    if trained_fraction is None:
        trained_fraction = 1.0

    counts = parameter_counts(shape, method, lora_r, targets)
    accumulating = batch_size > micro_batch_size * gpus  # more than one micro-batch per process and step
    mem = memory_breakdown(
        shape,
        method,
        counts,
        targets,
        lora_r,
        seq_len,
        micro_batch_size,
        gradient_checkpointing,
        act_bytes,
        trained_fraction,
        accumulating,
        gpus,
    )
    fpt = flops_per_token(shape, method, counts, seq_len, gradient_checkpointing, trained_fraction)
    capacity = device.memory_bytes if gpu_key != "cpu" else _host_memory()
    total = mem["memory_bytes"]["total"]
    fits = None if capacity is None else total <= capacity
    warnings = []
    if capacity is not None and not fits:
        hints = fitting_flags(method, gradient_checkpointing, micro_batch_size)
        warnings.append(
            f"does not fit: needs {total / GIB:.1f} GiB per {'GPU' if gpu_key != 'cpu' else 'machine'}, "
            f"{device.name} has {capacity / GIB:.1f} GiB; try {', '.join(hints)}"
        )
    elif capacity is not None and fits and total > 0.9 * capacity:
        warnings.append(
            f"tight: {total / GIB:.1f} of {capacity / GIB:.1f} GiB; CUDA context and fragmentation are not counted"
        )

    flops = model_flops = hours = gpu_hours = cost = None
    if tokens is not None:
        flops = tokens * fpt["executed"]
        model_flops = tokens * fpt["model"]
        hours = flops / (device.peak_tflops * 1e12 * mfu * gpus) / 3600
        gpu_hours = hours * gpus
        cost = None if price_per_hour is None else gpu_hours * price_per_hour
        steps = steps or math.ceil(tokens / (batch_size * seq_len))

    return {
        "model": model,
        "shape": asdict(shape),
        "method": method,
        "lora": {"r": lora_r, "targets": targets} if method != "full" else None,
        "total_params": counts["total"],
        "trainable_params": counts["trainable"],
        "trainable_percent": 100 * counts["trainable"] / counts["total"],
        "params": counts,
        "seq_len": seq_len,
        "batch_size": batch_size,
        "micro_batch_size": micro_batch_size,
        "gradient_checkpointing": gradient_checkpointing,
        "precision": precision,
        "trained_fraction": trained_fraction,
        **mem,
        "gpu": {
            "key": gpu_key,
            "name": device.name,
            "peak_tflops": device.peak_tflops,
            "memory_bytes": capacity,
            "count": gpus,
        },
        "fits": fits,
        "warnings": warnings,
        "tokens": tokens,
        "data": data_info,
        "steps": steps,
        "max_steps": max_steps,
        "flops_per_token": fpt,
        "flops": flops,
        "model_flops": model_flops,
        "mfu": mfu,
        "hours": hours,
        "gpu_hours": gpu_hours,
        "price_per_hour": price_per_hour,
        "cost_usd": cost,
    }


# --------------------------------------------------------------------------------------- a run's config

# The arithmetic above is one SFT step. The other recipes are planned as the sequences their step trains
# on (`sequences_per_example`); what else they run is left out, and the plan says so.
NOT_COUNTED = {
    "dpo": "the reference log-probs (a forward without gradients, or computed once before training) are not counted",
    "kto": "the reference and KL-estimate forwards (without gradients) are not counted",
    "reward": "counted as if the scalar head were the LM head (logits memory, head FLOPs): an overestimate",
    "grpo": "only the training forward/backward is counted: not the sampling (KV cache; under bf16 autocast also "
    "a bf16 copy of the frozen linear weights, half their fp32 size) or the reference pass",
    "ppo": "only the policy's training forward/backward is counted: not the sampling (KV cache; under bf16 "
    "autocast also a bf16 copy of the frozen linear weights, half their fp32 size), the reference pass, the value "
    "head or the reward model's scoring",
}


def sequences_per_example(cfg, recipe: str) -> int:
    """Sequences one example puts through a recipe's trained forward: a pair's chosen and rejected (dpo, reward),
    a prompt's K samples (grpo), one otherwise."""
    if recipe == "grpo":
        return cfg.grpo.group_size
    return 2 if recipe in ("dpo", "reward") else 1


def sequence_length(cfg) -> int:
    """Tokens per sequence: the data's --max-length, or for prompt data the prompt plus what is sampled."""
    data = cfg.data
    return data.max_length if hasattr(data, "max_length") else data.max_prompt_length + cfg.sampling.max_new_tokens


# What training requires and a plan does not: where the run goes, what it reads, what scores it. They
# stand in while the config is validated (every other check is training's own) and are empty after.
NOT_NEEDED_TO_PLAN = {"out": "-", "data.train": "-", "grpo.reward": "-", "ppo.reward_model": "-"}


def plan_recipe(recipe: str, values, **planner) -> dict:
    """The plan of a `recipe` run from training's own options: `values` is what `build_config` takes (the
    parsed flags, or a dict of config keys with "config" for a YAML file); `planner` is `plan_config`'s."""
    config_cls = RECIPES[recipe].config
    keys = {leaf.key for leaf in leaf_fields(config_cls)}
    cfg = build_config(config_cls, values, stand_ins={k: v for k, v in NOT_NEEDED_TO_PLAN.items() if k in keys})
    return plan_config(cfg, recipe, **planner)


def plan_config(
    cfg,
    recipe: str = "sft",
    tokens: int | None = None,
    gpu: str | None = None,
    gpus: int = 1,
    price_per_hour: float | None = None,
    mfu: float | None = None,
    peak_tflops: float | None = None,
    trained_fraction: float | None = None,
) -> dict:
    """The plan of the run a training config describes (`tunesmith plan --config FILE`): its model, method,
    adapter, sequence length, batch, precision, checkpointing and length (--data and --epochs, or --max-steps);
    the arguments are what training has no field for. `gpu` defaults to the cpu for --device cpu, else h100."""
    n, t = sequences_per_example(cfg, recipe), cfg.train
    data = cfg.data.train if recipe == "sft" else None  # the token counter reads SFT data
    result = plan(
        cfg.model,
        cfg.method,
        lora_r=cfg.lora.r,
        target=cfg.lora.target,
        seq_len=sequence_length(cfg),
        batch_size=t.batch_size * n,
        micro_batch_size=t.micro_batch_size * n,
        tokens=tokens,
        data=data,
        epochs=t.epochs if data else None,
        max_steps=t.max_steps,
        gpu=gpu or ("cpu" if cfg.device == "cpu" else "h100"),
        gpus=gpus,
        price_per_hour=price_per_hour,
        mfu=mfu,
        peak_tflops=peak_tflops,
        gradient_checkpointing=t.gradient_checkpointing,
        precision=None if t.precision == "auto" else t.precision,
        trained_fraction=trained_fraction,
    )
    warnings = cfg.guard_rail_warnings()
    if recipe in NOT_COUNTED:
        per = f"; batch and micro-batch counted in sequences, {n} per example" if n > 1 else ""
        warnings.append(f"{recipe}: {NOT_COUNTED[recipe]}{per}")
    if cfg.data.train and data is None and tokens is None:
        warnings.append(f"{recipe}: the data's tokens are counted for sft only; give --tokens N for the run's time")
    if getattr(cfg.data, "replay", None):
        warnings.append("--replay: the replayed examples are not counted in the run's tokens")
    return {**result, "recipe": recipe, "warnings": result["warnings"] + warnings}


# ---------------------------------------------------------------------------------------------- format


def _num(n: float) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


def _bytes(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / 2**20:.1f} MiB"


def _hours(h: float) -> str:
    if h < 1:
        return f"{h * 60:.1f} min"
    return f"{h:.2f} h" if h < 48 else f"{h:.1f} h ({h / 24:.1f} days)"


def format_plan(p: dict) -> str:
    """The plan as the table `tunesmith plan` prints."""
    s = p["shape"]
    lines = [
        f"model       {p['model']}: {s['layers']} layers, hidden {s['hidden']}, MLP {s['intermediate']}, "
        f"heads {s['heads']}/{s['kv_heads']} kv, vocab {s['vocab']}, "
        f"{'tied' if s['tied'] else 'untied'} embeddings"
    ]
    method = p["method"] + (f" r={p['lora']['r']} on {','.join(p['lora']['targets'])}" if p["lora"] else "")
    method = f"{p['recipe']}, {method}" if p.get("recipe") else method
    lines.append(f"method      {method}")
    lines.append(
        f"parameters  total {p['total_params']:,}  trainable {p['trainable_params']:,} ({p['trainable_percent']:.4f}%)"
    )
    g = p["gpu"]
    per = "GPU" if g["key"] != "cpu" else "machine"
    lines.append(
        f"memory per {per} (seq {p['seq_len']}, micro-batch {p['micro_batch_size']}, {p['precision']}, "
        f"checkpointing {'on' if p['gradient_checkpointing'] else 'off'}, trained fraction "
        f"{p['trained_fraction']:.2f}):"
    )
    m = p["memory_bytes"]
    notes = {
        "weights": "fp32" + (" + NF4 blocks" if p["method"] == "qlora" else ""),
        "gradients": "fp32, trainable only",
        "optimizer": "AdamW, 2 fp32 moments",
        "activations": "saved for backward",
        "weight_copies": "bf16 casts kept for backward",
        "logits": "trained rows only, 512-row chunks, none kept for backward",
        "step_temporaries": "at the optimizer step, not with activations",
    }
    for key, note in notes.items():
        lines.append(f"  {key:17s} {_bytes(m[key]):>12s}   {note}")
    lines.append(f"  {'total (peak)':17s} {_bytes(m['total']):>12s}")
    a, lg = p["activations_bytes"], p["logits_bytes"]
    lines.append(
        f"  activations without / with checkpointing: {_bytes(a['without_checkpointing'])} / "
        f"{_bytes(a['with_checkpointing'])}"
    )
    lines.append(
        f"  logits kept for backward: {_bytes(lg['tunesmith_chunked'])} at trained positions "
        f"(+ {_bytes(lg['chunk_in_flight'])} for the chunk in flight); fp32 logits at every position "
        f"would be {_bytes(lg['naive_full'])}"
    )
    cap = "unknown" if g["memory_bytes"] is None else _bytes(g["memory_bytes"])
    fits = {True: "fits", False: "DOES NOT FIT", None: "fit unknown"}[p["fits"]]
    peak = "measured throughput" if g["key"] == "cpu" else "bf16 dense peak"
    lines.append(f"device      {g['count']} x {g['name']} ({g['peak_tflops']:g} TFLOPS {peak}, {cap}): {fits}")
    f = p["flops_per_token"]
    recompute = f" + {_num(f['recompute'])} recompute" if f["recompute"] else ""
    lines.append(f"FLOPs/token {_num(f['model'])} model{recompute}")
    if p["tokens"] is None:
        lines.append("time, cost  give --tokens N, --data FILE or --max-steps N for the run's FLOPs, time and cost")
    else:
        d = p["data"]
        src = (
            f" ({d['rows']} rows x {d['epochs']:g} epochs, {d['method']})"
            if d
            else " (--max-steps of full rows: an upper bound)"
            if p["max_steps"]
            else ""
        )
        lines.append(
            f"run         {_num(p['tokens'])} tokens{src}, {p['steps']:,} steps of "
            f"{p['batch_size']} x {p['seq_len']}; {p['flops']:.3g} FLOPs"
        )
        lines.append(
            f"time        {_hours(p['hours'])} at MFU {p['mfu']:g} on {g['count']} device(s) "
            f"({p['gpu_hours']:.1f} device-hours)"
        )
        cost = (
            "give --price-per-hour"
            if p["cost_usd"] is None
            else f"${p['cost_usd']:,.2f} at ${p['price_per_hour']:g}/device-hour"
        )
        lines.append(f"cost        {cost}")
    if g["key"] == "cpu":
        lines.append(
            "note: glibc's malloc keeps freed activations for reuse: peak RSS ran up to 2x the total "
            "(MALLOC_MMAP_THRESHOLD_=65536 holds it to the total, with slower steps)"
        )
    lines += [f"warning: {w}" for w in p["warnings"]]
    return "\n".join(lines)
