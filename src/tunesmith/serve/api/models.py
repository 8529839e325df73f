"""/v1/models: the base models, and the owner's succeeded fine-tunes and their checkpoints
(app.state.list_models, which the chat router shares)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from tunesmith.serve.auth import current_owner
from tunesmith.serve.errors import not_found

router = APIRouter(tags=["models"])


@router.get("/models")
def list_models(request: Request, owner: str = Depends(current_owner)) -> dict:
    data = request.app.state.list_models(owner)
    return {
        "object": "list",
        "data": data,
        "has_more": False,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }


@router.get("/models/{model:path}")
def retrieve_model(model: str, request: Request, owner: str = Depends(current_owner)) -> dict:
    for item in request.app.state.list_models(owner):
        if item["id"] == model:
            return item
    raise not_found("model", model, param="model")
