"""Exception handlers: every error leaves as one JSON shape per protocol.

Whatever is raised is first turned into a `ServiceError` (validation errors into `InvalidParameter`, anything
unexpected into `InternalError`), counted once under its reason, and answered by `error_response`, which the
serving gate middleware uses too: `service.errors.error_body` on /v1 and everything else, and the Open Inference
Protocol's ``{"error": "<message>"}`` under /v2 (what Triton's clients read).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

from service.errors import InternalError, InvalidParameter, ServiceError, error_body
from service.metrics import ServiceMetrics

logger = logging.getLogger(__name__)

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 400: "bad_request", 413: "upload_too_large"}


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        location = ".".join(str(part) for part in error.get("loc", ()) if part != "body") or "request"
        parts.append(f"{location}: {error.get('msg', 'invalid')}")
    return "invalid request parameters: " + "; ".join(parts)


V2_PREFIX = "/v2"


def error_response(exc: ServiceError, scope: Scope) -> JSONResponse:
    """The HTTP answer to a service error for the request of `scope`: its status, headers and the protocol's JSON
    body, with the request's ID."""
    path = scope.get("path", "")
    request_id = scope.get("state", {}).get("request_id")
    if path == V2_PREFIX or path.startswith(V2_PREFIX + "/"):
        body: dict[str, object] = {"error": exc.message}
        if request_id is not None:
            body["request_id"] = request_id
    else:
        body = error_body(exc.status_code, exc.code, exc.message, exc.filename, request_id)
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


def install_error_handlers(app: FastAPI, metrics: ServiceMetrics) -> None:
    def refuse(request: Request, exc: ServiceError) -> JSONResponse:
        metrics.count_rejection(exc)
        if exc.status_code >= 500 and exc.status_code != 503:
            logger.warning(
                "%s %s -> %d %s: %s", request.method, request.url.path, exc.status_code, exc.code, exc.message
            )
        return error_response(exc, request.scope)

    async def service_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceError)
        return refuse(request, exc)

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return refuse(request, InvalidParameter(_describe_validation(exc)))

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        # Unknown routes and wrong methods: not a refusal of work, so not counted as a rejection.
        assert isinstance(exc, StarletteHTTPException)
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}; see /docs for the API"
        error = ServiceError(message, headers=dict(exc.headers or {}))
        error.status_code = exc.status_code  # type: ignore[misc]
        error.code = _HTTP_CODES.get(exc.status_code, "http_error")  # type: ignore[misc]
        return error_response(error, request.scope)

    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        # The traceback goes to the log (uvicorn prints it); the client only learns that it was our fault.
        return refuse(request, InternalError("internal server error; the details are in the server log"))

    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected_error)
