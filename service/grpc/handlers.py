"""Registering a service's method handlers so that a request that is not a valid protobuf message is answered
INVALID_ARGUMENT with a plain message.

gRPC parses each request with the handler's deserializer before the application sees it, and answers a parse
failure itself with UNKNOWN and the Python exception's name (``Unexpected <class '...DecodeError'>``): a
client's mistake reported as the server's unknown state, in words meant for its developers. Here each handler of
the protoc-generated ``add_*_to_server`` function is registered with the raw bytes instead, and parses them first
in its own behaviour: bytes that are not the message are refused with INVALID_ARGUMENT, counted by `on_malformed`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from service.errors import MalformedRequest

Register = Callable[[Any, Any], None]
"""A protoc-generated ``add_<Service>Servicer_to_server(servicer, server)``."""
OnMalformed = Callable[[str, MalformedRequest], None]
"""Told the method's name and the refusal, before the call is aborted."""


class _Capture:
    """Stands in for the server while a generated function registers its handlers, to take them."""

    def __init__(self) -> None:
        self.service = ""
        self.handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        pass  # the same handlers come again, by name, below

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        self.service, self.handlers = service, dict(handlers)


def malformed(message_type: str) -> MalformedRequest:
    return MalformedRequest(f"the request is not a valid {message_type} protobuf message")


def _parse(handler: grpc.RpcMethodHandler[Any, Any], data: bytes) -> Any:
    parse = handler.request_deserializer
    return data if parse is None else parse(data)


def _type_name(handler: grpc.RpcMethodHandler[Any, Any]) -> str:
    parse: Any = handler.request_deserializer
    owner = getattr(parse, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    return str(getattr(descriptor, "full_name", "request"))


def _tolerant(
    method: str, handler: grpc.RpcMethodHandler[Any, Any], on_malformed: OnMalformed
) -> grpc.RpcMethodHandler[Any, Any]:
    type_name = _type_name(handler)

    async def refuse(context: grpc.aio.ServicerContext[Any, Any]) -> None:
        error = malformed(type_name)
        on_malformed(method, error)
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, error.message)

    if handler.unary_unary is not None:
        unary: Callable[[Any, Any], Awaitable[Any]] = handler.unary_unary

        async def unary_behaviour(data: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                request = _parse(handler, data)
            except (DecodeError, ValueError):
                await refuse(context)
            return await unary(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_behaviour, response_serializer=handler.response_serializer)
    if handler.unary_stream is not None:
        stream: Callable[[Any, Any], AsyncIterator[Any]] = handler.unary_stream  # type: ignore[assignment]

        async def stream_behaviour(data: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            try:
                request = _parse(handler, data)
            except (DecodeError, ValueError):
                await refuse(context)
            async for response in stream(request, context):
                yield response

        return grpc.unary_stream_rpc_method_handler(stream_behaviour, response_serializer=handler.response_serializer)
    return handler  # streaming requests: none of our services has one


def add_tolerant_service(
    register: Register, servicer: object, server: grpc.aio.Server, on_malformed: OnMalformed
) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
    """Register what `register` (a generated ``add_*_to_server``) would, each request parsed as above; returns the
    handlers by method name."""
    capture = _Capture()
    register(servicer, capture)
    handlers = {name: _tolerant(name, handler, on_malformed) for name, handler in capture.handlers.items()}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(capture.service, handlers),))
    server.add_registered_method_handlers(capture.service, handlers)  # type: ignore[attr-defined]  # no stub yet
    return handlers
