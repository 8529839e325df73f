"""A job's life outside the web process: validating its files, running it as an ordinary tunesmith run
in a child process (`python -m tunesmith.serve.jobs JOB_ID ...`), and what its run left behind
(checkpoints as servable adapters, the metrics CSV, the final status)."""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import shutil
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from tunesmith.atomic import atomic_directory, atomic_write_text
from tunesmith.errors import DataError, Interrupted, TunesmithError
from tunesmith.serve.db import Checkpoint, Event, File, Job, make_sessions, new_id, now
from tunesmith.serve.hyper import resolve_hyperparameters, run_options
from tunesmith.serve.protocol import ft_name
from tunesmith.serve.settings import Settings

if TYPE_CHECKING:
    from tunesmith.data.prompts import PromptRow
    from tunesmith.rollout.graders import Grader

METRIC_NAMES = {
    "loss": "train_loss",
    "eval_loss": "valid_loss",
    "kl_to_base": "kl_to_base",
    "probe_perplexity": "probe_perplexity",
    "reward_mean": "train_reward_mean",  # grpo: the mean grader score of the step's samples
    "eval_reward_mean": "valid_reward_mean",  # grpo: of greedy replies to the validation prompts
}
REWARD_COLUMNS = ["train_reward_mean", "valid_reward_mean"]  # in the results file of jobs that have them
MAX_PROBLEMS = 10
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")  # not copied beside a full checkpoint's own weights


def add_event(
    session: Session, job_id: str, message: str, type: str = "message", data: dict | None = None, level: str = "info"
) -> None:
    session.add(Event(id=new_id("ftevent"), job_id=job_id, message=message, type=type, data=data, level=level))


def file_path(settings: Settings, file_id: str) -> Path:
    return settings.files_dir / file_id


def run_dir(settings: Settings, job: Job) -> Path:
    return settings.runs_dir / job.id


# ---- validation: validating_files -> queued | failed ----------------------------------------------
def validate_job(session: Session, settings: Settings, job: Job) -> None:
    """Parse the training (and validation) file with tunesmith's own loaders; resolve "auto" from its size.
    A reinforcement job's rows must also hold the fields its grader's templates read, and its grader is
    written to GRADERS_DIR/JOB_ID.json for the run's `reward="grader:PATH"`."""
    from tunesmith.data.formats import load_sft_file
    from tunesmith.data.preference import ParsedPreferenceFile, load_preference_file
    from tunesmith.data.prompts import load_prompt_file

    load: Callable[[Path], Any] = {"sft": load_sft_file, "grpo": load_prompt_file}.get(job.recipe, load_preference_file)
    method = job.method.get(job.method["type"]) or {}
    grader = None
    if job.recipe == "grpo":
        from tunesmith.rollout.graders import build_grader

        try:
            grader = build_grader(method.get("grader"))  # checked when created; a reward model may have gone since
        except TunesmithError as e:
            fail(session, job, str(e), code="invalid_grader", param="method")
            return
    n_rows = 0
    for param in ("training_file", "validation_file"):
        file_id = getattr(job, param)
        if file_id is None:
            continue
        path = file_path(settings, file_id)
        try:
            parsed = load(path)
            if grader is not None:
                missing_grader_fields(grader, parsed)
        except DataError as e:
            # the problems name the stored path; the user knows the file by its id
            problems = [p.replace(str(path), file_id) for p in e.problems]
            shown = problems[:MAX_PROBLEMS] + (
                [f"... and {len(problems) - MAX_PROBLEMS} more"] if len(problems) > MAX_PROBLEMS else []
            )
            fail(
                session,
                job,
                f"{param} {file_id} is malformed ({len(problems)} problems):\n" + "\n".join(shown),
                code=f"invalid_{param}",
                param=param,
            )
            return
        except (OSError, TunesmithError) as e:
            fail(session, job, f"{param} {file_id}: {e}", code=f"invalid_{param}", param=param)
            return
        if param == "training_file":
            n_rows = len(parsed.pairs if isinstance(parsed, ParsedPreferenceFile) else parsed)  # dpo: pairs
    job.hyperparameters = resolve_hyperparameters(job.recipe, method.get("hyperparameters") or {}, n_rows)
    reward = None
    if grader is not None:
        grader_file = settings.graders_dir / f"{job.id}.json"
        atomic_write_text(grader_file, json.dumps(method["grader"], indent=1) + "\n")
        reward = f"grader:{grader_file}"
    job.options = run_options(
        job.recipe,
        job.hyperparameters,
        job.extension,
        file_path(settings, job.training_file),
        file_path(settings, job.validation_file) if job.validation_file else None,
        job.seed,
        job.model,
        run_dir(settings, job),
        reward,
    )
    job.status = "queued"
    add_event(session, job.id, f"Validated training file {job.training_file}: {n_rows} rows")
    add_event(session, job.id, "Job queued")


