"""/v1/fine_tuning/jobs: create (validation happens in a worker), list, retrieve, cancel, pause, resume,
events and checkpoints."""

from __future__ import annotations

import random
import re
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from tunesmith.serve.api.common import check_limit, cursor_page, db_session
from tunesmith.serve.api.files import get_file
from tunesmith.serve.auth import current_owner
from tunesmith.serve.db import FINISHED, Checkpoint, Event, Job, new_id
from tunesmith.serve.errors import APIError, not_found
from tunesmith.serve.jobs import add_event
from tunesmith.serve.protocol import JobCreate, checkpoint_object, event_object, job_object, page

router = APIRouter(tags=["fine_tuning"])
RECIPE = {"supervised": "sft", "dpo": "dpo", "reinforcement": "grpo"}
REINFORCEMENT_ONLY = ("group_size", "max_new_tokens")  # tunesmith extension fields
METADATA_FILTER = re.compile(r"^metadata\[(.+)\]$")


def get_job(session: Session, owner: str, job_id: str) -> Job:
    job = session.scalar(select(Job).where(Job.id == job_id, Job.owner == owner))
    if job is None:
        raise not_found("fine-tuning job", job_id, param="fine_tuning_job_id")
    return job


def check_model(request: Request, model: str) -> None:
    """Anything --model takes: an alias, a --model given to serve, a local HF directory or .gguf file."""
    from tunesmith.models import ALIASES

    if model in ALIASES or model in request.app.state.settings.models:
        return
    path = Path(model).expanduser()
    if path.is_dir() and (path / "config.json").is_file() or path.is_file() and path.suffix == ".gguf":
        return
    raise APIError(
        400,
        f"model '{model}' is not available: use one of {', '.join(ALIASES)}, a local Hugging Face "
        "directory or a .gguf file",
        param="model",
        code="model_not_available",
    )


def check_grader(grader: Any, python_graders: bool) -> None:
    """Build the grader (nothing runs or loads): a bad one is a 400 naming its field, and so is a python
    grader (alone or inside a multi) on a server started with --no-python-graders."""
    from tunesmith.errors import ConfigError
    from tunesmith.rollout.graders import build_grader

    if grader is None:
        raise APIError(400, "method.reinforcement.grader: missing", param="method", code="invalid_value")
    try:
        built = build_grader(grader)
    except ConfigError as e:
        raise APIError(400, str(e), param="method", code="invalid_grader") from None
    built.close()
    if not python_graders and built.runs_python:
        raise APIError(
            400,
            "method.reinforcement.grader: python graders are turned off on this server (tunesmith serve "
            "--no-python-graders): their code would run on the workers with the workers' permissions",
            param="method",
            code="python_graders_disabled",
        )


