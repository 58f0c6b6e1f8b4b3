"""The serving gate, the outermost layer of the app: what every request passes before any of its body is read.

- Request IDs: `X-Request-ID` is taken when it is valid (1 to 128 characters of letters, digits and ``._:-``),
  else one is made; it is echoed on every response, put in error bodies and in every log line about the request.
- API keys (when on): a request without an accepted key is answered 401 before its body is read; probes, the
  demo page and the docs stay open, /metrics too unless `metrics_require_key`. A key over its rate is answered 429
  with Retry-After (`service.ratelimit`); the key is `auth.current_key` while the request is handled.
- Draining: new requests are refused with 503 while the server drains; requests in flight are counted.
- An answer sent before the whole body arrived (401, 413, 415, 503, ...) carries ``Connection: close``: the
  server does not receive the rest of an upload it already refused (beyond the short lingering close of
  `service.http_protocol`, which lets a client still writing read the answer). When the body has all arrived
  already (the protocol guard says so), the connection stays open: a refusal in a burst then costs neither side
  a new connection.
- An exception no handler expected is answered here, 500 ``internal_error`` with ``Connection: close`` and the
  request's ID, its traceback logged: the connection is closed after it (the request's state is unknown), and a
  client that kept it alive must hear so rather than meet a reset on its next request.
- Metrics and the access log line, once the response is sent; with tracing on, the request's span
  (`service.tracing`), a child of the caller's when it sends a W3C traceparent.

A pure ASGI middleware (no BaseHTTPMiddleware), so request bodies still stream through untouched.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import logs, tracing
from service.api.errors import error_response
from service.auth import KEY_REQUIRED, ApiKey, ApiKeys, current_key
from service.errors import InternalError, RateLimited, ServiceError, ShuttingDown, Unauthorized
from service.http_protocol import BODY_RECEIVED_EXTENSION
from service.lifecycle import Lifecycle
from service.metrics import ServiceMetrics
from service.ratelimit import KeyRateLimits

access_logger = logging.getLogger(logs.ACCESS_LOGGER)
logger = logging.getLogger(__name__)

PROBE_PATHS = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"})
"""Always answered: readiness must show while draining, and probes carry no keys."""
UNGATED_PATHS = PROBE_PATHS | {"/metrics"}
"""Not counted as work in flight, and answered while draining."""
OPEN_PREFIXES = ("/static/", "/docs")
OPEN_PATHS = frozenset({"/", "/favicon.ico", "/favicon.svg", "/openapi.json"})
"""The demo page and the docs load without a key (the page then calls the API with one)."""


def _header(scope: Scope, name: bytes) -> str | None:
    headers: Iterable[tuple[bytes, bytes]] = scope["headers"]
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None


def _has_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False


def _body_received(scope: Scope) -> bool:
    received = scope.get("extensions", {}).get(BODY_RECEIVED_EXTENSION)
    return received is not None and bool(received())


class ServingGateMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        lifecycle: Lifecycle,
        metrics: ServiceMetrics,
        api_keys: ApiKeys,
        rate_limits: KeyRateLimits | None = None,
        metrics_require_key: bool = False,
        access_log: bool = True,
    ) -> None:
        self.app = app
        self.lifecycle = lifecycle
        self.metrics = metrics
        self.api_keys = api_keys
        self.rate_limits = rate_limits if rate_limits is not None else KeyRateLimits()
        self.metrics_require_key = metrics_require_key
        self.access_log = access_log

    def _needs_key(self, path: str) -> bool:
        if not self.api_keys.enabled or path in PROBE_PATHS or path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            return False
        return path != "/metrics" or self.metrics_require_key

    def _key(self, scope: Scope) -> ApiKey | None:
        return self.api_keys.key_for(_header(scope, b"authorization"), _header(scope, b"x-api-key"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = logs.request_id_from(_header(scope, b"x-request-id"))
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        token = logs.request_id.set(request_id)
        status = 500
        sent_bytes = 0
        body_read = not _has_body(scope)
        received_bytes = 0
        path = scope["path"]
        response_started = False
        closing = False

        async def receive_tracking_body() -> Message:
            nonlocal body_read, received_bytes
            message = await receive()
            if message["type"] == "http.request":
                received_bytes += len(message.get("body", b""))
                if not message.get("more_body", False):
                    body_read = True
            return message

        async def send_tracking(message: Message) -> None:
            nonlocal status, sent_bytes, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                if trace is not None:
                    tracing.answer_started(trace)
                headers = list(message.get("headers", []))
                if closing or self.lifecycle.retiring or not (body_read or _body_received(scope)):
                    headers = [(k, v) for k, v in headers if k.lower() != b"connection"]
                    headers.append((b"connection", b"close"))
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body":
                sent_bytes += len(message.get("body", b""))
            await send(message)

        async def refuse(error: ServiceError) -> None:
            self.metrics.count_rejection(error)
            await error_response(error, scope)(scope, receive_tracking_body, send_tracking)

        async def serve() -> None:
            nonlocal closing
            try:
                await self.app(scope, receive_tracking_body, send_tracking)
            except Exception:
                if response_started:
                    raise  # part of an answer is out: only closing the connection (uvicorn's part) is left
                logger.exception("%s %s failed", scope["method"], path)
                closing = True
                await refuse(InternalError("internal server error; the details are in the server log"))

        gated = path not in UNGATED_PATHS
        key_token = None
        trace = (
            tracing.start_request(f"{scope['method']} {path}", tracing.header_carrier(scope["headers"]), request_id)
            if gated and tracing.enabled()
            else None
        )
        try:
            if gated and not self.lifecycle.accepting:
                await refuse(ShuttingDown.draining())
                return
            if self._needs_key(path):
                key = self._key(scope)
                if key is None:
                    await refuse(Unauthorized(KEY_REQUIRED))
                    return
                state["api_key"] = key.name
                state["api_key_role"] = key.role  # what model control asks of a load or unload (service.api.repository)
                try:
                    self.rate_limits.admit(key)
                except RateLimited as exc:
                    self.metrics.api_key_rate_limited.labels(key.name).inc()
                    await refuse(exc)
                    return
                self.metrics.api_key_requests.labels(key.name).inc()
                key_token = current_key.set(key)
            if not gated:
                await serve()
                return
            self.lifecycle.request_started()
            self.metrics.http_in_flight.inc()
            try:
                await serve()
            finally:
                self.metrics.http_in_flight.dec()
                self.lifecycle.request_finished()
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.http_requests.labels(template, scope["method"], str(status)).inc()
            self.metrics.http_request_seconds.labels(template).observe(elapsed)
            if self.access_log and gated:
                self._log_access(scope, state, status, elapsed, received_bytes, sent_bytes)
            if key_token is not None:
                current_key.reset(key_token)
            if trace is not None:  # named as OpenTelemetry's HTTP conventions say: the method, and the route if known
                name = f"{scope['method']} {template}" if route is not None else scope["method"]
                tracing.end_request(trace, name, **{"http.response.status_code": status, "url.path": path})
            logs.request_id.reset(token)

    @staticmethod
    def _log_access(scope: Scope, state: dict[str, Any], status: int, elapsed: float, received: int, sent: int) -> None:
        client = scope.get("client")
        address = f"{client[0]}:{client[1]}" if client else None
        query = scope.get("query_string", b"")
        target = scope["path"] + ("?" + query.decode("latin-1") if query else "")
        latency_ms = round(elapsed * 1000, 2)
        extra = {
            "method": scope["method"],
            "path": target,
            "status": status,
            "latency_ms": latency_ms,
            "bytes": {"received": received, "sent": sent},
            "client": address,
            "model": state.get("model"),
            "version": state.get("version"),
            "images": state.get("images"),
            "timings_ms": state.get("timings_ms"),
            "api_key": state.get("api_key"),
            "protocol": state.get("protocol"),
        }
        model = (
            f" model={state['model']} version={state.get('version')} images={state.get('images')}"
            if state.get("model")
            else ""
        )
        access_logger.info(
            '%s "%s %s" %d %.1f ms%s', address or "-", scope["method"], target, status, latency_ms, model, extra=extra
        )
