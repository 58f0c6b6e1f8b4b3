"""The standard gRPC health service (grpc.health.v1), answering from the server's readiness.

Kubernetes' native gRPC probes, grpc_health_probe and load balancers call `Check`; it says SERVING exactly when
/readyz would answer 200 (every model warmed up and its batcher running, not draining), NOT_SERVING while the
server starts and from the moment it drains. `Watch` streams report a change within `WATCH_REFRESH_S`; at the
drain they report NOT_SERVING at once and end (the server takes no new call then, so a watcher that comes back
finds it gone). Known services: the whole server ("") and inference.GRPCInferenceService; others are NOT_FOUND.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import suppress

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.grpc.messages import SERVICE_NAME

SERVING: int = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING: int = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN: int = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
SERVICES = frozenset({"", SERVICE_NAME})
WATCH_REFRESH_S = 0.5
"""How often a Watch stream looks at readiness; the drain reaches it at once."""


# grpc_health-stubs types only grpc_health.v1.health; its generated modules are Any, this base class included.
class ReadinessHealthServicer(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    def __init__(self, is_ready: Callable[[], bool]) -> None:
        self._is_ready = is_ready
        self._draining = asyncio.Event()

    def begin_drain(self) -> None:
        """NOT_SERVING from now on, whatever readiness says."""
        self._draining.set()

    def status(self, service: str) -> int:
        if service not in SERVICES:
            return SERVICE_UNKNOWN
        return SERVING if self._is_ready() and not self._draining.is_set() else NOT_SERVING

    async def Check(
        self,
        request: health_pb2.HealthCheckRequest,
        context: grpc.aio.ServicerContext[health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse],
    ) -> health_pb2.HealthCheckResponse:
        status = self.status(request.service)
        if status == SERVICE_UNKNOWN:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(
        self,
        request: health_pb2.HealthCheckRequest,
        context: grpc.aio.ServicerContext[health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse],
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        last = None
        while True:
            status = self.status(request.service)
            if status != last:
                yield health_pb2.HealthCheckResponse(status=status)
                last = status
            if self._draining.is_set():
                return  # NOT_SERVING is final; an open stream would hold the drain up to its grace period
            with suppress(TimeoutError):
                await asyncio.wait_for(self._draining.wait(), WATCH_REFRESH_S)
