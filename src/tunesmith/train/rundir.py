"""The run directory: refuse to clobber a previous run unless asked."""

from __future__ import annotations

import shutil
from pathlib import Path

from tunesmith.errors import OutputError
from tunesmith.train.checkpoint import list_checkpoints
from tunesmith.train.model_setup import write_run_config


def prepare_run_dir(out: str | Path, overwrite: bool, resume: bool) -> tuple[Path, Path | None]:
    """Return (run dir, checkpoint to resume from or None)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a directory")
    non_empty = out.is_dir() and any(out.iterdir())
    if resume:
        checkpoints = list_checkpoints(out)
        if not checkpoints:
            raise OutputError(f"{out}: nothing to resume (no checkpoints/step-*/ inside)")
        return out, checkpoints[-1]
    if non_empty:
        if not overwrite:
            raise OutputError(
                f"{out}: directory is not empty; pass --overwrite to replace it "
                "or --resume to continue its last checkpoint"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out, None


def open_run_dir(cfg, recipe: str, dist) -> tuple[Path, Path | None]:
    """prepare_run_dir + RUN/config.yaml on rank 0; the other processes wait, then find the same checkpoint."""
    if dist.is_main:
        run_dir, resume_from = prepare_run_dir(cfg.out, cfg.overwrite, cfg.resume)
        write_run_config(run_dir, cfg, recipe)
    dist.barrier()
    if not dist.is_main:
        run_dir = Path(cfg.out)
        resume_from = list_checkpoints(run_dir)[-1] if cfg.resume else None
    return run_dir, resume_from
