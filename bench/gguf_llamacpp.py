"""GGUF export checked by llama.cpp itself: each exportable family's tiny random model (tests/families/tiny.py,
as the round-trip test varies it) is exported with `tunesmith export --format gguf` (f32), loaded by
llama.cpp through llama-cpp-python, and run on the same token ids as the Hugging Face model; the logits
must agree (max |difference| <= TOLERANCE, every position's argmax the same).

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
VERBOSE = False


def hf_and_gguf(family: str, tokenizer, root: Path) -> tuple[Path, Path]:
    """The round-trip variant of `family`'s tiny model (random norms and biases too) and its f32 GGUF."""
    from tests.families.tiny import build_tiny
    from tests.unit.test_export_gguf_families import round_trip_variant
    from tunesmith.cli import main

    out = round_trip_variant(build_tiny(family, tokenizer, root / f"{family}-base"), root / family, family, tokenizer)
    gguf = root / f"{family}.gguf"
    if main(["export", "--model", str(out), "--format", "gguf", "--dtype", "f32", "--out", str(gguf)]) != 0:
        raise SystemExit(f"{family}: export failed")
    return out, gguf


def check(family: str, tokenizer, root: Path) -> dict:
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM

    hf_dir, gguf = hf_and_gguf(family, tokenizer, root)
    ids = torch.randint(0, len(tokenizer), (40,), generator=torch.Generator().manual_seed(0)).tolist()
    source = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = source(torch.tensor([ids])).logits[0].numpy()
    # f32 KV cache (the default f16 one rounds keys and values): the comparison is of the weights and graph
    try:
        llm = Llama(model_path=str(gguf), n_ctx=64, logits_all=True, verbose=VERBOSE, n_threads=2, type_k=0, type_v=0)
    except ValueError as e:  # llama.cpp says why on stderr with VERBOSE = True
        print(f"{family:7s} llama.cpp did not load it: {e}  FAIL")
        return {"ok": False, "error": str(e)}
    llm.eval(ids)
    got = np.asarray(llm.scores[: len(ids)], dtype=np.float32)
    worst = float(np.abs(got - expected).max())
    same_argmax = int((got.argmax(-1) == expected.argmax(-1)).sum())
    ok = worst <= TOLERANCE and same_argmax == len(ids)
    print(
        f"{family:7s} llama.cpp arch {llm.metadata.get('general.architecture')}: max |logit diff| {worst:.2e}, "
        f"argmax {same_argmax}/{len(ids)}  {'ok' if ok else 'FAIL'}"
    )
    return {
        "architecture": llm.metadata.get("general.architecture"),
        "max_logit_diff": worst,
        "same_argmax": same_argmax,
        "positions": len(ids),
        "ok": ok,
    }


def main() -> int:
    from tests.unit.test_export_gguf_families import FAMILIES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default=",".join(FAMILIES), help="comma-separated, of " + ", ".join(FAMILIES))
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
