"""The dashboard: `GET /` (one HTML page, its script and stylesheet from serve/static/, no build step) and
`GET /v1/fine_tuning/jobs/{id}/report`, the run's report.html for the page to show.

The page is public; everything on it comes from the /v1 endpoints with the key typed into it.
"""

from __future__ import annotations

import base64
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.orm import Session

from tunesmith.report import PLOTS
from tunesmith.serve.api.common import db_session
from tunesmith.serve.api.jobs import get_job
from tunesmith.serve.auth import current_owner
from tunesmith.serve.errors import APIError
from tunesmith.serve.jobs import run_dir

STATIC = Path(__file__).resolve().parent.parent / "static"
router = APIRouter(tags=["fine_tuning"])


def self_contained(run: Path) -> str:
    """report.html with its PNGs inlined: the page fetches it with the key, and an <img src="loss.png">
    next to it could not send one."""
    page = (run / "report.html").read_text(encoding="utf-8")
    for name in PLOTS:
        if (run / name).is_file():
            data = base64.b64encode((run / name).read_bytes()).decode()
            page = page.replace(f'src="{name}"', f'src="data:image/png;base64,{data}"')
    return page


@router.get("/fine_tuning/jobs/{job_id}/report", response_class=HTMLResponse)
def job_report(
    job_id: str, request: Request, owner: str = Depends(current_owner), session: Session = Depends(db_session)
) -> HTMLResponse:
    """The run's report (start-vs-end metrics, loss and drift-from-the-base plots), written when it ends."""
    run = run_dir(request.app.state.settings, get_job(session, owner, job_id))
    if not (run / "report.html").is_file():
        raise APIError(
            404,
            f"job {job_id} has no report yet: its run writes one when it finishes",
            param="fine_tuning_job_id",
            code="report_not_found",
        )
    return HTMLResponse(self_contained(run))


def install_dashboard(app: FastAPI) -> None:
    """`/` serves the page; `/static/` its script and stylesheet."""
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")
