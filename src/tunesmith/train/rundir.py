"""The run directory: refuse to clobber a previous run unless asked."""

from __future__ import annotations

import shutil
from pathlib import Path

from tunesmith.errors import OutputError
from tunesmith.train.checkpoint import list_checkpoints


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
            raise OutputError(f"{out}: directory is not empty; pass --overwrite to replace it "
                              "or --resume to continue its last checkpoint")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out, None


def open_run_dir(cfg, recipe: str, dist) -> tuple[Path, Path | None]:
    """prepare_run_dir + RUN/config.yaml on rank 0; the other processes wait, then find the same checkpoint."""
    from tunesmith.train.model_setup import write_run_config

    if dist.is_main:
        run_dir, resume_from = prepare_run_dir(cfg.out, cfg.overwrite, cfg.resume)
        write_run_config(run_dir, cfg, recipe)
    dist.barrier()
    if not dist.is_main:
        run_dir = Path(cfg.out)
        resume_from = list_checkpoints(run_dir)[-1] if cfg.resume else None
    return run_dir, resume_from


def write_run_result(run_dir: Path, recipe: str, manifest: dict, guard, output: Path, steps: int, seconds: float,
                     say) -> None:
    """Rank 0's last words for a run: RUN/run.json (the recipe's manifest, plus the base's checksum and the
    forgetting guard's summary), the HTML report, and the closing line."""
    import json

    from tunesmith.atomic import atomic_write_text
    from tunesmith.forgetting.guard import guard_summary
    from tunesmith.models.integrity import run_summary
    from tunesmith.report import write_report

    manifest.update(base_checksum=run_summary(run_dir), **guard_summary(guard))
    atomic_write_text(run_dir / "run.json", json.dumps(manifest, indent=2) + "\n")
    say(write_report(run_dir, recipe))
    say(f"saved {output} ({steps} steps, {seconds:.0f} s)")
