"""Domain errors of the service and their HTTP mapping.

Every failure a client can cause or meet is a `ServiceError` subclass carrying its HTTP status, a stable
machine-readable `code`, a message a person understands and the `reason` label counted in
``resnet_serve_rejections_total``. The HTTP layer turns them into one JSON shape::

    {"error": {"status": 413, "code": "image_too_large", "message": "...", "filename": "scan.png"}}

Codes are part of the API: clients may branch on them, so they never change meaning.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar


class ServiceError(Exception):
    """A failure with a definite HTTP status; its message is safe to show to the client."""

    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    reason: ClassVar[str] = "internal_error"
    """Label of ``resnet_serve_rejections_total`` this error is counted under."""

    def __init__(self, message: str, *, filename: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.filename = filename
        self.headers = dict(headers or {})

    def for_file(self, filename: str | None) -> ServiceError:
        """The same error, naming the uploaded file it is about (the message gains the name too)."""
        if filename is None or self.filename is not None:
            return self
        clone = type(self)(f"{filename}: {self.message}", filename=filename, headers=self.headers)
        return clone


class InvalidImage(ServiceError):
    """The bytes are not a decodable image, or decoding them failed (truncated, corrupt, hostile)."""

    status_code = 400
    code = "invalid_image"
    reason = "invalid_image"


class MalformedRequest(ServiceError):
    """The request body cannot be parsed (broken multipart framing, missing boundary)."""

    status_code = 400
    code = "malformed_request"
    reason = "invalid_request"


class InvalidTensor(ServiceError):
    """An inference request whose tensors do not add up: sizes, shapes, datatypes or names (Open Inference
    Protocol)."""

    status_code = 400
    code = "invalid_tensor"
    reason = "invalid_request"


class Unauthorized(ServiceError):
    """API keys are on and the request carries none, or one the server does not accept."""

    status_code = 401
    code = "unauthorized"
    reason = "unauthorized"

    def __init__(self, message: str, *, filename: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(
            message, filename=filename, headers={"WWW-Authenticate": 'Bearer realm="resnet-serve"', **(headers or {})}
        )


class RateLimited(ServiceError):
    """The request's API key is over its rate (`rate=` in the keys file); retry after ``Retry-After`` seconds."""

    status_code = 429
    code = "rate_limited"
    reason = "rate_limited"

    def __init__(
        self,
        message: str,
        *,
        retry_after_s: int = 1,
        filename: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, filename=filename, headers={"Retry-After": str(retry_after_s), **(headers or {})})


class ModelNotFound(ServiceError):
    status_code = 404
    code = "model_not_found"
    reason = "unknown_model"


class UploadTooLarge(ServiceError):
    """The request body is over ``max_upload_bytes``; detected before or while it streams in."""

    status_code = 413
    code = "upload_too_large"
    reason = "too_large"


class ImageTooLarge(ServiceError):
    """The image has more pixels than ``max_image_pixels`` (decompression-bomb protection)."""

    status_code = 413
    code = "image_too_large"
    reason = "too_large"


class TooManyFiles(ServiceError):
    status_code = 413
    code = "too_many_files"
    reason = "too_large"


class UnsupportedMediaType(ServiceError):
    """The request or a part declares a type we do not decode, or the image format is not supported."""

    status_code = 415
    code = "unsupported_type"
    reason = "unsupported_type"


class InvalidParameter(ServiceError):
    """A query parameter or form field is out of range or unknown."""

    status_code = 422
    code = "invalid_parameter"
    reason = "invalid_request"


class ModelControlRefused(ServiceError):
    """Loading or unloading models needs an admin key (or, with no keys, a server started to allow it)."""

    status_code = 403
    code = "forbidden"
    reason = "forbidden"


class ModelControlOff(ServiceError):
    """The server's model control mode does not take this change (loads and unloads need `explicit`)."""

    status_code = 400
    code = "model_control_off"
    reason = "invalid_request"


class ModelLoadFailed(ServiceError):
    """A model version the repository API was asked to load cannot be served (corrupt file, wrong input shape,
    missing labels): the message says why; the versions that served go on serving."""

    status_code = 400
    code = "model_load_failed"
    reason = "invalid_request"


