"""`tunesmith models list|path`."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("models", help="list model aliases, or print a model's local directory")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    lst = msub.add_parser("list", help="the built-in aliases and whether each is cached")
    lst.set_defaults(handler=list_models)
    path = msub.add_parser("path", help="print the local Hugging Face directory (builds the cache if needed)")
    path.add_argument("name", help="alias, HF directory or .gguf file")
    path.set_defaults(handler=model_path)


def list_models(args) -> int:
    from tunesmith.models.registry import ALIASES, tunesmith_home  # heavy: tunesmith.models loads torch

    home = tunesmith_home() / "models"
    for alias in ALIASES.values():
        cached = (home / alias.name / "config.json").is_file()
        print(f"{alias.name:24s} {'cached' if cached else 'not cached':11s} {alias.description}")
    return 0


def model_path(args) -> int:
    from tunesmith.models.registry import resolve_model_dir  # heavy: tunesmith.models loads torch

    print(resolve_model_dir(args.name))
    return 0
