"""`tunesmith models list|path`."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("models", help="list model aliases, or print a model's local directory")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    lst = msub.add_parser(
        "list", help="the built-in aliases and whether each is cached; the model families and their plan shapes"
    )
    lst.set_defaults(handler=list_models)
    path = msub.add_parser("path", help="print the local Hugging Face directory (builds the cache if needed)")
    path.add_argument("name", help="alias, HF directory or .gguf file")
    path.set_defaults(handler=model_path)


def _size(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 0.995e9 else f"{n / 1e6:.0f}M"


def list_models(args) -> int:
    from tunesmith.export.gguf_families import FAMILIES as GGUF_FAMILIES
    from tunesmith.models.registry import ALIASES, tunesmith_home  # heavy: tunesmith.models loads torch
    from tunesmith.planner import SHAPES, parameter_counts

    home = tunesmith_home() / "models"
    for alias in ALIASES.values():
        cached = (home / alias.name / "config.json").is_file()
        print(f"{alias.name:24s} {'cached' if cached else 'not cached':11s} {alias.description}")
    # the families tests/families/ checks (each has built-in shapes); any HF directory of one trains
    by_family: dict[str, list[str]] = {}
    for shape in SHAPES.values():
        by_family.setdefault(shape.family, []).append(f"{shape.name} ({_size(parameter_counts(shape)['total'])})")
    gguf = {family.model_type.removesuffix("_text") for family in GGUF_FAMILIES.values()}  # gemma3_text
    print("\nfamilies (tests/families/ checks each; a Hugging Face directory of any of them trains)")
    print(f"{'family':10s} {'gguf':5s} plan shapes (`tunesmith plan --model NAME`)")
    for family, shapes in by_family.items():
        print(f"{family:10s} {'yes' if family in gguf else 'no':5s} {', '.join(shapes)}")
    return 0


def model_path(args) -> int:
    from tunesmith.models.registry import resolve_model_dir  # heavy: tunesmith.models loads torch

    print(resolve_model_dir(args.name))
    return 0
