"""The run directory: refuse to clobber a previous run unless asked."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tunesmith.config.load import config_to_dict
from tunesmith.errors import ConfigError, OutputError
from tunesmith.models.integrity import base_difference, data_differences
from tunesmith.train.checkpoint import list_checkpoints, resumable_checkpoint
from tunesmith.train.model_setup import write_run_config


def replaced_path(out: Path) -> Path:
    """Where --overwrite keeps the previous run until the new one has started."""
    return out.parent / f".{out.name}.replaced"


def settle_run_dir(run_dir: Path, started: bool, was_empty: bool) -> None:
    """After a run's setup (model, adapter, guard): when it `started`, the run --overwrite replaced is deleted;
    when setup failed, the previous run is put back (or a directory this start created is removed), so a
    start that fails loses nothing and leaves nothing behind."""
    aside = replaced_path(run_dir)
    if started:
        shutil.rmtree(aside, ignore_errors=True)
    elif aside.exists():
        shutil.rmtree(run_dir, ignore_errors=True)
        os.replace(aside, run_dir)
    elif was_empty:
        shutil.rmtree(run_dir, ignore_errors=True)


def prepare_run_dir(
    out: str | Path, overwrite: bool, resume: bool, say: Callable[[str], None] = print
) -> tuple[Path, Path | None]:
    """Return (run dir, checkpoint to resume from or None): the newest complete one (`resumable_checkpoint`)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a directory")
    non_empty = out.is_dir() and any(out.iterdir())
    if resume:
        if not list_checkpoints(out):
            raise OutputError(f"{out}: nothing to resume (no checkpoints/step-*/ inside)")
        checkpoint = resumable_checkpoint(out, say)
        if checkpoint is None:
            raise OutputError(f"{out}: nothing to resume: no checkpoint in checkpoints/ is complete (see above)")
        return out, checkpoint
    if non_empty:
        if not overwrite:
            raise OutputError(
                f"{out}: directory is not empty; pass --overwrite to replace it "
                "or --resume to continue its last checkpoint"
            )
        aside = replaced_path(out)  # deleted once the new run has started (`settle_run_dir`), else put back
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(out, aside)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".tunesmith-write-check"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise OutputError(f"{out}: cannot write the run there ({e.strerror or e})") from None
    return out, None


# Settings that change what training computes: a resumed run with another value would not continue the same run.
RESUME_KEYS = (
    "model",
    "method",
    "train.lr",
    "train.batch_size",
    "train.seed",
    "data.max_length",
    "data.max_prompt_length",
    "data.packing",
    "lora.r",
    "lora.alpha",
    "lora.dropout",
    "lora.target",
)


_ABSENT = object()


def _dotted(tree: dict, key: str) -> Any:
    """tree["a"]["b"] for "a.b", or _ABSENT."""
    for part in key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return _ABSENT
        tree = tree[part]
    return tree


def resume_differences(run_dir: Path, cfg) -> list[str]:
    """What a resume would change: a training setting (RESUME_KEYS) against the run's config.yaml, a data file
    against data_checksum.json, the base's weights against base_checksum.json."""
    path = run_dir / "config.yaml"
    saved = yaml.safe_load(path.read_text()) if path.is_file() else {}
    now = config_to_dict(cfg)
    differences = [
        f"{key} is {_dotted(now, key)!r} now, {_dotted(saved, key)!r} in the run"
        for key in RESUME_KEYS
        if _ABSENT not in (_dotted(saved, key), _dotted(now, key)) and _dotted(saved, key) != _dotted(now, key)
    ]
    differences += data_differences(run_dir, cfg.data)
    base = base_difference(run_dir)
    return differences + ([base] if base else [])


def check_resume(run_dir: Path, cfg, say: Callable[[str], None]) -> None:
    """Refuse a resume that would not continue the same training (unless --resume-anyway, which warns)."""
    differences = resume_differences(run_dir, cfg)
    if differences and not cfg.resume_anyway:
        raise ConfigError(
            f"--resume {run_dir}: " + "; ".join(differences) + ". Resuming would not continue the same training: "
            "give the run's own settings and data, or --resume-anyway to continue regardless"
        )
    for difference in differences:
        say(f"warning: --resume-anyway: {difference}")


def open_run_dir(cfg, recipe: str, dist, say: Callable[[str], None] = print) -> tuple[Path, Path | None]:
    """prepare_run_dir + RUN/config.yaml on rank 0; the other processes wait, then find the same checkpoint."""
    if dist.is_main:
        run_dir, resume_from = prepare_run_dir(cfg.out, cfg.overwrite, cfg.resume, say)
        if resume_from is not None:
            check_resume(run_dir, cfg, say)
        write_run_config(run_dir, cfg, recipe)
    dist.barrier()
    if not dist.is_main:
        run_dir = Path(cfg.out)
        resume_from = resumable_checkpoint(run_dir, lambda message: None) if cfg.resume else None
    return run_dir, resume_from
