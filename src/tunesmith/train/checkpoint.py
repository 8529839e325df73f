"""Checkpoints: trainable weights, optimizer, RNG states and the step, written atomically.

Layout of `RUN/checkpoints/step-00000050/`:
  trainable.safetensors   the parameters that train (LoRA matrices, or every weight for full)
  optimizer.safetensors   AdamW moments, keyed "<param index>.<name>"
  rng.safetensors         torch CPU (and CUDA) generator states
  state.json              step, optimizer hyper-parameters, Python RNG state, counters
  manifest.json           written last: each file above with its size and sha256
The data position is the step itself: the data order is a function of (seed, epoch) (`order.py`).
No pickle anywhere: safetensors for tensors, JSON for the rest.

A checkpoint is complete or absent: it is written in a temporary directory renamed into place, and its
manifest comes last. `--resume` checks the newest against its manifest and, when a file is missing,
truncated or changed (a disk that filled, a copy that broke), says so and takes the newest one that
checks out. Older checkpoints are deleted only once a newer one is complete (`--keep-checkpoints`).
"""

from __future__ import annotations

import json
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from tunesmith.atomic import atomic_directory
from tunesmith.models.integrity import file_sha256

STEP_DIR = re.compile(r"^step-(\d{8})$")
MANIFEST = "manifest.json"


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    extra: dict[str, Any],
    keep: int = 3,
    state: tuple[dict[str, torch.Tensor], dict] | None = None,
) -> Path:
    """Write step `step`'s checkpoint, then delete all but the newest `keep`. `state`: (trainable weights,
    optimizer state dict) already gathered (FSDP), instead of the model's own."""
    root = Path(run_dir) / "checkpoints"
    target = root / f"step-{step:08d}"
    weights, opt_state = state if state is not None else (trainable_state(model), optimizer.state_dict())
    opt_tensors = {
        f"{index}.{name}": value.detach().contiguous().cpu()
        for index, per_param in opt_state["state"].items()
        for name, value in per_param.items()
        if torch.is_tensor(value)
    }
    rng = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            rng[f"torch_cuda_{i}"] = s
    py_version, py_state, py_gauss = random.getstate()
    meta = {
        "step": step,
        "param_groups": opt_state["param_groups"],
        "python_rng": [py_version, list(py_state), py_gauss],
        **extra,
    }
    with atomic_directory(target) as tmp:
        save_file(weights, tmp / "trainable.safetensors")
        save_file(opt_tensors, tmp / "optimizer.safetensors")
        save_file(rng, tmp / "rng.safetensors")
        (tmp / "state.json").write_text(json.dumps(meta, indent=1) + "\n")
        write_manifest(tmp, step)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def write_manifest(directory: Path, step: int) -> None:
    """The checkpoint's files with their sizes and sha256, written after all of them."""
    files = {
        f.name: {"bytes": f.stat().st_size, "sha256": file_sha256(f)}
        for f in sorted(directory.iterdir())
        if f.is_file() and f.name != MANIFEST
    }
    (directory / MANIFEST).write_text(json.dumps({"step": step, "files": files}, indent=1) + "\n")


def checkpoint_problem(path: Path) -> str | None:
    """What is wrong with a checkpoint directory against its manifest, or None when every file checks out."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        files = manifest["files"]
    except FileNotFoundError:
        return f"no {MANIFEST} (written last: the checkpoint did not finish)"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{MANIFEST} is unreadable ({e})"
    for name in ("trainable.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json"):
        if name not in files:
            return f"{MANIFEST} does not list {name}"
    for name, expected in files.items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != expected["bytes"]:
            return f"{name} has {f.stat().st_size} bytes, the manifest says {expected['bytes']}"
        if file_sha256(f) != expected["sha256"]:
            return f"{name} does not match its sha256 in {MANIFEST}"
    return None


def resumable_checkpoint(run_dir: Path, say: Callable[[str], None] = print) -> Path | None:
    """The newest checkpoint that checks out against its manifest; each newer one that does not is skipped
    with a message saying what is wrong with it. None when no checkpoint is complete."""
    for path in reversed(list_checkpoints(run_dir)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        say(f"warning: skipping checkpoint {path}: {problem}")
    return None


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: p.name)


def load_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    restore: Callable[[dict[str, torch.Tensor], dict], None] | None = None,
) -> dict[str, Any]:
    """Restore weights, optimizer and RNG from `path` in place; return state.json's contents.
    `restore(weights, optimizer state dict)` replaces the plain copy (FSDP scatters the whole state)."""
    state = json.loads((path / "state.json").read_text())
    weights = load_file(path / "trainable.safetensors")
    params = dict(model.named_parameters())
    missing = set(weights) ^ {n for n, p in params.items() if p.requires_grad}
    if missing:
        raise ValueError(
            f"{path}: checkpoint does not match the model's trainable parameters (e.g. {sorted(missing)[:3]})"
        )
    moments: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in load_file(path / "optimizer.safetensors").items():
        index, name = key.split(".", 1)
        moments.setdefault(int(index), {})[name] = value
    opt_state = {"state": moments, "param_groups": state["param_groups"]}
    if restore is not None:
        restore(weights, opt_state)
    else:
        with torch.no_grad():
            for name, value in weights.items():
                params[name].copy_(value)
        optimizer.load_state_dict(opt_state)
    rng = load_file(path / "rng.safetensors")
    torch.set_rng_state(rng["torch_cpu"])
    cuda_states = [rng[k] for k in sorted(k for k in rng if k.startswith("torch_cuda_"))]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    version, py_state, gauss = state["python_rng"]
    random.setstate((version, tuple(py_state), gauss))
    return state
