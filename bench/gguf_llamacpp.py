"""GGUF export checked by llama.cpp itself: each exportable family's tiny random model (tests/families/tiny.py,
as the round-trip test varies it) is exported with `tunesmith export --format gguf` (f32), loaded by
llama.cpp through llama-cpp-python, and run on the same token ids as the Hugging Face model; the logits
must agree (max |difference| <= TOLERANCE, every position's argmax the same). Each family runs twice:
with SmolLM2's byte-level vocabulary (GGUF "gpt2") and, as `<family>-spm`, with a tiny SentencePiece-style
one shaped like its own models' (GGUF "llama": Llama 2's, Mistral v0.3's Metaspace, Gemma's, Phi-3's);
llama.cpp's tokenization of the tests' texts must also give the HF tokenizer's ids.

Gemma 2 and 3 run GELU, which llama.cpp's CPU backend computes through an f16 lookup table even in an
f32 graph (`GgmlGeluTanh`). That rounding moves the tiny Gemmas' logits by 2-4e-3 by itself, so they are
compared with the HF model running that same GELU. What remains is not zero either: an f16 rounding
turns the last-bit differences any two summation orders make in GELU's input into a whole f16 step
where they straddle a rounding boundary. The bench measures that spread on each run (the HF model with
llama.cpp's GELU, in f32 against f64) and allows it on top of TOLERANCE; the plain difference from the HF
model is reported beside it. Every figure is written to the results.

    pip install llama-cpp-python        # built from source (a C++ compiler and cmake); not a test dependency
    PYTHONPATH=src:. python bench/gguf_llamacpp.py [--families llama,qwen2]

Writes bench/results/gguf_llamacpp-<date>-<host>.json and exits 1 when a family does not load or disagrees.
The tests check the same files through transformers' GGUF reader and against llama.cpp's tensor layout
(tests/unit/test_export_gguf_families.py); this is the check that llama.cpp reads them as meant.
"""

from __future__ import annotations

import argparse
import datetime
import json
import socket
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from harness import ROOT, write_result

sys.path.insert(0, str(ROOT))  # tests.families.tiny: the tiny models the tests build
sys.path.insert(0, str(ROOT / "src"))

TOLERANCE = 1e-3  # llama.cpp and torch sum in other orders; f32 weights and KV cache
SPM = "-spm"  # a family name with this suffix: its tiny model with a SentencePiece-style tokenizer
VERBOSE = False


class GgmlGeluTanh(torch.nn.Module):
    """GELU (tanh form) as llama.cpp's CPU backend computes it in an f32 graph: ggml-cpu/vec.h defines
    GGML_GELU_FP16 unconditionally, so `ggml_vec_gelu_f32` / `ggml_vec_geglu_f32` round x to f16, read
    gelu(x) from a 65536-entry f16 table (`ggml_table_gelu_f16`, filled with the same tanh formula), and
    pass x <= -10 as 0 and x >= 10 as x. Both roundings cost up to 2^-11 relative per element."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        table = torch.nn.functional.gelu(x.half().float(), approximate="tanh").half().float()
        return torch.where(x <= -10.0, torch.zeros_like(x), torch.where(x >= 10.0, x, table))


def hf_logits(model, ids: list[int], ggml_gelu: bool = False) -> np.ndarray:
    """The HF model's logits; with `ggml_gelu`, its GELU MLPs (Gemma's) computed as llama.cpp computes them."""
    mlps = [layer.mlp for layer in model.model.layers] if ggml_gelu else []
    acts = [mlp.act_fn for mlp in mlps]
    try:
        for mlp in mlps:
            mlp.act_fn = GgmlGeluTanh()
        with torch.no_grad():
            return model(torch.tensor([ids])).logits[0].numpy()
    finally:
        for mlp, act in zip(mlps, acts, strict=True):
            mlp.act_fn = act


def hf_and_gguf(name: str, tokenizer, root: Path) -> tuple[Path, Path, object]:
    """The round-trip variant of a tiny model (random norms and biases too), its f32 GGUF and its tokenizer:
    `family` with SmolLM2's byte-level vocabulary, `family-spm` with the SentencePiece-style one of the
    family's own models (tests' `sentencepiece_variant`)."""
    from tests.families.tiny import build_tiny
    from tests.unit.test_export_gguf_families import round_trip_variant, sentencepiece_variant
    from tunesmith.cli import main

    family = name.removesuffix(SPM)
    if name.endswith(SPM):
        out, tokenizer = sentencepiece_variant(family, root)
    else:
        out = round_trip_variant(
            build_tiny(family, tokenizer, root / f"{family}-base"), root / family, family, tokenizer
        )
    gguf = root / f"{name}.gguf"
    if main(["export", "--model", str(out), "--format", "gguf", "--dtype", "f32", "--out", str(gguf)]) != 0:
        raise SystemExit(f"{name}: export failed")
    return out, gguf, tokenizer


def same_tokens(llm, tokenizer, name: str) -> dict:
    """llama.cpp's tokenization of the tests' texts (BOS as the file says, special tokens parsed) against
    the HF tokenizer's. One difference is known, not the export's: a Metaspace "first" tokenizer (the
    tiny Llama's) prepends no "▁" to text that starts with a space, llama.cpp (like SentencePiece) does."""
    from tests.unit.test_export_gguf_families import SP_FAMILIES, SP_TEXTS

    known = (
        {" leading space"} if SP_FAMILIES.get(name.removesuffix(SPM)) == "metaspace" and name.endswith(SPM) else set()
    )
    differ = []
    for text in SP_TEXTS:
        if llm.tokenize(text.encode(), add_bos=True, special=True) != tokenizer(text)["input_ids"]:
            differ.append(text)
    unexpected = [t for t in differ if t not in known]
    return {"texts": len(SP_TEXTS), "same": len(SP_TEXTS) - len(differ), "differ": differ, "unexpected": unexpected}


def gelu_reference(hf_dir: Path, source, ids: list[int]) -> tuple[np.ndarray, float]:
    """The HF logits with llama.cpp's f16 GELU, and how far they move when the same model sums in f64
    instead of f32 (the f16 rounding's sensitivity to summation order: what llama.cpp may differ by)."""
    from transformers import AutoModelForCausalLM

    reference = hf_logits(source, ids, ggml_gelu=True)
    f64 = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float64).eval()
    spread = float(np.abs(reference - hf_logits(f64, ids, ggml_gelu=True)).max())
    return reference, spread


