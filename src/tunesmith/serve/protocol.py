"""OpenAI's request and response shapes, in one place (the openai SDK's types are the spec)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt

from tunesmith.serve.db import Checkpoint, Event, File, Job


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n_epochs: Literal["auto"] | int = "auto"
    batch_size: Literal["auto"] | int = "auto"
    learning_rate_multiplier: Literal["auto"] | float = "auto"
    beta: Literal["auto"] | float = "auto"  # dpo only


class MethodHyperparameters(BaseModel):
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)


class ReinforcementHyperparameters(BaseModel):
    """openai-python's ReinforcementHyperparameters; what each becomes in a grpo run: serve/hyper.py."""

    model_config = ConfigDict(extra="forbid")
    n_epochs: Literal["auto"] | PositiveInt = "auto"
    batch_size: Literal["auto"] | PositiveInt = "auto"
    learning_rate_multiplier: Literal["auto"] | PositiveFloat = "auto"
    compute_multiplier: Literal["auto"] | PositiveFloat = "auto"
    eval_interval: Literal["auto"] | PositiveInt = "auto"
    eval_samples: Literal["auto"] | PositiveInt = "auto"
    reasoning_effort: Literal["default", "low", "medium", "high"] = "default"


class ReinforcementMethod(BaseModel):
    grader: Any = None  # checked by building it (rollout/graders.py): a bad one is a 400 naming its field
    hyperparameters: ReinforcementHyperparameters = Field(default_factory=ReinforcementHyperparameters)


class Method(BaseModel):
    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: MethodHyperparameters | None = None
    dpo: MethodHyperparameters | None = None
    reinforcement: ReinforcementMethod | None = None


class TunesmithExtension(BaseModel):
    """What OpenAI has no field for."""

    model_config = ConfigDict(extra="forbid")
    method: Literal["lora", "qlora", "full"] = "lora"
    lora_r: int | None = Field(default=None, ge=1)
    target: str | None = None
    replay: str | None = None
    max_kl: float | None = Field(default=None, gt=0)
    max_probe_ppl_increase: float | None = Field(default=None, gt=0)
    max_steps: int | None = Field(default=None, ge=1)
    save_every: int | None = Field(default=None, ge=1)
    forgetting_every: int | None = Field(default=None, ge=0)
    group_size: int | None = Field(default=None, ge=2)  # reinforcement: completions sampled per prompt
    max_new_tokens: int | None = Field(default=None, ge=1)  # reinforcement: tokens per sampled completion


class JobCreate(BaseModel):
    model: str = Field(min_length=1)
    training_file: str
    validation_file: str | None = None
    suffix: str | None = Field(default=None, max_length=64, pattern=r"^[A-Za-z0-9_.-]*$")
    seed: int | None = None
    metadata: dict[str, str] | None = None
    method: Method | None = None
    hyperparameters: Hyperparameters | None = None  # legacy top level
    tunesmith: TunesmithExtension = Field(default_factory=TunesmithExtension)
    integrations: list[Any] | None = None  # accepted, ignored (no wandb here)


def page(rows: list[Any], limit: int, render: Any) -> dict[str, Any]:
    """OpenAI's list envelope over rows fetched with limit + 1 (the extra one says has_more)."""
    data = [render(r) for r in rows[:limit]]
    return {
        "object": "list",
        "data": data,
        "has_more": len(rows) > limit,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }


def file_object(f: File) -> dict[str, Any]:
    return {
        "id": f.id,
        "object": "file",
        "bytes": f.bytes,
        "created_at": f.created_at,
        "filename": f.filename,
        "purpose": f.purpose,
        "status": "processed",
        "status_details": None,
        "expires_at": None,
    }


def job_object(job: Job) -> dict[str, Any]:
    hp = {k: v for k, v in job.hyperparameters.items() if k != "beta" or job.recipe == "dpo"}
    kind = (job.method or {}).get("type", "supervised")
    method: dict[str, Any] = {"hyperparameters": hp}
    if kind == "reinforcement":  # the grader as it was given
        method = {"grader": (job.method.get("reinforcement") or {}).get("grader"), "hyperparameters": hp}
    return {
        "id": job.id,
        "object": "fine_tuning.job",
        "created_at": job.created_at,
        "error": job.error,
        "fine_tuned_model": job.fine_tuned_model if job.status == "succeeded" else None,
        "finished_at": job.finished_at,
        "hyperparameters": hp,
        "model": job.model,
        "organization_id": job.owner,
        "result_files": job.result_files or [],
        "seed": job.seed,
        "status": job.status,
        "trained_tokens": job.trained_tokens,
        "training_file": job.training_file,
        "validation_file": job.validation_file,
        "estimated_finish": job.estimated_finish,
        "integrations": [],
        "metadata": job.meta,
        "user_provided_suffix": job.suffix,
        "method": {"type": kind, kind: method},
        "tunesmith": job.extension,
    }


def event_object(e: Event) -> dict[str, Any]:
    return {
        "id": e.id,
        "object": "fine_tuning.job.event",
        "created_at": e.created_at,
        "level": e.level,
        "message": e.message,
        "type": e.type,
        "data": e.data or {},
    }


def checkpoint_object(c: Checkpoint, job: Job) -> dict[str, Any]:
    return {
        "id": c.id,
        "object": "fine_tuning.job.checkpoint",
        "created_at": c.created_at,
        "fine_tuned_model_checkpoint": f"{ft_name(job)}:ckpt-step-{c.step}",
        "fine_tuning_job_id": job.id,
        "step_number": c.step,
        "metrics": c.metrics or {},
    }


def base_display_name(model: str) -> str:
    """An alias as it is; a local directory or .gguf by its last component (':' would split the ft name)."""
    return Path(model).name.replace(":", "-") if ("/" in model or model.endswith(".gguf")) else model


def ft_name(job: Job) -> str:
    """ft:<base>:<owner>:<suffix>:<job-id-suffix>, as OpenAI names fine-tunes."""
    return f"ft:{base_display_name(job.model)}:{job.owner}:{job.suffix or ''}:{job.id.rsplit('-', 1)[-1][-8:]}"


def model_object(id: str, created: int, owned_by: str, parent: str | None = None) -> dict[str, Any]:
    return {"id": id, "object": "model", "created": created, "owned_by": owned_by, "parent": parent}