def missing_grader_fields(grader: Grader, rows: list[PromptRow]) -> None:
    """A DataError naming each FILE:LINE whose row lacks a field the grader's templates read."""
    from tunesmith.rollout.rewards import NamedReward, missing_reward_fields

    named = NamedReward("grader", grader, grader.required_fields)
    problems = missing_reward_fields([named], [(row.where, row.row) for row in rows])
    if problems:
        raise DataError(problems)


def fail(session: Session, job: Job, message: str, code: str, param: str | None = None) -> None:
    job.status, job.finished_at = "failed", now()
    job.error = {"code": code, "message": message, "param": param}
    job.worker = job.lease_until = job.requested = None
    add_event(session, job.id, f"Job failed: {message}", level="error")


# ---- checkpoints as servable adapters ---------------------------------------------------------------
def _safetensors_header(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def is_full(job: Job) -> bool:
    """A full fine-tune: its outputs are whole models, served as their own base (not adapters)."""
    return (job.extension.get("method") or "lora") == "full"


def export_checkpoint(settings: Settings, job: Job, step_dir: Path, step: int) -> Path:
    """A checkpoint as something servable and kept after the run prunes it: a PEFT adapter directory, or for
    a full fine-tune a model directory. Written with atomic_directory, so it is whole or absent."""
    target = settings.checkpoints_dir / job.id / f"step-{step}"
    with atomic_directory(target) as tmp:
        if is_full(job):
            write_checkpoint_model(job, step_dir, tmp)
        else:
            write_checkpoint_adapter(settings, job, step_dir, tmp)
    return target


def write_checkpoint_model(job: Job, step_dir: Path, out: Path) -> None:
    """A full checkpoint's weights (the model's own state-dict keys) beside the base's config and tokenizer
    files: a Hugging Face model directory. The weights are hard-linked where the filesystem allows."""
    from tunesmith.models import resolve_model_dir  # the model is already built: the run loaded it

    for f in resolve_model_dir(job.model).iterdir():
        if f.is_file() and f.suffix not in WEIGHT_SUFFIXES and not f.name.endswith(".index.json"):
            shutil.copy2(f, out / f.name)
    weights = step_dir / "trainable.safetensors"
    try:
        os.link(weights, out / "model.safetensors")
    except OSError:
        shutil.copy2(weights, out / "model.safetensors")


def write_checkpoint_adapter(settings: Settings, job: Job, step_dir: Path, out: Path) -> None:
    """A LoRA checkpoint's trainable weights as a PEFT adapter directory (keys without the adapter name,
    adapter_config.json from the run's config), without loading torch: only the header is rewritten."""
    header, data = _safetensors_header(step_dir / "trainable.safetensors")
    renamed = {k.replace(".default.", "."): v for k, v in header.items()}
    targets = sorted({k.removeprefix("base_model.model.").split(".lora_")[0] for k in renamed if ".lora_A." in k})
    r = next(v["shape"][0] for k, v in renamed.items() if ".lora_A." in k)
    config = yaml.safe_load((run_dir(settings, job) / "config.yaml").read_text())
    from tunesmith.models import resolve_model_dir  # the model is already built: the run loaded it

    adapter_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": r,
        "lora_alpha": config["lora"]["alpha"],
        "lora_dropout": 0.0,
        "bias": "none",
        "target_modules": targets,
        "inference_mode": True,
        "fan_in_fan_out": False,
        "base_model_name_or_path": str(resolve_model_dir(job.model)),
    }
    head = json.dumps(renamed).encode()
    head += b" " * (-len(head) % 8)
    (out / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(head)) + head + data)
    (out / "adapter_config.json").write_text(json.dumps(adapter_config, indent=1))


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line being written
    return rows


def public_metrics(row: dict[str, Any]) -> dict[str, Any]:
    out = {"step": row.get("step")}
    out.update({name: row[key] for key, name in METRIC_NAMES.items() if key in row})
    return out


def record_checkpoints(session: Session, settings: Settings, job: Job) -> None:
    """Every checkpoint the run saved since we last looked becomes a Checkpoint row (and an adapter)."""
    from tunesmith.train.checkpoint import list_checkpoints

    known = set(session.scalars(select(Checkpoint.step).where(Checkpoint.job_id == job.id)))
    found = [(int(p.name.split("-")[1]), p) for p in list_checkpoints(run_dir(settings, job))]
    new = [(step, p) for step, p in found if step not in known]
    if not new:
        return
    by_step = {row.get("step"): row for row in read_metrics(run_dir(settings, job) / "metrics.jsonl")}
    for step, path in new:
        try:
            served = export_checkpoint(settings, job, path, step)
        except (OSError, KeyError, StopIteration, ValueError):
            continue  # pruned or half-written; the next look finds the newer ones
        metrics = public_metrics(by_step.get(step, {"step": step}))
        session.add(
            Checkpoint(
                id=new_id("ftckpt"),
                job_id=job.id,
                step=step,
                metrics=metrics,
                served_dir=str(served),
            )
        )
        add_event(session, job.id, f"Checkpoint saved at step {step}")


