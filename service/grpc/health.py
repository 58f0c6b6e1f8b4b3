"""The standard gRPC health service (grpc.health.v1), answering from the server's readiness.

Kubernetes' native gRPC probes, grpc_health_probe and load balancers call `Check`; it says SERVING exactly when
/readyz would answer 200 (every model warmed up and its batcher running, not draining), NOT_SERVING while the
server starts and from the moment it drains. `Watch` streams report a change within `WATCH_REFRESH_S`; at the
drain they report NOT_SERVING at once and end (the server takes no new call then, so a watcher that comes back
finds it gone). Known services: the whole server ("") and inference.GRPCInferenceService; others are NOT_FOUND.

A Watch never ends by itself, so watches have a budget of their own (`WatchBudget`): a few per connection and a
bounded number in all, past which a new one is refused with RESOURCE_EXHAUSTED. They count in no other limit:
however many a client opens, inference calls keep their room (the serving gate's limit counts those only).
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


class WatchBudget:
    """Open Watch streams, per connection (the peer's address and port) and in all."""

    def __init__(self, per_connection: int, total: int) -> None:
        self.per_connection = per_connection
        self.total = total
        self.open: dict[str, int] = {}
        self.open_total = 0

    def refusal(self, peer: str) -> str | None:
        """Why a new watch from `peer` is refused, or None when it fits."""
        if self.open.get(peer, 0) >= self.per_connection:
            return (
                f"this connection has {self.per_connection} health watches open, its limit; close one, or poll "
                f"with Check"
            )
        if self.open_total >= self.total:
            return f"the server has {self.total} health watches open, its limit; retry later, or poll with Check"
        return None

    def take(self, peer: str) -> None:
        self.open[peer] = self.open.get(peer, 0) + 1
        self.open_total += 1

    def give_back(self, peer: str) -> None:
        self.open_total -= 1
        left = self.open[peer] - 1
        if left:
            self.open[peer] = left
        else:
            del self.open[peer]


# grpc_health-stubs types only grpc_health.v1.health; its generated modules are Any, this base class included.
class ReadinessHealthServicer(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    def __init__(self, is_ready: Callable[[], bool], watches: WatchBudget | None = None) -> None:
        self._is_ready = is_ready
        self._draining = asyncio.Event()
        self.watches = watches if watches is not None else WatchBudget(per_connection=4, total=100)

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
        peer = context.peer()
        refusal = self.watches.refusal(peer)
        if refusal is not None:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refusal)
        self.watches.take(peer)
        try:
            async for answer in self._watch(request):
                yield answer
        finally:
            self.watches.give_back(peer)

    async def _watch(self, request: health_pb2.HealthCheckRequest) -> AsyncIterator[health_pb2.HealthCheckResponse]:
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
