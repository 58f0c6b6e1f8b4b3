"""The serving gate: refuses new requests while draining, counts requests in flight, records HTTP metrics, and
closes a connection whose response leaves before its request body was read.

A pure ASGI middleware (no BaseHTTPMiddleware), so request bodies still stream through untouched. An answer sent
before the whole body arrived (413, 415, 503, ...) carries ``Connection: close``: the server then stops reading
instead of receiving and discarding the rest of an upload it already refused.
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import error_response
from service.errors import ShuttingDown
from service.lifecycle import Lifecycle
from service.metrics import ServiceMetrics

UNGATED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
"""Probes and scrapes keep working while draining, and are not counted as work in flight."""


class ServingGateMiddleware:
    def __init__(self, app: ASGIApp, *, lifecycle: Lifecycle, metrics: ServiceMetrics) -> None:
        self.app = app
        self.lifecycle = lifecycle
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        body_read = not _has_body(scope)

        async def receive_tracking_body() -> Message:
            nonlocal body_read
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                body_read = True
            return message

        async def send_recording_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if not body_read:
                    headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                    message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        gated = scope["path"] not in UNGATED_PATHS
        try:
            if gated and not self.lifecycle.accepting:
                refusal = ShuttingDown("the server is shutting down; retry on another instance",
                                       headers={"Connection": "close", "Retry-After": "1"})
                self.metrics.count_rejection(refusal)
                await error_response(refusal, scope["path"])(scope, receive_tracking_body, send_recording_status)
                return
            if not gated:
                await self.app(scope, receive_tracking_body, send_recording_status)
                return
            self.lifecycle.request_started()
            self.metrics.http_in_flight.inc()
            try:
                await self.app(scope, receive_tracking_body, send_recording_status)
            finally:
                self.metrics.http_in_flight.dec()
                self.lifecycle.request_finished()
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.http_requests.labels(template, scope["method"], str(status)).inc()
            self.metrics.http_request_seconds.labels(template).observe(time.perf_counter() - started)


def _has_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False