# ---- success ------------------------------------------------------------------------------------
def write_results_file(session: Session, settings: Settings, job: Job) -> str:
    rows = read_metrics(run_dir(settings, job) / "metrics.jsonl")
    columns = ["step", "train_loss", "valid_loss", "kl_to_base", "probe_perplexity"]
    public = [public_metrics(row) for row in rows]
    columns += [c for c in REWARD_COLUMNS if any(c in row for row in public)]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in public:
        writer.writerow(row)
    data = buffer.getvalue().encode()
    file_id = new_id("file")
    tmp = settings.files_dir / f".tmp-{file_id}"
    tmp.write_bytes(data)
    tmp.rename(file_path(settings, file_id))
    session.add(
        File(id=file_id, owner=job.owner, filename="step_metrics.csv", purpose="fine-tune-results", bytes=len(data))
    )
    return file_id


def succeed(session: Session, settings: Settings, job: Job) -> None:
    manifest = json.loads((run_dir(settings, job) / "run.json").read_text())
    record_checkpoints(session, settings, job)
    job.trained_tokens = int(manifest.get("tokens_seen") or 0)
    job.result_files = [write_results_file(session, settings, job)]
    job.fine_tuned_model = ft_name(job)
    job.status, job.finished_at, job.estimated_finish = "succeeded", now(), None
    add_event(session, job.id, f"New fine-tuned model created: {job.fine_tuned_model}")
    add_event(session, job.id, "The job has successfully completed")


# ---- the child: one ordinary tunesmith run ---------------------------------------------------------
TOTAL_STEPS = re.compile(r"(\d+) steps of")


class EventWriter:
    """on_event: every message and metrics row of the run, written to the database as it happens."""

    def __init__(self, sessions: sessionmaker, settings: Settings, job_id: str):
        self.sessions, self.settings, self.job_id = sessions, settings, job_id
        self.total_steps: int | None = None
        self.started = time.time()
        self.first_step: int | None = None

    def __call__(self, event: dict[str, Any]) -> None:
        with self.sessions() as session:
            if event.get("type") == "metrics":
                data = public_metrics(event.get("data") or {})
                step = data.get("step") or 0
                add_event(
                    session,
                    self.job_id,
                    f"Step {step}"
                    + (f"/{self.total_steps}" if self.total_steps else "")
                    + (f": training loss={data['train_loss']:.4f}" if "train_loss" in data else "")
                    + (f", reward={data['train_reward_mean']:.4f}" if "train_reward_mean" in data else ""),
                    type="metrics",
                    data=data,
                )
                self._estimate(session, step)
                job = session.scalar(select(Job).where(Job.id == self.job_id))
                # the run keeps only its newest checkpoints (--keep-checkpoints): record each while it is on disk
                record_checkpoints(session, self.settings, job)
            else:
                message = str(event.get("message", ""))
                match = TOTAL_STEPS.search(message)
                if match and self.total_steps is None:
                    self.total_steps = int(match.group(1))
                add_event(session, self.job_id, message)
            session.commit()

    def _estimate(self, session: Session, step: int) -> None:
        if not self.total_steps or step <= 0:
            return
        if self.first_step is None:
            self.first_step, self.started = step, time.time()
            return
        per_step = (time.time() - self.started) / max(step - self.first_step, 1)
        job = session.scalar(select(Job).where(Job.id == self.job_id))
        if job is not None:
            job.estimated_finish = int(time.time() + per_step * max(self.total_steps - step, 0))


def run_child(job_id: str, settings: Settings) -> int:
    """The job's run, in this (child) process: resume from the run's last checkpoint when it has one."""
    import tunesmith
    from tunesmith.train.checkpoint import list_checkpoints

    sessions = make_sessions(settings.db_url)
    with sessions() as session:
        job = session.scalar(select(Job).where(Job.id == job_id))
        options = dict(job.options)
        recipe = job.recipe
    out = Path(options["out"])
    if list_checkpoints(out):
        options["resume"] = True
    elif out.exists():
        options["overwrite"] = True  # stopped before its first checkpoint: start again
    error_file = settings.logs_dir / f"{job_id}.error.json"
    error_file.unlink(missing_ok=True)
    try:
        getattr(tunesmith, recipe)(**options, on_event=EventWriter(sessions, settings, job_id), quiet=True)
    except Interrupted as e:
        return e.exit_code
    except TunesmithError as e:
        error_file.write_text(json.dumps({"message": str(e), "type": type(e).__name__}))
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tunesmith.serve.jobs")
    parser.add_argument("job_id")
    parser.add_argument("--home", required=True)
    parser.add_argument("--db")
    args = parser.parse_args(argv)
    return run_child(args.job_id, Settings(home=Path(args.home), db=args.db))


if __name__ == "__main__":
    sys.exit(main())
