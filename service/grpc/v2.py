"""The Open Inference Protocol's GRPCInferenceService, on the same data plane as HTTP.

The gRPC twin of `service.api.v2`: health, server and model metadata, and ModelInfer with BYTES [N] encoded
images (decoded and preprocessed by the server) or a preprocessed FP32 [N, C, H, W] batch, in ``contents`` or
``raw_input_contents``; logits, or the classification extension's strings, in ``raw_output_contents``.

Each RPC only translates: the request message into the data plane's protocol-neutral request (`messages`), the
result or the error back. Every call leaves with the status code of `errors.STATUS_CODES` and the message HTTP
would send. While the server drains, the serving gate
(`gate.ServingGate`) refuses new calls before they get here; the calls it let in are served. The client's gRPC
deadline shortens the request's own deadline, so images still queued when it passes are dropped unrun; a client
that cancels has its handler cancelled, which drops its queued images.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
from google.protobuf import json_format

from service import __version__, logs, tracing
from service.dataplane import DataPlane
from service.errors import (
    ClientDisconnected,
    DeadlineExceeded,
    InternalError,
    ModelNotFound,
    ServiceError,
)
from service.grpc import errors, gate, messages
from service.grpc.proto import grpc_predict_v2_pb2 as pb
from service.grpc.proto.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceServicer
from service.inference import InferenceRequest
from service.metrics import ServiceMetrics
from service.v2 import codec, extensions

access_logger = logging.getLogger(logs.ACCESS_LOGGER)
logger = logging.getLogger(__name__)

SERVICE_NAME = messages.SERVICE_NAME
PROTOCOL = "v2-grpc"
"""The `protocol` label of resnet_serve_requests_total."""

_PROBES = ("ServerLive", "ServerReady")
_DEADLINE_SLACK_S = 0.05
"""gRPC cancels a call at its deadline by its own clock, which can be a few milliseconds ahead of what
`time_remaining()` computes: a call cancelled this close to its deadline was cancelled by it."""

Request = TypeVar("Request")
Response = TypeVar("Response")
ServicerContext = grpc.aio.ServicerContext[Request, Response]


class InferenceServicer(GRPCInferenceServiceServicer):
    """The RPCs of inference.GRPCInferenceService; each one is served through `_call`."""

    def __init__(self, dataplane: DataPlane, *, metrics: ServiceMetrics, access_log: bool = True) -> None:
        self._dataplane = dataplane
        self._metrics = metrics
        self._access_log = access_log

    # ------------------------------------------------------------------------------------------ every call

    async def _call(
        self, method: str, context: ServicerContext[Request, Response], serve: Callable[[], Awaitable[Response]]
    ) -> Response:
        """Serve one call: its request ID (the client's `x-request-id`, or a new one) in every log line about it and
        echoed in the trailing metadata, counted in the metrics, an access line, its errors as status codes."""
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        metadata = {
            key.lower(): value for key, value in (context.invocation_metadata() or ()) if isinstance(value, str)
        }
        request_id = logs.request_id_from(metadata.get("x-request-id"))
        token = logs.request_id.set(request_id)
        trace = (
            tracing.start_request(f"gRPC {method}", metadata, request_id)
            if tracing.enabled() and method not in _PROBES
            else None
        )
        context.set_trailing_metadata((("x-request-id", request_id),))
        self._metrics.grpc_in_flight.inc()
        try:
            response = await serve()
            tracing.answer_started(trace)
            return response
        except ServiceError as exc:
            code = errors.status_code(exc)
            await self._refuse(method, context, exc, code)
            raise AssertionError("unreachable: abort raises") from None
        except asyncio.CancelledError:
            # The client cancelled, or its deadline passed: gRPC cancels the handler, which drops its queued
            # images (DataPlane.infer cancels their futures). Nobody reads an answer; count why it ended.
            remaining = context.time_remaining()
            if remaining is not None and remaining <= _DEADLINE_SLACK_S:
                code = grpc.StatusCode.DEADLINE_EXCEEDED
                self._metrics.count_rejection(DeadlineExceeded("the client's deadline passed"))
            else:
                code = grpc.StatusCode.CANCELLED
                self._metrics.count_rejection(ClientDisconnected("the client cancelled the call"))
            raise
        except Exception:
            # The traceback goes to the log; the client only learns that it was our fault.
            logger.exception("gRPC %s failed", method)
            code = grpc.StatusCode.INTERNAL
            await self._refuse(
                method, context, InternalError("internal server error; the details are in the server log"), code
            )
            raise AssertionError("unreachable: abort raises") from None
        finally:
            elapsed = time.perf_counter() - started
            self._metrics.grpc_in_flight.dec()
            self._metrics.grpc_requests.labels(method, code.name).inc()
            self._metrics.grpc_request_seconds.labels(method).observe(elapsed)
            tracing.end_request(trace, **{"rpc.grpc.status_code": code.value[0]})
            if self._access_log and method not in _PROBES:
                peer = context.peer()
                model, version = messages.SERVED_BY.get() or (None, None)
                access_logger.info(
                    '%s "gRPC %s" %s %.1f ms%s',
                    peer,
                    method,
                    code.name,
                    elapsed * 1000,
                    f" model={model} version={version}" if model else "",
                    extra={
                        "method": f"gRPC {method}",
                        "status": code.name,
                        "latency_ms": round(elapsed * 1000, 2),
                        "client": peer,
                        "protocol": PROTOCOL,
                        "model": model,
                        "version": version,
                    },
                )
            logs.request_id.reset(token)

    async def _refuse(
        self, method: str, context: ServicerContext[Request, Response], exc: ServiceError, code: grpc.StatusCode
    ) -> None:
        self._metrics.count_rejection(exc)
        if exc.status_code >= 500 and exc.status_code != 503:
            logger.warning("gRPC %s -> %s %s: %s", method, code.name, exc.code, exc.message)
        request_id = logs.request_id.get()
        trailing = errors.trailing_metadata(exc) + ((("x-request-id", request_id),) if request_id else ())
        await context.abort(code, exc.message, trailing)

    # ------------------------------------------------------------------------------------------ health and metadata

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: ServicerContext[pb.ServerLiveRequest, pb.ServerLiveResponse]
    ) -> pb.ServerLiveResponse:
        async def serve() -> pb.ServerLiveResponse:
            return pb.ServerLiveResponse(live=True)

        return await self._call("ServerLive", context, serve)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: ServicerContext[pb.ServerReadyRequest, pb.ServerReadyResponse]
    ) -> pb.ServerReadyResponse:
        async def serve() -> pb.ServerReadyResponse:
            return pb.ServerReadyResponse(ready=self._dataplane.ready)

        return await self._call("ServerReady", context, serve)

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: ServicerContext[pb.ModelReadyRequest, pb.ModelReadyResponse]
    ) -> pb.ModelReadyResponse:
        async def serve() -> pb.ModelReadyResponse:
            try:
                ready = self._dataplane.model_ready(request.name, request.version or None)
            except ModelNotFound:
                ready = False  # as Triton answers: not ready, not an error
            return pb.ModelReadyResponse(ready=ready)

        return await self._call("ModelReady", context, serve)

    async def ServerMetadata(
        self,
        request: pb.ServerMetadataRequest,
        context: ServicerContext[pb.ServerMetadataRequest, pb.ServerMetadataResponse],
    ) -> pb.ServerMetadataResponse:
        async def serve() -> pb.ServerMetadataResponse:
            return pb.ServerMetadataResponse(
                name=codec.SERVER_NAME, version=__version__, extensions=list(codec.EXTENSIONS)
            )

        return await self._call("ServerMetadata", context, serve)

    async def ModelMetadata(
        self,
        request: pb.ModelMetadataRequest,
        context: ServicerContext[pb.ModelMetadataRequest, pb.ModelMetadataResponse],
    ) -> pb.ModelMetadataResponse:
        async def serve() -> pb.ModelMetadataResponse:
            return messages.model_metadata(self._dataplane.model(request.name, request.version or None))

        return await self._call("ModelMetadata", context, serve)

    async def ModelConfig(
        self,
        request: pb.ModelConfigRequest,
        context: ServicerContext[pb.ModelConfigRequest, pb.ModelConfigResponse],
    ) -> pb.ModelConfigResponse:
        async def serve() -> pb.ModelConfigResponse:
            model = self._dataplane.model(request.name, request.version or None)
            config = extensions.model_config(model, request_timeout_s=self._dataplane.request_timeout_s)
            return json_format.ParseDict({"config": config}, pb.ModelConfigResponse())

        return await self._call("ModelConfig", context, serve)

    async def ModelStatistics(
        self,
        request: pb.ModelStatisticsRequest,
        context: ServicerContext[pb.ModelStatisticsRequest, pb.ModelStatisticsResponse],
    ) -> pb.ModelStatisticsResponse:
        async def serve() -> pb.ModelStatisticsResponse:
            found = self._dataplane.statistics(request.name or None, request.version or None)
            return json_format.ParseDict(extensions.statistics(found), pb.ModelStatisticsResponse())

        return await self._call("ModelStatistics", context, serve)

    # ------------------------------------------------------------------------------------------ repository

    async def RepositoryIndex(
        self,
        request: pb.RepositoryIndexRequest,
        context: ServicerContext[pb.RepositoryIndexRequest, pb.RepositoryIndexResponse],
    ) -> pb.RepositoryIndexResponse:
        async def serve() -> pb.RepositoryIndexResponse:
            return messages.repository_index(self._dataplane.repository_index(), ready_only=request.ready)

        return await self._call("RepositoryIndex", context, serve)

    async def RepositoryModelLoad(
        self,
        request: pb.RepositoryModelLoadRequest,
        context: ServicerContext[pb.RepositoryModelLoadRequest, pb.RepositoryModelLoadResponse],
    ) -> pb.RepositoryModelLoadResponse:
        async def serve() -> pb.RepositoryModelLoadResponse:
            default_version = messages.load_default_version(request)
            await self._dataplane.load_model(request.model_name, gate.CALLER.get(), default_version=default_version)
            return pb.RepositoryModelLoadResponse()

        return await self._call("RepositoryModelLoad", context, serve)

    async def RepositoryModelUnload(
        self,
        request: pb.RepositoryModelUnloadRequest,
        context: ServicerContext[pb.RepositoryModelUnloadRequest, pb.RepositoryModelUnloadResponse],
    ) -> pb.RepositoryModelUnloadResponse:
        async def serve() -> pb.RepositoryModelUnloadResponse:
            await self._dataplane.unload_model(request.model_name, gate.CALLER.get())
            return pb.RepositoryModelUnloadResponse()

        return await self._call("RepositoryModelUnload", context, serve)

    # ------------------------------------------------------------------------------------------ inference

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: ServicerContext[pb.ModelInferRequest, pb.ModelInferResponse]
    ) -> pb.ModelInferResponse:
        return await self._call("ModelInfer", context, lambda: self._infer(request, context))

    async def _infer(
        self, request: pb.ModelInferRequest, context: ServicerContext[pb.ModelInferRequest, pb.ModelInferResponse]
    ) -> pb.ModelInferResponse:
        # The client's gRPC deadline becomes the request's, when it comes before the server's own: images still
        # queued when it passes are dropped unrun.
        result = await self._dataplane.infer(
            InferenceRequest(
                request.model_name,
                messages.GrpcBody(request),
                version=request.model_version or None,
                protocol=PROTOCOL,
                received_at=time.monotonic(),
                client_timeout_s=context.time_remaining(),
            )
        )
        return messages.infer_response(result, logs.request_id.get())