@router.post("/fine_tuning/jobs")
def create_job(
    body: JobCreate, request: Request, owner: str = Depends(current_owner), session: Session = Depends(db_session)
) -> dict:
    check_model(request, body.model)
    for param in ("training_file", "validation_file"):
        file_id = getattr(body, param)
        if file_id is not None:
            try:
                get_file(session, owner, file_id)
            except APIError as e:
                raise APIError(400, e.message, param=param, code="invalid_file") from None
    method: dict[str, Any] = body.method.model_dump(exclude_none=True) if body.method else {"type": "supervised"}
    kind = method["type"]
    if kind == "reinforcement":
        check_grader((method.get("reinforcement") or {}).get("grader"), request.app.state.settings.python_graders)
    if body.hyperparameters is not None and kind not in method:  # legacy top-level hyperparameters
        method[kind] = {"hyperparameters": body.hyperparameters.model_dump()}
    hyper = (method.get(kind) or {}).get("hyperparameters") or {}
    if kind != "dpo" and hyper.get("beta", "auto") != "auto":
        raise APIError(400, "beta: only a dpo method has a beta", param="method", code="invalid_value")
    extension = body.tunesmith.model_dump(exclude_none=True)
    if extension.get("replay") and kind != "supervised":
        raise APIError(
            400, "tunesmith.replay: self-replay is for supervised jobs", param="tunesmith.replay", code="invalid_value"
        )
    for key in REINFORCEMENT_ONLY:
        if extension.get(key) is not None and kind != "reinforcement":
            raise APIError(
                400, f"tunesmith.{key}: for reinforcement jobs", param=f"tunesmith.{key}", code="invalid_value"
            )
    if kind == "reinforcement" and extension.get("method") == "full":
        raise APIError(
            400,
            "tunesmith.method: a reinforcement job's KL term needs the base with the adapter switched off; "
            "use lora or qlora",
            param="tunesmith.method",
            code="invalid_value",
        )
    job = Job(
        id=new_id("ftjob"),
        owner=owner,
        model=body.model,
        recipe=RECIPE[kind],
        training_file=body.training_file,
        validation_file=body.validation_file,
        suffix=body.suffix,
        seed=body.seed if body.seed is not None else random.randrange(2**31),
        meta=body.metadata,
        method=method,
        hyperparameters={k: v for k, v in hyper.items()}
        or {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"},
        extension=extension,
        status="validating_files",
        result_files=[],
    )
    session.add(job)
    session.flush()
    add_event(session, job.id, f"Created fine-tuning job: {job.id}")
    session.commit()
    return job_object(job)


@router.get("/fine_tuning/jobs")
def list_jobs(
    request: Request,
    after: str | None = None,
    limit: int = Query(20),
    owner: str = Depends(current_owner),
    session: Session = Depends(db_session),
) -> dict:
    check_limit(limit)
    wanted = {m.group(1): v for k, v in request.query_params.items() if (m := METADATA_FILTER.match(k))}
    query = select(Job).where(Job.owner == owner)
    if not wanted:
        return page(cursor_page(session, query, Job, after, limit), limit, job_object)
    # metadata is JSON: filtered here, the same on SQLite and PostgreSQL
    if after is not None:
        query = query.where(Job.seq < (session.scalar(select(Job.seq).where(Job.id == after)) or 0))
    rows = [
        j
        for j in session.scalars(query.order_by(Job.seq.desc()))
        if all((j.meta or {}).get(k) == v for k, v in wanted.items())
    ]
    return page(rows[: limit + 1], limit, job_object)


@router.get("/fine_tuning/jobs/{job_id}")
def retrieve_job(job_id: str, owner: str = Depends(current_owner), session: Session = Depends(db_session)) -> dict:
    return job_object(get_job(session, owner, job_id))


@router.post("/fine_tuning/jobs/{job_id}/cancel")
def cancel_job(job_id: str, owner: str = Depends(current_owner), session: Session = Depends(db_session)) -> dict:
    job = get_job(session, owner, job_id)
    if job.status in FINISHED:
        raise APIError(409, f"job {job_id} is already {job.status}", param="fine_tuning_job_id", code="invalid_state")
    if job.worker is None:  # waiting or paused: nobody runs it, so cancelling is immediate
        job.status, job.requested = "cancelled", None
        job.finished_at = int(time.time())
        add_event(session, job.id, "Job cancelled")
    else:
        job.requested = "cancel"  # its worker stops the run (SIGTERM: checkpoint, exit) within seconds
        add_event(session, job.id, "Cancellation requested")
    session.commit()
    return job_object(job)


@router.post("/fine_tuning/jobs/{job_id}/pause")
def pause_job(job_id: str, owner: str = Depends(current_owner), session: Session = Depends(db_session)) -> dict:
    job = get_job(session, owner, job_id)
    if job.status not in ("running", "queued") or job.requested:
        raise APIError(
            409,
            f"job {job_id} is {job.status}: only a queued or running job can be paused",
            param="fine_tuning_job_id",
            code="invalid_state",
        )
    if job.worker is None:
        job.status = "paused"
        add_event(session, job.id, "Job paused")
    else:
        job.requested = "pause"
        add_event(session, job.id, "Pause requested: the run saves a checkpoint and stops")
    session.commit()
    return job_object(job)


@router.post("/fine_tuning/jobs/{job_id}/resume")
def resume_job(job_id: str, owner: str = Depends(current_owner), session: Session = Depends(db_session)) -> dict:
    job = get_job(session, owner, job_id)
    if job.status != "paused":
        raise APIError(
            409,
            f"job {job_id} is {job.status}: only a paused job can be resumed",
            param="fine_tuning_job_id",
            code="invalid_state",
        )
    job.status = "queued"  # a worker resumes the run from its last checkpoint
    add_event(session, job.id, "Job resumed: queued to continue from its last checkpoint")
    session.commit()
    return job_object(job)


@router.get("/fine_tuning/jobs/{job_id}/events")
def list_events(
    job_id: str,
    after: str | None = None,
    limit: int = Query(20),
    owner: str = Depends(current_owner),
    session: Session = Depends(db_session),
) -> dict:
    get_job(session, owner, job_id)
    query = select(Event).where(Event.job_id == job_id)
    return page(cursor_page(session, query, Event, after, limit), limit, event_object)


@router.get("/fine_tuning/jobs/{job_id}/checkpoints")
def list_checkpoints(
    job_id: str,
    after: str | None = None,
    limit: int = Query(10),
    owner: str = Depends(current_owner),
    session: Session = Depends(db_session),
) -> dict:
    job = get_job(session, owner, job_id)
    query = select(Checkpoint).where(Checkpoint.job_id == job_id)
    return page(cursor_page(session, query, Checkpoint, after, limit), limit, lambda c: checkpoint_object(c, job))
