"""The web process: FastAPI app over the database; it enqueues and reads, workers train.

`app.state` carries what the chat router (api/chat.py, when present) needs: `settings`, `sessions`,
`resolve_model(owner, name)` and `list_models(owner)`.
"""

from __future__ import annotations

import importlib
import logging
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from sqlalchemy import select

from tunesmith import __version__
from tunesmith.serve.api import dashboard, files, jobs, models
from tunesmith.serve.db import Checkpoint, Job, make_sessions
from tunesmith.serve.errors import install_error_handlers
from tunesmith.serve.jobs import is_full
from tunesmith.serve.protocol import ft_name, model_object
from tunesmith.serve.settings import Settings

log = logging.getLogger("tunesmith.serve")
STARTED = int(time.time())
CKPT = ":ckpt-step-"


def base_models(settings: Settings) -> list[str]:
    from tunesmith.models import ALIASES

    return list(ALIASES) + [m for m in settings.models if m not in ALIASES]


class ModelDirectory:
    """Model names an owner may use -> what to load: (base as --model takes it, adapter dir or None)."""

    def __init__(self, settings: Settings, sessions: Any):
        self.settings, self.sessions = settings, sessions

    def _served(self, job: Job) -> tuple[str, str | None]:
        run = self.settings.runs_dir / job.id
        if is_full(job):
            return str(run / "model"), None  # a full fine-tune is served as its own base
        return job.model, str(run / "adapter")

    def resolve(self, owner: str, name: str) -> tuple[str, str | None] | None:
        if not name.startswith("ft:"):
            return (name, None) if name in base_models(self.settings) else None
        ft, _, step = name.partition(CKPT)
        with self.sessions() as session:
            for job in session.scalars(select(Job).where(Job.owner == owner, Job.status != "failed")):
                if ft_name(job) != ft:
                    continue
                if not step:
                    return self._served(job) if job.status == "succeeded" else None
                ckpt = session.scalar(
                    select(Checkpoint).where(
                        Checkpoint.job_id == job.id,
                        Checkpoint.step == (int(step) if step.isdigit() else -1),  # not a number: no checkpoint
                    )
                )
                if ckpt is not None and ckpt.served_dir and Path(ckpt.served_dir).is_dir():
                    return (ckpt.served_dir, None) if is_full(job) else (job.model, ckpt.served_dir)
        return None

    def list(self, owner: str) -> list[dict[str, Any]]:
        data = [model_object(m, STARTED, "tunesmith") for m in base_models(self.settings)]
        with self.sessions() as session:
            query = select(Job).where(Job.owner == owner, Job.status != "failed").order_by(Job.seq.desc())
            for job in session.scalars(query):
                name = ft_name(job)
                if job.status == "succeeded":
                    data.append(model_object(name, job.finished_at or job.created_at, owner, job.model))
                ckpts = session.scalars(
                    select(Checkpoint)
                    .where(Checkpoint.job_id == job.id, Checkpoint.served_dir.is_not(None))
                    .order_by(Checkpoint.step.desc())
                )
                data += [model_object(f"{name}{CKPT}{c.step}", c.created_at, owner, name) for c in ckpts]
        return data


def create_app(settings: Settings) -> FastAPI:
    settings.make_dirs()
    app = FastAPI(
        title="tunesmith serve",
        version=__version__,
        description="A self-hosted, OpenAI-compatible fine-tuning service.",
    )
    install_error_handlers(app)
    app.state.settings = settings
    app.state.sessions = make_sessions(settings.db_url)
    directory = ModelDirectory(settings, app.state.sessions)
    app.state.resolve_model = directory.resolve
    app.state.list_models = directory.list
    for router in (files.router, jobs.router, models.router, dashboard.router):
        app.include_router(router, prefix="/v1")
    try:
        chat = importlib.import_module("tunesmith.serve.api.chat")
    except ImportError as e:
        if e.name != "tunesmith.serve.api.chat":
            log.warning("chat completions unavailable: %s", e)
    else:
        prefixed = any(getattr(r, "path", "").startswith("/v1/") for r in chat.router.routes)
        app.include_router(chat.router, prefix="" if prefixed else "/v1")

    dashboard.install_dashboard(app)

    @app.get("/health", include_in_schema=False)
    def health() -> dict:
        return {"status": "ok"}

    return app
