"""The gRPC listener: a grpc.aio server in uvicorn's own event loop, started and drained with the HTTP server.

It serves inference.GRPCInferenceService (`v2.InferenceServicer`, behind the serving gate `gate.ServingGate`) and
grpc.health.v1 (`health`) from the data plane the server object (`service.model_server`) gives it, so both protocols share the models, batchers, admission,
byte budgets, lifecycle and metrics. `service.server` starts it once HTTP listens and the models are loaded, calls
`begin_drain` on SIGTERM and `stop` once the drain is over.

Limits: messages up to ``max_upload_bytes`` once decompressed (a larger one, or a compressed message that would
inflate past it, is refused by gRPC with RESOURCE_EXHAUSTED before it is read whole), at most
``grpc_max_concurrent_streams`` calls per connection and ``grpc_max_concurrent_rpcs`` inference calls in all (the
serving gate's count), a budget of health watches of their own, metadata bounded by ``grpc_max_metadata_bytes``,
and keepalive pings that drop peers which stopped answering. gRPC core's HTTP/2 defences stay on and are stated
in `server_options`: streams the server is still finishing count against the per-connection limit (the rapid
reset attack, CVE-2023-44487, cannot pile up work), a client pinging without data past the strikes allowed gets
GOAWAY, and a peer that does not read its SETTINGS and PING acknowledgements is no longer read from.

The port is shared (SO_REUSEPORT) only among the worker processes of one server (`share_port`,
service/workers.py), where the kernel spreads connections over them; otherwise a port in use is a start-up error,
not a second server silently splitting the traffic.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2_grpc

from service.auth import ApiKeys
from service.config import Settings
from service.dataplane import DataPlane
from service.errors import MalformedRequest
from service.grpc.gate import ServingGate
from service.grpc.handlers import add_tolerant_service
from service.grpc.health import ReadinessHealthServicer, WatchBudget
from service.grpc.proto.grpc_predict_v2_pb2_grpc import add_GRPCInferenceServiceServicer_to_server
from service.grpc.v2 import InferenceServicer
from service.lifecycle import Lifecycle
from service.metrics import ServiceMetrics
from service.ratelimit import KeyRateLimits

if TYPE_CHECKING:
    from service.tls import ServerTls

logger = logging.getLogger("service")


class GrpcStartError(Exception):
    """The gRPC listener could not be opened (the message says where and why)."""


def listen_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def server_options(settings: Settings, *, share_port: bool = False) -> list[tuple[str, int]]:
    """gRPC core's channel arguments for the server, from the settings."""
    return [
        ("grpc.max_receive_message_length", settings.max_upload_bytes),
        ("grpc.max_concurrent_streams", settings.grpc_max_concurrent_streams),
        ("grpc.keepalive_time_ms", round(settings.grpc_keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", round(settings.grpc_keepalive_timeout_s * 1000)),
        # Ping idle connections too, and without a limit on pings between data frames: a peer that is gone
        # without a FIN is found whether or not it has a call open.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.so_reuseport", int(share_port)),
        ("grpc.max_metadata_size", settings.grpc_max_metadata_bytes),
        ("grpc.absolute_max_metadata_size", 2 * settings.grpc_max_metadata_bytes),
        # gRPC core's defaults, stated because the defences rest on them (tests/reliability/test_grpc_http2.py):
        # streams not yet freed count against max_concurrent_streams (rapid reset), and two pings without data
        # inside the minimum interval are all a client gets before GOAWAY too_many_pings.
        ("grpc.http.overload_protection", 1),
        ("grpc.http2.max_ping_strikes", 2),
    ]


def tls_options(settings: Settings) -> list[tuple[str, int]]:
    """With TLS: a handshake deadline, and a cap on connections that counts them from their acceptance, handshake
    included, as HTTP's `max_connections` does."""
    return [
        ("grpc.server_handshake_timeout_ms", round(settings.tls_handshake_timeout_s * 1000)),
        ("grpc.max_allowed_incoming_connections", settings.max_connections),
    ]


class GrpcFrontEnd:
    """The V2 gRPC front end of one app; create it anywhere, `start` it inside the running event loop."""

    def __init__(
        self,
        dataplane: DataPlane,
        *,
        lifecycle: Lifecycle,
        metrics: ServiceMetrics,
        settings: Settings,
        address: str | None = None,
        share_port: bool = False,
        api_keys: ApiKeys | None = None,
        rate_limits: KeyRateLimits | None = None,
        tls: ServerTls | None = None,
    ) -> None:
        self._tls = tls
        self.address = address if address is not None else listen_address(settings.host, settings.grpc_port)
        self._share_port = share_port
        self._gate = ServingGate(lifecycle, metrics, api_keys, rate_limits, max_calls=settings.grpc_max_concurrent_rpcs)
        self._metrics = metrics
        self.port: int | None = None
        """The port listened on, once started (the chosen one when `address` asks for port 0)."""
        self._settings = settings
        self._health = ReadinessHealthServicer(
            lambda: dataplane.ready,
            WatchBudget(settings.grpc_max_health_watches_per_connection, settings.grpc_max_health_watches),
        )
        self._servicer = InferenceServicer(dataplane, metrics=metrics, access_log=settings.access_log)
        self._server: grpc.aio.Server | None = None

    async def start(self) -> int:
        """Listen and serve; raises GrpcStartError when the address cannot be bound."""
        options = server_options(self._settings, share_port=self._share_port)
        if self._tls is not None:
            options += tls_options(self._settings)
        # No maximum_concurrent_rpcs: gRPC's would count health watches too; the gate counts inference calls.
        server = grpc.aio.server(options=options, interceptors=[self._gate])
        add_tolerant_service(add_GRPCInferenceServiceServicer_to_server, self._servicer, server, self._count_malformed)
        add_tolerant_service(health_pb2_grpc.add_HealthServicer_to_server, self._health, server, lambda *_: None)
        try:
            if self._tls is not None:
                port = server.add_secure_port(self.address, self._tls.grpc_credentials())
            else:
                port = server.add_insecure_port(self.address)
        except RuntimeError as exc:
            raise GrpcStartError(
                f"gRPC cannot listen on {self.address} (is the port in use? set --grpc-port, or "
                f"0 to turn gRPC off): {exc}"
            ) from None
        await server.start()
        self._server, self.port = server, port
        host = self.address.rpartition(":")[0]
        logger.info(
            "gRPC listening on %s:%d (Open Inference Protocol, grpc.health.v1%s)",
            host,
            port,
            "" if self._tls is None else ", TLS",
        )
        return port

    def _count_malformed(self, method: str, error: MalformedRequest) -> None:
        self._metrics.count_rejection(error)
        self._metrics.grpc_requests.labels(method, grpc.StatusCode.INVALID_ARGUMENT.name).inc()

    def begin_drain(self) -> None:
        """Health NOT_SERVING (watches end) from now on. New calls are refused by the serving gate (the lifecycle
        drains), calls already received go on; the listener closes in `stop`, once the drain is over."""
        self._health.begin_drain()

    async def retire(self, grace_s: float) -> None:
        """Leave a pool of workers that keep serving: stop taking calls (clients get GOAWAY and reconnect to the
        other workers, which share the port), let the calls in flight finish within `grace_s`. Health stays as it
        is: the others serve."""
        if self._server is not None:
            await self._server.stop(grace_s)
            logger.info("gRPC retired")

    async def stop(self) -> None:
        """Close the listener and cancel whatever is still open (calls past the drain's grace period)."""
        self._health.begin_drain()
        if self._server is None:
            return
        await self._server.stop(None)
        logger.info("gRPC stopped")