def check(family: str, tokenizer, root: Path) -> dict:
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM

    hf_dir, gguf, tokenizer = hf_and_gguf(family, tokenizer, root)
    ids = torch.randint(0, len(tokenizer), (40,), generator=torch.Generator().manual_seed(0)).tolist()
    source = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    expected = hf_logits(source, ids)
    gelu = getattr(source.config, "hidden_activation", None) == "gelu_pytorch_tanh"
    reference, spread = gelu_reference(hf_dir, source, ids) if gelu else (expected, 0.0)
    tolerance = TOLERANCE + spread
    # f32 KV cache (the default f16 one rounds keys and values): the comparison is of the weights and graph
    try:
        llm = Llama(model_path=str(gguf), n_ctx=64, logits_all=True, verbose=VERBOSE, n_threads=2, type_k=0, type_v=0)
    except ValueError as e:  # llama.cpp says why on stderr with VERBOSE = True
        print(f"{family:11s} llama.cpp did not load it: {e}  FAIL")
        return {"ok": False, "error": str(e)}
    llm.eval(ids)
    got = np.asarray(llm.scores[: len(ids)], dtype=np.float32)
    worst = float(np.abs(got - expected).max())
    worst_reference = float(np.abs(got - reference).max())
    same_argmax = int((got.argmax(-1) == expected.argmax(-1)).sum())
    tokens = same_tokens(llm, tokenizer, family)
    ok = worst_reference <= tolerance and same_argmax == len(ids) and not tokens["unexpected"]
    result = {
        "architecture": llm.metadata.get("general.architecture"),
        "vocabulary": llm.metadata.get("tokenizer.ggml.model"),
        "max_logit_diff": worst,
        "same_argmax": same_argmax,
        "positions": len(ids),
        "tokenization": tokens,
        "ok": ok,
    }
    note = ""
    if gelu:
        result |= {
            "hf_vs_hf_with_ggml_gelu": float(np.abs(reference - expected).max()),
            "max_logit_diff_vs_hf_with_ggml_gelu": worst_reference,
            "ggml_gelu_spread_f32_vs_f64": spread,
            "tolerance": tolerance,
        }
        note = (
            f"; ggml's f16 GELU alone moves HF by {result['hf_vs_hf_with_ggml_gelu']:.2e}; against HF with it "
            f"{worst_reference:.2e} (allowed {TOLERANCE:.0e} + f32/f64 spread {spread:.2e})"
        )
    print(
        f"{family:11s} llama.cpp arch {result['architecture']} ({result['vocabulary']} vocabulary): max |logit diff| "
        f"{worst:.2e}{note}, argmax {same_argmax}/{len(ids)}, same tokens {tokens['same']}/{tokens['texts']} "
        f"texts{' (differ: ' + repr(tokens['differ']) + ')' if tokens['differ'] else ''}  {'ok' if ok else 'FAIL'}"
    )
    return result


def main() -> int:
    from tests.unit.test_export_gguf_families import FAMILIES, SP_FAMILIES

    names = [*FAMILIES, *(f + SPM for f in SP_FAMILIES)]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default=",".join(names), help="comma-separated, of " + ", ".join(names))
    parser.add_argument("--results", default=str(ROOT / "bench/results"))
    a = parser.parse_args()
    import llama_cpp

    from tunesmith.models import load_tokenizer, resolve_model_dir

    tokenizer = load_tokenizer(resolve_model_dir("tiny-random-llama"))
    with tempfile.TemporaryDirectory() as tmp:
        families = {f: check(f, tokenizer, Path(tmp)) for f in a.families.split(",")}
    result = {
        "bench": "gguf_llamacpp",
        "date": datetime.date.today().isoformat(),
        "host": socket.gethostname(),
        "llama_cpp_python": llama_cpp.__version__,
        "tolerance": TOLERANCE,
        "families": families,
    }
    write_result(result, a.results)
    print(json.dumps({f: r["ok"] for f, r in families.items()}))
    return 0 if all(r["ok"] for r in families.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