class InsufficientMemory(ServiceError):
    """Loading a model version beside those serving would pass the server's memory budget."""

    status_code = 507
    code = "insufficient_memory"
    reason = "insufficient_memory"


class Overloaded(ServiceError):
    """The model's queue has no room; the client should retry after ``Retry-After`` seconds."""

    status_code = 503
    code = "overloaded"
    reason = "overloaded"

    def __init__(
        self,
        message: str,
        *,
        retry_after_s: int = 1,
        filename: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, filename=filename, headers={"Retry-After": str(retry_after_s), **(headers or {})})


class NotReady(ServiceError):
    """Models are still loading or warming up."""

    status_code = 503
    code = "not_ready"
    reason = "not_ready"

    def __init__(self, message: str, *, filename: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message, filename=filename, headers={"Retry-After": "1", **(headers or {})})


class ShuttingDown(ServiceError):
    """The server is draining after SIGTERM; new work goes to another replica."""

    status_code = 503
    code = "shutting_down"
    reason = "shutting_down"

    @classmethod
    def draining(cls) -> ShuttingDown:
        """What every front end answers a new request with while the server drains."""
        return cls(
            "the server is shutting down; retry on another instance",
            headers={"Connection": "close", "Retry-After": "1"},
        )


class DeadlineExceeded(ServiceError):
    """The request was not answered within ``request_timeout_s``; queued work for it is dropped."""

    status_code = 504
    code = "timeout"
    reason = "timeout"


class RequestReceiptTimeout(ServiceError):
    """The request's head or body did not arrive within its deadline; the protocol guard answered 408 and closed
    the connection while the app was still reading it."""

    status_code = 408
    code = "request_timeout"
    reason = "timeout"


class ClientDisconnected(ServiceError):
    """The client closed the connection before its answer was ready; its queued images are dropped.

    Nobody reads the response; 499 (nginx's "client closed request") only shows in logs and metrics.
    """

    status_code = 499
    code = "client_disconnected"
    reason = "client_disconnected"


class InternalError(ServiceError):
    """A bug: an exception no handler expected. The client only learns that it was the server's fault."""

    status_code = 500
    code = "internal_error"
    reason = "internal_error"


class InferenceFailed(ServiceError):
    """ONNX Runtime raised while running a batch; details go to the log, not to the client."""

    status_code = 500
    code = "inference_failed"
    reason = "inference_failed"


def _error_classes(base: type[ServiceError] = ServiceError) -> list[type[ServiceError]]:
    found = [base]
    for subclass in base.__subclasses__():
        found += _error_classes(subclass)
    return found


def rejection_reasons() -> tuple[str, ...]:
    """Every `reason` an error class can be counted under, derived from the classes themselves (sorted)."""
    return tuple(sorted({cls.reason for cls in _error_classes()}))


class DropReason(StrEnum):
    """Why a queued image left its batcher without being inferred (``resnet_serve_dropped_images_total``)."""

    TIMEOUT = "timeout"
    """Its request's deadline passed while it waited (the request is answered `DeadlineExceeded`)."""
    CLIENT_DISCONNECTED = "client_disconnected"
    """Its client left (`ClientDisconnected`); nobody waits for it."""
    SHUTDOWN = "shutdown"
    """The batcher closed with the image still queued (`ShuttingDown`)."""


class ConnectionRefusal(StrEnum):
    """Why the protocol guard answered and closed a connection itself (``resnet_serve_connections_refused_total``)."""

    HEADER_TIMEOUT = "header_timeout"
    BODY_TIMEOUT = "body_timeout"
    FRAMING = "framing"
    MAX_CONNECTIONS = "max_connections"


def error_body(
    status_code: int, code: str, message: str, filename: str | None = None, request_id: str | None = None
) -> dict[str, object]:
    """The one JSON error shape every error response uses."""
    error: dict[str, object] = {"status": status_code, "code": code, "message": message}
    if filename is not None:
        error["filename"] = filename
    if request_id is not None:
        error["request_id"] = request_id
    return {"error": error}
