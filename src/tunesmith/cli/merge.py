"""`tunesmith merge` and `tunesmith export`: an adapter folded into its base, as HF or GGUF files."""

from __future__ import annotations

import tempfile
from pathlib import Path

from tunesmith.config.load import add_trust_remote_code
from tunesmith.errors import ConfigError, OutputError


def register(sub) -> None:
    m = sub.add_parser(
        "merge",
        help="fold an adapter into its base: a plain Hugging Face model directory",
        description="Writes OUT with safetensors weights W + B·A·alpha/r, the config and the tokenizer "
        "(chat template included). A QLoRA adapter is merged into the dequantized NF4 "
        "weights it was trained against (--base-weights).",
    )
    _common(m)
    m.add_argument("--adapter", required=True, help="PEFT adapter directory")
    m.add_argument("--out", required=True, help="output directory")
    m.set_defaults(handler=merge)

    e = sub.add_parser(
        "export",
        help="write a model (optionally merged with an adapter) as GGUF or HF files",
        description="--format gguf writes one .gguf file (Llama, Mistral, Qwen2, Qwen3, Gemma 2, "
        "Gemma 3 text or Phi-3; f16 or f32 weights) that llama.cpp and transformers "
        "(gguf_file=) load; --format hf is `merge`.",
    )
    _common(e)
    e.add_argument("--adapter", help="PEFT adapter directory to merge first")
    e.add_argument("--format", choices=("gguf", "hf"), default="gguf")
    e.add_argument("--dtype", choices=("f16", "f32"), default="f16", help="gguf: weight type of the matrices")
    e.add_argument("--out", required=True, help="FILE.gguf (gguf) or a directory (hf)")
    e.set_defaults(handler=export)


def _common(p) -> None:
    p.add_argument("--model", required=True, help="alias, local Hugging Face directory or .gguf file")
    p.add_argument(
        "--base-weights",
        choices=("auto", "nf4", "original"),
        default="auto",
        help="auto: nf4 for an adapter from a qlora run, else the original fp32 weights",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    add_trust_remote_code(p)


def _check_out(out: Path, overwrite: bool, directory: bool) -> None:
    """`out` may be written: absent, empty, or replaced with --overwrite; a model directory never replaces a
    file, nor a .gguf file a directory (whatever was there is somebody's, and is kept)."""
    if directory and out.exists() and not out.is_dir():
        raise OutputError(f"--out {out}: exists and is a file; the merged model is a directory")
    if not directory and out.is_dir():
        raise OutputError(f"--out {out}: exists and is a directory; --format gguf writes one .gguf file")
    if out.exists() and (out.is_file() or any(out.iterdir())) and not overwrite:
        raise OutputError(f"{out}: exists; pass --overwrite to replace it")


def _merge_into(args, out: Path) -> dict:
    from tunesmith.adapters.merge import merge_to_directory  # heavy: deferred for CLI start-up

    return merge_to_directory(
        args.model, args.adapter, out, args.base_weights, trust_remote_code=args.trust_remote_code, progress=True
    )


def merge(args) -> int:
    _check_out(Path(args.out), args.overwrite, directory=True)
    result = _merge_into(args, Path(args.out))
    print(f"merged into {result['out']} ({result['params']:,} parameters, base weights: {result['base_weights']})")
    return 0


def export(args) -> int:
    from tunesmith.export.gguf import export_gguf
    from tunesmith.models import resolve_model_dir

    out = Path(args.out)
    _check_out(out, args.overwrite, directory=args.format == "hf")
    if args.format == "hf":
        if not args.adapter:
            raise ConfigError("--format hf: give --adapter (without one, the model directory already is HF)")
        return merge(args)
    if out.suffix != ".gguf":
        raise ConfigError(f"--out {out}: a GGUF file name ends in .gguf")
    if not args.adapter:
        result = export_gguf(resolve_model_dir(args.model, args.trust_remote_code), out, args.dtype)
    else:
        with tempfile.TemporaryDirectory(dir=out.parent if out.parent.is_dir() else None) as tmp:
            merged = Path(tmp) / "merged"
            _merge_into(args, merged)
            result = export_gguf(merged, out, args.dtype)
    print(f"wrote {out} ({result.get('tensors', '?')} tensors, {args.dtype}, {out.stat().st_size / 2**20:.1f} MiB)")
    return 0
