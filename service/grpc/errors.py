"""Our errors as gRPC status codes: one table, the same messages as HTTP.

A `ServiceError` leaves a gRPC call as the status code its class maps to and its own message (the text HTTP
sends), with ``retry-after`` in the trailing metadata where HTTP sends ``Retry-After``. Classes are looked up
along their MRO, so a subclass maps like its parent; a class in none of the rows maps by its HTTP status class.
"""

from __future__ import annotations

import grpc

from service.errors import (
    ClientDisconnected,
    DeadlineExceeded,
    ImageTooLarge,
    InferenceFailed,
    InsufficientMemory,
    InternalError,
    InvalidImage,
    InvalidParameter,
    InvalidTensor,
    MalformedRequest,
    ModelControlOff,
    ModelControlRefused,
    ModelLoadFailed,
    ModelNotFound,
    NotReady,
    Overloaded,
    RateLimited,
    RequestReceiptTimeout,
    ServiceError,
    ShuttingDown,
    TooManyFiles,
    Unauthorized,
    UnsupportedMediaType,
    UploadTooLarge,
)

STATUS_CODES: dict[type[ServiceError], grpc.StatusCode] = {
    InvalidImage: grpc.StatusCode.INVALID_ARGUMENT,
    MalformedRequest: grpc.StatusCode.INVALID_ARGUMENT,
    InvalidTensor: grpc.StatusCode.INVALID_ARGUMENT,
    UnsupportedMediaType: grpc.StatusCode.INVALID_ARGUMENT,
    InvalidParameter: grpc.StatusCode.INVALID_ARGUMENT,
    ModelNotFound: grpc.StatusCode.NOT_FOUND,
    UploadTooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ImageTooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    TooManyFiles: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    RateLimited: grpc.StatusCode.RESOURCE_EXHAUSTED,
    NotReady: grpc.StatusCode.UNAVAILABLE,
    ShuttingDown: grpc.StatusCode.UNAVAILABLE,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    RequestReceiptTimeout: grpc.StatusCode.DEADLINE_EXCEEDED,  # HTTP's receipt deadline; gRPC has its own
    ClientDisconnected: grpc.StatusCode.CANCELLED,
    InferenceFailed: grpc.StatusCode.INTERNAL,
    InternalError: grpc.StatusCode.INTERNAL,
    Unauthorized: grpc.StatusCode.UNAUTHENTICATED,
    ModelControlRefused: grpc.StatusCode.PERMISSION_DENIED,
    ModelControlOff: grpc.StatusCode.FAILED_PRECONDITION,
    ModelLoadFailed: grpc.StatusCode.INTERNAL,
    InsufficientMemory: grpc.StatusCode.RESOURCE_EXHAUSTED,
}
"""Every error class a client can meet, and the status code it leaves a gRPC call with (docs/SERVICE.md)."""

_RETRY_AFTER = "Retry-After"


def status_code(error: ServiceError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        if cls in STATUS_CODES:
            return STATUS_CODES[cls]
    return grpc.StatusCode.INVALID_ARGUMENT if 400 <= error.status_code < 500 else grpc.StatusCode.INTERNAL


def trailing_metadata(error: ServiceError) -> tuple[tuple[str, str], ...]:
    """What of the error's HTTP headers a gRPC client can use: ``retry-after`` (other headers, such as
    ``Connection``, mean nothing in gRPC and some are forbidden in its metadata)."""
    retry_after = error.headers.get(_RETRY_AFTER)
    return (("retry-after", retry_after),) if retry_after is not None else ()
