"""Exception handlers: every error leaves as the one JSON shape of `service.errors.error_body`."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.errors import ServiceError, error_body
from service.metrics import ServiceMetrics

logger = logging.getLogger(__name__)

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 400: "bad_request", 413: "upload_too_large"}


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        location = ".".join(str(part) for part in error.get("loc", ()) if part != "body") or "request"
        parts.append(f"{location}: {error.get('msg', 'invalid')}")
    return "invalid request parameters: " + "; ".join(parts)


def install_error_handlers(app: FastAPI, metrics: ServiceMetrics) -> None:
    async def service_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceError)
        metrics.rejections.labels(exc.reason).inc()
        if exc.status_code >= 500 and exc.status_code != 503:
            logger.warning("%s %s -> %d %s: %s", request.method, request.url.path, exc.status_code, exc.code, exc.message)
        return JSONResponse(
            error_body(exc.status_code, exc.code, exc.message, exc.filename),
            status_code=exc.status_code,
            headers=exc.headers,
        )

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        metrics.rejections.labels("invalid_request").inc()
        return JSONResponse(error_body(422, "invalid_parameter", _describe_validation(exc)), status_code=422)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}; see /docs for the API"
        return JSONResponse(
            error_body(exc.status_code, code, message), status_code=exc.status_code, headers=exc.headers
        )

    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        # The traceback goes to the log (uvicorn prints it); the client only learns that it was our fault.
        metrics.rejections.labels("internal_error").inc()
        return JSONResponse(
            error_body(500, "internal_error", "internal server error; the details are in the server log"),
            status_code=500,
        )

    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected_error)
