"""Every error the service answers has OpenAI's body: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("tunesmith.serve")

TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    500: "server_error",
}


def openai_error(
    status: int, message: str, type: str | None = None, param: str | None = None, code: str | None = None
) -> JSONResponse:
    body = {
        "error": {
            "message": message,
            "type": type or TYPE_BY_STATUS.get(status, "invalid_request_error"),
            "param": param,
            "code": code,
        }
    }
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, headers=headers)


class APIError(Exception):
    """Raised anywhere in a handler; answered with openai_error."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None, type: str | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type


def not_found(kind: str, id: str, param: str | None = None) -> APIError:
    return APIError(404, f"No such {kind}: '{id}'", param=param, code="not_found")


def _validation_param(loc: tuple) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header", "form")]
    return ".".join(parts) or None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return openai_error(exc.status, exc.message, exc.type, exc.param, exc.code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        param = _validation_param(tuple(first.get("loc", ())))
        message = "; ".join(f"{_validation_param(tuple(e.get('loc', ()))) or 'body'}: {e.get('msg')}" for e in errors)
        return openai_error(422, message or "invalid request", param=param, code="invalid_value")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return openai_error(exc.status_code, str(exc.detail), code=code)

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return openai_error(500, f"internal server error: {type(exc).__name__}", code="internal_error")
