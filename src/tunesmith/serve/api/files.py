"""/v1/files: uploads are stored under their generated id (never the client's name), streamed to disk,
refused with 413 past --max-file-mb while they arrive, and renamed into place only when complete."""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse
from sqlalchemy import or_, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from tunesmith.serve.api.common import cursor_page, db_session
from tunesmith.serve.auth import current_owner
from tunesmith.serve.db import FINISHED, File, Job, new_id
from tunesmith.serve.errors import APIError, not_found
from tunesmith.serve.protocol import file_object, page

router = APIRouter(tags=["files"])
PURPOSES = ("fine-tune", "fine-tune-results")
CHUNK = 1 << 20


class SizeLimitedRequest(Request):
    """The body counted as it streams in: 413 as soon as it passes the limit, before it is all read."""

    limit: int = 0

    async def stream(self) -> AsyncGenerator[bytes, None]:
        seen = 0
        async for chunk in super().stream():
            seen += len(chunk)
            if seen > self.limit:
                raise APIError(
                    413,
                    f"file too large: the limit is {self.limit // (1 << 20)} MB (--max-file-mb)",
                    param="file",
                    code="file_too_large",
                )
            yield chunk


def too_large(limit: int) -> APIError:
    return APIError(
        413,
        f"file too large: the limit is {limit / (1 << 20):g} MB (--max-file-mb)",
        param="file",
        code="file_too_large",
    )


def get_file(session: Session, owner: str, file_id: str) -> File:
    row = session.scalar(select(File).where(File.id == file_id, File.owner == owner, File.deleted.is_(False)))
    if row is None:
        raise not_found("file", file_id, param="file_id")
    return row


@router.post("/files")
async def upload_file(request: Request, owner: str = Depends(current_owner)) -> dict:
    settings = request.app.state.settings
    limit = int(settings.max_file_mb * (1 << 20))
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + 64 * 1024:  # multipart framing aside
        raise too_large(limit)
    limited = SizeLimitedRequest(request.scope, request.receive)
    limited.limit = limit + 64 * 1024
    form = await limited.form(max_files=1, max_fields=8)
    upload, purpose = form.get("file"), form.get("purpose")
    if not isinstance(upload, UploadFile):
        raise APIError(400, "file: a multipart file field named 'file' is required", param="file", code="missing")
    if purpose not in ("fine-tune",):
        raise APIError(
            400, f"purpose: '{purpose}' is not supported here; use 'fine-tune'", param="purpose", code="invalid_value"
        )
    file_id = new_id("file")
    target = settings.files_dir / file_id
    tmp = settings.files_dir / f".tmp-{file_id}"
    size = 0
    try:
        with open(tmp, "wb") as out:
            while chunk := await upload.read(CHUNK):
                size += len(chunk)
                if size > limit:
                    raise too_large(limit)
                out.write(chunk)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
        await form.close()

    def record() -> dict:
        with request.app.state.sessions() as session:
            row = File(
                id=file_id,
                owner=owner,
                filename=os.path.basename(upload.filename or "upload"),
                purpose=purpose,
                bytes=size,
            )
            session.add(row)
            session.commit()
            return file_object(row)

    return await run_in_threadpool(record)


@router.get("/files")
def list_files(
    purpose: str | None = None,
    after: str | None = None,
    limit: int = Query(100),
    owner: str = Depends(current_owner),
    session: Session = Depends(db_session),
) -> dict:
    query = select(File).where(File.owner == owner, File.deleted.is_(False))
    if purpose:
        query = query.where(File.purpose == purpose)
    return page(cursor_page(session, query, File, after, limit), limit, file_object)


@router.get("/files/{file_id}")
def retrieve_file(file_id: str, owner: str = Depends(current_owner), session: Session = Depends(db_session)) -> dict:
    return file_object(get_file(session, owner, file_id))


@router.get("/files/{file_id}/content")
def file_content(
    file_id: str, request: Request, owner: str = Depends(current_owner), session: Session = Depends(db_session)
) -> FileResponse:
    row = get_file(session, owner, file_id)
    return FileResponse(
        request.app.state.settings.files_dir / row.id, media_type="application/octet-stream", filename=row.filename
    )


@router.delete("/files/{file_id}")
def delete_file(
    file_id: str, request: Request, owner: str = Depends(current_owner), session: Session = Depends(db_session)
) -> dict:
    row = get_file(session, owner, file_id)
    user = session.scalar(
        select(Job).where(or_(Job.training_file == row.id, Job.validation_file == row.id), Job.status.not_in(FINISHED))
    )
    if user is not None:
        role = "training_file" if user.training_file == row.id else "validation_file"
        raise APIError(
            409,
            f"{row.id} is the {role} of job {user.id}, which is {user.status}: cancel the job or let it finish first",
            param="file_id",
            code="file_in_use",
        )
    row.deleted = True  # the row stays: jobs keep naming their training file
    session.commit()
    (request.app.state.settings.files_dir / row.id).unlink(missing_ok=True)
    return {"id": row.id, "object": "file", "deleted": True}
