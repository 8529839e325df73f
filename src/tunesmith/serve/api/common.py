"""What every router shares: the database session dependency and cursor paging."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import Request
from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from tunesmith.serve.errors import APIError


def db_session(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


def check_limit(limit: int, most: int = 100) -> int:
    if not 1 <= limit <= most:
        raise APIError(400, f"limit must be between 1 and {most}", param="limit", code="invalid_value")
    return limit


def cursor_page(session: Session, query: Select, table: Any, after: str | None, limit: int) -> list[Any]:
    """Rows newest first; `after` an id of the same table: continue with the rows older than it.
    Fetches limit + 1 rows, so the envelope can say has_more."""
    if after is not None:
        seq = session.scalar(select(table.seq).where(table.id == after))
        if seq is None:
            raise APIError(400, f"after: no such id '{after}'", param="after", code="invalid_value")
        query = query.where(table.seq < seq)
    return list(session.scalars(query.order_by(table.seq.desc()).limit(check_limit(limit) + 1)))
